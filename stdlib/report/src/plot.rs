//! The figures of the evaluate stage, each written as SVG and PNG with `plotters`:
//!
//! - `class-counts`: training images per class, head to tail, coloured by group;
//! - `per-class-accuracy`: accuracy of each class (trial 0) against classes sorted by training
//!   count, one line per head (the ten best heads by top-1 when there are more);
//! - `logits-magnitude-rsd`: normalised Logits Magnitude and RSD by class group, grouped bars per
//!   head (the paper's Fig. 3, with the many/medium/few groups as the class blocks);
//! - `sweep-<name>`: All/Many/Medium/Few accuracy against the swept value of a one-parameter sweep
//!   (Fig. 4); `sweep-<name>-heatmap`: top-1 over the grid of a two-parameter sweep (Fig. 5).
//!
//! Text is drawn with DejaVu Sans embedded in the binary (`ab_glyph`), so plotting needs no
//! system fonts; SVGs name the family `sans-serif` and let the viewer pick its own.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::derived::head_to_tail;
use lortflow_data::dataset::{Group, GroupMeans};

/// What the plots need of one evaluated head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPlot {
    /// The head's name.
    pub name: String,
    /// Its place in a sweep, when it is a sweep member.
    pub sweep: Option<SweepPoint>,
    /// Best top-1 accuracy over trials (fraction).
    pub top1: f64,
    /// Best many/medium/few accuracy over trials (fractions).
    pub groups: GroupMeans,
    /// Number of trials.
    pub trials: usize,
    /// Per-class accuracy of trial 0 (fractions).
    pub per_class_accuracy: Vec<Option<f64>>,
    /// Training images per class.
    pub class_counts: Vec<usize>,
    /// The group of each class.
    pub class_groups: Vec<Group>,
    /// Normalised Logits Magnitude by group, when computed.
    pub magnitude: Option<GroupMeans>,
    /// RSD by group, when computed.
    pub rsd: Option<GroupMeans>,
}

/// The swept parameters that distinguish a head of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// The sweep (or the declared stage the parameters were swept upstream of).
    pub sweep: String,
    /// `(parameter, value)` as in the head's name `sweep[param=value,…]`.
    pub params: Vec<(String, String)>,
}

/// A figure that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw a plot: {0}")]
pub struct PlotError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        PlotError(e.to_string())
    }
}

/// Most series in one line or bar chart; beyond that a legend is unreadable.
const MAX_SERIES: usize = 10;
const FONT: &str = "sans-serif";
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GROUP_COLORS: [RGBColor; 3] = [PALETTE[0], PALETTE[1], PALETTE[3]];
const GROUP_NAMES: [&str; 3] = ["many", "medium", "few"];
const LEGEND_WIDTH: u32 = 300;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; a failure would only mean text-less plots, reported by
        // plotters when drawing.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        );
    });
}

/// Writes every figure that the heads support into `dir/plots/`; returns the files written,
/// relative to `dir` (`plots/…`).
pub fn write_plots(dir: &Path, heads: &[HeadPlot]) -> Result<Vec<String>, PlotError> {
    register_font();
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| PlotError(e.to_string()))?;
    let mut written = Vec::new();
    if heads.is_empty() {
        return Ok(written);
    }
    let mut datasets: Vec<&HeadPlot> = Vec::new();
    for h in heads {
        if !datasets.iter().any(|d| d.class_counts == h.class_counts) {
            datasets.push(h);
        }
    }
    for (i, d) in datasets.iter().enumerate() {
        let stem = if i == 0 {
            "class-counts".to_string()
        } else {
            format!("class-counts-{}", i + 1)
        };
        save(&ClassCounts(d), &plots, &stem, &mut written)?;
    }
    let (shown, title_note) = top_heads(heads);
    save(
        &PerClassAccuracy {
            heads: &shown,
            note: &title_note,
        },
        &plots,
        "per-class-accuracy",
        &mut written,
    )?;
    if shown
        .iter()
        .any(|h| h.magnitude.is_some() || h.rsd.is_some())
    {
        save(
            &MagnitudeRsd {
                heads: &shown,
                note: &title_note,
            },
            &plots,
            "logits-magnitude-rsd",
            &mut written,
        )?;
    }
    for sweep in sweeps(heads) {
        let stem = format!("sweep-{}", slug(&sweep.name));
        match sweep.params.len() {
            1 => save(&SweepLines(&sweep), &plots, &stem, &mut written)?,
            2 => save(
                &SweepHeatmap(&sweep),
                &plots,
                &format!("{stem}-heatmap"),
                &mut written,
            )?,
            _ => {}
        }
    }
    Ok(written)
}

/// The heads of a line or bar chart: all, or the best [`MAX_SERIES`] by top-1 (in declaration
/// order), with a note for the title.
fn top_heads(heads: &[HeadPlot]) -> (Vec<&HeadPlot>, String) {
    if heads.len() <= MAX_SERIES {
        return (heads.iter().collect(), String::new());
    }
    let mut ranked: Vec<usize> = (0..heads.len()).collect();
    ranked.sort_by(|a, b| heads[*b].top1.total_cmp(&heads[*a].top1));
    ranked.truncate(MAX_SERIES);
    ranked.sort_unstable();
    (
        ranked.iter().map(|i| &heads[*i]).collect(),
        format!(" (best {MAX_SERIES} of {} heads by top-1)", heads.len()),
    )
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// One sweep: its parameters, their values in plot order and the members.
struct Sweep<'a> {
    name: String,
    params: Vec<String>,
    /// The values of each parameter: numerically sorted when all are numbers, else first seen.
    values: Vec<Vec<String>>,
    members: Vec<&'a HeadPlot>,
}

impl Sweep<'_> {
    fn member(&self, point: &[&str]) -> Option<&HeadPlot> {
        self.members.iter().copied().find(|h| {
            h.sweep.as_ref().is_some_and(|s| {
                s.params
                    .iter()
                    .zip(point)
                    .all(|((_, v), p)| v.as_str() == *p)
            })
        })
    }

    fn trials(&self) -> usize {
        self.members.iter().map(|h| h.trials).max().unwrap_or(1)
    }
}

/// The sweeps with at least two members, grouped by sweep name and parameter names.
fn sweeps(heads: &[HeadPlot]) -> Vec<Sweep<'_>> {
    let mut out: Vec<Sweep<'_>> = Vec::new();
    for h in heads {
        let Some(point) = &h.sweep else { continue };
        let params: Vec<String> = point.params.iter().map(|(k, _)| k.clone()).collect();
        match out
            .iter_mut()
            .find(|s| s.name == point.sweep && s.params == params)
        {
            Some(s) => s.members.push(h),
            None => out.push(Sweep {
                name: point.sweep.clone(),
                params,
                values: Vec::new(),
                members: vec![h],
            }),
        }
    }
    out.retain(|s| s.members.len() >= 2);
    for s in &mut out {
        s.values = (0..s.params.len())
            .map(|p| {
                let mut values: Vec<String> = Vec::new();
                for m in &s.members {
                    let v = &m.sweep.as_ref().expect("a sweep member").params[p].1;
                    if !values.contains(v) {
                        values.push(v.clone());
                    }
                }
                let numbers: Option<Vec<f64>> =
                    values.iter().map(|v| v.parse::<f64>().ok()).collect();
                if let Some(numbers) = numbers {
                    let mut pairs: Vec<(f64, String)> = numbers.into_iter().zip(values).collect();
                    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
                    values = pairs.into_iter().map(|(_, v)| v).collect();
                }
                values
            })
            .collect();
    }
    out
}

/// A categorical axis of `n` slots: values are `f64` positions, category `i` centred on `i` with
/// a tick and label there only (plotters' numeric axes would put ticks between categories).
#[derive(Debug, Clone, Copy)]
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value + 0.5) / self.0.max(1) as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

trait Figure {
    fn size(&self) -> (u32, u32) {
        (1200, 700)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError>;
}

fn save(
    figure: &impl Figure,
    dir: &Path,
    stem: &str,
    written: &mut Vec<String>,
) -> Result<(), PlotError> {
    let size = figure.size();
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()?;
    }
    let png = dir.join(format!("{stem}.png"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()?;
    }
    written.push(format!("plots/{stem}.svg"));
    written.push(format!("plots/{stem}.png"));
    Ok(())
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

fn title<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
) -> Result<DrawingArea<DB, Shift>, PlotError> {
    Ok(root.titled(text, font(26))?.margin(10, 0, 0, 0))
}

enum Swatch {
    Line,
    Box,
}

/// A legend in its own area to the right of the chart, so it never hides data.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor)],
    swatch: Swatch,
) -> Result<(), PlotError> {
    let style = font(16).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, color)) in entries.iter().enumerate() {
        let y = 60 + 30 * i as i32;
        match swatch {
            Swatch::Line => {
                area.draw(&PathElement::new(
                    vec![(10, y), (40, y)],
                    color.stroke_width(3),
                ))?;
                area.draw(&Circle::new((25, y), 4, color.filled()))?;
            }
            Swatch::Box => {
                area.draw(&Rectangle::new([(12, y - 8), (38, y + 8)], color.filled()))?
            }
        }
        area.draw(&Text::new(shorten(label, 28), (48, y), style.clone()))?;
    }
    Ok(())
}

/// At most `max` characters, cut in the middle: sweep members differ at the end of their names
/// (`lr-wd[lr=0.1,weight-decay=0]`), so both ends are kept.
fn shorten(label: &str, max: usize) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= max {
        return label.to_string();
    }
    let head = (max - 1) / 3;
    let tail = max - 1 - head;
    let mut s: String = chars[..head].iter().collect();
    s.push('…');
    s.extend(&chars[chars.len() - tail..]);
    s
}

fn split_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    let width = area.dim_in_pixel().0;
    area.split_horizontally(width.saturating_sub(LEGEND_WIDTH))
}

/// A y range around the data (percent), padded and clipped to [0, 100].
fn percent_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..100.0;
    }
    let pad = ((hi - lo) * 0.1).max(2.0);
    (lo - pad).max(0.0)..(hi + pad).min(100.0)
}

/// Enough decimals to tell the ticks of an axis spanning `span` apart (RSDs can be tiny).
fn decimals_for(span: f64) -> usize {
    // Ticks step by 1, 2 or 5 × 10^n with n ≥ log10(span) − 1.
    (1.0 - span.log10().floor()).clamp(0.0, 8.0) as usize
}

/// One number of a head (a line of the sweep plot).
type PickValue = fn(&HeadPlot) -> Option<f64>;
/// One by-group metric of a head (a panel of the Fig. 3 plot).
type PickGroups = fn(&HeadPlot) -> Option<GroupMeans>;

/// At most 12 ticks on a class-rank axis: plotters then steps by whole classes (1, 2, 5, 10, …).
fn rank_ticks(k: usize) -> usize {
    k.clamp(1, 12)
}

/// Class ranks are whole numbers; any other tick stays unlabelled.
fn rank_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 && *x >= 0.0 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn group_value(means: &GroupMeans, g: usize) -> Option<f64> {
    [means.many, means.medium, means.few][g]
}

struct ClassCounts<'a>(&'a HeadPlot);

impl Figure for ClassCounts<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let counts = &self.0.class_counts;
        let order = head_to_tail(counts);
        let (max, min) = (
            counts.iter().copied().max().unwrap_or(1),
            counts.iter().copied().min().unwrap_or(0),
        );
        let ratio = if min > 0 {
            format!(", imbalance ratio {:.1}", max as f64 / min as f64)
        } else {
            String::new()
        };
        let area = title(
            root,
            &format!(
                "Training images per class ({} classes{ratio})",
                counts.len()
            ),
        )?;
        let (chart_area, legend_area) = split_legend(&area);
        let k = counts.len() as f64;
        let ticks = rank_ticks(counts.len());
        let mut chart = ChartBuilder::on(&chart_area)
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5..k - 0.5, 0.0..max as f64 * 1.05)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("classes sorted by training count (head → tail)")
            .y_desc("training images")
            .max_light_lines(1)
            .axis_desc_style(font(20))
            .label_style(font(16))
            .x_labels(ticks)
            .x_label_formatter(&rank_label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        let width = 0.4;
        chart.draw_series(order.iter().enumerate().map(|(rank, &c)| {
            let g = self.0.class_groups.get(c).map_or(0, |g| *g as usize);
            let x = rank as f64;
            Rectangle::new(
                [(x - width, 0.0), (x + width, counts[c] as f64)],
                GROUP_COLORS[g].filled(),
            )
        }))?;
        let entries: Vec<(String, RGBColor)> = (0..3)
            .map(|g| {
                let n = self
                    .0
                    .class_groups
                    .iter()
                    .filter(|x| **x as usize == g)
                    .count();
                (format!("{} ({n} classes)", GROUP_NAMES[g]), GROUP_COLORS[g])
            })
            .collect();
        legend(&legend_area, &entries, Swatch::Box)
    }
}

struct PerClassAccuracy<'a> {
    heads: &'a [&'a HeadPlot],
    note: &'a str,
}

impl Figure for PerClassAccuracy<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let area = title(
            root,
            &format!("Per-class test accuracy, trial 0{}", self.note),
        )?;
        let (chart_area, legend_area) = split_legend(&area);
        let first = self.heads[0];
        let order = head_to_tail(&first.class_counts);
        let k = order.len() as f64;
        let ticks = rank_ticks(order.len());
        let mut chart = ChartBuilder::on(&chart_area)
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..k - 0.5, 0.0..105.0)?;
        chart
            .configure_mesh()
            .x_desc("classes sorted by training count (head → tail)")
            .y_desc("accuracy (%)")
            .max_light_lines(1)
            .axis_desc_style(font(20))
            .label_style(font(16))
            .x_labels(ticks)
            .x_label_formatter(&rank_label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        // Dashed boundaries between the groups, labelled at the top.
        let mut previous = None;
        for (rank, &c) in order.iter().enumerate() {
            let g = first.class_groups.get(c).copied();
            if previous.is_some() && g != previous {
                let x = rank as f64 - 0.5;
                chart.draw_series(DashedLineSeries::new(
                    [(x, 0.0), (x, 105.0)],
                    6,
                    4,
                    BLACK.mix(0.5).stroke_width(1),
                ))?;
            }
            if g != previous {
                let label = g.map_or("", |g| GROUP_NAMES[g as usize]);
                chart.draw_series([Text::new(
                    label.to_string(),
                    (rank as f64 - 0.4, 103.0),
                    font(15).pos(Pos::new(HPos::Left, VPos::Center)),
                )])?;
            }
            previous = g;
        }
        let markers = order.len() <= 40;
        let mut entries = Vec::new();
        for (i, h) in self.heads.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = order
                .iter()
                .enumerate()
                .filter_map(|(rank, &c)| {
                    Some((rank as f64, 100.0 * (*h.per_class_accuracy.get(c)?)?))
                })
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
            if markers {
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
            entries.push((h.name.clone(), color));
        }
        legend(&legend_area, &entries, Swatch::Line)
    }
}

struct MagnitudeRsd<'a> {
    heads: &'a [&'a HeadPlot],
    note: &'a str,
}

impl Figure for MagnitudeRsd<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 650)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let area = title(
            root,
            &format!("Logits Magnitude and RSD by class group{}", self.note),
        )?;
        let (charts, legend_area) = split_legend(&area);
        let mut panels: Vec<(&str, &str, PickGroups)> = Vec::new();
        if self.heads.iter().any(|h| h.magnitude.is_some()) {
            panels.push(("Logits Magnitude, normalised", "L / mean_k |L_k|", |h| {
                h.magnitude
            }));
        }
        if self.heads.iter().any(|h| h.rsd.is_some()) {
            panels.push(("Regularized Std. Deviation", "RSD = σ / L", |h| h.rsd));
        }
        let n = self.heads.len() as f64;
        for ((name, desc, pick), panel) in panels.iter().zip(charts.split_evenly((1, panels.len())))
        {
            let values: Vec<f64> = self
                .heads
                .iter()
                .filter_map(|h| pick(h))
                .flat_map(|m| [m.many, m.medium, m.few])
                .flatten()
                .collect();
            let hi = values.iter().copied().fold(0.0f64, f64::max);
            let lo = values.iter().copied().fold(0.0f64, f64::min);
            let span = (hi - lo).max(1e-9);
            let decimals = decimals_for(span);
            let mut chart = ChartBuilder::on(&panel)
                .caption(*name, font(20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(90)
                .build_cartesian_2d(Categories(3), (lo - 0.05 * span)..(hi + 0.1 * span))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("class group")
                .y_desc(*desc)
                .max_light_lines(1)
                .axis_desc_style(font(18))
                .label_style(font(16))
                .x_label_formatter(&|x| {
                    GROUP_NAMES
                        .get(x.round() as usize)
                        .map_or(String::new(), |s| s.to_string())
                })
                .y_label_formatter(&|y| format!("{y:.decimals$}"))
                .draw()?;
            let width = 0.8 / n;
            for (i, h) in self.heads.iter().enumerate() {
                let Some(means) = pick(h) else { continue };
                let color = PALETTE[i % PALETTE.len()];
                chart.draw_series((0..3).filter_map(|g| {
                    let v = group_value(&means, g)?;
                    let x0 = g as f64 - 0.4 + i as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, v)],
                        color.filled(),
                    ))
                }))?;
            }
        }
        let entries: Vec<(String, RGBColor)> = self
            .heads
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), PALETTE[i % PALETTE.len()]))
            .collect();
        legend(&legend_area, &entries, Swatch::Box)
    }
}

struct SweepLines<'a>(&'a Sweep<'a>);

impl Figure for SweepLines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let sweep = self.0;
        let param = &sweep.params[0];
        let values = &sweep.values[0];
        let trials = sweep.trials();
        let best = if trials > 1 {
            format!(", best of {trials} trials")
        } else {
            String::new()
        };
        let area = title(
            root,
            &format!("Accuracy against {param} (sweep `{}`{best})", sweep.name),
        )?;
        let (chart_area, legend_area) = split_legend(&area);
        let series: [(&str, RGBColor, PickValue); 4] = [
            ("All", BLACK, |h| Some(h.top1)),
            ("Many", GROUP_COLORS[0], |h| h.groups.many),
            ("Medium", GROUP_COLORS[1], |h| h.groups.medium),
            ("Few", GROUP_COLORS[2], |h| h.groups.few),
        ];
        let points = |pick: PickValue| -> Vec<(f64, f64)> {
            values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Some((i as f64, 100.0 * pick(sweep.member(&[v.as_str()])?)?)))
                .collect()
        };
        let y = percent_range(series.iter().flat_map(|s| points(s.2)).map(|p| p.1));
        let mut chart = ChartBuilder::on(&chart_area)
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(Categories(values.len()), y)?;
        chart
            .configure_mesh()
            .x_desc(param.as_str())
            .y_desc("top-1 accuracy (%)")
            .max_light_lines(1)
            .axis_desc_style(font(20))
            .label_style(font(16))
            .x_label_formatter(&|x| {
                values
                    .get(x.round().max(0.0) as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (_, color, pick) in &series {
            let p = points(*pick);
            chart.draw_series(LineSeries::new(p.clone(), color.stroke_width(3)))?;
            chart.draw_series(p.iter().map(|p| Circle::new(*p, 5, color.filled())))?;
        }
        let entries: Vec<(String, RGBColor)> = series
            .iter()
            .map(|(name, color, _)| (name.to_string(), *color))
            .collect();
        legend(&legend_area, &entries, Swatch::Line)
    }
}

/// Viridis, interpolated between five of its colours.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

struct SweepHeatmap<'a>(&'a Sweep<'a>);

impl Figure for SweepHeatmap<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 750)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let sweep = self.0;
        let (xs, ys) = (&sweep.values[0], &sweep.values[1]);
        let trials = sweep.trials();
        let best = if trials > 1 {
            format!(", best of {trials} trials")
        } else {
            String::new()
        };
        let area = title(
            root,
            &format!(
                "Top-1 accuracy (%) over {} × {} (sweep `{}`{best})",
                sweep.params[0], sweep.params[1], sweep.name
            ),
        )?;
        let width = area.dim_in_pixel().0;
        let (chart_area, bar_area) = area.split_horizontally(width.saturating_sub(150));
        let cells: Vec<(usize, usize, Option<f64>)> = ys
            .iter()
            .enumerate()
            .flat_map(|(j, y)| {
                xs.iter().enumerate().map(move |(i, x)| {
                    let top1 = sweep
                        .member(&[x.as_str(), y.as_str()])
                        .map(|h| 100.0 * h.top1);
                    (i, j, top1)
                })
            })
            .collect();
        let defined = cells.iter().filter_map(|c| c.2);
        let (lo, hi) = defined.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if lo.is_finite() {
            (lo, hi.max(lo + 1e-6))
        } else {
            (0.0, 100.0)
        };
        let mut chart = ChartBuilder::on(&chart_area)
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(100)
            .build_cartesian_2d(Categories(xs.len()), Categories(ys.len()))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(sweep.params[0].as_str())
            .y_desc(sweep.params[1].as_str())
            .max_light_lines(1)
            .axis_desc_style(font(20))
            .label_style(font(16))
            .x_label_formatter(&|x| {
                xs.get(x.round().max(0.0) as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .y_label_formatter(&|y| {
                ys.get(y.round().max(0.0) as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .draw()?;
        let light = RGBColor(220, 220, 220);
        chart.draw_series(cells.iter().map(|&(i, j, v)| {
            let color = v.map_or(light, |v| viridis((v - lo) / (hi - lo)));
            let (x, y) = (i as f64, j as f64);
            Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
        }))?;
        let size = if xs.len() > 10 { 13 } else { 17 };
        chart.draw_series(cells.iter().map(|&(i, j, v)| {
            // Dark text on the light (high) end of the map, white on the dark end.
            let dark = v.is_some_and(|v| (v - lo) / (hi - lo) > 0.6) || v.is_none();
            let color: &'static RGBColor = if dark { &BLACK } else { &WHITE };
            let label = v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
            Text::new(
                label,
                (i as f64, j as f64),
                font(size)
                    .color(color)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            )
        }))?;
        // Colour bar.
        let mut bar = ChartBuilder::on(&bar_area)
            .margin_top(40)
            .margin_bottom(70)
            .margin_right(20)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, lo..hi)?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style(font(15))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()?;
        let steps = 64;
        bar.draw_series((0..steps).map(|s| {
            let (a, b) = (s as f64 / steps as f64, (s + 1) as f64 / steps as f64);
            Rectangle::new(
                [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
                viridis((a + b) / 2.0).filled(),
            )
        }))?;
        Ok(())
    }
}

/// One point of a backbone's training curve: `(epoch, mean loss, train accuracy as a fraction)`.
pub type CurvePoint = (usize, f64, f64);

/// A backbone's training curve as an SVG document: loss and train accuracy per epoch, one panel
/// each (for `report --html`, which inlines it).
pub fn training_curve_svg(backbone: &str, points: &[CurvePoint]) -> Result<String, PlotError> {
    register_font();
    let figure = TrainingCurve { backbone, points };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

struct TrainingCurve<'a> {
    backbone: &'a str,
    points: &'a [CurvePoint],
}

impl Figure for TrainingCurve<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let area = title(root, &format!("Training of backbone `{}`", self.backbone))?;
        let panels = area.split_evenly((1, 2));
        let last = self.points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
        type Pick = fn(&CurvePoint) -> f64;
        let series: [(&str, RGBColor, Pick); 2] = [
            ("mean loss per epoch", PALETTE[0], |p| p.1),
            ("train accuracy (%)", PALETTE[1], |p| 100.0 * p.2),
        ];
        for (panel, (desc, color, pick)) in panels.iter().zip(series) {
            let values: Vec<f64> = self.points.iter().map(pick).collect();
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(*v), b.max(*v))
                });
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = 0.05 * (hi - lo);
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 1.0, lo + 1.0)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(panel)
                .margin(15)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(1f64..last as f64 + 0.001, lo..hi)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(desc)
                .max_light_lines(1)
                .axis_desc_style(font(18))
                .label_style(font(15))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()?;
            let p: Vec<(f64, f64)> = self.points.iter().map(|p| (p.0 as f64, pick(p))).collect();
            chart.draw_series(LineSeries::new(p.clone(), color.stroke_width(3)))?;
            chart.draw_series(p.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(name: &str, sweep: Option<(&str, &[(&str, &str)])>, top1: f64) -> HeadPlot {
        HeadPlot {
            name: name.into(),
            sweep: sweep.map(|(s, p)| SweepPoint {
                sweep: s.into(),
                params: p
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            top1,
            groups: GroupMeans {
                many: Some(top1 + 0.1),
                medium: Some(top1),
                few: None,
            },
            trials: 1,
            per_class_accuracy: vec![Some(0.9), Some(top1), None, Some(0.1)],
            class_counts: vec![100, 40, 40, 5],
            class_groups: vec![Group::Many, Group::Medium, Group::Medium, Group::Few],
            magnitude: Some(GroupMeans {
                many: Some(1.2),
                medium: Some(0.9),
                few: Some(0.7),
            }),
            rsd: None,
        }
    }

    #[test]
    fn sweeps_are_grouped_and_sorted_numerically() {
        let heads = [
            head("s[d=0.9]", Some(("s", &[("d", "0.9")])), 0.5),
            head("s[d=0.1]", Some(("s", &[("d", "0.1")])), 0.4),
            head("s[d=10]", Some(("s", &[("d", "10")])), 0.3),
            head("lonely[x=1]", Some(("lonely", &[("x", "1")])), 0.3),
            head("plain", None, 0.3),
        ];
        let found = sweeps(&heads);
        assert_eq!(found.len(), 1, "a one-member sweep is not plotted");
        assert_eq!(found[0].values, [vec!["0.1", "0.9", "10"]]);
        assert_eq!(found[0].member(&["0.9"]).unwrap().name, "s[d=0.9]");
        assert_eq!(slug("lr-wd[x]/y"), "lr-wd-x--y");
        assert_eq!(
            shorten("lr-wd[lr=0.001,weight-decay=0.0005]", 20),
            "lr-wd[…decay=0.0005]"
        );
        assert_eq!(shorten("short", 20), "short");
        assert_eq!(
            (decimals_for(1.6), decimals_for(0.004), decimals_for(250.0)),
            (1, 4, 0)
        );
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
    }

    #[test]
    fn writes_valid_svg_and_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut heads = vec![head("ce", None, 0.6)];
        for lr in ["0.1", "0.01"] {
            for wd in ["0", "5e-4"] {
                heads.push(head(
                    &format!("g[lr={lr},wd={wd}]"),
                    Some(("g", &[("lr", lr), ("wd", wd)])),
                    lr.parse::<f64>().unwrap() + 0.3,
                ));
            }
        }
        heads.push(head("d[x=a]", Some(("d", &[("x", "a")])), 0.2));
        heads.push(head("d[x=b]", Some(("d", &[("x", "b")])), 0.7));
        let written = write_plots(dir.path(), &heads).unwrap();
        for stem in [
            "class-counts",
            "per-class-accuracy",
            "logits-magnitude-rsd",
            "sweep-g-heatmap",
            "sweep-d",
        ] {
            assert!(
                written.contains(&format!("plots/{stem}.svg")),
                "{written:?}"
            );
            let png = std::fs::read(dir.path().join(format!("plots/{stem}.png"))).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{stem}.png");
            let svg =
                std::fs::read_to_string(dir.path().join(format!("plots/{stem}.svg"))).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{stem}.svg"
            );
            assert!(svg.contains("<text"), "{stem}.svg has no text");
        }
        assert_eq!(written.len(), 10);
    }
}
