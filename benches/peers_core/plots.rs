//! SVG plots of a run (plotters): latency by percentile in scenario 7,
//! throughput by concurrency in scenario 1, and each pod's share of the
//! answers over time in scenarios 3 and 4.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{LoadRow, Report, ShareSeries};

/// Line colours, in the order of the rows.
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

type Result<T> = std::result::Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Writes every plot the report has data for into `dir`; the paths written.
pub fn write_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut written = Vec::new();
    if let Some(section) = &report.pauses {
        let path = dir.join("pauses_latency.svg");
        let title = format!(
            "7. Pauses on every pod: latency by percentile, open loop at {:.0} req/s",
            section.rate
        );
        let curves: Vec<(&str, &[(f64, f64)])> = section
            .rows
            .iter()
            .filter_map(|r| Some((r.contender.as_str(), &r.summary.as_ref()?.by_percentile[..])))
            .collect();
        latency_by_percentile(&path, &title, &curves)?;
        written.push(path);
    }
    for protocol in ["http", "h2c", "grpc"] {
        let rows: Vec<&LoadRow> = report
            .healthy
            .iter()
            .filter(|r| r.protocol == protocol && r.summary.is_some())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let path = dir.join(format!("healthy_{protocol}.svg"));
        throughput(&path, protocol, &rows)?;
        written.push(path);
    }
    let kills: Vec<(&str, &ShareSeries)> = report
        .pod_killed
        .iter()
        .filter_map(|r| Some((r.contender.as_str(), r.shares_over_time.as_ref()?)))
        .collect();
    if !kills.is_empty() {
        let path = dir.join("kill_shares.svg");
        shares(
            &path,
            "3. A pod killed (the last, dashed line: the kill): each pod's share per 250 ms",
            &kills,
        )?;
        written.push(path);
    }
    let ups: Vec<(&str, &ShareSeries)> = report
        .scale_up
        .iter()
        .filter_map(|r| Some((r.contender.as_str(), r.shares_over_time.as_ref()?)))
        .collect();
    if !ups.is_empty() {
        let path = dir.join("scale_up_shares.svg");
        shares(
            &path,
            "4. Scale-up 3 → 4 pods (dashed line: the DNS change): each pod's share per 250 ms",
            &ups,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Percentile labels on an axis in "nines".
fn nines_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    match x {
        x if *x <= 0.0 => "p0".to_owned(),
        x if (x - x.round()).abs() < 1e-9 => format!("p{}", trim(p)),
        _ => format!("p{}", trim((p * 10.0).round() / 10.0)),
    }
}

fn trim(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn latency_by_percentile(path: &Path, title: &str, curves: &[(&str, &[(f64, f64)])]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_x = curves
        .iter()
        .filter_map(|(_, c)| c.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.5;
    let min_y = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .fold(max_y, f64::min)
        .max(0.01)
        / 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, (min_y..max_y).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile (the last point of each line: the max)")
        .y_desc("latency from the intended start, ms (log)")
        .x_labels(max_x.ceil() as usize + 1)
        .x_label_formatter(&nines_label)
        .y_label_formatter(&|y| trim(*y))
        .draw()
        .map_err(err)?;
    for (i, (label, curve)) in curves.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                curve.iter().map(|&(x, y)| (x, y.max(min_y))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn throughput(path: &Path, protocol: &str, rows: &[&LoadRow]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut names: Vec<&str> = Vec::new();
    let mut levels: Vec<usize> = Vec::new();
    for r in rows {
        if !names.contains(&r.contender.as_str()) {
            names.push(&r.contender);
        }
        if !levels.contains(&r.concurrency) {
            levels.push(r.concurrency);
        }
    }
    levels.sort_unstable();
    let max_y = rows
        .iter()
        .filter_map(|r| r.summary.as_ref().map(|s| s.rps))
        .fold(1.0, f64::max)
        * 1.1;
    let last = levels.len().saturating_sub(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("1. All pods healthy ({protocol}): requests/s by requests in flight"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2..last + 0.2, 0.0..max_y)
        .map_err(err)?;
    let level_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            levels
                .get(i as usize)
                .map_or(String::new(), |c| c.to_string())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("requests in flight (closed loop)")
        .y_desc("requests/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(levels.len() * 2 + 3)
        .x_label_formatter(&level_label)
        .draw()
        .map_err(err)?;
    for (i, name) in names.iter().enumerate() {
        let c = color(i);
        let points: Vec<(f64, f64)> = levels
            .iter()
            .enumerate()
            .filter_map(|(x, level)| {
                let row = rows
                    .iter()
                    .find(|r| r.contender == *name && r.concurrency == *level)?;
                Some((x as f64, row.summary.as_ref()?.rps))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn shares(path: &Path, title: &str, series: &[(&str, &ShareSeries)]) -> Result<()> {
    let cols = 2;
    let rows = series.len().div_ceil(cols);
    let root = SVGBackend::new(path, (1000, 60 + 230 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let panels = root.split_evenly((rows, cols));
    for ((name, s), panel) in series.iter().zip(panels.iter()) {
        share_panel(panel, name, s)?;
    }
    root.present().map_err(err)
}

fn share_panel(area: &DrawingArea<SVGBackend, Shift>, name: &str, s: &ShareSeries) -> Result<()> {
    let max_x = s.points.last().map_or(1.0, |p| p.0).max(s.event_s);
    let pods = s.points.iter().map(|p| p.1.len()).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..max_x, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_labels(5)
        .y_label_formatter(&|y| format!("{:.0} %", y * 100.0))
        .draw()
        .map_err(err)?;
    for pod in 0..pods {
        let c = color(pod + 1);
        chart
            .draw_series(LineSeries::new(
                s.points
                    .iter()
                    .map(|(t, shares)| (*t, shares.get(pod).copied().unwrap_or(0.0))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("pod {}", pod + 1))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2)));
    }
    chart
        .draw_series(DashedLineSeries::new(
            vec![(s.event_s, 0.0), (s.event_s, 1.0)],
            4,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 11))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
