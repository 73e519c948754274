//! Unsealing a node at start: resolve the KEK, unwrap the DEK of the key store and of the photon
//! ledger, seal what an older, unsealed version left in the clear, and drop the KEK.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{kek, unseal_db, Sealer};
use crate::config::NodeConfig;
use crate::link_secret::LinkSecret;
use crate::store::{open_db, SqliteStore, STORE_LABEL};

/// Label of the photon ledger's DEK.
pub const PHOTON_LABEL: &str = "photon-ledger";

/// The unwrapped DEKs of one node.
#[derive(Debug, Clone)]
pub struct NodeSeals {
    /// The key store's.
    pub store: Arc<Sealer>,
    /// The photon ledger's (None when the node has no photon link).
    pub photon: Option<Arc<Sealer>>,
    /// Where the KEK came from (`file`, `passphrase`, or `none` for an unsealed benchmark).
    pub kek_kind: &'static str,
    /// The audit trail's signing key, kept sealed in the store.
    pub audit_signer: Arc<crate::audit::Signer>,
    /// The secrets of this node's simulated links, by peer (see [`crate::link_secret`]); the
    /// node moves them into its link sources.
    pub link_secrets: BTreeMap<String, LinkSecret>,
}

fn audit_signer(
    cfg: &NodeConfig,
    conn: &rusqlite::Connection,
    sealer: &Sealer,
) -> anyhow::Result<Arc<crate::audit::Signer>> {
    let pub_path = crate::audit::signer::public_key_path(&cfg.data_dir, &cfg.node_id);
    Ok(Arc::new(crate::audit::Signer::load_or_create(
        conn, sealer, &pub_path,
    )?))
}

/// Unseals the node's store at `db` and, when given, its photon ledger at `photon_db` (created
/// when missing) with the KEK `cfg` names. The KEK is zeroized before this returns.
pub fn unseal_node(
    cfg: &NodeConfig,
    db: &Path,
    photon_db: Option<&Path>,
) -> anyhow::Result<NodeSeals> {
    let seal = &cfg.store.seal;
    // Before any KEK is looked for: an erased store has no wrapped key, and a key-file start
    // would otherwise make a new key file for it.
    if db.exists() {
        let conn = open_db(db, cfg.store.synchronous)?;
        super::erase::check_not_erased(&cfg.node_id, db, &conn)?;
    }
    if seal.unsealed_for_benchmarks {
        tracing::warn!(
            "store is NOT sealed (benchmark setting): key bytes are stored in the clear"
        );
        let store = Sealer::plaintext(STORE_LABEL);
        let conn = open_db(db, cfg.store.synchronous)?;
        let audit_signer = audit_signer(cfg, &conn, &store)?;
        let link_secrets = super::links::load_all(&conn, &store)
            .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
        return Ok(NodeSeals {
            store: Arc::new(store),
            photon: Some(Arc::new(Sealer::plaintext(PHOTON_LABEL))),
            kek_kind: "none",
            audit_signer,
            link_secrets,
        });
    }
    let conn = open_db(db, cfg.store.synchronous)?;
    let kek = kek::resolve(seal, &cfg.data_dir, &cfg.node_id, &conn, db)?;
    let (sealer, new_dek) = unseal_db(&conn, &kek, STORE_LABEL)
        .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
    let audit_signer = audit_signer(cfg, &conn, &sealer)?;
    // A link secret that fails authentication stops the start: the link would otherwise run
    // on a key stream someone else chose.
    let link_secrets = super::links::load_all(&conn, &sealer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
    let sealer = Arc::new(sealer);
    let store = SqliteStore::with_conn(conn, sealer.clone())?;
    if new_dek {
        let n = store.seal_legacy_records()?;
        if n > 0 {
            if !kek.fresh() {
                // A store with records but no wrapped DEK while the KEK already existed: someone
                // removed the seal metadata to slip in records written in the clear.
                anyhow::bail!(
                    "{}: the store holds records but no wrapped data key although its KEK existed \
                     before; refusing to start (the seal metadata was removed)",
                    db.display()
                );
            }
            tracing::warn!(
                records = n,
                "sealed the records of a store written before sealing"
            );
        }
    }
    drop(store);
    let photon = match photon_db {
        Some(path) => {
            let pconn = open_db(path, cfg.store.synchronous)?;
            let (photon, new) = unseal_db(&pconn, &kek, PHOTON_LABEL)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            crate::photon_link::ledger::seal_legacy_rows(&pconn, &photon, new && kek.fresh())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(Arc::new(photon))
        }
        None => None,
    };
    let kek_kind = kek.kind();
    drop(kek);
    tracing::info!(kek = kek_kind, "store unsealed");
    Ok(NodeSeals {
        store: sealer,
        photon,
        kek_kind,
        audit_signer,
        link_secrets,
    })
}
