//! SVG charts: throughput against threads, or any figure against a count
//! ([`Axes`]).
//!
//! plotters is built without its `ttf` feature: text goes into the SVG as
//! `<text>` elements for the viewer to render, so no font file is read and
//! the chart can be written on a machine with no fonts installed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// One line of a chart: a variant's throughput at each thread count.
pub struct Line {
    /// The variant's name, as the command prints it.
    pub name: String,
    /// What the variant is, shown after the name in the legend.
    pub about: &'static str,
    /// (x, y) in the panel's [`Axes`]: (threads, Mops/s) in the throughput
    /// charts; in the order measured.
    pub points: Vec<(u32, f64)>,
    /// Drawn solid and thicker: the structure under test rather than a
    /// baseline.
    pub ours: bool,
    /// Drawn solid but thin: one of ours, on its fallback path.
    pub fallback: bool,
}

/// One chart of a figure.
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

const WIDTH_PER_PANEL: u32 = 660;
const MIN_WIDTH: u32 = 1200;
const CHART_HEIGHT: u32 = 430;
const LEGEND_ROW: u32 = 19;
const FONT: &str = "sans-serif";

/// What a panel's axes and legend show: the x axis is a count (log2
/// scale), the y axis a figure (log scale when it spans more than 20x).
#[derive(Clone, Copy)]
pub struct Axes {
    /// What the x axis counts, plural ("threads").
    pub x: &'static str,
    /// The y axis's name and unit ("throughput, Mops/s").
    pub y: &'static str,
    /// The unit of the values in the legend ("Mops/s").
    pub unit: &'static str,
    /// What a line is, in the legend's heading ("variant").
    pub series: &'static str,
}

/// The axes of the throughput charts.
pub const THROUGHPUT: Axes = Axes {
    x: "threads",
    y: "throughput, Mops/s",
    unit: "Mops/s",
    series: "variant",
};

/// Fails before the runs, not after them, if a chart cannot be written at
/// `path` (opened for appending: an existing chart is kept until the new
/// one replaces it).
pub fn check_writable(path: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot write the chart {}: {e}", path.display()))
}

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
    let panels: Vec<(&Panel, Axes)> = panels.iter().map(|p| (p, THROUGHPUT)).collect();
    chart_svg(path, title, note, &panels)
}

/// [`throughput_svg`] with each panel's own axes.
pub fn chart_svg(
    path: &Path,
    title: &str,
    note: &[String],
    panels: &[(&Panel, Axes)],
) -> Result<(), String> {
    let rows = panels.iter().map(|p| p.0.lines.len()).max().unwrap_or(0) as u32;
    let legend = 12 + (rows + 1) * LEGEND_ROW;
    let footer = 10 + note.len() as u32 * 18;
    let size = (
        // Wide enough for the title and the note even with one panel.
        (WIDTH_PER_PANEL * panels.len().max(1) as u32).max(MIN_WIDTH),
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
        draw_panel(area, panel.0, &panel.1).map_err(|e| fail(&e))?;
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

/// Colours of our lines, then of the baselines (Tableau 10, which stays
/// distinct on white and for most colour-blind readers).
const OURS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(31, 119, 180),
];
const BASELINES: [RGBColor; 7] = [
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// An axis drawn on a linear coordinate: values go through `at`, and only
/// the key points `label` names are labelled.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    Log2,
    Log10,
}

impl Scale {
    fn at(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log2 => v.log2(),
            Scale::Log10 => v.log10(),
        }
    }
    fn value(self, at: f64) -> Option<f64> {
        let whole = (at - at.round()).abs() < 1e-9;
        match self {
            Scale::Linear => Some(at),
            Scale::Log2 => whole.then(|| 2f64.powf(at.round())),
            Scale::Log10 => whole.then(|| 10f64.powf(at.round())),
        }
    }
    /// How many key points to ask for over `range`: one per power for the
    /// log scales, so they fall on whole powers.
    fn labels(self, range: &std::ops::Range<f64>) -> usize {
        match self {
            Scale::Linear => 8,
            Scale::Log2 | Scale::Log10 => (range.end - range.start).ceil() as usize + 1,
        }
    }
}

fn draw_panel(area: &DrawingArea<Backend<'_>, Shift>, panel: &Panel, axes: &Axes) -> DrawResult {
    let (chart_area, legend_area) = area.split_vertically(CHART_HEIGHT);
    let points = || panel.lines.iter().flat_map(|l| l.points.iter().copied());
    let (t_min, t_max) = points().fold((u32::MAX, 1), |(lo, hi), (t, _)| (lo.min(t), hi.max(t)));
    let (m_min, m_max) = points()
        .map(|(_, m)| m.max(1e-3))
        .fold((f64::MAX, 1e-3_f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
    let (t_min, m_min) = (t_min.min(t_max), m_min.min(m_max));
    // Threads on a log2 axis with half a step of margin; throughput on a
    // log axis only when it spans more than a factor of 20.
    let (xs, ys) = (
        Scale::Log2,
        if m_max / m_min > 20.0 {
            Scale::Log10
        } else {
            Scale::Linear
        },
    );
    let x = xs.at(t_min as f64) - 0.35..xs.at(t_max as f64) + 0.35;
    let y = match ys {
        Scale::Linear => 0.0..m_max * 1.1,
        _ => ys.at(m_min) - 0.3..ys.at(m_max) + 0.3,
    };
    let (x_labels, y_labels) = (xs.labels(&x), ys.labels(&y));
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    let (x_desc, y_desc) = (
        format!("{} (log scale)", axes.x),
        match ys {
            Scale::Linear => axes.y.to_owned(),
            _ => format!("{} (log scale)", axes.y),
        },
    );
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(x_labels)
        .y_labels(y_labels)
        .x_label_formatter(&|x| xs.value(*x).map_or(String::new(), |t| format!("{t}")))
        .y_label_formatter(&|y| ys.value(*y).map_or(String::new(), mops_label))
        .light_line_style(RGBColor(240, 240, 240))
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .draw()?;
    let (mut ours, mut baselines) = (OURS.iter().cycle(), BASELINES.iter().cycle());
    let styles: Vec<(RGBColor, ShapeStyle)> = panel
        .lines
        .iter()
        .map(|l| {
            let color = *if l.ours {
                ours.next()
            } else {
                baselines.next()
            }
            .unwrap_or(&BLACK);
            let width = match (l.ours, l.fallback) {
                (true, false) => 3,
                (true, true) => 1,
                _ => 2,
            };
            (color, color.stroke_width(width))
        })
        .collect();
    for (line, &(color, stroke)) in panel.lines.iter().zip(&styles) {
        let xy: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|&(t, m)| (xs.at(t as f64), ys.at(m.max(1e-3))))
            .collect();
        if line.ours {
            chart.draw_series(LineSeries::new(xy.iter().copied(), stroke))?;
        } else {
            chart.draw_series(DashedLineSeries::new(xy.iter().copied(), 8, 5, stroke))?;
        }
        let radius = if line.ours { 5 } else { 3 };
        chart.draw_series(xy.iter().map(|&p| Circle::new(p, radius, color.filled())))?;
    }
    // The legend, under the chart: sample, name, what it is, and the values.
    let threads: Vec<String> = points()
        .map(|(t, _)| t)
        .collect::<std::collections::BTreeSet<_>>()
        .iter()
        .map(u32::to_string)
        .collect();
    let text = |s: String, x: i32, y: i32, bold: bool| {
        let font = (FONT, 13).into_font();
        Text::new(
            s,
            (x, y - 7),
            if bold {
                font.style(FontStyle::Bold)
            } else {
                font
            },
        )
    };
    let row = |i: usize| 8 + (i as u32 * LEGEND_ROW) as i32 + LEGEND_ROW as i32 / 2;
    legend_area.draw(&text(
        format!(
            "{}: what it is: {} at {} {}",
            axes.series,
            axes.unit,
            threads.join(", "),
            axes.x
        ),
        76,
        row(0),
        false,
    ))?;
    for (i, (line, &(_, stroke))) in panel.lines.iter().zip(&styles).enumerate() {
        let y = row(i + 1);
        let sample = vec![(40, y), (70, y)];
        if line.ours {
            legend_area.draw(&PathElement::new(sample, stroke))?;
        } else {
            legend_area.draw(&DashedPathElement::new(sample, 8, 5, stroke))?;
        }
        let values: Vec<String> = line.points.iter().map(|&(_, m)| mops_label(m)).collect();
        legend_area.draw(&text(
            format!("{}: {}: {}", line.name, line.about, values.join(", ")),
            76,
            y,
            line.ours,
        ))?;
    }
    Ok(())
}

/// A value (Mops/s, ns, KiB) with as many digits as its size needs.
fn mops_label(y: f64) -> String {
    if y == 0.0 {
        "0".to_owned()
    } else if y >= 100.0 || (y >= 1.0 && (y - y.round()).abs() < 1e-9) {
        format!("{y:.0}")
    } else if y >= 1.0 {
        format!("{y:.1}")
    } else if y >= 0.01 {
        format!("{y:.2}")
    } else {
        format!("{y:.1e}")
    }
}
