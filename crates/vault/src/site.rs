//! A storage site: one SAE beside one trusted node, holding one share of each object it stores,
//! durably, and nothing more.
//!
//! Layout under the site's directory (all writes: temporary file, fsync, rename, fsync dir):
//!
//! ```text
//! pending/<object>/{manifest.json, share.E.bin}   received, not yet committed by the owner
//! objects/<object>/{manifest.json, share.E.bin}   committed: what `get`, `ls`, refresh see
//! objects/<object>/{manifest.next, share.E+1.bin} a prepared refresh, until its commit
//! ```
//!
//! `E` is the refresh epoch named in the manifest. A put becomes visible only when the owner
//! commits it at every site, after every site has stored its share; a site killed half-way
//! leaves at most a `pending/` entry, which nobody reads and a retry overwrites. A refresh is
//! prepared at every site before any site commits; a commit is one rename of `manifest.next`
//! over `manifest.json` (the switch), after which the old share file is deleted — a site never
//! keeps a share of an earlier epoch. A refresh interrupted between commits is rolled forward
//! ([`Site::has_prepared_refresh`], [`crate::client::roll_forward`]): once any site has
//! committed, every site had prepared.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kagi_keymat::Key;
use kagi_sharing::repair::{self, RepairPiece};
use kagi_sharing::{refresh, Params, Share};
use serde::{Deserialize, Serialize};

use crate::envelope::{open, seal, Envelope};
use crate::error::{Result, VaultError};
use crate::keys::KeySupply;

/// Public metadata of a stored object, kept with every share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Object ID (a UUID).
    pub object: String,
    /// The owner's name for it (e.g. the file name).
    pub name: String,
    /// Object length in bytes.
    pub len: u64,
    /// Threshold.
    pub k: u8,
    /// Number of shares.
    pub n: u8,
    /// Site SAE IDs in share order: share `i` lives at `sites[i - 1]`.
    pub sites: Vec<String>,
    /// Whole-object Wegman–Carter tag (hex); its one-time key is shared along with the data.
    pub object_tag: String,
    /// Number of proactive refreshes so far.
    pub epoch: u64,
    /// The SAE that stored the object: the only one a site serves it to. Authenticated: a site
    /// accepts a share only in a transfer whose one-time MAC keys it shares with this SAE.
    #[serde(default)]
    pub owner: String,
}

impl Manifest {
    /// Sharing parameters.
    pub fn params(&self) -> Result<Params> {
        Ok(Params::new(self.k as usize, self.n as usize)?)
    }

    /// Share index of `site` (1-based).
    pub fn index_of(&self, site: &str) -> Option<usize> {
        self.sites.iter().position(|s| s == site).map(|i| i + 1)
    }
}

/// Checks that an object ID is a UUID (it becomes a directory name).
pub fn check_object_id(object: &str) -> Result<()> {
    uuid::Uuid::try_parse(object)
        .map(|_| ())
        .map_err(|_| VaultError::UnknownObject(object.to_string()))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| VaultError::Malformed("path".into()))?;
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A storage site with its own key supply (its SAE's access to its node).
pub struct Site<K: KeySupply> {
    dir: PathBuf,
    keys: K,
    /// This site's own refresh sub-share or repair piece between the protocol's steps.
    held: HashMap<(String, &'static str), Share>,
    held_pieces: HashMap<String, RepairPiece>,
    held_sums: HashMap<String, RepairPiece>,
}

impl<K: KeySupply> Site<K> {
    /// A site storing under `dir`.
    pub fn new(dir: impl Into<PathBuf>, keys: K) -> Self {
        Self {
            dir: dir.into(),
            keys,
            held: HashMap::new(),
            held_pieces: HashMap::new(),
            held_sums: HashMap::new(),
        }
    }

    /// The site's SAE ID.
    pub fn id(&self) -> &str {
        self.keys.sae()
    }

    /// Bytes of QKD key this site has drawn.
    pub fn key_bytes_used(&self) -> u64 {
        self.keys.key_bytes_used()
    }

    /// The site's key supply (for transfers of other object kinds, such as tables).
    pub(crate) fn keys_mut(&mut self) -> &mut K {
        &mut self.keys
    }

    /// The site's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn obj_dir(&self, object: &str) -> PathBuf {
        self.dir.join("objects").join(object)
    }

    /// Put, step 1: opens a share transfer and stores it as pending.
    pub fn receive_share(&mut self, env: &Envelope) -> Result<()> {
        let (h, payload) = open(&mut self.keys, &env.0)?;
        check_object_id(&h.object)?;
        let manifest: Manifest =
            serde_json::from_value(h.info).map_err(|e| VaultError::Malformed(e.to_string()))?;
        let share = Share::from_bytes(payload.expose())?;
        if manifest.object != h.object
            || manifest.owner != h.from
            || manifest.index_of(self.id()) != Some(share.index() as usize)
            || share.params() != manifest.params()?
        {
            return Err(VaultError::Malformed(
                "share does not match its manifest".into(),
            ));
        }
        let dir = self.dir.join("pending").join(&h.object);
        if dir.exists() {
            fs::remove_dir_all(&dir)?; // a retry after a failed put
        }
        write_atomic(&dir.join(share_name(manifest.epoch)), payload.expose())?;
        write_atomic(&dir.join("manifest.json"), &to_json(&manifest)?)?;
        Ok(())
    }

    /// Put, step 2: makes a pending object visible.
    pub fn commit(&mut self, object: &str) -> Result<()> {
        check_object_id(object)?;
        let pending = self.dir.join("pending").join(object);
        if !pending.exists() {
            return Err(VaultError::UnknownObject(object.to_string()));
        }
        let dest = self.obj_dir(object);
        fs::create_dir_all(self.dir.join("objects"))?;
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        fs::rename(&pending, &dest)?;
        fs::File::open(self.dir.join("objects"))?.sync_all()?;
        Ok(())
    }

    /// Forgets `object` entirely (pending or committed): the owner's rollback of a put that did
    /// not reach every site. Removing what is not there is not an error.
    pub fn abort(&mut self, object: &str) -> Result<()> {
        check_object_id(object)?;
        for d in [self.dir.join("pending").join(object), self.obj_dir(object)] {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Drops every uncommitted put (at start-up: a put in flight when the site stopped can no
    /// longer commit here, so its owner's commit fails and it rolls back). Returns how many.
    pub fn clear_pending(&mut self) -> Result<usize> {
        let pending = self.dir.join("pending");
        let n = fs::read_dir(&pending).map(|rd| rd.count()).unwrap_or(0);
        match fs::remove_dir_all(&pending) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The manifest of a put received here and not yet committed.
    pub fn pending_manifest(&self, object: &str) -> Option<Manifest> {
        check_object_id(object).ok()?;
        let m = fs::read(self.dir.join("pending").join(object).join("manifest.json")).ok()?;
        serde_json::from_slice(&m).ok()
    }

    /// Reads a committed share and its manifest.
    fn load(&self, object: &str) -> Result<(Manifest, Share)> {
        check_object_id(object)?;
        let d = self.obj_dir(object);
        let m = fs::read(d.join("manifest.json"))
            .map_err(|_| VaultError::UnknownObject(object.to_string()))?;
        let manifest: Manifest =
            serde_json::from_slice(&m).map_err(|e| VaultError::Malformed(e.to_string()))?;
        let bytes = Key::from_vec(fs::read(d.join(share_name(manifest.epoch)))?);
        Ok((manifest, Share::from_bytes(bytes.expose())?))
    }

    /// Path of the committed share file of `object` (for operators and tests).
    pub fn share_path(&self, object: &str) -> Result<PathBuf> {
        let (m, _) = self.load(object)?;
        Ok(self.obj_dir(object).join(share_name(m.epoch)))
    }

    /// The committed manifest of `object`, if this site holds a share of it.
    /// Reads only the manifest (no share bytes): a damaged share shows up when it is sent.
    pub fn manifest(&self, object: &str) -> Option<Manifest> {
        check_object_id(object).ok()?;
        let m = fs::read(self.obj_dir(object).join("manifest.json")).ok()?;
        serde_json::from_slice(&m).ok()
    }

    /// The epoch of the committed share of `object`, if this site holds one.
    pub fn committed_epoch(&self, object: &str) -> Option<u64> {
        self.manifest(object).map(|m| m.epoch)
    }

    /// Discards a prepared, uncommitted refresh of `object`.
    pub fn refresh_abort(&mut self, object: &str) -> Result<()> {
        if let Some(e) = self.has_prepared_refresh(object) {
            let d = self.obj_dir(object);
            fs::remove_file(d.join("manifest.next"))?;
            let _ = fs::remove_file(d.join(share_name(e)));
        }
        Ok(())
    }

    /// The epoch of a refresh of `object` prepared here but not committed, if any.
    pub fn has_prepared_refresh(&self, object: &str) -> Option<u64> {
        check_object_id(object).ok()?;
        let m = fs::read(self.obj_dir(object).join("manifest.next")).ok()?;
        serde_json::from_slice::<Manifest>(&m).ok().map(|m| m.epoch)
    }

    /// Get: seals this site's share of `object` for SAE `to`.
    pub fn send_share(&mut self, object: &str, to: &str) -> Result<Envelope> {
        let (manifest, share) = self.load(object)?;
        if manifest.owner != to {
            // Only the owner gets a share back; to anyone else the object does not exist.
            return Err(VaultError::UnknownObject(object.to_string()));
        }
        let info =
            serde_json::to_value(&manifest).map_err(|e| VaultError::Malformed(e.to_string()))?;
        seal(
            &mut self.keys,
            to,
            "get-share",
            object,
            info,
            share.to_bytes().expose(),
        )
    }

    /// The manifests of all committed objects.
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir.join("objects")) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            if let Ok(m) = fs::read(e.path().join("manifest.json")) {
                if let Ok(m) = serde_json::from_slice::<Manifest>(&m) {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(out)
    }

    /// Refresh, step 1: deals a sharing of zero; returns one sealed update per other site and
    /// keeps its own.
    pub fn refresh_deal(&mut self, object: &str) -> Result<Vec<Envelope>> {
        let (manifest, share) = self.load(object)?;
        let updates =
            refresh::refresh_deal(manifest.params()?, share.len(), &mut rand_core::OsRng)?;
        let mut out = Vec::new();
        for u in updates {
            let site = &manifest.sites[u.index() as usize - 1];
            if site == self.id() {
                self.held.insert((object.to_string(), "refresh"), u);
            } else {
                let env = seal(
                    &mut self.keys,
                    site,
                    "refresh",
                    object,
                    serde_json::json!({ "epoch": manifest.epoch }),
                    u.to_bytes().expose(),
                )?;
                out.push(env);
            }
        }
        Ok(out)
    }

    /// Refresh, step 2: opens the updates from every other site, adds them and its own to its
    /// share, and prepares (does not yet commit) the new share.
    pub fn refresh_apply(&mut self, object: &str, updates: &[Envelope]) -> Result<()> {
        let (mut manifest, mut share) = self.load(object)?;
        let own = self
            .held
            .remove(&(object.to_string(), "refresh"))
            .ok_or_else(|| VaultError::Malformed("refresh_apply before refresh_deal".into()))?;
        let mut all = vec![own];
        for env in updates {
            let (h, payload) = open(&mut self.keys, &env.0)?;
            if h.object != object || h.kind != "refresh" {
                return Err(VaultError::Malformed("update for another object".into()));
            }
            all.push(Share::from_bytes(payload.expose())?);
        }
        if all.len() != manifest.n as usize {
            return Err(VaultError::NotEnoughSites {
                object: object.to_string(),
                needed: manifest.n as usize,
                got: all.len(),
                detail: "refresh updates missing".into(),
            });
        }
        refresh::refresh_apply(&mut share, &all)?;
        manifest.epoch += 1;
        let d = self.obj_dir(object);
        write_atomic(
            &d.join(share_name(manifest.epoch)),
            share.to_bytes().expose(),
        )?;
        write_atomic(&d.join("manifest.next"), &to_json(&manifest)?)?;
        Ok(())
    }

    /// Refresh, step 3: switches to the prepared share (one rename) and deletes the old one.
    pub fn refresh_commit(&mut self, object: &str) -> Result<()> {
        check_object_id(object)?;
        let d = self.obj_dir(object);
        let old = self.load(object)?.0.epoch;
        fs::rename(d.join("manifest.next"), d.join("manifest.json"))?;
        fs::File::open(&d)?.sync_all()?;
        let _ = fs::remove_file(d.join(share_name(old)));
        Ok(())
    }

    /// Repair, step 1 (at a helper): pieces of this site's weighted share for the other
    /// helpers, sealed; its own piece is kept.
    pub fn repair_contribute(
        &mut self,
        object: &str,
        target: usize,
        helpers: &[u8],
    ) -> Result<Vec<Envelope>> {
        let (manifest, share) = self.load(object)?;
        self.held_sums.remove(object);
        let pieces = repair::repair_contribute(&share, target, helpers, &mut rand_core::OsRng)?;
        let mut out = Vec::new();
        for p in pieces {
            if p.to == share.index() {
                self.held_pieces.insert(object.to_string(), p);
            } else {
                let to = manifest.sites[p.to as usize - 1].clone();
                out.push(seal_piece(&mut self.keys, &to, object, &p)?);
            }
        }
        Ok(out)
    }

    /// Repair, step 2 (at a helper): sums its own piece and the received ones; the sum, sealed
    /// for the target site.
    pub fn repair_aggregate(&mut self, object: &str, received: &[Envelope]) -> Result<Envelope> {
        let (manifest, share) = self.load(object)?;
        // A sum whose sealing ran out of key is kept: the received pieces' keys were served
        // once, so the owner's retry (with the same pieces) must not open them again.
        let sum = match self.held_sums.remove(object) {
            Some(sum) => sum,
            None => {
                let own = self.held_pieces.remove(object).ok_or_else(|| {
                    VaultError::Malformed("repair_aggregate before repair_contribute".into())
                })?;
                let mut pieces = vec![own];
                for env in received {
                    pieces.push(open_piece(&mut self.keys, object, env)?);
                }
                repair::repair_aggregate(share.index(), &pieces)?
            }
        };
        let to = manifest.sites[sum.target as usize - 1].clone();
        match seal_piece(&mut self.keys, &to, object, &sum) {
            Ok(env) => Ok(env),
            Err(e) => {
                if matches!(e, VaultError::KeyShortage { .. }) {
                    self.held_sums.insert(object.to_string(), sum);
                }
                Err(e)
            }
        }
    }

    /// Repair, step 3 (at the rebuilt site): combines the helpers' sums into its share and
    /// stores it, committed, with `manifest`.
    pub fn repair_receive(&mut self, manifest: &Manifest, sums: &[Envelope]) -> Result<()> {
        check_object_id(&manifest.object)?;
        let pieces = sums
            .iter()
            .map(|e| open_piece(&mut self.keys, &manifest.object, e))
            .collect::<Result<Vec<_>>>()?;
        let share = repair::repair_finish(&pieces)?;
        if manifest.index_of(self.id()) != Some(share.index() as usize) {
            return Err(VaultError::Malformed(
                "repaired share for another site".into(),
            ));
        }
        let d = self.dir.join("pending").join(&manifest.object);
        if d.exists() {
            fs::remove_dir_all(&d)?;
        }
        write_atomic(
            &d.join(share_name(manifest.epoch)),
            share.to_bytes().expose(),
        )?;
        write_atomic(&d.join("manifest.json"), &to_json(manifest)?)?;
        self.commit(&manifest.object)
    }
}

fn share_name(epoch: u64) -> String {
    format!("share.{epoch}.bin")
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| VaultError::Malformed(e.to_string()))
}

fn seal_piece(
    keys: &mut impl KeySupply,
    to: &str,
    object: &str,
    p: &RepairPiece,
) -> Result<Envelope> {
    let info = serde_json::json!({
        "from": p.from, "to": p.to, "target": p.target, "helpers": p.helpers,
        "k": p.params.k(), "n": p.params.n(),
    });
    seal(keys, to, "repair-piece", object, info, p.data.expose())
}

fn open_piece(keys: &mut impl KeySupply, object: &str, env: &Envelope) -> Result<RepairPiece> {
    let (h, data) = open(keys, &env.0)?;
    if h.object != object || h.kind != "repair-piece" {
        return Err(VaultError::Malformed("piece for another object".into()));
    }
    let bad = || VaultError::Malformed("repair piece metadata".into());
    let g = |k: &str| h.info.get(k).and_then(|v| v.as_u64()).ok_or_else(bad);
    let helpers: Vec<u8> = h
        .info
        .get("helpers")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(bad)?;
    let u8_of = |v: u64| u8::try_from(v).map_err(|_| bad());
    Ok(RepairPiece {
        from: u8_of(g("from")?)?,
        to: u8_of(g("to")?)?,
        target: u8_of(g("target")?)?,
        helpers,
        params: Params::new(g("k")? as usize, g("n")? as usize)?,
        data,
    })
}
