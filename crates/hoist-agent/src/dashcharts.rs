//! The charts of an app's page: requests/s, 5xx share and p99 per release over the last
//! hour (1-minute steps) and day (15-minute steps), from the agent's per-minute aggregates
//! (`minutes.rs`), drawn as SVG on the server (presentation attributes only: the page's
//! CSP allows no inline style).

use std::fmt::Write as _;

use hoist_state::minutes::MinutePoint;
use maud::{html, Markup, PreEscaped};

use crate::Agent;

const W: f64 = 600.0;
const H: f64 = 150.0;
/// Room for the axis labels.
const PAD_L: f64 = 46.0;
const PAD_B: f64 = 18.0;
const PAD_T: f64 = 8.0;
const COLOURS: [&str; 4] = ["#1a73e8", "#e8710a", "#188038", "#a142f4"];

/// A window of a chart: its name, its length and its step.
struct Window {
    name: &'static str,
    secs: i64,
    step_min: u32,
}

const WINDOWS: [Window; 2] = [
    Window {
        name: "last hour",
        secs: 3600,
        step_min: 1,
    },
    Window {
        name: "last day",
        secs: 86_400,
        step_min: 15,
    },
];

#[derive(Clone, Copy)]
enum Metric {
    Rate,
    Share5xx,
    P99,
}

impl Metric {
    fn title(self) -> &'static str {
        match self {
            Metric::Rate => "requests/s",
            Metric::Share5xx => "5xx share",
            Metric::P99 => "p99 latency",
        }
    }

    /// The value of one point (`None`: no traffic, nothing to say).
    fn value(self, p: &MinutePoint, step_min: u32) -> Option<f64> {
        match self {
            Metric::Rate => Some(p.requests as f64 / (60.0 * f64::from(step_min))),
            Metric::Share5xx if p.requests > 0 => Some(p.errors_5xx as f64 / p.requests as f64),
            Metric::P99 if p.requests > 0 => Some(p.p99_seconds * 1000.0),
            _ => None,
        }
    }

    fn label(self, v: f64) -> String {
        match self {
            Metric::Rate if v >= 10.0 => format!("{v:.0}/s"),
            Metric::Rate => format!("{v:.2}/s"),
            Metric::Share5xx => format!("{:.1}%", v * 100.0),
            Metric::P99 => format!("{v:.0} ms"),
        }
    }
}

/// The charts of every web service of `app` that had traffic in the last day.
pub(crate) fn section(agent: &Agent, app: &str) -> Markup {
    let now = crate::minutes::now_s();
    let keys = agent.minutes(|m| m.keys(now - 86_400)).unwrap_or_default();
    let mut services: Vec<(String, Vec<String>)> = Vec::new();
    for (a, service, release) in keys {
        if a != app {
            continue;
        }
        match services.iter_mut().find(|(s, _)| *s == service) {
            Some((_, releases)) => releases.push(release),
            None => services.push((service, vec![release])),
        }
    }
    html! {
        section {
            h2 { "Traffic" }
            @if services.is_empty() { p.muted { "no requests through the proxy in the last day" } }
            @for (service, releases) in &services {
                @for w in &WINDOWS {
                    @let series: Vec<(String, Vec<MinutePoint>)> = releases.iter().map(|r| {
                        let points = agent
                            .minutes(|m| m.series(app, service, Some(r), now - w.secs, w.step_min))
                            .unwrap_or_default();
                        (r.clone(), points)
                    }).filter(|(_, p)| !p.is_empty()).collect();
                    @if !series.is_empty() {
                        h2.muted { (service) " · " (w.name) }
                        p.legend {
                            @for (i, (r, _)) in series.iter().enumerate() {
                                span class={ "k" (i % COLOURS.len()) } { "■ " (r.get(..12).unwrap_or(r)) }
                            }
                        }
                        div.charts {
                            @for m in [Metric::Rate, Metric::Share5xx, Metric::P99] {
                                div.chart {
                                    (chart(m, w, now, &series))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One SVG: a line per release, time across, 0 at the bottom.
fn chart(metric: Metric, w: &Window, now: i64, series: &[(String, Vec<MinutePoint>)]) -> Markup {
    let t0 = now - w.secs;
    let step = 60 * i64::from(w.step_min);
    let values: Vec<Vec<(i64, f64)>> = series
        .iter()
        .map(|(_, points)| {
            let mut v: Vec<(i64, f64)> = points
                .iter()
                .filter_map(|p| metric.value(p, w.step_min).map(|x| (p.t, x)))
                .collect();
            if matches!(metric, Metric::Rate) {
                // A step without traffic is a rate of 0, not a gap.
                let mut filled = Vec::new();
                let mut t = t0.div_euclid(step) * step;
                let mut it = v.iter().peekable();
                while t <= now {
                    let x = match it.peek() {
                        Some((pt, x)) if *pt == t => {
                            let x = *x;
                            it.next();
                            x
                        }
                        _ => 0.0,
                    };
                    filled.push((t, x));
                    t += step;
                }
                v = filled;
            }
            v
        })
        .collect();
    let max = values
        .iter()
        .flatten()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max);
    let top = match metric {
        Metric::Share5xx => max.max(0.01),
        _ if max > 0.0 => max * 1.1,
        _ => 1.0,
    };
    let x = |t: i64| PAD_L + (t - t0) as f64 / w.secs as f64 * (W - PAD_L - 4.0);
    let y = |v: f64| PAD_T + (1.0 - v / top) * (H - PAD_T - PAD_B);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg viewBox="0 0 {W} {H}" role="img" xmlns="http://www.w3.org/2000/svg"><title>{} over the {}</title>"##,
        metric.title(),
        w.name
    );
    // Axes and the top value.
    let _ = write!(
        svg,
        r##"<line x1="{PAD_L}" y1="{}" x2="{}" y2="{}" stroke="#c4cad1"/><line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{}" stroke="#c4cad1"/>"##,
        H - PAD_B,
        W - 4.0,
        H - PAD_B,
        H - PAD_B
    );
    let _ = write!(
        svg,
        r##"<text x="2" y="{}" font-size="10" fill="#56606b">{}</text><text x="2" y="{}" font-size="10" fill="#56606b">0</text>"##,
        PAD_T + 8.0,
        esc(&metric.label(top)),
        H - PAD_B
    );
    let _ = write!(
        svg,
        r##"<text x="{PAD_L}" y="{}" font-size="10" fill="#56606b">-{}</text><text x="{}" y="{}" font-size="10" fill="#56606b" text-anchor="end">now · {}</text>"##,
        H - 4.0,
        if w.secs == 3600 { "60 min" } else { "24 h" },
        W - 4.0,
        H - 4.0,
        esc(metric.title())
    );
    for (i, line) in values.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = line
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        if pts.len() > 1 {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
        }
        for (t, v) in line
            .iter()
            .filter(|(_, v)| !matches!(metric, Metric::Rate) || *v > 0.0)
        {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{colour}"><title>{}</title></circle>"#,
                x(*t),
                y(*v),
                esc(&metric.label(*v))
            );
        }
    }
    svg.push_str("</svg>");
    html! {
        div.muted { (metric.title()) }
        (PreEscaped(svg))
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
