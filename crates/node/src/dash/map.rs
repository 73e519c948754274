//! Places nodes on the dashboard's map from the coordinates in the topology file.

use std::collections::BTreeMap;

use kagi_control::Topology;

/// Width (or height, whichever is larger) of the placed network, in page units; the page fits
/// it to the window.
const EXTENT: f64 = 800.0;

/// Map positions of the topology's nodes, north up, from their latitude and longitude; empty
/// unless every node has both, since a half-placed map misleads more than a layout.
///
/// The projection is equirectangular around the network's mean latitude, which keeps angles
/// and distance ratios right at the scale of a national network.
pub fn positions(topo: &Topology) -> BTreeMap<String, (f64, f64)> {
    let coords: Vec<(&str, f64, f64)> = topo
        .nodes
        .iter()
        .filter_map(|n| Some((n.id.as_str(), n.lat?, n.lon?)))
        .collect();
    if coords.is_empty() || coords.len() != topo.nodes.len() {
        return BTreeMap::new();
    }
    let mean_lat = coords.iter().map(|c| c.1).sum::<f64>() / coords.len() as f64;
    let squeeze = mean_lat.to_radians().cos();
    let projected: Vec<(&str, f64, f64)> = coords
        .iter()
        .map(|&(id, lat, lon)| (id, lon * squeeze, -lat))
        .collect();
    let span = |f: fn(&(&str, f64, f64)) -> f64| {
        let lo = projected.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = projected.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        (lo, hi - lo)
    };
    let (x0, w) = span(|p| p.1);
    let (y0, h) = span(|p| p.2);
    let scale = if w.max(h) > 0.0 {
        EXTENT / w.max(h)
    } else {
        1.0
    };
    projected
        .into_iter()
        .map(|(id, x, y)| (id.to_owned(), ((x - x0) * scale, (y - y0) * scale)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_nodes_are_placed_north_up_within_the_extent() {
        let p = positions(&kagi_control::builtin::tokyo());
        assert_eq!(p.len(), 6);
        assert!(p
            .values()
            .all(|&(x, y)| (0.0..=EXTENT).contains(&x) && (0.0..=EXTENT).contains(&y)));
        // Koganei is the westernmost node, Ueno the easternmost; Chofu lies south of Hakusan.
        let x = |id: &str| p[id].0;
        let y = |id: &str| p[id].1;
        assert_eq!(x("koganei"), 0.0);
        assert!((x("ueno") - EXTENT).abs() < 1e-9);
        assert!(y("chofu") > y("hakusan"), "north must be up");
    }

    #[test]
    fn a_partly_placed_network_gets_a_layout_instead() {
        let mut t = kagi_control::builtin::tokyo();
        t.nodes[2].lat = None;
        t.nodes[2].lon = None;
        assert!(positions(&t).is_empty());
    }
}
