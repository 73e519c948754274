//! The authentication-key ledger of one photon link end, kept in SQLite.
//!
//! Every classical message of the post-processing protocol is tagged with a one-time pad
//! (Wegman–Carter). The pads live in *segments*: segment 0 is the link's pre-shared key, and
//! segment `b` is the part of block `b`'s secret key set aside to authenticate later blocks.
//! A block reserves a range `[offset, offset + len)` of one segment, named in its first message.
//!
//! Why this is safe when messages are lost or a node crashes mid-block: a pad must never tag two
//! different messages. Each end refuses a reservation that starts below its *watermark* for the
//! segment, and moves the watermark past the whole reservation, on disk, before any pad of it is
//! used. When the block ends with key at this end (both ends then consumed exactly the same pads,
//! in lock step) its unused pads become a new segment; when it fails, the tail past what either
//! end may have tagged is handed back
//! ([`kagi_postproc::link_machine::FAILED_BLOCK_SLACK_PADS`]). A reservation naming a block at or
//! below the last one this end saw is refused too, so a block's key can never be produced twice.
//! The rules of the exchange live in [`kagi_postproc::link_machine`]; this is its SQLite
//! [`PadLedger`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kagi_keymat::Key;
use rusqlite::{params, Connection, OptionalExtension};

use kagi_postproc::link_machine::ledger::{check_reservation, handed_back, PadLedger};

use crate::seal::Sealer;

/// Ledger failures (storage only; refusals are [`Refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite reported an error.
    #[error("photon link ledger: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row is inconsistent.
    #[error("photon link ledger: corrupt row: {0}")]
    Corrupt(&'static str),
    /// A value the ledger's safety depends on failed authentication.
    #[error("photon link ledger: refusing to run the link: {0}; using it could reuse authentication pads")]
    Unsafe(String),
}

fn create_tables(conn: &Connection) -> Result<(), rusqlite::Error> {
    // Values are sealed blobs (`crate::seal`); tables created before sealing declared the two
    // counters INTEGER, which SQLite lets hold blobs all the same.
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS photon_link (
             peer TEXT PRIMARY KEY, hash_key BLOB NOT NULL, last_block BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS auth_segment (
             peer TEXT NOT NULL, segment INTEGER NOT NULL, bytes BLOB NOT NULL,
             watermark BLOB NOT NULL, PRIMARY KEY (peer, segment));
         CREATE TABLE IF NOT EXISTS quarantine (
             peer TEXT NOT NULL, segment INTEGER NOT NULL, bytes BLOB, watermark BLOB,
             reason TEXT NOT NULL);",
    )
}

fn seg_key(peer: &str, segment: u64) -> String {
    format!("{peer}/{segment}")
}

/// A column read as bytes whatever its stored type (a value in the clear then fails
/// authentication instead of failing the query).
fn blob(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    })
}

fn u64_of(b: &[u8]) -> Result<u64, LedgerError> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| LedgerError::Corrupt("counter is not 8 bytes"))?;
    Ok(u64::from_le_bytes(a))
}

/// Seals the rows of a ledger written before sealing (integer counters, bytes in the clear),
/// in one transaction, then vacuums. `allowed` is false unless the KEK was created by this
/// start: otherwise rows in the clear are forgeries, and this refuses.
pub fn seal_legacy_rows(
    conn: &Connection,
    sealer: &Sealer,
    allowed: bool,
) -> Result<usize, LedgerError> {
    create_tables(conn)?;
    let links: Vec<(String, Vec<u8>, i64)> = {
        let mut st = conn.prepare(
            "SELECT peer, hash_key, last_block FROM photon_link WHERE typeof(last_block) = 'integer'",
        )?;
        let r = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        r.collect::<Result<_, _>>()?
    };
    let segs: Vec<(String, i64, Vec<u8>, i64)> = {
        let mut st = conn.prepare(
            "SELECT peer, segment, bytes, watermark FROM auth_segment WHERE typeof(watermark) = 'integer'",
        )?;
        let r = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        r.collect::<Result<_, _>>()?
    };
    if links.is_empty() && segs.is_empty() {
        return Ok(0);
    }
    if !allowed {
        return Err(LedgerError::Unsafe(
            "rows written in the clear in a sealed ledger".into(),
        ));
    }
    let tx = conn.unchecked_transaction()?;
    for (peer, h, lb) in &links {
        let h = zeroize::Zeroizing::new(h.clone());
        tx.execute(
            "UPDATE photon_link SET hash_key = ?2, last_block = ?3 WHERE peer = ?1",
            params![
                peer,
                sealer.seal("photon_link.hash_key", peer, &h),
                sealer.seal("photon_link.last_block", peer, &(*lb as u64).to_le_bytes())
            ],
        )?;
    }
    for (peer, seg, bytes, wm) in &segs {
        let sk = seg_key(peer, *seg as u64);
        let b = zeroize::Zeroizing::new(bytes.clone());
        tx.execute(
            "UPDATE auth_segment SET bytes = ?3, watermark = ?4 WHERE peer = ?1 AND segment = ?2",
            params![
                peer,
                seg,
                sealer.seal("auth_segment.bytes", &sk, &b),
                sealer.seal("auth_segment.watermark", &sk, &(*wm as u64).to_le_bytes())
            ],
        )?;
    }
    tx.commit()?;
    conn.execute_batch("VACUUM")?;
    crate::store::checkpoint_truncate(conn)?;
    Ok(links.len() + segs.len())
}

pub use kagi_postproc::link_machine::ledger::{Refusal, Reservation};

struct Segment {
    bytes: Key,
    watermark: u64,
}

/// One link end's ledger (one row set per peer in a shared SQLite file).
pub struct AuthLedger {
    conn: Connection,
    sealer: Arc<Sealer>,
    peer: String,
    hash_key: Key,
    segments: BTreeMap<u64, Segment>,
    last_block: u64,
}

impl std::fmt::Debug for AuthLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLedger")
            .field("peer", &self.peer)
            .field("segments", &self.segments.len())
            .field("last_block", &self.last_block)
            .finish_non_exhaustive()
    }
}

impl AuthLedger {
    /// Opens the ledger for the link to `peer` at `path`, sealing values with `sealer`; on first
    /// use stores `bootstrap` (the pre-shared key: 16 bytes of hash key, then segment 0).
    ///
    /// Every value is sealed (see [`crate::seal`]): the hash key, the last block, each
    /// segment's bytes and its watermark, each bound to its peer and segment. A segment that
    /// fails authentication is quarantined (moved to the `quarantine` table, never used); a hash
    /// key or last block that fails stops the link with [`LedgerError::Unsafe`].
    ///
    /// # Errors
    /// Storage failures, a bootstrap shorter than 16 bytes, or an unsafe authentication failure.
    pub fn open(
        path: &Path,
        sealer: Arc<Sealer>,
        peer: &str,
        bootstrap: impl FnOnce() -> Key,
    ) -> Result<Self, LedgerError> {
        let conn = crate::store::open_db(path, crate::store::Sync::Full)?;
        create_tables(&conn)?;
        let row: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT hash_key, last_block FROM photon_link WHERE peer = ?1",
                params![peer],
                |r| Ok((blob(r, 0)?, blob(r, 1)?)),
            )
            .optional()?;
        let (hash_key, last_block) = match row {
            Some((h, lb)) => {
                let unsafe_fail = |e: crate::seal::SealError| LedgerError::Unsafe(e.to_string());
                let h = sealer
                    .open("photon_link.hash_key", peer, &h)
                    .map_err(unsafe_fail)?;
                let lb = sealer
                    .open("photon_link.last_block", peer, &lb)
                    .map_err(unsafe_fail)?;
                (Key::from_slice(&h), u64_of(&lb)?)
            }
            None => {
                let mut boot = bootstrap();
                if boot.len() < 16 {
                    return Err(LedgerError::Corrupt("bootstrap key shorter than 16 bytes"));
                }
                let hash = boot.take_front(16);
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "INSERT INTO photon_link (peer, hash_key, last_block) VALUES (?1, ?2, ?3)",
                    params![
                        peer,
                        sealer.seal("photon_link.hash_key", peer, hash.expose()),
                        sealer.seal("photon_link.last_block", peer, &0u64.to_le_bytes())
                    ],
                )?;
                tx.execute(
                    "INSERT INTO auth_segment (peer, segment, bytes, watermark) VALUES (?1, 0, ?2, ?3)",
                    params![
                        peer,
                        sealer.seal("auth_segment.bytes", &seg_key(peer, 0), boot.expose()),
                        sealer.seal("auth_segment.watermark", &seg_key(peer, 0), &0u64.to_le_bytes())
                    ],
                )?;
                tx.commit()?;
                (hash, 0)
            }
        };
        if hash_key.len() != 16 {
            return Err(LedgerError::Corrupt("hash key is not 16 bytes"));
        }
        let mut segments = BTreeMap::new();
        let mut bad = Vec::new();
        {
            let mut st =
                conn.prepare("SELECT segment, bytes, watermark FROM auth_segment WHERE peer = ?1")?;
            let rows = st.query_map(params![peer], |r| {
                Ok((r.get::<_, i64>(0)?, blob(r, 1)?, blob(r, 2)?))
            })?;
            for row in rows {
                let (seg, bytes, wm) = row?;
                let sk = seg_key(peer, seg as u64);
                let opened = sealer
                    .open("auth_segment.bytes", &sk, &bytes)
                    .and_then(|b| Ok((b, sealer.open("auth_segment.watermark", &sk, &wm)?)));
                match opened {
                    Ok((b, w)) => match u64_of(&w) {
                        Ok(w) => {
                            segments.insert(
                                seg as u64,
                                Segment {
                                    bytes: Key::from_slice(&b),
                                    watermark: w,
                                },
                            );
                        }
                        Err(_) => bad.push((seg, "watermark is not 8 bytes".to_string())),
                    },
                    Err(e) => bad.push((seg, e.to_string())),
                }
            }
        }
        if !bad.is_empty() {
            let tx = conn.unchecked_transaction()?;
            for (seg, why) in &bad {
                tracing::error!(peer, segment = seg, reason = %why, "quarantined a photon-link authentication segment that failed authentication; its pads will never be used");
                tx.execute(
                    "INSERT INTO quarantine SELECT peer, segment, bytes, watermark, ?3 FROM auth_segment WHERE peer = ?1 AND segment = ?2",
                    params![peer, seg, why],
                )?;
                tx.execute(
                    "DELETE FROM auth_segment WHERE peer = ?1 AND segment = ?2",
                    params![peer, seg],
                )?;
            }
            tx.commit()?;
        }
        Ok(Self {
            conn,
            sealer,
            peer: peer.to_string(),
            hash_key,
            segments,
            last_block,
        })
    }

    /// Segments quarantined so far in this ledger file (all peers).
    pub fn quarantined(&self) -> Result<u64, LedgerError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM quarantine", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    fn put_watermark(
        &self,
        conn: &Connection,
        segment: u64,
        watermark: u64,
    ) -> Result<(), LedgerError> {
        conn.execute(
            "UPDATE auth_segment SET watermark = ?3 WHERE peer = ?1 AND segment = ?2",
            params![
                self.peer,
                segment as i64,
                self.sealer.seal(
                    "auth_segment.watermark",
                    &seg_key(&self.peer, segment),
                    &watermark.to_le_bytes()
                )
            ],
        )?;
        Ok(())
    }

    fn put_last_block(&self, conn: &Connection, block: u64) -> Result<(), LedgerError> {
        conn.execute(
            "UPDATE photon_link SET last_block = ?2 WHERE peer = ?1",
            params![
                self.peer,
                self.sealer
                    .seal("photon_link.last_block", &self.peer, &block.to_le_bytes())
            ],
        )?;
        Ok(())
    }

    /// The newest authentication segment (named after the last block that ended with key here).
    pub fn newest_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// The last block this end took part in.
    pub fn last_block(&self) -> u64 {
        self.last_block
    }

    /// Pad bytes not yet used, over all segments.
    pub fn available(&self) -> u64 {
        self.segments
            .values()
            .map(|s| (s.bytes.len() as u64).saturating_sub(s.watermark))
            .sum()
    }

    /// The next reservation of `len` bytes this end would propose: the oldest segment with
    /// room (oldest first, so segments the other end may lack are tried last), for the block
    /// after `floor` and after the last one seen.
    pub fn propose(&self, len: u64, floor: u64) -> Option<Reservation> {
        let (segment, s) = self
            .segments
            .iter()
            .find(|(_, s)| s.watermark + len <= s.bytes.len() as u64)?;
        Some(Reservation {
            block: self.last_block.max(floor) + 1,
            segment: *segment,
            offset: s.watermark,
            len,
        })
    }

    /// Takes the pads of `r` if this end may use them, moving the watermark past the whole range
    /// and the last block to `r.block` on disk first. Returns the hash key followed by the pads,
    /// ready for the protocol's authentication pool.
    ///
    /// `Ok(Err(refusal))` when this end may not use them (nothing changed).
    ///
    /// # Errors
    /// Storage failures.
    pub fn reserve(&mut self, r: Reservation) -> Result<Result<Key, Refusal>, LedgerError> {
        let seg = self
            .segments
            .get(&r.segment)
            .map(|s| (s.bytes.len() as u64, s.watermark));
        let end = match check_reservation(&r, self.last_block, seg) {
            Ok(end) => end,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let tx = self.conn.unchecked_transaction()?;
        self.put_watermark(&tx, r.segment, end)?;
        self.put_last_block(&tx, r.block)?;
        tx.commit()?;
        self.last_block = r.block;
        let s = self
            .segments
            .get_mut(&r.segment)
            .ok_or(LedgerError::Corrupt("segment vanished"))?;
        s.watermark = end;
        let mut out = Key::from_slice(self.hash_key.expose());
        out.extend_from(&Key::from_slice(
            &s.bytes.expose()[r.offset as usize..end as usize],
        ));
        Ok(Ok(out))
    }

    /// After a block ended with key at this end: hands back the unused tail of its reservation
    /// (`used` bytes were consumed, the same at both ends) and adds `replenish` as segment
    /// `r.block`. Segments used up are deleted.
    ///
    /// # Errors
    /// Storage failures.
    pub fn settle(&mut self, r: Reservation, used: u64, replenish: Key) -> Result<(), LedgerError> {
        let tx = self.conn.unchecked_transaction()?;
        let back = self
            .segments
            .get(&r.segment)
            .and_then(|s| handed_back(s.watermark, &r, used));
        if let Some(w) = back {
            self.put_watermark(&tx, r.segment, w)?;
        }
        if !replenish.is_empty() {
            let sk = seg_key(&self.peer, r.block);
            tx.execute(
                "INSERT OR REPLACE INTO auth_segment (peer, segment, bytes, watermark) VALUES (?1, ?2, ?3, ?4)",
                params![
                    self.peer,
                    r.block as i64,
                    self.sealer.seal("auth_segment.bytes", &sk, replenish.expose()),
                    self.sealer.seal("auth_segment.watermark", &sk, &0u64.to_le_bytes())
                ],
            )?;
        }
        if let (Some(w), Some(s)) = (back, self.segments.get_mut(&r.segment)) {
            s.watermark = w;
        }
        let spent: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.watermark >= s.bytes.len() as u64)
            .map(|(k, _)| *k)
            .collect();
        for seg in &spent {
            tx.execute(
                "DELETE FROM auth_segment WHERE peer = ?1 AND segment = ?2",
                params![self.peer, *seg as i64],
            )?;
        }
        tx.commit()?;
        for seg in spent {
            self.segments.remove(&seg);
        }
        if !replenish.is_empty() {
            self.segments.insert(
                r.block,
                Segment {
                    bytes: replenish,
                    watermark: 0,
                },
            );
        }
        Ok(())
    }

    /// Learns from the other end's refusal so the next proposal is acceptable: a later block
    /// number, a higher watermark, or a segment to forget (the other end never got its block's
    /// key, so its pads can never be agreed on).
    ///
    /// # Errors
    /// Storage failures.
    pub fn learn(&mut self, refusal: &Refusal) -> Result<(), LedgerError> {
        match *refusal {
            Refusal::StaleBlock { last_block } if last_block > self.last_block => {
                self.put_last_block(&self.conn, last_block)?;
                self.last_block = last_block;
            }
            Refusal::NoSegment { segment } | Refusal::OutOfRange { segment } => {
                self.conn.execute(
                    "DELETE FROM auth_segment WHERE peer = ?1 AND segment = ?2",
                    params![self.peer, segment as i64],
                )?;
                self.segments.remove(&segment);
            }
            Refusal::StalePads { segment, watermark } => {
                if self
                    .segments
                    .get(&segment)
                    .is_some_and(|s| watermark > s.watermark)
                {
                    self.put_watermark(&self.conn, segment, watermark)?;
                    if let Some(s) = self.segments.get_mut(&segment) {
                        s.watermark = watermark;
                    }
                }
            }
            Refusal::StaleBlock { .. } => {}
        }
        Ok(())
    }
}

impl PadLedger for AuthLedger {
    type Error = LedgerError;

    fn last_block(&self) -> u64 {
        AuthLedger::last_block(self)
    }

    fn available(&self) -> u64 {
        AuthLedger::available(self)
    }

    fn propose(&self, len: u64, floor: u64) -> Option<Reservation> {
        AuthLedger::propose(self, len, floor)
    }

    fn reserve(&mut self, r: Reservation) -> Result<Result<Key, Refusal>, LedgerError> {
        AuthLedger::reserve(self, r)
    }

    fn settle(&mut self, r: Reservation, used: u64, replenish: Key) -> Result<(), LedgerError> {
        AuthLedger::settle(self, r, used, replenish)
    }

    fn learn(&mut self, refusal: &Refusal) -> Result<(), LedgerError> {
        AuthLedger::learn(self, refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::new(&Key::from_slice(&[3; 32]), "photon-ledger"))
    }

    fn boot() -> Key {
        Key::from_vec((0..16 + 1000u32).map(|i| i as u8).collect())
    }

    fn pair(dir: &Path) -> (AuthLedger, AuthLedger) {
        (
            AuthLedger::open(&dir.join("a.db"), sealer(), "b", boot).unwrap(),
            AuthLedger::open(&dir.join("b.db"), sealer(), "a", boot).unwrap(),
        )
    }

    #[test]
    fn both_ends_reserve_the_same_pads_and_never_reuse_them() {
        let dir = tempdir();
        let (mut alice, mut bob) = pair(&dir);
        let r = bob.propose(100, 0).unwrap();
        assert_eq!((r.block, r.segment, r.offset), (1, 0, 0));
        let pb = bob.reserve(r).unwrap().unwrap();
        let pa = alice.reserve(r).unwrap().unwrap();
        assert_eq!(pa, pb);
        assert_eq!(pa.len(), 116);
        // The same reservation again is refused at both ends (block and pads already used).
        assert!(matches!(
            alice.reserve(r).unwrap(),
            Err(Refusal::StaleBlock { .. })
        ));
        let again = Reservation { block: 2, ..r };
        assert_eq!(
            alice.reserve(again).unwrap(),
            Err(Refusal::StalePads {
                segment: 0,
                watermark: 100
            })
        );
        // A failed block burns the whole range: the next proposal starts after it.
        assert_eq!(bob.propose(100, 0).unwrap().offset, 100);
    }

    #[test]
    fn success_hands_back_the_tail_and_adds_a_segment_and_survives_reopen() {
        let dir = tempdir();
        let (mut alice, mut bob) = pair(&dir);
        let r = bob.propose(100, 0).unwrap();
        bob.reserve(r).unwrap().unwrap();
        alice.reserve(r).unwrap().unwrap();
        bob.settle(r, 32, Key::from_slice(&[7u8; 500])).unwrap();
        alice.settle(r, 32, Key::from_slice(&[7u8; 500])).unwrap();
        let next = bob.propose(100, 0).unwrap();
        assert_eq!((next.block, next.segment, next.offset), (2, 0, 32));
        drop(bob);
        let bob = AuthLedger::open(&dir.join("b.db"), sealer(), "a", || unreachable!()).unwrap();
        assert_eq!(bob.propose(100, 0), Some(next));
        assert_eq!(bob.available(), (1000 - 32) + 500);
        assert_eq!(bob.last_block(), 1);
    }

    #[test]
    fn refusals_teach_the_proposer_to_catch_up() {
        let dir = tempdir();
        let (mut alice, mut bob) = pair(&dir);
        // Bob lost his state about block 5 (e.g. the peer used a later block than he knows).
        let r = Reservation {
            block: 5,
            segment: 0,
            offset: 300,
            len: 100,
        };
        alice.reserve(r).unwrap().unwrap();
        let p = bob.propose(100, 0).unwrap();
        let refusal = alice.reserve(p).unwrap().unwrap_err();
        assert_eq!(refusal, Refusal::StaleBlock { last_block: 5 });
        bob.learn(&refusal).unwrap();
        let p = bob.propose(100, 0).unwrap();
        assert_eq!(p.block, 6);
        let refusal = alice.reserve(p).unwrap().unwrap_err();
        assert_eq!(
            refusal,
            Refusal::StalePads {
                segment: 0,
                watermark: 400
            }
        );
        bob.learn(&refusal).unwrap();
        let p = bob.propose(100, 0).unwrap();
        assert_eq!(p.offset, 400);
        assert!(bob.reserve(p).unwrap().is_ok());
        assert!(alice.reserve(p).unwrap().is_ok());
        // A segment only one end holds is forgotten after the refusal.
        bob.settle(p, 10, Key::from_slice(&[1u8; 200])).unwrap();
        let mut q = bob.propose(100, 0).unwrap();
        q.segment = 6;
        q.offset = 0;
        let refusal = alice.reserve(q).unwrap().unwrap_err();
        assert_eq!(refusal, Refusal::NoSegment { segment: 6 });
        bob.learn(&refusal).unwrap();
        assert_eq!(bob.available(), 1000 - 410);
    }

    #[test]
    fn exhausted_pads_give_no_proposal() {
        let dir = tempdir();
        let (_alice, mut bob) = pair(&dir);
        for _ in 0..10 {
            let r = bob.propose(100, 0).unwrap();
            bob.reserve(r).unwrap().unwrap();
        }
        assert_eq!(bob.propose(100, 0), None);
        assert_eq!(bob.available(), 0);
    }

    fn flip(db: &Path, sql_select: &str, sql_update: &str) {
        let c = Connection::open(db).unwrap();
        let mut v: Vec<u8> = c.query_row(sql_select, [], |r| r.get(0)).unwrap();
        let i = v.len() / 2;
        v[i] ^= 1;
        c.execute(sql_update, params![v]).unwrap();
    }

    #[test]
    fn a_flipped_byte_in_any_ledger_value_is_caught() {
        let seg = "FROM auth_segment WHERE peer = 'a' AND segment = 0";
        for (col, table, quarantines) in [
            ("hash_key", "photon_link", false),
            ("last_block", "photon_link", false),
            ("bytes", "auth_segment", true),
            ("watermark", "auth_segment", true),
        ] {
            let dir = tempdir();
            let (_, mut bob) = pair(&dir);
            let r = bob.propose(100, 0).unwrap();
            bob.reserve(r).unwrap().unwrap();
            bob.settle(r, 10, Key::from_slice(&[7u8; 300])).unwrap();
            drop(bob);
            let db = dir.join("b.db");
            let whr = if table == "photon_link" {
                "FROM photon_link WHERE peer = 'a'".to_string()
            } else {
                seg.to_string()
            };
            flip(
                &db,
                &format!("SELECT {col} {whr}"),
                &format!(
                    "UPDATE {table} SET {col} = ?1 {}",
                    whr.trim_start_matches(&format!("FROM {table} "))
                ),
            );
            let opened = AuthLedger::open(&db, sealer(), "a", || unreachable!());
            if quarantines {
                let l = opened.unwrap();
                assert_eq!(l.quarantined().unwrap(), 1, "{col}");
                // Segment 0 is gone; only the intact segment 1 is offered.
                assert_eq!(l.available(), 300, "{col}");
                assert_eq!(l.propose(10, 0).unwrap().segment, 1, "{col}");
            } else {
                let e = opened.unwrap_err().to_string();
                assert!(e.contains("refusing"), "{col}: {e}");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn no_pad_bytes_in_the_clear_on_disk() {
        let dir = tempdir();
        let (a, b) = pair(&dir);
        drop((a, b));
        let boot = boot();
        for f in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(32).any(|w| w == &boot.expose()[100..132]));
        }
    }

    fn tempdir() -> std::path::PathBuf {
        crate::loopback::scratch_dir("ledger").unwrap()
    }
}
