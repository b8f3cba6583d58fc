//! SVG plots of the benchmark reports (plotters' SVG backend; text is left
//! to the viewer's fonts).

use super::pipeline::PipelineReport;
use super::pmap::PmapReport;
use plotters::prelude::*;
use std::path::Path;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn fail(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        path: path.display().to_string(),
        message,
    }
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Speedup against workers, one line per chunk count, with the ideal line.
pub fn pmap_speedup(r: &PmapReport, path: &Path) -> Result<(), PlotError> {
    let err = fail(path);
    let max_w = r.rows.iter().map(|p| p.workers).max().unwrap_or(1).max(2) as f64;
    let max_s = r.rows.iter().map(|p| p.speedup).fold(max_w, f64::max);
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("pmap speedup, D = {}, C = {}", r.d, r.c),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_w + 0.5, 0.0..max_s * 1.1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("worker threads (agents × cores)")
        .y_desc("speedup over sequential")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (max_w, max_w)],
            BLACK.mix(0.3),
        ))
        .map_err(|e| err(e.to_string()))?
        .label("ideal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    let mut chunks: Vec<usize> = r.rows.iter().map(|p| p.chunks).collect();
    chunks.sort_unstable();
    chunks.dedup();
    for (i, n) in chunks.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> = r
            .rows
            .iter()
            .filter(|p| p.chunks == n)
            .map(|p| (p.workers as f64, p.speedup))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(format!("N = {n}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, colour.filled())),
            )
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// The x axis's label at `x`: the stage there, its kernel and agent.
fn stage_label(r: &PipelineReport, x: &f64) -> String {
    let at = x.round();
    r.stages
        .iter()
        .find(|s| s.stage as f64 == at)
        .map_or_else(String::new, |s| {
            format!("{}: {} on {}", s.stage, s.kernel, s.agent)
        })
}

/// Ts and Ta per stage, in milliseconds.
pub fn pipeline_stages(r: &PipelineReport, path: &Path) -> Result<(), PlotError> {
    let err = fail(path);
    let n = r.stages.len().max(1);
    let top = r
        .stages
        .iter()
        .map(|s| s.ts_s.max(s.ta_s) * 1e3)
        .fold(0.0, f64::max)
        .max(1e-3);
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "pipeline: {:.1} items/s measured, {:.1} model 1/max(Ts)",
                r.throughput, r.model_throughput
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top * 1.5)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("stage: its kernel on its agent")
        .y_desc("ms per item")
        .x_labels(n)
        .x_label_formatter(&|x| stage_label(r, x))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (j, (label, colour)) in [
        ("Ts (service)", COLOURS[0]),
        ("Ta (inter-arrival)", COLOURS[1]),
    ]
    .into_iter()
    .enumerate()
    {
        let offset = if j == 0 { -0.2 } else { 0.0 };
        chart
            .draw_series(r.stages.iter().map(|s| {
                let v = if j == 0 { s.ts_s } else { s.ta_s } * 1e3;
                let x = s.stage as f64 + offset;
                Rectangle::new([(x, 0.0), (x + 0.2, v)], colour.filled())
            }))
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
