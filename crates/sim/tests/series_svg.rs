//! `kagi sim --svg-series`: the time-series plot parses as XML and its numbers add up to the
//! study's report.

use kagi_sim::series_svg::svg;
use kagi_sim::study::{study, StudyOptions};

fn values(doc: &roxmltree::Document, id: &str) -> Vec<Option<f64>> {
    let node = doc
        .descendants()
        .find(|n| n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no line {id}"));
    node.attribute("data-values")
        .unwrap()
        .split(' ')
        .map(|v| (v != "-").then(|| v.parse().unwrap()))
        .collect()
}

/// The SVG parses as XML, and what its lines say adds up to the report's totals: the key
/// delivered (rate × interval), and each followed node pair's requests.
#[test]
fn the_series_parse_as_xml_and_add_up_to_the_report() {
    let topo = kagi_control::builtin::tokyo();
    let r = study(
        &topo,
        &StudyOptions {
            hours: 0.02,
            saes_per_node: 2,
            requests_per_hour: 1200.0,
            rate_multiplier: 4.0,
            warmup_minutes: 0.2,
            seed: 7,
            ..StudyOptions::default()
        },
    )
    .unwrap();
    assert!(r.delivered_bits > 0 && r.requests > 100);
    let text = svg("tokyo <sim>", &r);
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let t: Vec<f64> = doc
        .root_element()
        .attribute("data-t")
        .unwrap()
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    // 72 measured seconds at 1 s, then the final sample after the 10 s drain.
    assert_eq!(r.series.interval_s, 1.0);
    assert_eq!(t.len(), 72);
    assert_eq!(*t.last().unwrap(), 82.0);
    let mut prev = 0.0;
    let mut bits = 0.0;
    for (end, v) in t.iter().zip(values(&doc, "rate-total")) {
        bits += v.unwrap() * (end - prev);
        prev = *end;
    }
    assert!(
        (bits - r.delivered_bits as f64).abs() < 1e-6 * r.delivered_bits as f64,
        "{bits} vs {}",
        r.delivered_bits
    );
    // Per interval, served share is served over made; the whole run's is in the legend.
    let served: u64 = r.pairs.iter().map(|p| p.served).sum();
    assert!(text.contains(&format!(
        "all pairs: {:.1} % ({served} of {})",
        100.0 * r.availability,
        r.requests
    )));
    assert!(values(&doc, "served-total")
        .iter()
        .flatten()
        .all(|v| (0.0..=100.0).contains(v)));
    // The followed pairs are the node pairs with the most SAE pairs, and their legend
    // counts are the report's.
    assert_eq!(r.series.node_pairs.len(), 3);
    for (i, (a, b)) in r.series.node_pairs.iter().enumerate() {
        let np = r
            .node_pairs
            .iter()
            .find(|p| &p.a == a && &p.b == b)
            .unwrap();
        assert!(text.contains(&format!("{a}–{b}: {} of {}", np.served, np.requests)));
        let delivered: f64 = t
            .iter()
            .zip(values(&doc, &format!("rate-pair-{i}")))
            .scan(0.0, |prev, (end, v)| {
                let d = v.unwrap() * (end - *prev);
                *prev = *end;
                Some(d)
            })
            .sum();
        let secs = r.hours * 3600.0;
        assert!((delivered - np.delivered_bps * secs).abs() < 1e-6 * delivered.max(1.0));
    }
    // The last sample is the report: every request made was answered or left unanswered.
    let last = r.series.samples.last().unwrap();
    assert_eq!(last.requests, r.requests);
    assert_eq!(last.delivered_bits, r.delivered_bits);
    assert_eq!(last.answered + r.unanswered, r.requests);
    // Pools and link key: one level per interval, and the network held key.
    let pools = values(&doc, "pool-bytes");
    assert_eq!(pools.len(), t.len());
    assert!(pools.iter().flatten().any(|v| *v > 0.0));
    assert!(values(&doc, "link-bytes")
        .iter()
        .flatten()
        .all(|v| *v > 0.0));
    // Escaped title.
    assert!(text.contains("tokyo &lt;sim&gt;"));
}
