//! The architecture diagram of figure1: per backbone, its stages with their shapes, the CA blocks
//! with widths and parameter counts, and the GAP path the stream replaces, crossed out.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::charts::{register_font, write_png, write_svg, FONT, PALETTE};

/// What one panel shows: one backbone and its stream.
pub struct Panel {
    pub title: String,
    pub input: String,
    /// (label, shape) of F_0 … F_4.
    pub stages: Vec<(String, String)>,
    /// (tap, d_in, d_out, parameters) of each CA block, in order.
    pub blocks: Vec<(usize, usize, usize, usize)>,
    pub q0: usize,
    pub classes: usize,
}

const W: i32 = 1500;
const PANEL_H: i32 = 300;

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let text = |s: &str, x: i32, y: i32, size: i32| Text::new(s.to_string(), (x, y), (FONT, size).into_font());
    let boxed = |x: i32, y: i32, w: i32, h: i32, colour: RGBColor| {
        [
            Rectangle::new([(x, y), (x + w, y + h)], colour.mix(0.18).filled()),
            Rectangle::new([(x, y), (x + w, y + h)], colour.stroke_width(2)),
        ]
    };
    let arrow =
        |(x0, y0): (i32, i32), (x1, y1): (i32, i32)| PathElement::new(vec![(x0, y0), (x1, y1)], BLACK.stroke_width(1));
    area.draw(&text(&p.title, 10, 8, 20))?;
    let (bw, bh, gap) = (150, 54, 26);
    let (y_backbone, y_stream) = (60, 190);
    // Backbone row: input, F_0 … F_4, GAP (crossed out), classifier.
    let mut x = 10;
    for el in boxed(x, y_backbone, bw - 30, bh, PALETTE[4]) {
        area.draw(&el)?;
    }
    area.draw(&text("input", x + 8, y_backbone + 8, 15))?;
    area.draw(&text(&p.input, x + 8, y_backbone + 30, 13))?;
    x += bw - 30 + gap;
    let mut stage_x = Vec::new();
    for (label, shape) in &p.stages {
        area.draw(&arrow((x - gap, y_backbone + bh / 2), (x, y_backbone + bh / 2)))?;
        for el in boxed(x, y_backbone, bw, bh, PALETTE[0]) {
            area.draw(&el)?;
        }
        area.draw(&text(label, x + 8, y_backbone + 8, 15))?;
        area.draw(&text(shape, x + 8, y_backbone + 30, 13))?;
        stage_x.push(x);
        x += bw + gap;
    }
    area.draw(&arrow((x - gap, y_backbone + bh / 2), (x, y_backbone + bh / 2)))?;
    for el in boxed(x, y_backbone, 90, bh, RGBColor(150, 150, 150)) {
        area.draw(&el)?;
    }
    area.draw(&text("GAP", x + 28, y_backbone + 18, 16))?;
    for (a, b) in [((x, y_backbone), (x + 90, y_backbone + bh)), ((x, y_backbone + bh), (x + 90, y_backbone))] {
        area.draw(&PathElement::new(vec![a, b], RED.stroke_width(3)))?;
    }
    let classifier_x = x + 90 + gap + 10;
    for el in boxed(classifier_x, (y_backbone + y_stream) / 2, 150, bh, PALETTE[5]) {
        area.draw(&el)?;
    }
    area.draw(&text("classifier (frozen)", classifier_x + 6, (y_backbone + y_stream) / 2 + 8, 13))?;
    area.draw(&text(&format!("-> {} logits", p.classes), classifier_x + 6, (y_backbone + y_stream) / 2 + 30, 13))?;
    // Stream row: q_0, then one CA block under each tapped stage.
    let q0_x = 10;
    for el in boxed(q0_x, y_stream, bw - 30, bh, PALETTE[2]) {
        area.draw(&el)?;
    }
    area.draw(&text("q0 ~ N(1, 1)", q0_x + 8, y_stream + 8, 14))?;
    area.draw(&text(&format!("{} params", p.q0), q0_x + 8, y_stream + 30, 13))?;
    let mut prev = (q0_x + bw - 30, y_stream + bh / 2);
    for &(tap, d_in, d_out, params) in &p.blocks {
        let bx = stage_x[tap];
        area.draw(&arrow((bx + bw / 2, y_backbone + bh), (bx + bw / 2, y_stream)))?;
        area.draw(&arrow(prev, (bx, y_stream + bh / 2)))?;
        for el in boxed(bx, y_stream, bw, bh, PALETTE[1]) {
            area.draw(&el)?;
        }
        area.draw(&text(&format!("CA-{tap}: {d_in} -> {d_out}"), bx + 8, y_stream + 8, 14))?;
        area.draw(&text(&format!("{params} params"), bx + 8, y_stream + 30, 13))?;
        prev = (bx + bw, y_stream + bh / 2);
    }
    area.draw(&arrow(prev, (classifier_x, (y_backbone + y_stream) / 2 + bh / 2)))?;
    area.draw(&text(
        "softmax(F q / sqrt(d)) over positions; values = features; no W_q, W_k, W_v",
        10,
        y_stream + bh + 14,
        13,
    ))?;
    Ok(())
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing figure1: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    for (p, area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
        draw_panel(&area, p).map_err(err)?;
    }
    root.present().map_err(err)
}

/// Writes `<stem>.png` and `<stem>.svg`, one panel per backbone.
pub fn write(panels: &[Panel], stem: &Path) -> Result<()> {
    register_font();
    let size = (W as u32, (PANEL_H * panels.len() as i32) as u32);
    write_png(&stem.with_extension("png"), size, |root| render(root.clone(), panels))?;
    write_svg(&stem.with_extension("svg"), size, |root| render(root.clone(), panels))
}
