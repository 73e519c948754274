//! The built-in topology, modelled on a metropolitan QKD network (after the Tokyo QKD Network:
//! trusted nodes in Koganei, central Tokyo and the northern wards, 10–50 km fibre links).

use crate::{LinkSpec, NodeSpec, Topology};

/// Six trusted nodes, eight fibre links of 10–50 km, two SAEs per node.
pub fn tokyo() -> Topology {
    // Approximate sites (degrees, WGS 84), for the dashboard's map.
    let nodes: [(&str, f64, f64); 6] = [
        ("koganei", 35.710, 139.488),
        ("chofu", 35.652, 139.541),
        ("shinjuku", 35.690, 139.700),
        ("otemachi", 35.686, 139.766),
        ("hakusan", 35.722, 139.749),
        ("ueno", 35.714, 139.777),
    ];
    let links: [(&str, &str, f64); 8] = [
        ("koganei", "chofu", 12.0),
        ("koganei", "shinjuku", 28.0),
        ("chofu", "shinjuku", 18.0),
        ("shinjuku", "otemachi", 15.0),
        ("otemachi", "hakusan", 13.0),
        ("hakusan", "ueno", 10.5),
        ("otemachi", "ueno", 16.0),
        ("chofu", "otemachi", 41.0),
    ];
    Topology {
        name: "tokyo-metro".into(),
        seed: 0x6b61_6769,
        epoch_unix: 0,
        rate_multiplier: 1.0,
        insecure_demo_links: false,
        nodes: nodes
            .iter()
            .map(|(n, lat, lon)| NodeSpec {
                id: n.to_string(),
                saes: vec![format!("sae-{n}-a"), format!("sae-{n}-b")],
                lat: Some(*lat),
                lon: Some(*lon),
                ..Default::default()
            })
            .collect(),
        links: links
            .iter()
            .map(|(a, b, l)| LinkSpec {
                a: a.to_string(),
                b: b.to_string(),
                length_km: *l,
                cost: None,
                seed: None,
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_is_valid_and_metro_sized() {
        let t = super::tokyo();
        t.validate().unwrap();
        assert!(t.nodes.len() >= 6);
        assert!(t.links.len() >= 7);
        assert!(t.links.iter().all(|l| (10.0..=50.0).contains(&l.length_km)));
        assert!(t.nodes.iter().all(|n| n.saes.len() >= 2));
        assert!(t.nodes.iter().all(|n| n.lat.is_some() && n.lon.is_some()));
    }
}
