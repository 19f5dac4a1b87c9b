//! `figure1`: the architecture as built, drawn from the models themselves: the backbone's stages
//! with the shapes a forward pass produces, the CA blocks with their widths and parameter counts,
//! and the GAP path the stream replaces, crossed out.

use anyhow::Result;
use candle_core::{DType, Tensor};
use castream_report::columns;
use castream_report::diagram::{self, Panel};
use castream_report::tables::Table;

use super::RunContext;

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let side = ctx.test_images()?.side();
    let mut panels = Vec::new();
    let (mut col_backbone, mut col_block, mut col_reads, mut col_in, mut col_out, mut col_params) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for backbone in &s.backbones {
        let m = ctx.models(backbone, &s.stream, &mut None)?;
        let name = &m.name;
        let x = Tensor::zeros((1, 3, side, side), DType::F32, &ctx.device)?;
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
    diagram::write(&panels, &ctx.out.join("figure1"))?;
    let frame = columns!(
        "backbone" => col_backbone, "block" => col_block, "reads" => col_reads, "d_in" => col_in, "d_out" => col_out,
        "parameters" => col_params,
    )?;
    Table::new("figure1", "CA blocks as built", frame)
        .note(format!(
            "Shapes from a forward pass of a {side}x{side} input; q0 is counted in the figure, not in this table."
        ))
        .write(ctx.out)?;
    Ok(())
}
