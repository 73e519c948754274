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
//! A refresh adds a fresh sharing of zero dealt by the owner, so that shares stolen before it are
//! useless with shares taken after it. Like a Shamir object's refresh ([`crate::site`]) it is
//! prepared at all three sites, then committed:
//!
//! ```text
//! tables/objects/<id>/{manifest.next, share.E+1.bin}   prepared (the committed epoch E still
//!                                                        answers queries)
//! tables/objects/<id>/{manifest.json, share.E+1.bin}   committed: the old share file deleted
//! ```
//!
//! A query names the epoch it expects, and a site at another epoch refuses to take part, so a
//! query never mixes shares of two epochs (which would compute garbage, or abort in malicious
//! mode).

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

/// Seals party `zero.party`'s part of a refresh for its site (owner side): `next` is the
/// table's manifest at the new epoch, `zero` that party's pair of a fresh zero-sharing
/// ([`kagi_mpc::table::zero_sharing`] over [`kagi_mpc::table::Schema::stored_names`]).
pub fn seal_refresh(
    keys: &mut impl KeySupply,
    next: &TableManifest,
    zero: &TableShare,
) -> Result<Envelope> {
    let to = next
        .sites
        .get(usize::from(zero.party))
        .ok_or_else(|| VaultError::Malformed("party index".into()))?;
    let info = serde_json::to_value(next).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let bytes = kagi_keymat::Key::from_vec(zero.to_bytes());
    seal(
        keys,
        to,
        "refresh-table",
        &next.object,
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

/// Refresh, step 1 (site): opens the owner's zero-sharing for this site's share (kind
/// `"refresh-table"`, manifest at the new epoch), adds it to the committed share and keeps the
/// result as prepared. The committed share keeps answering until [`refresh_commit`].
pub fn refresh_receive<K: KeySupply>(site: &mut Site<K>, env: &Envelope) -> Result<TableManifest> {
    let (h, payload) = open(site.keys_mut(), &env.0)?;
    check_object_id(&h.object)?;
    let next: TableManifest =
        serde_json::from_value(h.info).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let zero = TableShare::from_bytes(payload.expose())
        .map_err(|e| VaultError::Malformed(e.to_string()))?;
    let cur = manifest(site, &h.object, false)
        .ok_or_else(|| VaultError::UnknownObject(h.object.clone()))?;
    let same_table = TableManifest {
        epoch: cur.epoch,
        ..next.clone()
    } == cur;
    if h.kind != "refresh-table"
        || next.object != h.object
        || cur.owner != h.from
        || next.epoch != cur.epoch + 1
        || !same_table
    {
        return Err(VaultError::Malformed(
            "table refresh does not follow the committed table".into(),
        ));
    }
    let mut share = load_share(site.dir(), &cur)?;
    share
        .refresh(&zero)
        .map_err(|e| VaultError::Malformed(e.to_string()))?;
    if share.columns.len() != zero.columns.len() {
        return Err(VaultError::Malformed(
            "table refresh has other columns than the table".into(),
        ));
    }
    let dir = tables_dir(site, "objects").join(&cur.object);
    let bytes = kagi_keymat::Key::from_vec(share.to_bytes());
    write_atomic(&dir.join(share_name(next.epoch)), bytes.expose())?;
    write_atomic(&dir.join("manifest.next"), &json(&next)?)?;
    Ok(next)
}

/// The epoch of a prepared, uncommitted refresh of a table, if any.
pub fn prepared_epoch<K: KeySupply>(site: &Site<K>, object: &str) -> Option<u64> {
    check_object_id(object).ok()?;
    let m = fs::read(
        tables_dir(site, "objects")
            .join(object)
            .join("manifest.next"),
    )
    .ok()?;
    serde_json::from_slice::<TableManifest>(&m)
        .ok()
        .map(|m| m.epoch)
}

/// Refresh, step 2 (site): switches to the prepared epoch (one atomic rename of the manifest)
/// and deletes the old share. Committing again is a no-op.
pub fn refresh_commit<K: KeySupply>(site: &mut Site<K>, object: &str) -> Result<()> {
    check_object_id(object)?;
    let dir = tables_dir(site, "objects").join(object);
    if manifest(site, object, false).is_none() {
        return Err(VaultError::UnknownObject(object.to_string()));
    }
    if prepared_epoch(site, object).is_some() {
        fs::rename(dir.join("manifest.next"), dir.join("manifest.json"))?;
        fs::File::open(&dir)?.sync_all()?;
    }
    let now = manifest(site, object, false)
        .ok_or_else(|| VaultError::UnknownObject(object.to_string()))?;
    // Every other share file is from an earlier epoch (or left by a crash between the rename and
    // this removal): none may stay behind.
    for e in fs::read_dir(&dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("share.") && name != share_name(now.epoch) {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Discards a prepared refresh (absent is not an error); the committed epoch stays.
pub fn refresh_abort<K: KeySupply>(site: &mut Site<K>, object: &str) -> Result<()> {
    check_object_id(object)?;
    let dir = tables_dir(site, "objects").join(object);
    if let Some(e) = prepared_epoch(site, object) {
        fs::remove_file(dir.join("manifest.next"))?;
        match fs::remove_file(dir.join(share_name(e))) {
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

    #[test]
    fn a_refresh_rerandomises_every_share_and_epochs_do_not_mix() {
        use kagi_mpc::query::{parse, plan};
        use kagi_mpc::shares::reconstruct;
        use kagi_mpc::sim::query_local;
        use kagi_mpc::table::zero_sharing;
        use kagi_mpc::Security;

        let base = std::env::temp_dir().join(format!("kagi-tables-r-{}", std::process::id()));
        let kms = MemoryKms::new(1 << 14, None);
        let mut owner = kms.party("owner");
        let names = ["s0", "s1", "s2"];
        let mut sites: Vec<Site<_>> = names
            .iter()
            .map(|n| Site::new(base.join(n), kms.party(n)))
            .collect();
        let mut csv = String::from("age,dx\n");
        for r in 0..60u64 {
            csv.push_str(&format!(
                "{},{}\n",
                20 + (r * 7) % 70,
                ["A", "B"][(r % 3 == 0) as usize]
            ));
        }
        let t = encode_csv(&csv, &parse_schema("age:int, dx:cat(A|B)").unwrap()).unwrap();
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
            receive(s, &seal_share(&mut owner, &m, &shares[i]).unwrap()).unwrap();
            commit(s, &m.object).unwrap();
        }
        let old: Vec<TableShare> = sites
            .iter()
            .map(|s| load_share(s.dir(), &m).unwrap())
            .collect();

        // Prepare at all three: the committed epoch still answers; then commit.
        let next = TableManifest {
            epoch: 1,
            ..m.clone()
        };
        let zero = zero_sharing(&m.schema.stored_names(), m.schema.rows, &mut os_words());
        for (i, s) in sites.iter_mut().enumerate() {
            let env = seal_refresh(&mut owner, &next, &zero[i]).unwrap();
            refresh_receive(s, &env).unwrap();
            assert_eq!(prepared_epoch(s, &m.object), Some(1));
            assert_eq!(manifest(s, &m.object, false).unwrap().epoch, 0);
            assert_eq!(load_share(s.dir(), &m).unwrap(), old[i]);
        }
        for s in sites.iter_mut() {
            refresh_commit(s, &m.object).unwrap();
            refresh_commit(s, &m.object).unwrap();
            assert_eq!(manifest(s, &m.object, false).unwrap(), next);
            assert_eq!(prepared_epoch(s, &m.object), None);
            assert!(
                !share_path(s.dir(), &m).exists(),
                "the old share is deleted"
            );
        }
        let new: Vec<TableShare> = sites
            .iter()
            .map(|s| load_share(s.dir(), &next).unwrap())
            .collect();
        let new: [TableShare; 3] = new.try_into().unwrap();
        let old: [TableShare; 3] = old.try_into().unwrap();

        // Every stored word of every party changed; the values did not.
        for name in m.schema.stored_names() {
            for i in 0..3 {
                let (o, n) = (&old[i].columns[&name], &new[i].columns[&name]);
                assert!(
                    o.a.iter().zip(&n.a).all(|(x, y)| x != y),
                    "{name} party {i}"
                );
            }
            let parts = |s: &[TableShare; 3]| [0, 1, 2].map(|i| s[i].columns[&name].clone());
            assert_eq!(reconstruct(&parts(&new)).unwrap(), t.stored[&name]);
            // One party's old share with the others' new ones: the copies disagree.
            let mixed = [old[0].clone(), new[1].clone(), new[2].clone()];
            assert!(reconstruct(&parts(&mixed)).is_none(), "{name}");
        }

        // Queries on the new epoch are right; a query mixing epochs gives no result.
        let q = plan(&m.schema, &parse("count where age >= 50").unwrap()).unwrap();
        let clear = csv
            .lines()
            .skip(1)
            .filter(|l| l.split(',').next().unwrap().parse::<u64>().unwrap() >= 50)
            .count();
        let sum = plan(&m.schema, &parse("sum(age)").unwrap()).unwrap();
        let clear_sum: u64 = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse::<u64>().unwrap())
            .sum();
        for sec in [Security::SemiHonest, Security::Malicious] {
            let r = query_local(&new, &m.schema, &q, sec, 10).unwrap();
            assert_eq!(r.result["count"].as_u64(), Some(clear as u64), "{sec:?}");
            let r = query_local(&new, &m.schema, &sum, sec, 10).unwrap();
            assert_eq!(
                r.result["sum(age)"].as_f64(),
                Some(clear_sum as f64),
                "{sec:?}: {r:?}"
            );
            // Mixed epochs: malicious mode aborts; semi-honest mode computes on garbage (a
            // random offset on every value), which is why the sites refuse a query at another
            // epoch than the one it names.
            let mixed = [new[0].clone(), old[1].clone(), new[2].clone()];
            match (sec, query_local(&mixed, &m.schema, &sum, sec, 10)) {
                (_, Err(_)) => {}
                (Security::SemiHonest, Ok(r)) => {
                    assert_ne!(r.result["sum(age)"].as_f64(), Some(clear_sum as f64))
                }
                (Security::Malicious, Ok(r)) => panic!("mixed epochs gave a result: {r:?}"),
            }
        }

        // A refresh must follow the committed epoch (a replayed one is refused), and an
        // aborted one leaves nothing behind.
        let env = seal_refresh(&mut owner, &next, &zero[0]).unwrap();
        assert!(refresh_receive(&mut sites[0], &env).is_err());
        let next2 = TableManifest {
            epoch: 2,
            ..m.clone()
        };
        let env = seal_refresh(&mut owner, &next2, &zero[0]).unwrap();
        refresh_receive(&mut sites[0], &env).unwrap();
        refresh_abort(&mut sites[0], &m.object).unwrap();
        assert_eq!(prepared_epoch(&sites[0], &m.object), None);
        assert!(!share_path(sites[0].dir(), &next2).exists());
        assert_eq!(manifest(&sites[0], &m.object, false).unwrap().epoch, 1);
        let _ = fs::remove_dir_all(&base);
    }
}
