//! `jwl bench --plot FILE.png`: saga latency (p50 and p99 of the dispatched orders) against the
//! sagas/s achieved, one point per step, drawn with `plotters` into an RGB buffer and written
//! as PNG with the `png` crate. The labels use DejaVu Sans Mono, embedded (see
//! `font/LICENSE`: the Bitstream Vera licence, DejaVu's changes in the public domain).

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;

use super::figures::StepReport;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;
const FONT: &[u8] = include_bytes!("font/DejaVuSansMono.ttf");
/// The family name the chart's text asks for.
const FAMILY: &str = "sans-serif";

/// One step's point: achieved sagas/s, p50 and p99 in ms, offered rate.
struct Point {
    sagas_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    offered: u32,
}

/// Draws the steps that have a latency, joined in the order of their offered rates (an
/// overloaded system's curve bends back), and writes the PNG to `path`.
pub fn draw(steps: &[StepReport], path: &Path) -> anyhow::Result<()> {
    let mut points: Vec<Point> = steps
        .iter()
        .filter_map(|step| {
            let latency = step.saga.end_to_end_latency.as_ref()?;
            Some(Point {
                sagas_per_second: step.saga.completed_per_second,
                p50_ms: latency.p50_ms,
                p99_ms: latency.p99_ms,
                offered: step.setup.rate_per_second,
            })
        })
        .collect();
    points.sort_by_key(|p| p.offered);
    let pixels = render(&points)?;
    write_png(&pixels, path)
}

/// The chart as RGB bytes, `WIDTH` × `HEIGHT`.
fn render(points: &[Point]) -> anyhow::Result<Vec<u8>> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded font could not be loaded"))?;
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let x_max = points
            .iter()
            .map(|p| p.sagas_per_second)
            .fold(1.0, f64::max)
            * 1.15;
        // Latency spans decades once the system falls behind: a log scale.
        let y_max = points.iter().map(|p| p.p99_ms).fold(1.0, f64::max) * 2.0;
        let y_min = points
            .iter()
            .map(|p| p.p50_ms)
            .fold(y_max / 4.0, f64::min)
            .max(0.1)
            / 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption("jwl bench: saga latency against throughput", (FAMILY, 24))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("sagas completed per second (achieved)")
            .y_desc("POST → dispatched, ms (log scale)")
            .y_label_formatter(&|ms| format!("{ms:.0}"))
            .axis_desc_style((FAMILY, 16))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_error)?;
        for (name, color, value) in [
            ("p50", BLUE, (|p: &Point| p.p50_ms) as fn(&Point) -> f64),
            ("p99", RED, |p: &Point| p.p99_ms),
        ] {
            let series: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.sagas_per_second, value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    series
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
                )
                .map_err(plot_error)?;
        }
        chart
            .draw_series(points.iter().map(|p| {
                EmptyElement::at((p.sagas_per_second, p.p99_ms))
                    + Text::new(
                        format!("{}/s offered", p.offered),
                        (8, -18),
                        (FAMILY, 13).into_font().color(&BLACK),
                    )
            }))
            .map_err(plot_error)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(pixels)
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {error}")
}

fn write_png(pixels: &[u8], path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(pixels)
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_a_png_with_the_points_drawn() {
        let points = [
            Point {
                sagas_per_second: 48.0,
                p50_ms: 120.0,
                p99_ms: 300.0,
                offered: 50,
            },
            Point {
                sagas_per_second: 95.0,
                p50_ms: 180.0,
                p99_ms: 900.0,
                offered: 100,
            },
        ];
        let pixels = render(&points).unwrap();
        assert_eq!(pixels.len(), (WIDTH * HEIGHT * 3) as usize);
        // Red (p99) and blue (p50) were drawn on the white background.
        let has = |rgb: [u8; 3]| pixels.chunks_exact(3).any(|p| p == rgb);
        assert!(has([255, 0, 0]) && has([0, 0, 255]));
        let dark = pixels
            .chunks_exact(3)
            .filter(|p| p[0] < 80 && p[1] < 80 && p[2] < 80)
            .count();
        assert!(dark > 1000, "text and axes are drawn: {dark} dark pixels");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        write_png(&pixels, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[..8], [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
        assert!(bytes.len() > 5_000, "{}", bytes.len());
    }
}
