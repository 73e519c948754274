//! Path constraints an application puts on the key it asks for: the `kagi_route` ETSI GS QKD 014
//! extension (`min_disjoint_paths`, `avoid_nodes`, `max_hops`).
//!
//! The HTTP adapter only parses the JSON into a [`RouteRequest`]; the core judges it here
//! ([`RouteRequest::check`]), decides which pool chunks were relayed under it
//! ([`RouteConstraint::admits`]) and finds paths that meet it ([`find_paths`]).

use std::collections::BTreeSet;

use kagi_control::{disjoint_paths, PathQuery, Topology};

use crate::config::MAX_PATHS;
use crate::msgs::NodeId;
use crate::record::RelayRoute;

/// Largest `max_hops` accepted (a path never has more hops than the network has nodes; larger
/// numbers are refused as malformed rather than silently clamped).
pub const MAX_HOPS_LIMIT: u64 = 65_535;

/// The `kagi_route` extension of one `enc_keys` request, as parsed (numbers not yet judged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    /// Key must have travelled split over at least this many node-disjoint paths (default 1).
    pub min_disjoint_paths: u64,
    /// Nodes no path of the key may pass through.
    pub avoid_nodes: Vec<NodeId>,
    /// Most hops on any path of the key.
    pub max_hops: Option<u64>,
    /// From `extension_mandatory` (serve only key relayed under the constraints, or refuse) or
    /// `extension_optional` (honour them where possible).
    pub mandatory: bool,
}

/// A judged route constraint, for one (master node, slave node) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteConstraint {
    /// At least this many node-disjoint paths (1..=[`MAX_PATHS`]).
    pub min_paths: u8,
    /// Intermediate nodes no path may use.
    pub avoid: BTreeSet<NodeId>,
    /// Most hops per path.
    pub max_hops: Option<u32>,
}

impl RouteRequest {
    /// Judges the request for key from `me` to `dest`: numbers in range, every avoided node
    /// known and not an end. The message says what is wrong (an ETSI 014 400).
    pub fn check(
        &self,
        topo: &Topology,
        me: &str,
        dest: &NodeId,
    ) -> Result<RouteConstraint, String> {
        let max = u64::from(MAX_PATHS);
        if self.min_disjoint_paths == 0 || self.min_disjoint_paths > max {
            return Err(format!(
                "kagi_route min_disjoint_paths must be between 1 and {max} (got {})",
                self.min_disjoint_paths
            ));
        }
        let max_hops = match self.max_hops {
            None => None,
            Some(h) if (1..=MAX_HOPS_LIMIT).contains(&h) => Some(h as u32),
            Some(h) => {
                return Err(format!(
                    "kagi_route max_hops must be between 1 and {MAX_HOPS_LIMIT} (got {h})"
                ))
            }
        };
        if self.avoid_nodes.len() > topo.nodes.len() {
            return Err(format!(
                "kagi_route avoid_nodes names {} nodes; the network has {}",
                self.avoid_nodes.len(),
                topo.nodes.len()
            ));
        }
        let mut avoid = BTreeSet::new();
        for n in &self.avoid_nodes {
            if topo.node(n).is_none() {
                return Err(format!(
                    "kagi_route avoid_nodes names unknown node {}",
                    shown(n)
                ));
            }
            if n == me || n == dest {
                return Err(format!(
                    "kagi_route avoid_nodes names {n}, an end of the key's route (the master's \
                     KME is {me}, the slave's {dest}); only nodes between them can be avoided"
                ));
            }
            avoid.insert(n.clone());
        }
        Ok(RouteConstraint {
            min_paths: self.min_disjoint_paths as u8,
            avoid,
            max_hops,
        })
    }
}

/// A node ID from a request, shortened and escaped for a message.
fn shown(n: &str) -> String {
    let cut: String = n.chars().take(64).collect();
    format!("{cut:?}")
}

impl RouteConstraint {
    /// Whether key relayed over `route` meets the constraint: at least `min_paths` paths whose
    /// intermediate nodes are pairwise distinct, split so that no single path carried the whole
    /// key (threshold ≥ 2) when more than one path is asked for, no path through an avoided
    /// node, none longer than `max_hops`.
    pub fn admits(&self, route: &RelayRoute) -> bool {
        let paths = &route.paths;
        if paths.len() < usize::from(self.min_paths) || paths.is_empty() {
            return false;
        }
        if self.min_paths > 1 && route.threshold < 2 {
            return false;
        }
        let mut seen = BTreeSet::new();
        paths.iter().all(|p| {
            p.len() >= 2
                && self.max_hops.is_none_or(|h| p.len() - 1 <= h as usize)
                && p[1..p.len() - 1]
                    .iter()
                    .all(|n| !self.avoid.contains(n) && seen.insert(n.as_str()))
        })
    }

    /// The constraint in words, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} node-disjoint path(s)", self.min_paths);
        if let Some(h) = self.max_hops {
            s += &format!(" of at most {h} hops");
        }
        if !self.avoid.is_empty() {
            let v: Vec<&str> = self.avoid.iter().map(NodeId::as_str).collect();
            s += &format!(" avoiding {}", v.join(", "));
        }
        s
    }
}

/// Up to `want` node-disjoint paths from `me` to `dest` that meet `c` around the `down` nodes
/// (at least `c.min_paths`; fewer is an error saying how many exist). Tries `want` paths first,
/// then fewer: a min-cost set of many paths can include a path longer than `max_hops` that a
/// smaller set avoids.
pub fn find_paths(
    topo: &Topology,
    me: &str,
    dest: &NodeId,
    c: &RouteConstraint,
    want: u8,
    down: &[NodeId],
) -> Result<Vec<Vec<NodeId>>, String> {
    let mut avoid: Vec<String> = c.avoid.iter().map(NodeId::to_string).collect();
    avoid.extend(
        down.iter()
            .filter(|n| *n != me && *n != dest)
            .map(NodeId::to_string),
    );
    let fits = |p: &Vec<NodeId>| c.max_hops.is_none_or(|h| p.len() - 1 <= h as usize);
    let mut best = 0;
    let top = want.max(c.min_paths);
    for k in (c.min_paths..=top).rev() {
        let found: Vec<Vec<NodeId>> = disjoint_paths(
            topo,
            me,
            dest,
            &PathQuery {
                max_paths: usize::from(k),
                avoid: &avoid,
            },
        )
        .into_iter()
        .map(|p| p.into_iter().map(NodeId::from).collect())
        .filter(fits)
        .collect();
        best = best.max(found.len());
        if found.len() >= usize::from(c.min_paths) {
            return Ok(found);
        }
    }
    let mut why = format!("only {best} node-disjoint path(s) exist between {me} and {dest}");
    if c.max_hops.is_some() || !c.avoid.is_empty() {
        why += " meeting the rest of kagi_route";
    }
    if !down.is_empty() {
        why += " while ";
        let down: Vec<&str> = down.iter().map(NodeId::as_str).collect();
        why += &down.join(", ");
        why += if down.len() == 1 {
            " is down"
        } else {
            " are down"
        };
    }
    Err(format!("{why}; kagi_route asks for {}", c.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_control::LinkSpec;

    /// a and f joined over b, c and d (three node-disjoint 2-hop paths) and over e–g (3 hops,
    /// sharing nothing with the others).
    fn mesh() -> Topology {
        let nodes = ["a", "b", "c", "d", "e", "f", "g"];
        let links = [
            ("a", "b"),
            ("b", "f"),
            ("a", "c"),
            ("c", "f"),
            ("a", "d"),
            ("d", "f"),
            ("a", "e"),
            ("e", "g"),
            ("g", "f"),
        ];
        let mut t = Topology::line("m", &nodes, 10.0, |_| vec![]);
        let proto = t.links[0].clone();
        t.links = links
            .iter()
            .map(|(a, b)| LinkSpec {
                a: a.to_string(),
                b: b.to_string(),
                ..proto.clone()
            })
            .collect();
        t
    }

    fn req(min: u64, avoid: &[&str], max_hops: Option<u64>) -> RouteRequest {
        RouteRequest {
            min_disjoint_paths: min,
            avoid_nodes: avoid.iter().map(|s| NodeId::from(*s)).collect(),
            max_hops,
            mandatory: true,
        }
    }

    #[test]
    fn bad_numbers_and_nodes_are_refused_with_the_reason() {
        let t = mesh();
        for (r, want) in [
            (req(0, &[], None), "between 1 and 8 (got 0)"),
            (req(u64::MAX, &[], None), "between 1 and 8"),
            (req(2, &[], Some(0)), "max_hops must be between 1"),
            (req(2, &[], Some(1 << 40)), "max_hops must be between 1"),
            (req(2, &["zz"], None), "unknown node \"zz\""),
            (req(2, &["a"], None), "an end of the key's route"),
            (req(2, &["f"], None), "an end of the key's route"),
        ] {
            let e = r.check(&t, "a", &NodeId::from("f")).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let c = req(3, &["b", "b"], Some(4))
            .check(&t, "a", &NodeId::from("f"))
            .unwrap();
        assert_eq!(c.avoid.len(), 1);
    }

    #[test]
    fn paths_meeting_the_constraint_are_found_or_the_shortfall_named() {
        let t = mesh();
        let c = req(3, &[], Some(2))
            .check(&t, "a", &NodeId::from("f"))
            .unwrap();
        let p = find_paths(&t, "a", &NodeId::from("f"), &c, 3, &[]).unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.len() == 3));
        // Four paths exist, but only three of at most two hops.
        let c4 = req(4, &[], Some(2))
            .check(&t, "a", &NodeId::from("f"))
            .unwrap();
        let e = find_paths(&t, "a", &NodeId::from("f"), &c4, 4, &[]).unwrap_err();
        assert!(
            e.contains("only 3 node-disjoint path(s) exist between a and f"),
            "{e}"
        );
        let c4 = req(4, &[], None)
            .check(&t, "a", &NodeId::from("f"))
            .unwrap();
        assert_eq!(
            find_paths(&t, "a", &NodeId::from("f"), &c4, 4, &[])
                .unwrap()
                .len(),
            4
        );
        // Avoiding b, and with c down, two remain (d and e–g).
        let cb = req(2, &["b"], None)
            .check(&t, "a", &NodeId::from("f"))
            .unwrap();
        let p = find_paths(&t, "a", &NodeId::from("f"), &cb, 3, &["c".into()]).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p
            .iter()
            .all(|p| !p.contains(&"b".into()) && !p.contains(&"c".into())));
        let cb3 = req(3, &["b"], None)
            .check(&t, "a", &NodeId::from("f"))
            .unwrap();
        let e = find_paths(&t, "a", &NodeId::from("f"), &cb3, 3, &["c".into()]).unwrap_err();
        assert!(e.contains("while c is down"), "{e}");
    }

    #[test]
    fn a_route_is_admitted_only_when_it_meets_every_constraint() {
        let t = mesh();
        let p = |v: &[&str]| v.iter().map(|s| NodeId::from(*s)).collect::<Vec<_>>();
        let three = RelayRoute {
            paths: vec![
                p(&["a", "b", "f"]),
                p(&["a", "c", "f"]),
                p(&["a", "d", "f"]),
            ],
            threshold: 2,
        };
        let c = |r: RouteRequest| r.check(&t, "a", &NodeId::from("f")).unwrap();
        assert!(c(req(3, &[], None)).admits(&three));
        assert!(c(req(2, &["e"], Some(2))).admits(&three));
        assert!(!c(req(4, &[], None)).admits(&three));
        assert!(!c(req(3, &["b"], None)).admits(&three));
        assert!(!c(req(3, &[], Some(1))).admits(&three));
        // The whole key on each path (threshold 1) is not a split over disjoint paths.
        let replicated = RelayRoute {
            threshold: 1,
            ..three.clone()
        };
        assert!(!c(req(3, &[], None)).admits(&replicated));
        assert!(c(req(1, &[], None)).admits(&replicated));
        // Paths that share an intermediate node are not node-disjoint.
        let shared = RelayRoute {
            paths: vec![p(&["a", "b", "f"]), p(&["a", "e", "b", "f"])],
            threshold: 2,
        };
        assert!(!c(req(2, &[], None)).admits(&shared));
    }
}
