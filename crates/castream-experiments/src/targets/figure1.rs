//! `figure1`: the architecture as built, drawn from the models themselves: the backbone's stages
//! with the shapes a forward pass produces, the CA blocks with their widths and parameter counts,
//! and the GAP path the stream replaces, crossed out.

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use plotters::coord::Shift;
use plotters::prelude::*;
use polars::prelude::*;

use super::RunContext;
use crate::ca::{quick_models, QuickData};
use crate::charts::{register_font, FONT, PALETTE};
use crate::spec::Profile;
use crate::tables::Table;

/// What one panel shows: one backbone and its stream.
struct Panel {
    title: String,
    input: String,
    /// (label, shape) of F_0 … F_4.
    stages: Vec<(String, String)>,
    /// (tap, d_in, d_out, parameters) of each CA block, in order.
    blocks: Vec<(usize, usize, usize, usize)>,
    q0: usize,
    classes: usize,
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

pub fn run(ctx: &mut RunContext) -> Result<()> {
    if ctx.profile == Profile::Paper {
        bail!("figure1 --profile paper: not yet available: needs the paper backbones' weights and an ImageNet-trained stream");
    }
    let s = ctx.settings;
    let data = QuickData::load(s)?;
    let side = data.test.config.canvas;
    let mut panels = Vec::new();
    let (mut col_backbone, mut col_block, mut col_reads, mut col_in, mut col_out, mut col_params) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for name in &s.backbones {
        let m = quick_models(ctx.root, name, &s.stream, &data, &mut None)?;
        let x = Tensor::zeros((1, 3, side, side), DType::F32, &Device::Cpu)?;
        let features = m.ca.backbone.net.stages(&x, false)?;
        let shape = |f: &Tensor| f.dims()[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let stages = features
            .iter()
            .enumerate()
            .map(|(l, f)| (format!("F{l}{}", if l == 0 { " (stem)" } else { "" }), shape(f)))
            .collect();
        let vars = m.ca.stream.named_vars();
        let count = |n: &str| vars.iter().find(|(k, _)| k == n).map_or(0, |(_, v)| v.elem_count());
        let taps = &m.ca.stream.config().taps;
        let widths = m.ca.backbone.net.stage_widths();
        let mut blocks = Vec::new();
        for (i, &tap) in taps.iter().enumerate() {
            let d_out = taps.get(i + 1).map_or(widths[4], |&t| widths[t]);
            let params = count(&format!("blocks.{tap}.weight")) + count(&format!("blocks.{tap}.bias"));
            blocks.push((tap, widths[tap], d_out, params));
            col_backbone.push(name.clone());
            col_block.push(format!("CA-{tap}"));
            col_reads.push(shape(&features[tap]));
            col_in.push(widths[tap] as u32);
            col_out.push(d_out as u32);
            col_params.push(params as u32);
        }
        panels.push(Panel {
            title: format!(
                "{name}: {} — backbone {} parameters (frozen), stream {} parameters",
                m.meta.config.describe(),
                m.ca.backbone.parameter_count(),
                m.ca.stream.parameter_count()
            ),
            input: format!("3x{side}x{side}"),
            stages,
            blocks,
            q0: count("q0"),
            classes: m.meta.config.num_classes,
        });
    }
    register_font();
    let size = (W as u32, (PANEL_H * panels.len() as i32) as u32);
    render(BitMapBackend::new(&ctx.out.join("figure1.png"), size).into_drawing_area(), &panels)?;
    render(SVGBackend::new(&ctx.out.join("figure1.svg"), size).into_drawing_area(), &panels)?;
    let frame = df!(
        "backbone" => col_backbone, "block" => col_block, "reads" => col_reads, "d_in" => col_in, "d_out" => col_out,
        "parameters" => col_params,
    )?;
    Table::new("figure1", "CA blocks as built", frame)
        .note("Shapes from a forward pass of a 64x64 input; q0 is counted in the figure, not in this table.")
        .write(ctx.out)?;
    Ok(())
}
