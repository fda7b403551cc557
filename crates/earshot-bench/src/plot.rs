//! SVG plots for the benchmark commands: recall vs queries/s (`earshot bench --plot`) and
//! latency percentiles vs request rate (`earshot bench-http --plot`).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One line of a plot: a label and its points in drawing order.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (900, 560);

/// recall@k (x, linear) against queries per second (y, log scale), one line per series.
pub fn recall_qps(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_lo = xs.fold(1.0f64, f64::min);
    let x_lo = ((x_lo - 0.02) * 50.0).floor() / 50.0;
    draw(
        path,
        title,
        series,
        (x_lo.max(0.0), 1.0),
        "recall@k",
        "queries/s (log)",
    )
}

/// Achieved request rate (x) against latency in ms (y, log scale), one line per percentile.
pub fn latency(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let x_hi = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    draw(
        path,
        title,
        series,
        (0.0, x_hi * 1.05),
        "requests/s",
        "latency ms (log)",
    )
}

fn draw(
    path: &Path,
    title: &str,
    series: &[Series],
    x: (f64, f64),
    x_desc: &str,
    y_desc: &str,
) -> anyhow::Result<()> {
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let y_lo = ys().filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
    let y_hi = ys().fold(0.0f64, f64::max);
    anyhow::ensure!(
        y_lo.is_finite() && y_hi > 0.0,
        "nothing to plot: no positive values"
    );
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let draw_err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x.0..x.1, (y_lo * 0.8..y_hi * 1.25).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&|v| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()
        .map_err(draw_err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(draw_err)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
