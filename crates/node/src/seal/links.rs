//! Per-link secrets at rest: each is sealed with the store's data key into the node's own store
//! (`seal_meta`, name `link_secret/<peer>`, the record's kind and key as associated data), so it
//! is as safe as the keys it produces. [`provision`] gives every link of a network a fresh
//! secret, written to the stores of that link's two nodes only.

use std::collections::BTreeMap;

use kagi_control::Topology;
use rusqlite::{params, Connection};

use super::{meta_put, SealError, Sealer};
use crate::config::NodeConfig;
use crate::link_secret::LinkSecret;
use crate::store::open_db;

const KIND: &str = "link_secret";
const PREFIX: &str = "link_secret/";

/// Every link secret in the store at `conn`, by peer.
///
/// # Errors
/// A secret fails authentication (edited, moved or swapped) or SQLite fails: the node must not
/// start on a link whose secret it cannot trust.
pub fn load_all(
    conn: &Connection,
    sealer: &Sealer,
) -> Result<BTreeMap<String, LinkSecret>, SealError> {
    conn.execute_batch(super::META_DDL)?;
    let mut st = conn.prepare("SELECT name, v FROM seal_meta WHERE name LIKE 'link_secret/%'")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (name, v) = row?;
        let Some(peer) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let plain = sealer.open(KIND, peer, &v)?;
        let secret = LinkSecret::from_bytes(&plain).map_err(|_| SealError::Auth {
            kind: KIND.into(),
            key: peer.into(),
            why: "wrong length",
        })?;
        out.insert(peer.to_string(), secret);
    }
    Ok(out)
}

/// Stores (or replaces) the secret of the link to `peer`.
///
/// # Errors
/// SQLite fails.
pub fn put(
    conn: &Connection,
    sealer: &Sealer,
    peer: &str,
    secret: &LinkSecret,
) -> Result<(), SealError> {
    meta_put(
        conn,
        &format!("{PREFIX}{peer}"),
        &sealer.seal(KIND, peer, secret.expose()),
    )
}

/// Removes every link secret (crypto-erase).
///
/// # Errors
/// SQLite fails.
pub fn delete_all(conn: &Connection) -> Result<usize, SealError> {
    conn.execute_batch(super::META_DDL)?;
    Ok(conn.execute(
        "DELETE FROM seal_meta WHERE name LIKE ?1",
        params![format!("{PREFIX}%")],
    )?)
}

/// One node's unsealed store, open for provisioning.
struct Opened {
    conn: Connection,
    sealer: std::sync::Arc<Sealer>,
    secrets: BTreeMap<String, LinkSecret>,
}

fn open_node(cfg: &NodeConfig) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let db = cfg.data_dir.join(format!("{}.db", cfg.node_id));
    // Unseals (creating the store, its data key and the KEK on a first run) exactly as the node
    // does at start.
    let seals = super::node::unseal_node(cfg, &db, None)?;
    let conn = open_db(&db, cfg.store.synchronous)?;
    let secrets = load_all(&conn, &seals.store)
        .map_err(|e| anyhow::anyhow!("{}: link secrets: {e}", db.display()))?;
    Ok(Opened {
        conn,
        sealer: seals.store,
        secrets,
    })
}

/// The link secrets of the node `cfg` describes, unsealed with its KEK (operators and tests).
///
/// # Errors
/// The store cannot be unsealed or a secret fails authentication.
pub fn read_node(cfg: &NodeConfig) -> anyhow::Result<BTreeMap<String, LinkSecret>> {
    Ok(open_node(cfg)?.secrets)
}

/// Gives node `cfg`, whose store was lost (a replaced disk), the secrets its neighbours among
/// `peers` still hold for their links with it, so the neighbours keep their key streams and need
/// no restart; reconciliation then keeps the new store from spending link key the old one spent.
/// Returns how many links it got back.
///
/// # Errors
/// A store cannot be unsealed or written.
pub fn restore_from_neighbours(
    topo: &Topology,
    cfg: &NodeConfig,
    peers: &[NodeConfig],
) -> anyhow::Result<usize> {
    let me = open_node(cfg)?;
    let mut n = 0;
    for p in peers {
        let linked = topo.links.iter().any(|l| {
            (l.a == cfg.node_id && l.b == p.node_id) || (l.b == cfg.node_id && l.a == p.node_id)
        });
        if !linked {
            continue;
        }
        if let Some(s) = read_node(p)?.get(&cfg.node_id) {
            put(&me.conn, &me.sealer, &p.node_id, s)
                .map_err(|e| anyhow::anyhow!("node {}: link secret: {e}", cfg.node_id))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Gives every link of `topo` whose two nodes are among `cfgs` a secret: a link whose ends
/// already hold the same one keeps it (a re-run continues the same key streams); any other gets
/// a fresh random secret, sealed into both ends' stores. Returns how many links got a new one.
///
/// # Errors
/// A store cannot be unsealed (wrong KEK, no passphrase) or written.
pub fn provision(topo: &Topology, cfgs: &[NodeConfig]) -> anyhow::Result<usize> {
    let mut open = BTreeMap::new();
    for c in cfgs {
        open.insert(c.node_id.clone(), open_node(c)?);
    }
    let mut fresh = 0;
    for l in &topo.links {
        if !(open.contains_key(&l.a) && open.contains_key(&l.b)) {
            continue;
        }
        let at_a = open[&l.a].secrets.get(&l.b);
        let at_b = open[&l.b].secrets.get(&l.a);
        if at_a.is_some() && at_a == at_b {
            continue;
        }
        let s = LinkSecret::generate();
        for (me, peer) in [(&l.a, &l.b), (&l.b, &l.a)] {
            let o = &open[me];
            put(&o.conn, &o.sealer, peer, &s)
                .map_err(|e| anyhow::anyhow!("node {me}: link secret: {e}"))?;
        }
        fresh += 1;
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_secrets_are_shared_by_the_two_ends_only_and_kept_on_rerun() {
        let d = crate::loopback::scratch_dir("linksecret").unwrap();
        let mut topo = Topology::line("p", &["a", "b", "c"], 5.0, |_| vec![]);
        let cfgs = crate::loopback::prepare(&d, &mut topo, |_| {}).unwrap();
        let read = |i: usize| open_node(&cfgs[i]).unwrap().secrets;
        let (a, b, c) = (read(0), read(1), read(2));
        assert_eq!(a.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(a["b"], b["a"]);
        assert_eq!(c["b"], b["c"]);
        assert_ne!(a["b"], c["b"]);
        // The topology file holds neither secret.
        let text = std::fs::read(d.join("topology.toml")).unwrap();
        for s in [&a["b"], &c["b"]] {
            assert!(!text.windows(32).any(|w| w == s.expose()));
        }
        // A re-run keeps matching secrets and replaces a mismatched pair.
        assert_eq!(provision(&topo, &cfgs).unwrap(), 0);
        {
            let o = open_node(&cfgs[0]).unwrap();
            put(&o.conn, &o.sealer, "b", &LinkSecret::generate()).unwrap();
        }
        assert_eq!(provision(&topo, &cfgs).unwrap(), 1);
        let (a2, b2) = (read(0), read(1));
        assert_eq!(a2["b"], b2["a"]);
        assert_ne!(a2["b"], a["b"]);
        assert_eq!(read(2)["b"], c["b"]);
        // A secret edited on disk fails authentication.
        let db = cfgs[0].data_dir.join("a.db");
        let conn = open_db(&db, cfgs[0].store.synchronous).unwrap();
        let mut v: Vec<u8> = conn
            .query_row(
                "SELECT v FROM seal_meta WHERE name = 'link_secret/b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        v[20] ^= 1;
        meta_put(&conn, "link_secret/b", &v).unwrap();
        drop(conn);
        let e = open_node(&cfgs[0]).err().unwrap().to_string();
        assert!(
            e.contains("link_secret/b") && e.contains("failed authentication"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
