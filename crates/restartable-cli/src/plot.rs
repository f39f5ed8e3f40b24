//! SVG charts of throughput against threads.
//!
//! plotters is built without its `ttf` feature: text goes into the SVG as
//! `<text>` elements for the viewer to render, so no font file is read and
//! the chart can be written on a machine with no fonts installed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

/// One line of a chart: a variant's throughput at each thread count.
pub struct Line {
    /// The variant's name, as the command prints it.
    pub name: &'static str,
    /// What the variant is, shown after the name in the legend.
    pub about: &'static str,
    /// (threads, Mops/s), in the order measured.
    pub points: Vec<(u32, f64)>,
    /// Drawn thicker: the structure under test rather than a baseline.
    pub ours: bool,
}

/// One chart of a figure.
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

const WIDTH_PER_PANEL: u32 = 660;
const CHART_HEIGHT: u32 = 430;
const LEGEND_ROW: u32 = 19;
const FONT: &str = "sans-serif";

/// Writes `panels` side by side into an SVG file at `path`: `title` on top,
/// `note` (what was measured, on which machine) at the bottom; each panel
/// plots Mops/s (log scale) against threads (log scale) with a legend under
/// it.
pub fn throughput_svg(
    path: &Path,
    title: &str,
    note: &[String],
    panels: &[Panel],
) -> Result<(), String> {
    let rows = panels.iter().map(|p| p.lines.len()).max().unwrap_or(0) as u32;
    let legend = 12 + rows * LEGEND_ROW;
    let footer = 10 + note.len() as u32 * 18;
    let size = (
        WIDTH_PER_PANEL * panels.len().max(1) as u32,
        44 + CHART_HEIGHT + legend + footer,
    );
    let fail =
        |e: &dyn std::fmt::Display| format!("cannot write the chart {}: {e}", path.display());
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let body = root.titled(title, (FONT, 22)).map_err(|e| fail(&e))?;
    let (body, foot) = body.split_vertically(CHART_HEIGHT + legend);
    for (i, line) in note.iter().enumerate() {
        foot.draw_text(
            line,
            &(FONT, 14).into_text_style(&foot),
            (14, 4 + 18 * i as i32),
        )
        .map_err(|e| fail(&e))?;
    }
    for (area, panel) in body
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        draw_panel(area, panel).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    // plotters reports some write errors only on drop; check the result.
    drop(root);
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        Ok(_) => Err(fail(&"empty file")),
        Err(e) => Err(fail(&e)),
    }
}

type Backend<'a> = SVGBackend<'a>;
type DrawResult = Result<(), DrawingAreaErrorKind<<Backend<'static> as DrawingBackend>::ErrorType>>;

fn draw_panel(area: &DrawingArea<Backend<'_>, Shift>, panel: &Panel) -> DrawResult {
    let (chart_area, legend_area) = area.split_vertically(CHART_HEIGHT);
    let points = || panel.lines.iter().flat_map(|l| l.points.iter().copied());
    let (t_min, t_max) = points().fold((u32::MAX, 1), |(lo, hi), (t, _)| (lo.min(t), hi.max(t)));
    let (m_min, m_max) = points()
        .map(|(_, m)| m.max(1e-3))
        .fold((f64::MAX, 1e-3_f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
    let (t_min, m_min) = (t_min.min(t_max), m_min.min(m_max));
    // Threads on a log2 axis; a half step of margin on each side.
    let x = (t_min as f64).log2() - 0.35..(t_max as f64).log2() + 0.35;
    let y = (m_min / 2.0)..(m_max * 2.0);
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("threads (log scale)")
        .y_desc("throughput, Mops/s (log scale)")
        .x_labels(((t_max as f64).log2() - (t_min as f64).log2()).ceil() as usize + 2)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", 2f64.powf(x.round()))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| mops_label(*y))
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .draw()?;
    let style = |i: usize, ours: bool| {
        let color = Palette99::pick(i).to_rgba();
        (color, color.stroke_width(if ours { 3 } else { 1 }))
    };
    for (i, line) in panel.lines.iter().enumerate() {
        let (color, stroke) = style(i, line.ours);
        let xy: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|&(t, m)| ((t as f64).log2(), m.max(1e-3)))
            .collect();
        chart.draw_series(LineSeries::new(xy.iter().copied(), stroke))?;
        chart.draw_series(
            xy.iter()
                .map(|&p| Circle::new(p, if line.ours { 5 } else { 3 }, color.filled())),
        )?;
        // Mops/s next to each point of our lines, so they read without the table.
        if line.ours {
            chart.draw_series(xy.iter().map(|&(x, y)| {
                Text::new(mops_label(y), (x, y), (FONT, 11).into_font().color(&color))
            }))?;
        }
    }
    for (i, line) in panel.lines.iter().enumerate() {
        let (_, stroke) = style(i, line.ours);
        let y = 8 + (i as u32 * LEGEND_ROW) as i32 + LEGEND_ROW as i32 / 2;
        legend_area.draw(&PathElement::new(vec![(76, y), (106, y)], stroke))?;
        legend_area.draw(&Text::new(
            format!("{}: {}", line.name, line.about),
            (114, y - 7),
            (FONT, 13).into_font(),
        ))?;
    }
    Ok(())
}

/// Mops/s with as many digits as its size needs.
fn mops_label(y: f64) -> String {
    if y >= 100.0 {
        format!("{y:.0}")
    } else if y >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.3}")
    }
}
