//! The SVG plots of `pbkv clock experiment`.

use clockd::experiment::{AsymmetryPoint, Row, Summary};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const SIZE: (u32, u32) = (960, 540);
const BAND: RGBColor = RGBColor(120, 160, 230);
const LINE: RGBColor = RGBColor(20, 60, 160);
const RAW: RGBColor = RGBColor(200, 120, 40);
const TRUTH: RGBColor = RGBColor(30, 140, 60);

fn error<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

/// A range holding `values` with a margin; never empty.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for value in values.filter(|v| v.is_finite()) {
        lo = lo.min(value);
        hi = hi.max(value);
    }
    if !lo.is_finite() {
        return (-1.0, 1.0);
    }
    let margin = ((hi - lo) * 0.05).max(1e-9);
    (lo - margin, hi + margin)
}

/// A band polygon: `upper` left to right, then `lower` back.
fn band(points: &[(f64, f64, f64)]) -> Vec<(f64, f64)> {
    let mut polygon: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.2)).collect();
    polygon.extend(points.iter().rev().map(|p| (p.0, p.1)));
    polygon
}

fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// A chart on the plots' common frame.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What differs between the plots' frames.
struct Axes<'t> {
    title: &'t str,
    x: (f64, f64),
    y: (f64, f64),
    x_desc: &'t str,
    y_desc: &'t str,
    legend: SeriesLabelPosition,
}

/// Draws the frame (caption, mesh), lets `draw` add the series, then the legend.
fn render(
    axes: Axes<'_>,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), String>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(error("fill"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)
            .map_err(error("chart"))?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .draw()
            .map_err(error("mesh"))?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .position(axes.legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(error("legend"))?;
        root.present().map_err(error("present"))?;
    }
    Ok(svg)
}

/// Fills the band between `(x, lower, upper)` points, labelled for the legend.
fn draw_band(
    chart: &mut Chart<'_, '_>,
    points: &[(f64, f64, f64)],
    label: &str,
) -> Result<(), String> {
    chart
        .draw_series(std::iter::once(Polygon::new(band(points), BAND.mix(0.35))))
        .map_err(error("band"))?
        .label(label)
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BAND.mix(0.35).filled()));
    Ok(())
}

/// Offset error of the current estimate over time, with its ±bound band; raw samples'
/// errors as dots (those beyond the band's scale are clipped).
///
/// # Errors
/// A drawing error, as text.
pub fn offset_svg(rows: &[Row], mode: &str) -> Result<String, String> {
    let us = |ns: f64| ns / 1e3;
    let points: Vec<(f64, f64, f64, f64)> = rows
        .iter()
        .map(|row| {
            let x = row.elapsed_ns as f64 * 1e-9;
            let bound = us(row.record.estimate.bound_ns);
            (x, us(row.error_ns), -bound, bound)
        })
        .collect();
    // The scale follows the estimate's bound (its 99th percentile), not the raw outliers.
    let mut bounds: Vec<f64> = points.iter().map(|p| p.3).collect();
    bounds.sort_by(f64::total_cmp);
    let scale = clockd::experiment::percentile(&bounds, 0.99).max(1.0) * 1.15;
    let title = format!("Offset error of the current estimate, with its bound ({mode})");
    let axes = Axes {
        title: &title,
        x: span(points.iter().map(|p| p.0)),
        y: (-scale, scale),
        x_desc: "elapsed (s, reference time)",
        y_desc: "estimate − truth (µs)",
        legend: SeriesLabelPosition::UpperRight,
    };
    render(axes, |chart| {
        let bands: Vec<(f64, f64, f64)> = points.iter().map(|p| (p.0, p.2, p.3)).collect();
        draw_band(chart, &bands, "± error bound")?;
        chart
            .draw_series(
                rows.iter()
                    .map(|row| (row.elapsed_ns as f64 * 1e-9, us(row.raw_error_ns)))
                    .filter(|p| p.1.abs() <= scale)
                    .map(|p| Circle::new(p, 1, RAW.mix(0.6).filled())),
            )
            .map_err(error("raw"))?
            .label("raw sample θ̂ − truth")
            .legend(|(x, y)| Circle::new((x + 10, y), 3, RAW.filled()));
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), LINE))
            .map_err(error("line"))?
            .label("current estimate − truth")
            .legend(legend_line(LINE));
        Ok(())
    })
}

/// The drift estimate over time with its 95 % confidence band, converging on the truth.
///
/// # Errors
/// A drawing error, as text.
pub fn drift_svg(rows: &[Row], summary: &Summary, mode: &str) -> Result<String, String> {
    let truth = summary.true_drift_ppm;
    let points: Vec<(f64, f64, f64, f64)> = rows
        .iter()
        .filter_map(|row| {
            let drift = row.record.drift?;
            let ci = drift.ci95_ppm?;
            let x = row.elapsed_ns as f64 * 1e-9;
            Some((x, drift.ppm, drift.ppm - ci, drift.ppm + ci))
        })
        .collect();
    let (x0, x1) = span(rows.iter().map(|row| row.elapsed_ns as f64 * 1e-9));
    // Wide enough for the final interval and error several times over, and ±0.25 ppm.
    let final_ci = summary.drift_ci95_ppm.unwrap_or(1.0);
    let final_error = summary.drift_error_ppm.unwrap_or(1.0).abs();
    let half = (6.0 * final_ci).max(3.0 * final_error).max(0.25);
    let (y0, y1) = (truth - half, truth + half);
    let title = format!("Drift estimate with its 95 % interval ({mode})");
    let axes = Axes {
        title: &title,
        x: (x0, x1),
        y: (y0, y1),
        x_desc: "elapsed (s, reference time)",
        y_desc: "drift (ppm, + = fast)",
        legend: SeriesLabelPosition::UpperRight,
    };
    render(axes, |chart| {
        let clipped: Vec<(f64, f64, f64)> = points
            .iter()
            .map(|p| (p.0, p.2.max(y0), p.3.min(y1)))
            .collect();
        draw_band(chart, &clipped, "95 % confidence interval")?;
        chart
            .draw_series(LineSeries::new(
                [(x0, truth), (x1, truth)],
                TRUTH.stroke_width(2),
            ))
            .map_err(error("truth"))?
            .label(format!("injected drift {truth:+} ppm"))
            .legend(legend_line(TRUTH));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1.clamp(y0, y1))),
                LINE,
            ))
            .map_err(error("line"))?
            .label("estimate ρ̂")
            .legend(legend_line(LINE));
        Ok(())
    })
}

/// Median offset error against the injected one-way asymmetry, with the a/2 line no
/// filter can get past, and the median bound.
///
/// # Errors
/// A drawing error, as text.
pub fn asymmetry_svg(sweep: &[AsymmetryPoint]) -> Result<String, String> {
    let us = |ns: f64| ns / 1e3;
    let (x0, x1) = span(sweep.iter().map(|p| us(p.asymmetry_ns as f64)));
    let axes = Axes {
        title: "Offset error against one-way asymmetry a (simulated)",
        x: (x0, x1),
        y: span(sweep.iter().flat_map(|p| {
            let bound = us(p.estimate.p50_bound_ns);
            [us(p.estimate.median_ns), us(p.raw.median_ns), bound, -bound]
        })),
        x_desc: "a: extra request-path delay (µs; negative = reply path)",
        y_desc: "median error (µs)",
        legend: SeriesLabelPosition::UpperLeft,
    };
    render(axes, |chart| {
        let bands: Vec<(f64, f64, f64)> = sweep
            .iter()
            .map(|p| {
                let bound = us(p.estimate.p50_bound_ns);
                (us(p.asymmetry_ns as f64), -bound, bound)
            })
            .collect();
        draw_band(chart, &bands, "± median bound of the estimate")?;
        chart
            .draw_series(LineSeries::new(
                [(x0, x0 / 2.0), (x1, x1 / 2.0)],
                TRUTH.stroke_width(2),
            ))
            .map_err(error("limit"))?
            .label("a/2: the bias no filter can remove")
            .legend(legend_line(TRUTH));
        chart
            .draw_series(sweep.iter().map(|p| {
                Circle::new(
                    (us(p.asymmetry_ns as f64), us(p.raw.median_ns)),
                    4,
                    RAW.filled(),
                )
            }))
            .map_err(error("raw"))?
            .label("raw samples (median)")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, RAW.filled()));
        chart
            .draw_series(LineSeries::new(
                sweep
                    .iter()
                    .map(|p| (us(p.asymmetry_ns as f64), us(p.estimate.median_ns))),
                LINE.stroke_width(2),
            ))
            .map_err(error("line"))?
            .label("current estimate (median)")
            .legend(legend_line(LINE));
        Ok(())
    })
}
