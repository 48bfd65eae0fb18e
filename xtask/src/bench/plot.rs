//! SVG plots (plotters' SVG backend only: text is left to the viewer's fonts, so no font
//! libraries are needed to build or run this).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::modes::Mode;
use super::results::{Case, Figure, Results, Workload};
use super::stats::Summary;

/// A plot written into the results directory.
pub struct Plot {
    pub file: String,
    pub title: String,
}

const SIZE: (u32, u32) = (860, 520);

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Direct => RGBColor(120, 120, 120),
        Mode::Explicit => RGBColor(20, 20, 20),
        Mode::IptablesLegacy => RGBColor(230, 140, 20),
        Mode::IptablesNft => RGBColor(200, 40, 40),
        Mode::Ebpf => RGBColor(30, 90, 200),
        Mode::EbpfAccel => RGBColor(20, 160, 90),
    }
}

fn err(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// A white canvas of the plots' size, to be written to `path`.
fn canvas(path: &Path) -> Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    Ok(root)
}

/// A chart on `root` with the plots' caption style, margins and label areas.
fn chart_on<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_area);
    builder
}

/// One mode's medians joined by a line (named in the legend), and its min–max as a bar at
/// each point; values divided by `scale`.
fn medians_and_ranges<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    mode: Mode,
    points: &[(f64, Summary)],
    scale: f64,
) -> Result<()> {
    let c = color(mode);
    chart
        .draw_series(
            LineSeries::new(
                points.iter().map(|(x, s)| (*x, s.median / scale)),
                c.stroke_width(2),
            )
            .point_size(3),
        )
        .map_err(err)?
        .label(mode.name())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|(x, s)| {
            PathElement::new(
                vec![(*x, s.min / scale), (*x, s.max / scale)],
                c.stroke_width(1),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// Draws the legend at `position` and writes the file.
fn finish<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    position: SeriesLabelPosition,
) -> Result<bool> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

pub fn draw_all(dir: &Path, r: &Results) -> Result<Vec<Plot>> {
    let mut plots = Vec::new();
    let s = &r.settings;
    let mut latency_cases = Vec::new();
    if s.keepalive_conns.contains(&32) {
        latency_cases.push((
            Case::outbound(Workload::KeepAlive, 32, 0),
            "keep-alive, 32 connections",
        ));
    }
    latency_cases.push((
        Case::outbound(Workload::Close, s.close_conns, 0),
        "new connection per request",
    ));
    for (case, label) in latency_cases {
        let file = format!("latency-{}-c{}.svg", case.workload.name(), case.conns);
        let title = format!("Latency percentiles by mode: {label} (wrk)");
        if latency(&dir.join(&file), r, case, &title)? {
            plots.push(Plot { file, title });
        }
    }
    let file = "cidr-scaling.svg".to_owned();
    let title = format!(
        "New connections/s vs excluded CIDRs ({} connections, Connection: close)",
        s.close_conns
    );
    if cidr_scaling(&dir.join(&file), r, &title)? {
        plots.push(Plot { file, title });
    }
    Ok(plots)
}

/// p50, p90, p99 per mode: medians joined by lines, min–max over rounds as bars.
fn latency(path: &Path, r: &Results, case: Case, title: &str) -> Result<bool> {
    let figures = [
        (Figure::P50Us, "p50"),
        (Figure::P90Us, "p90"),
        (Figure::P99Us, "p99"),
    ];
    let modes: Vec<Mode> = r
        .settings
        .modes
        .iter()
        .copied()
        .filter(|&m| r.has(m, case))
        .collect();
    if modes.is_empty() {
        return Ok(false);
    }
    let series: Vec<(Mode, Vec<Summary>)> = modes
        .iter()
        .filter_map(|&m| {
            let s: Option<Vec<Summary>> = figures
                .iter()
                .map(|(f, _)| Summary::of_series(&r.series(m, case, *f)))
                .collect();
            Some((m, s?))
        })
        .collect();
    // Log scale: p50 and p99 differ by orders of magnitude.
    let y_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.max / 1000.0))
        .fold(0.0, f64::max)
        * 1.5;
    let y_min = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.min / 1000.0))
        .fold(f64::INFINITY, f64::min)
        .max(0.001)
        / 1.5;
    let root = canvas(path)?;
    let mut chart = chart_on(&root, title, 60)
        .build_cartesian_2d(
            -0.4f64..2.4f64,
            (y_min..y_max.max(y_min * 10.0)).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..=2.0).contains(&i) {
                figures[i as usize].1.to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("latency (ms, log scale): median of rounds, bar = min–max")
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .draw()
        .map_err(err)?;
    let n = series.len() as f64;
    for (k, (mode, summaries)) in series.iter().enumerate() {
        // Spread the modes a little around each percentile so that the bars do not overlap.
        let dx = (k as f64 - (n - 1.0) / 2.0) * 0.08;
        let points: Vec<(f64, Summary)> = summaries
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64 + dx, *s))
            .collect();
        medians_and_ranges(&mut chart, *mode, &points, 1000.0)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
}

/// Connections/s against the number of excluded CIDRs (log scale; 0 drawn at the left edge),
/// per intercepting mode, with direct and explicit as horizontal references.
fn cidr_scaling(path: &Path, r: &Results, title: &str) -> Result<bool> {
    let s = &r.settings;
    let counts = &s.cidr_counts;
    if counts.len() < 2 {
        return Ok(false);
    }
    // log10 has no 0: the 0-CIDR point sits a decade left of the smallest other count.
    let smallest = counts
        .iter()
        .copied()
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(10) as f64;
    let zero_x = smallest / 10.0;
    let x_of = |n: u32| if n == 0 { zero_x } else { n as f64 };
    let x_max = counts.iter().copied().max().unwrap_or(10) as f64 * 2.0;
    let case = |cidrs| Case::outbound(Workload::Close, s.close_conns, cidrs);
    let lines: Vec<(Mode, Vec<(f64, Summary)>)> = s
        .modes
        .iter()
        .copied()
        .filter(|m| m.intercepts())
        .map(|m| {
            let pts = counts
                .iter()
                .filter_map(|&n| {
                    Summary::of_series(&r.series(m, case(n), Figure::RequestsPerS))
                        .map(|sum| (x_of(n), sum))
                })
                .collect();
            (m, pts)
        })
        .filter(|(_, pts): &(Mode, Vec<(f64, Summary)>)| !pts.is_empty())
        .collect();
    if lines.is_empty() {
        return Ok(false);
    }
    let references: Vec<(Mode, f64)> = [Mode::Direct, Mode::Explicit]
        .into_iter()
        .filter_map(|m| {
            Summary::of_series(&r.series(m, case(0), Figure::RequestsPerS)).map(|s| (m, s.median))
        })
        .collect();
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, s)| s.max))
        .chain(references.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max)
        * 1.15;

    let root = canvas(path)?;
    let mut chart = chart_on(&root, title, 70)
        .build_cartesian_2d((zero_x * 0.7..x_max).log_scale(), 0f64..y_max.max(1.0))
        .map_err(err)?;
    let zero_label = zero_x;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("excluded CIDRs (-x), log scale")
        .y_desc("connections/s: median of rounds, bar = min–max")
        .x_label_formatter(&move |x| {
            if (x / zero_label - 1.0).abs() < 0.01 {
                "0".to_owned()
            } else if *x >= 1.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (mode, value) in &references {
        let c = color(*mode);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(zero_x * 0.7, *value), (x_max, *value)],
                6,
                4,
                c.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("{} (no rules)", mode.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    for (mode, pts) in &lines {
        medians_and_ranges(&mut chart, *mode, pts, 1.0)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::LowerLeft)
}
