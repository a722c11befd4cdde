//! The daily spend chart: hand-written SVG, rendered by the server. Bars per day stacked by
//! model (the most expensive models each in a colour, the rest as "other"), a dollar axis
//! with grid lines, day labels, each day's total over its bar, a legend, and the numbers
//! as a table for screen readers and for anyone who wants them exact.

use std::collections::BTreeMap;

use maud::{html, Markup};

use super::layout::usd;
use crate::billing::Credits;

/// Models drawn in a colour of their own; the others are summed as "other".
const MAX_SERIES: usize = 7;
/// Colour classes of the series (`s6`, grey, is "other").
const CLASSES: [&str; MAX_SERIES] = ["s0", "s1", "s2", "s3", "s4", "s5", "s7"];
const OTHER_CLASS: &str = "s6";

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 58.0;
const BOTTOM: f64 = 30.0;

/// The spend of each day (oldest first) by model, in nano-USD.
pub struct Spend {
    pub days: Vec<String>,
    /// (day, model) → cost.
    pub costs: BTreeMap<(String, String), i64>,
}

struct Series {
    name: String,
    class: &'static str,
    /// Models summed into this series.
    models: Vec<String>,
}

fn series(spend: &Spend) -> Vec<Series> {
    let mut per_model: BTreeMap<&str, i128> = BTreeMap::new();
    for ((_, model), cost) in &spend.costs {
        *per_model.entry(model).or_default() += i128::from(*cost);
    }
    let mut models: Vec<(&str, i128)> = per_model.into_iter().collect();
    models.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out: Vec<Series> = Vec::new();
    let named = if models.len() > MAX_SERIES {
        MAX_SERIES - 1
    } else {
        MAX_SERIES
    };
    for (i, (model, _)) in models.iter().enumerate() {
        if i < named {
            out.push(Series {
                name: model.to_string(),
                class: CLASSES[i],
                models: vec![model.to_string()],
            });
        } else {
            if out.len() == named {
                out.push(Series {
                    name: "other models".into(),
                    class: OTHER_CLASS,
                    models: Vec::new(),
                });
            }
            if let Some(other) = out.last_mut() {
                other.models.push(model.to_string());
            }
        }
    }
    out
}

/// Dollars from nano-dollars, for drawing only (the labels of amounts are exact).
fn dollars(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// A round step for about four grid lines up to `max` dollars.
fn step_for(max: f64) -> f64 {
    if max <= 0.0 {
        return 0.25;
    }
    let raw = max / 4.0;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    step.max(1e-9)
}

fn axis_label(value: f64, step: f64) -> String {
    if value == 0.0 {
        return "$0".into();
    }
    let decimals = if step >= 0.01 {
        2
    } else {
        ((-step.log10()).ceil() as usize).min(9)
    };
    format!("${value:.decimals$}")
}

/// A short label of an amount: two significant digits below a cent.
fn short_usd(nanos: i64) -> String {
    let d = dollars(nanos);
    if d >= 0.01 || d == 0.0 {
        format!("${d:.2}")
    } else {
        let decimals = ((-d.log10()).floor() as usize + 2).min(9);
        format!("${d:.decimals$}")
    }
}

/// `2026-03-05` → `Mar 5`.
fn day_label(day: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = day
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    let date = day.get(8..10).and_then(|d| d.parse::<u32>().ok());
    match (month, date) {
        (Some(m), Some(d)) => format!("{m} {d}"),
        _ => day.to_string(),
    }
}

fn money(nanos: i64) -> String {
    usd(&Credits::from_nanos(nanos).to_string())
}

/// The chart, its legend and its table.
pub fn render(spend: &Spend) -> Markup {
    let series = series(spend);
    let cost = |day: &str, s: &Series| -> i64 {
        s.models
            .iter()
            .filter_map(|m| spend.costs.get(&(day.to_string(), m.clone())))
            .fold(0i64, |a, c| a.saturating_add(*c))
    };
    let totals: Vec<i64> = spend
        .days
        .iter()
        .map(|d| {
            series
                .iter()
                .fold(0i64, |a, s| a.saturating_add(cost(d, s)))
        })
        .collect();
    // Each day's segments, bottom up: the series, its cost and the cost below it.
    let stacks: Vec<Vec<(&Series, i64, i64)>> = spend
        .days
        .iter()
        .map(|d| {
            let mut base = 0i64;
            series
                .iter()
                .filter_map(|s| {
                    let c = cost(d, s);
                    let below = base;
                    base = base.saturating_add(c);
                    (c > 0).then_some((s, c, below))
                })
                .collect()
        })
        .collect();
    let period_total = totals.iter().fold(0i64, |a, t| a.saturating_add(*t));
    let max = totals.iter().copied().max().unwrap_or(0);
    let step = step_for(dollars(max));
    let top_value = (dollars(max) / step).ceil().max(1.0) * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = spend.days.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.7).max(2.0);
    let y = |v: f64| TOP + plot_h - (v / top_value) * plot_h;
    let ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v <= top_value + step / 2.0)
        .collect();
    let last = spend.days.len().saturating_sub(1);
    let description = format!(
        "Spend per day over the last {} days, stacked by model: {} in total.",
        spend.days.len(),
        money(period_total)
    );
    html! {
        div.chart {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-labelledby="chart-title chart-desc" {
                title id="chart-title" { "Daily spend by model" }
                desc id="chart-desc" { (description) }
                g.axis {
                    @for t in &ticks {
                        line.gridline x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(*t)) y2=(y(*t)) {}
                        text x=(LEFT - 8.0) y=(y(*t) + 4.0) text-anchor="end" { (axis_label(*t, step)) }
                    }
                    line.baseline x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(0.0)) y2=(y(0.0)) {}
                    @for (i, day) in spend.days.iter().enumerate() {
                        @if i % 5 == 0 || i == last {
                            text x=(LEFT + slot * (i as f64 + 0.5)) y=(HEIGHT - 10.0) text-anchor="middle" { (day_label(day)) }
                        }
                    }
                }
                @for (i, day) in spend.days.iter().enumerate() {
                    @let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
                    g.day data-day=(day) data-total=(Credits::from_nanos(totals[i]).to_string()) {
                        title { (day) ": " (money(totals[i])) }
                        @for (s, c, base) in &stacks[i] {
                            @let y0 = y(dollars(*base));
                            @let y1 = y(dollars(base.saturating_add(*c)));
                            rect class=(s.class) x=(x) y=(y1) width=(bar_w) height=((y0 - y1).max(0.5))
                                data-model=(s.name) data-cost=(Credits::from_nanos(*c).to_string()) {
                                title { (day) " · " (s.name) ": " (money(*c)) }
                            }
                        }
                        @if totals[i] > 0 {
                            @let tx = x + bar_w / 2.0 + 3.5;
                            @let ty = y(dollars(totals[i])) - 4.0;
                            text.bar-total x=(tx) y=(ty) transform={ "rotate(-90 " (tx) " " (ty) ")" } {
                                (short_usd(totals[i]))
                            }
                        }
                    }
                }
            }
            @if series.is_empty() {
                p.empty { "No spend in this period yet. Requests made with this account's keys appear here by day and model." }
            } @else {
                ul.legend aria-label="Models" {
                    @for s in &series {
                        li { span class={ "swatch " (s.class) } {} (s.name) }
                    }
                }
            }
            details.data {
                summary { "Daily totals as a table" }
                div.table-wrap {
                    table {
                        thead { tr {
                            th scope="col" { "Day" }
                            @for s in &series { th.num scope="col" { (s.name) } }
                            th.num scope="col" { "Total" }
                        } }
                        tbody {
                            @for (i, day) in spend.days.iter().enumerate() {
                                @if totals[i] > 0 {
                                    tr {
                                        th scope="row" { (day) }
                                        @for s in &series { td.num { (money(cost(day, s))) } }
                                        td.num { (money(totals[i])) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(step_for(10.0), 2.5);
        assert_eq!(step_for(7.0), 2.0);
        assert_eq!(step_for(0.0), 0.25);
        assert!((step_for(0.0004) - 0.0001).abs() < 1e-12);
        assert_eq!(axis_label(2.5, 2.5), "$2.50");
        assert_eq!(axis_label(0.0002, 0.0001), "$0.0002");
        assert_eq!(short_usd(1_500_000_000), "$1.50");
        assert_eq!(short_usd(1_234_000), "$0.0012");
        assert_eq!(day_label("2026-03-05"), "Mar 5");
    }

    #[test]
    fn models_past_the_colours_are_summed_as_other() {
        let mut costs = BTreeMap::new();
        for i in 0..9 {
            costs.insert(("2026-01-01".to_string(), format!("m{i}")), 100 - i);
        }
        let spend = Spend {
            days: vec!["2026-01-01".into()],
            costs,
        };
        let s = series(&spend);
        assert_eq!(s.len(), MAX_SERIES);
        assert_eq!(s[0].name, "m0");
        assert_eq!(s[MAX_SERIES - 1].models.len(), 3);
        let svg = render(&spend).into_string();
        assert!(svg.contains("data-total=\"0.000000864\""), "{svg}");
    }
}
