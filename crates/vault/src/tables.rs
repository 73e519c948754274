//! Tables stored as three-party replicated shares ([`kagi_mpc::table`]), so that the sites can
//! compute on them ([`kagi_mpc::query`]) without ever rebuilding a record.
//!
//! The owner encodes the CSV, splits every column, and sends site `i` (party `i`) its pair of
//! shares in a sealed envelope (one-time pad + Wegman–Carter tag, as every vault transfer).
//! At the site the table lives beside the Shamir objects, with the same two-step put:
//!
//! ```text
//! tables/pending/<id>/{manifest.json, share.E.bin}   received, not yet committed
//! tables/objects/<id>/{manifest.json, share.E.bin}   committed: what queries read
//! ```
//!
//! A refresh adds a fresh sharing of zero dealt by the owner (prepared at all three sites as
//! `manifest.next` + `share.E+1.bin`, then switched), so that stolen old shares become useless.

use std::fs;
use std::path::PathBuf;

use kagi_mpc::table::{Schema, TableShare};
use serde::{Deserialize, Serialize};

use crate::envelope::{open, seal, Envelope};
use crate::error::{Result, VaultError};
use crate::keys::KeySupply;
use crate::site::{check_object_id, write_atomic, Site};

/// Public description of a stored table, kept with each share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    /// Object ID (a UUID).
    pub object: String,
    /// The owner's name for it.
    pub name: String,
    /// The SAE that stored it: the only one the sites compute for.
    pub owner: String,
    /// The three sites, in party order.
    pub sites: Vec<String>,
    /// Columns and row count.
    pub schema: Schema,
    /// Refreshes so far.
    pub epoch: u64,
}

impl TableManifest {
    /// Party index of `site`.
    pub fn party_of(&self, site: &str) -> Option<usize> {
        self.sites.iter().position(|s| s == site)
    }
}

fn tables_dir<K: KeySupply>(site: &Site<K>, state: &str) -> PathBuf {
    site.dir().join("tables").join(state)
}

fn share_name(epoch: u64) -> String {
    format!("share.{epoch}.bin")
}

/// Seals party `party`'s share of a table for its site (owner side).
pub fn seal_share(
    keys: &mut impl KeySupply,
    manifest: &TableManifest,
    share: &TableShare,
) -> Result<Envelope> {
    let party = usize::from(share.party);
    let to = manifest
        .sites
        .get(party)
        .ok_or_else(|| VaultError::Malformed("party index".into()))?;
    let info = serde_json::to_value(manifest).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let bytes = kagi_keymat::Key::from_vec(share.to_bytes());
    seal(
        keys,
        to,
        "put-table",
        &manifest.object,
        info,
        bytes.expose(),
    )
}

/// Put, step 1 (site): opens a table share and stores it as pending.
pub fn receive<K: KeySupply>(site: &mut Site<K>, env: &Envelope) -> Result<TableManifest> {
    let (h, payload) = open(site.keys_mut(), &env.0)?;
    check_object_id(&h.object)?;
    let m: TableManifest =
        serde_json::from_value(h.info).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let share = TableShare::from_bytes(payload.expose())
        .map_err(|e| VaultError::Malformed(e.to_string()))?;
    if h.kind != "put-table"
        || m.object != h.object
        || m.owner != h.from
        || m.sites.len() != 3
        || m.party_of(site.id()) != Some(usize::from(share.party))
        || share.rows != m.schema.rows
    {
        return Err(VaultError::Malformed(
            "table share does not match its manifest".into(),
        ));
    }
    let dir = tables_dir(site, "pending").join(&m.object);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    write_atomic(&dir.join(share_name(m.epoch)), payload.expose())?;
    write_atomic(&dir.join("manifest.json"), &json(&m)?)?;
    Ok(m)
}

/// Put, step 2 (site): makes a pending table visible.
pub fn commit<K: KeySupply>(site: &mut Site<K>, object: &str) -> Result<()> {
    check_object_id(object)?;
    let pending = tables_dir(site, "pending").join(object);
    if !pending.exists() {
        return Err(VaultError::UnknownObject(object.to_string()));
    }
    let objects = tables_dir(site, "objects");
    fs::create_dir_all(&objects)?;
    let dest = objects.join(object);
    if dest.exists() {
        fs::remove_dir_all(&dest)?;
    }
    fs::rename(&pending, &dest)?;
    fs::File::open(&objects)?.sync_all()?;
    Ok(())
}

/// Forgets a table (pending or committed); absent is not an error.
pub fn abort<K: KeySupply>(site: &mut Site<K>, object: &str) -> Result<()> {
    check_object_id(object)?;
    for d in [
        tables_dir(site, "pending").join(object),
        tables_dir(site, "objects").join(object),
    ] {
        match fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The committed manifest of a table, if held here (`pending`: or an uncommitted one).
pub fn manifest<K: KeySupply>(
    site: &Site<K>,
    object: &str,
    pending: bool,
) -> Option<TableManifest> {
    check_object_id(object).ok()?;
    let read = |state: &str| -> Option<TableManifest> {
        let m = fs::read(tables_dir(site, state).join(object).join("manifest.json")).ok()?;
        serde_json::from_slice(&m).ok()
    };
    read("objects").or_else(|| if pending { read("pending") } else { None })
}

/// Committed tables.
pub fn list<K: KeySupply>(site: &Site<K>) -> Vec<TableManifest> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(tables_dir(site, "objects")) {
        for e in rd.flatten() {
            if let Ok(m) = fs::read(e.path().join("manifest.json")) {
                if let Ok(m) = serde_json::from_slice::<TableManifest>(&m) {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by(|a, b| a.object.cmp(&b.object));
    out
}

/// Path of the committed share file of a table at a site directory (read by the party, outside
/// the site's lock).
pub fn share_path(site_dir: &std::path::Path, m: &TableManifest) -> PathBuf {
    site_dir
        .join("tables")
        .join("objects")
        .join(&m.object)
        .join(share_name(m.epoch))
}

/// Reads a committed share.
pub fn load_share(site_dir: &std::path::Path, m: &TableManifest) -> Result<TableShare> {
    let bytes = kagi_keymat::Key::from_vec(fs::read(share_path(site_dir, m))?);
    TableShare::from_bytes(bytes.expose()).map_err(|e| VaultError::Malformed(e.to_string()))
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| VaultError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemoryKms;
    use kagi_mpc::table::{encode_csv, os_words, parse_schema, share_table};

    #[test]
    fn put_commit_list_load_and_refuse_mismatch() {
        let base = std::env::temp_dir().join(format!("kagi-tables-{}", std::process::id()));
        let kms = MemoryKms::new(64, None);
        let mut owner = kms.party("owner");
        let names = ["s0", "s1", "s2"];
        let mut sites: Vec<Site<_>> = names
            .iter()
            .map(|n| Site::new(base.join(n), kms.party(n)))
            .collect();
        let t = encode_csv("age\n1\n2\n3\n", &parse_schema("age:int").unwrap()).unwrap();
        let shares = share_table(&t, &mut os_words());
        let m = TableManifest {
            object: uuid::Uuid::new_v4().to_string(),
            name: "t".into(),
            owner: "owner".into(),
            sites: names.iter().map(|s| s.to_string()).collect(),
            schema: t.schema.clone(),
            epoch: 0,
        };
        for (i, s) in sites.iter_mut().enumerate() {
            let env = seal_share(&mut owner, &m, &shares[i]).unwrap();
            receive(s, &env).unwrap();
            assert!(manifest(s, &m.object, false).is_none());
            commit(s, &m.object).unwrap();
            assert_eq!(list(s), vec![m.clone()]);
            assert_eq!(load_share(s.dir(), &m).unwrap(), shares[i]);
        }
        // Party 1's share sent to site 0: refused.
        let env = seal_share(&mut owner, &m, &shares[1]).unwrap();
        let env = Envelope(env.0);
        assert!(receive(&mut sites[0], &env).is_err());
        let _ = fs::remove_dir_all(&base);
    }
}
