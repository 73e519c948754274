//! Time series of a `kagi sim` study as an SVG file (`kagi sim --svg-series`): delivered key
//! rate and share of requests served per sampling interval, for the whole network and the node
//! pairs with the most SAE pairs, and the key the nodes hold (end-to-end pools, link key).
//! Plain SVG text, no dependencies, like the network map of `kagi sim --svg`.
//!
//! Each line carries its values as numbers in `data-values` (one per interval, in the order of
//! the root's `data-t`, the interval ends in simulated seconds), so a reader can check a plot
//! against the JSON report without reading pixels.

use std::fmt::Write as _;

use crate::study::{Sample, StudyReport};

const W: f64 = 900.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const PANEL: f64 = 190.0;
const GAP: f64 = 55.0;
/// Colours of the total and of the followed node pairs.
const COLOURS: [&str; 4] = ["#222", "#1f77b4", "#d62728", "#2ca02c"];

/// One line of a panel: its name, its values (`None`: no point in that interval) and whether
/// it is dashed.
struct Line {
    id: String,
    name: String,
    colour: &'static str,
    dashed: bool,
    values: Vec<Option<f64>>,
}

/// The time series as an SVG document.
pub fn svg(title: &str, r: &StudyReport) -> String {
    let s = &r.series;
    let samples = &s.samples;
    // Interval i runs from samples[i] to samples[i + 1].
    let ends: Vec<f64> = samples.iter().skip(1).map(|x| x.t_s).collect();
    let t_max = ends.last().copied().unwrap_or(0.0).max(1e-9);
    let per = |f: &dyn Fn(&Sample, &Sample) -> Option<f64>| -> Vec<Option<f64>> {
        samples.windows(2).map(|w| f(&w[0], &w[1])).collect()
    };
    let rate = |bits: u64, a: &Sample, b: &Sample| {
        let dt = b.t_s - a.t_s;
        (dt > 0.0).then(|| bits as f64 / dt)
    };
    // Share of the requests answered in the interval that were served (a request made near an
    // interval's end may be answered in the next).
    let served =
        |answered: u64, ok: u64| (answered > 0).then(|| 100.0 * ok as f64 / answered as f64);

    let mut rates = vec![Line {
        id: "rate-total".into(),
        name: format!("all pairs: {}", bps(total_bps(r))),
        colour: COLOURS[0],
        dashed: false,
        values: per(&|a, b| rate(b.delivered_bits - a.delivered_bits, a, b)),
    }];
    let mut shares = vec![Line {
        id: "served-total".into(),
        name: format!(
            "all pairs: {:.1} % ({} of {})",
            100.0 * r.availability,
            r.pairs.iter().map(|p| p.served).sum::<u64>(),
            r.requests
        ),
        colour: COLOURS[0],
        dashed: false,
        values: per(&|a, b| served(b.answered - a.answered, b.served - a.served)),
    }];
    for (i, (na, nb)) in s.node_pairs.iter().enumerate() {
        let colour = COLOURS[(i + 1) % COLOURS.len()];
        let last = samples.last().map_or((0, 0, 0, 0), |x| x.pairs[i]);
        rates.push(Line {
            id: format!("rate-pair-{i}"),
            name: format!("{na}–{nb}"),
            colour,
            dashed: false,
            values: per(&|a, b| rate(b.pairs[i].2 - a.pairs[i].2, a, b)),
        });
        shares.push(Line {
            id: format!("served-pair-{i}"),
            name: format!("{na}–{nb}: {} of {}", last.1, last.0),
            colour,
            dashed: false,
            values: per(&|a, b| served(b.pairs[i].3 - a.pairs[i].3, b.pairs[i].1 - a.pairs[i].1)),
        });
    }
    // Key held is a level, not a count: the value at each interval's end.
    let level = |f: fn(&Sample) -> u64| -> Vec<Option<f64>> {
        samples.iter().skip(1).map(|x| Some(f(x) as f64)).collect()
    };
    let held = vec![
        Line {
            id: "pool-bytes".into(),
            name: "end-to-end pools".into(),
            colour: COLOURS[1],
            dashed: false,
            values: level(|x| x.pool_bytes),
        },
        Line {
            id: "link-bytes".into(),
            name: "link key (both halves)".into(),
            colour: COLOURS[0],
            dashed: true,
            values: level(|x| x.link_bytes),
        },
    ];

    let h = TOP + 3.0 * (PANEL + GAP) + 10.0;
    let mut out = String::new();
    let t_attr: Vec<String> = ends.iter().map(|t| format!("{t}")).collect();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="Helvetica, Arial, sans-serif" data-t="{}">"#,
        t_attr.join(" ")
    );
    let _ = write!(
        out,
        "\n<rect width=\"{W}\" height=\"{h:.0}\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"28\" font-size=\"16\">{}</text>\n",
        esc(title)
    );
    let panels = [
        (
            format!(
                "key delivered to masters, bit/s per {} interval",
                secs(s.interval_s)
            ),
            rates,
            Unit::Bps,
        ),
        (
            "requests served, % of those answered in each interval (no point: none answered)"
                .into(),
            shares,
            Unit::Percent,
        ),
        (
            "key held by the nodes, bytes (at each interval's end)".into(),
            held,
            Unit::Bytes,
        ),
    ];
    for (k, (heading, lines, unit)) in panels.iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL + GAP);
        panel(&mut out, y0, t_max, &ends, heading, lines, *unit);
    }
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{:.0}\" font-size=\"11\" fill=\"#555\">simulated seconds since the measured time began (the last interval includes the 10 s the run waits for late answers)</text>",
        h - 8.0
    );
    out.push_str("</svg>\n");
    out
}

/// A key rate for people: b/s, kb/s, Mb/s, Gb/s.
fn bps(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} Gb/s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} Mb/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kb/s", v / 1e3)
    } else {
        format!("{v:.0} b/s")
    }
}

/// Mean delivered key rate of all pairs over the measured time, as the report counts it.
fn total_bps(r: &StudyReport) -> f64 {
    r.pairs.iter().map(|p| p.delivered_bps).sum()
}

#[derive(Clone, Copy)]
enum Unit {
    Bps,
    Percent,
    Bytes,
}

fn label(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bps => bps(v),
        Unit::Percent => format!("{v:.0} %"),
        Unit::Bytes => {
            if v >= 1e9 {
                format!("{:.1} GB", v / 1e9)
            } else if v >= 1e6 {
                format!("{:.1} MB", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.1} kB", v / 1e3)
            } else {
                format!("{v:.0} B")
            }
        }
    }
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{} min", s / 60.0)
    } else {
        format!("{s} s")
    }
}

/// One panel: axes, a heading, its lines and their legend on the right.
fn panel(
    out: &mut String,
    y0: f64,
    t_max: f64,
    ends: &[f64],
    heading: &str,
    lines: &[Line],
    unit: Unit,
) {
    let (x1, y1) = (W - RIGHT, y0 + PANEL);
    let top = match unit {
        Unit::Percent => 100.0,
        _ => nice_max(
            lines
                .iter()
                .flat_map(|l| l.values.iter().flatten())
                .copied()
                .fold(0.0, f64::max),
        ),
    };
    let x = |t: f64| LEFT + (x1 - LEFT) * t / t_max;
    let y = |v: f64| y1 - PANEL * (v / top).clamp(0.0, 1.0);
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{:.0}\" font-size=\"13\">{}</text>",
        y0 - 8.0,
        esc(heading)
    );
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{y0:.0}\" width=\"{:.0}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>",
        x1 - LEFT
    );
    for f in [0.0, 0.5, 1.0] {
        let _ = writeln!(
            out,
            "<text x=\"{:.0}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            LEFT - 5.0,
            y(top * f) + 3.0,
            label(top * f, unit)
        );
    }
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.0}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{:.0}</text>",
            x(t_max * f),
            y1 + 13.0,
            t_max * f
        );
    }
    for (i, l) in lines.iter().enumerate() {
        let points: Vec<String> = ends
            .iter()
            .zip(&l.values)
            .filter_map(|(t, v)| v.map(|v| format!("{:.1},{:.1}", x(*t), y(v))))
            .collect();
        let values: Vec<String> = l
            .values
            .iter()
            .map(|v| v.map_or("-".into(), |v| format!("{v}")))
            .collect();
        let dash = if l.dashed {
            " stroke-dasharray=\"5,3\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<polyline id=\"{}\" data-values=\"{}\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"{dash}><title>{}</title></polyline>",
            l.id,
            values.join(" "),
            points.join(" "),
            l.colour,
            esc(&l.name)
        );
        let ly = y0 + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{:.0}\" y1=\"{ly:.0}\" x2=\"{:.0}\" y2=\"{ly:.0}\" stroke=\"{}\" stroke-width=\"2\"{dash}/><text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\">{}</text>",
            x1 + 10.0,
            x1 + 30.0,
            l.colour,
            x1 + 35.0,
            ly + 4.0,
            esc(&l.name)
        );
    }
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice_max(v: f64) -> f64 {
    if !(v > 0.0 && v.is_finite()) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_axis_tops() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(1200.0), 2000.0);
        assert_eq!(nice_max(10.0), 10.0);
    }
}
