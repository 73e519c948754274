//! A network map as an SVG file, for `kagi plan --svg` and `kagi sim --svg`: nodes where their
//! coordinates put them (a circle when some lack them), links drawn thicker the more key they
//! make and coloured by their load (green idle → red full), or by rate where no load is known.
//! Plain SVG text, no dependencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kagi_control::Topology;

/// One link to draw.
pub struct MapLink {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Key rate, bit/s.
    pub rate_bps: f64,
    /// Share of the rate in use, 0..=1 (`None`: colour by rate instead).
    pub load: Option<f64>,
}

const W: f64 = 900.0;
const MARGIN: f64 = 50.0;
/// Room for the title and legend above the map.
const TOP: f64 = 70.0;

/// Node positions in the drawing area (projected coordinates, or a circle) and the drawing's
/// height, which follows the network's aspect ratio.
fn layout(topo: &Topology) -> (BTreeMap<String, (f64, f64)>, f64) {
    let p = kagi_node::dash::map::positions(topo);
    let raw: BTreeMap<String, (f64, f64)> = if p.is_empty() {
        let n = topo.nodes.len().max(1) as f64;
        topo.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let t = std::f64::consts::TAU * i as f64 / n;
                (node.id.clone(), (t.cos(), t.sin()))
            })
            .collect()
    } else {
        p
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in raw.values() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let span = (x1 - x0).max(y1 - y0).max(1e-9);
    let scale = (W - 2.0 * MARGIN) / span;
    let height = TOP + MARGIN + (y1 - y0).max(0.0) * scale;
    let pos = raw
        .into_iter()
        .map(|(id, (x, y))| (id, (MARGIN + (x - x0) * scale, TOP + (y - y0) * scale)))
        .collect();
    (pos, height.max(300.0))
}

/// Green (0) through yellow to red (1).
fn load_colour(load: f64) -> String {
    let hue = 120.0 * (1.0 - load.clamp(0.0, 1.0));
    format!("hsl({hue:.0},80%,42%)")
}

/// Light (slow) to dark (fast) blue, on a log scale between `lo` and `hi`.
fn rate_colour(rate: f64, lo: f64, hi: f64) -> String {
    let t = log_share(rate, lo, hi);
    format!("hsl(215,75%,{:.0}%)", 75.0 - 50.0 * t)
}

/// Where `x` lies between `lo` and `hi` on a log scale, 0..=1.
fn log_share(x: f64, lo: f64, hi: f64) -> f64 {
    if !(x > 0.0 && lo > 0.0 && hi > lo) {
        return 0.5;
    }
    ((x.ln() - lo.ln()) / (hi.ln() - lo.ln())).clamp(0.0, 1.0)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The map as an SVG document.
pub fn svg(title: &str, topo: &Topology, links: &[MapLink]) -> String {
    let (pos, h) = layout(topo);
    let rates = links
        .iter()
        .map(|l| l.rate_bps)
        .filter(|r| *r > 0.0)
        .collect::<Vec<_>>();
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = write!(
        s,
        "\n<rect width=\"{W}\" height=\"{h:.0}\" fill=\"white\"/>\n<text x=\"{MARGIN}\" y=\"30\" font-size=\"18\">{}</text>\n",
        esc(title)
    );
    let by_load = links.iter().any(|l| l.load.is_some());
    let legend = if by_load {
        "line width: key rate (log); colour: load, green idle → red full"
    } else {
        "line width and colour: key rate (log), light slow → dark fast"
    };
    let _ = writeln!(
        s,
        "<text x=\"{MARGIN}\" y=\"52\" font-size=\"12\" fill=\"#555\">{legend}; rates {} to {}</text>",
        super::plan::bps(if lo.is_finite() { lo } else { 0.0 }),
        super::plan::bps(hi)
    );
    for l in links {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&l.a), pos.get(&l.b)) else {
            continue;
        };
        let width = 1.0 + 6.0 * log_share(l.rate_bps, lo, hi);
        let colour = match l.load {
            Some(u) => load_colour(u),
            None => rate_colour(l.rate_bps, lo, hi),
        };
        let load = l
            .load
            .map_or(String::new(), |u| format!(", {:.0} % used", u * 100.0));
        let _ = writeln!(
            s,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{colour}\" stroke-width=\"{width:.2}\" stroke-linecap=\"round\"><title>{}–{}: {}{load}</title></line>",
            esc(&l.a),
            esc(&l.b),
            super::plan::bps(l.rate_bps)
        );
    }
    let labels = pos.len() <= 80;
    for (id, &(x, y)) in &pos {
        let _ = writeln!(
            s,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"#222\"><title>{}</title></circle>",
            esc(id)
        );
        if labels {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#222\">{}</text>",
                x + 6.0,
                y - 5.0,
                esc(id)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_and_node_is_drawn_and_load_sets_the_colour() {
        let topo = kagi_control::builtin::tokyo();
        let links: Vec<MapLink> = topo
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| MapLink {
                a: l.a.clone(),
                b: l.b.clone(),
                rate_bps: 1e3 * (i + 1) as f64,
                load: Some(if i == 0 { 1.0 } else { 0.0 }),
            })
            .collect();
        let s = svg("tokyo <plan>", &topo, &links);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<line ").count(), topo.links.len());
        assert_eq!(s.matches("<circle ").count(), topo.nodes.len());
        assert!(s.contains("tokyo &lt;plan&gt;"));
        assert!(s.contains("hsl(0,80%,42%)") && s.contains("hsl(120,80%,42%)"));
        // Without loads, the colour follows the rate.
        let no_load: Vec<MapLink> = links
            .into_iter()
            .map(|l| MapLink { load: None, ..l })
            .collect();
        let s = svg("t", &topo, &no_load);
        assert!(s.contains("hsl(215,75%,75%)") && s.contains("hsl(215,75%,25%)"));
        // Nodes without coordinates are placed on a circle inside the drawing.
        let line = Topology::line("l", &["a", "b", "c"], 10.0, |_| vec![]);
        let s = svg("l", &line, &[]);
        assert_eq!(s.matches("<circle ").count(), 3);
    }
}
