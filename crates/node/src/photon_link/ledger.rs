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
//! used. Only when the block ends with key at this end — both ends then consumed exactly the same
//! pads, in lock step — is the unused tail handed back. A reservation naming a block at or below
//! the last one this end saw is refused too, so a block's key can never be produced twice.

use std::collections::BTreeMap;
use std::path::Path;

use kagi_keymat::Key;
use rusqlite::{params, Connection, OptionalExtension};

/// Ledger failures (storage only; refusals are [`Refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite reported an error.
    #[error("photon link ledger: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row is inconsistent.
    #[error("photon link ledger: corrupt row: {0}")]
    Corrupt(&'static str),
}

/// Why this end refuses a block's reservation. Sent back to the other end, which catches up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// The block number is not above the last block this end saw.
    StaleBlock {
        /// The last block this end saw.
        last_block: u64,
    },
    /// This end does not hold the segment (its block did not end with key here).
    NoSegment {
        /// The segment asked for.
        segment: u64,
    },
    /// The range starts below pads this end may already have used.
    StalePads {
        /// The segment.
        segment: u64,
        /// This end's watermark in it.
        watermark: u64,
    },
    /// The range runs past the end of the segment.
    OutOfRange {
        /// The segment.
        segment: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::StaleBlock { last_block } => write!(f, "block not above {last_block}"),
            Refusal::NoSegment { segment } => write!(f, "no authentication segment {segment}"),
            Refusal::StalePads { segment, watermark } => {
                write!(f, "segment {segment} used up to {watermark}")
            }
            Refusal::OutOfRange { segment } => write!(f, "range past the end of segment {segment}"),
        }
    }
}

/// A reservation: which pads a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// Block number.
    pub block: u64,
    /// Segment.
    pub segment: u64,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

struct Segment {
    bytes: Key,
    watermark: u64,
}

/// One link end's ledger (one row set per peer in a shared SQLite file).
pub struct AuthLedger {
    conn: Connection,
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
    /// Opens the ledger for the link to `peer` at `path`; on first use stores `bootstrap` (the
    /// pre-shared key: 16 bytes of hash key, then segment 0).
    ///
    /// # Errors
    /// Storage failures, or a bootstrap shorter than 16 bytes.
    pub fn open(
        path: &Path,
        peer: &str,
        bootstrap: impl FnOnce() -> Key,
    ) -> Result<Self, LedgerError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS photon_link (
                 peer TEXT PRIMARY KEY, hash_key BLOB NOT NULL, last_block INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS auth_segment (
                 peer TEXT NOT NULL, segment INTEGER NOT NULL, bytes BLOB NOT NULL,
                 watermark INTEGER NOT NULL, PRIMARY KEY (peer, segment));",
        )?;
        let row: Option<(Vec<u8>, i64)> = conn
            .query_row(
                "SELECT hash_key, last_block FROM photon_link WHERE peer = ?1",
                params![peer],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (hash_key, last_block) = match row {
            Some((h, lb)) => (Key::from_vec(h), lb as u64),
            None => {
                let mut boot = bootstrap();
                if boot.len() < 16 {
                    return Err(LedgerError::Corrupt("bootstrap key shorter than 16 bytes"));
                }
                let hash = boot.take_front(16);
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "INSERT INTO photon_link (peer, hash_key, last_block) VALUES (?1, ?2, 0)",
                    params![peer, hash.expose()],
                )?;
                tx.execute(
                    "INSERT INTO auth_segment (peer, segment, bytes, watermark) VALUES (?1, 0, ?2, 0)",
                    params![peer, boot.expose()],
                )?;
                tx.commit()?;
                (hash, 0)
            }
        };
        if hash_key.len() != 16 {
            return Err(LedgerError::Corrupt("hash key is not 16 bytes"));
        }
        let mut segments = BTreeMap::new();
        {
            let mut st =
                conn.prepare("SELECT segment, bytes, watermark FROM auth_segment WHERE peer = ?1")?;
            let rows = st.query_map(params![peer], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (seg, bytes, wm) = row?;
                segments.insert(
                    seg as u64,
                    Segment {
                        bytes: Key::from_vec(bytes),
                        watermark: wm as u64,
                    },
                );
            }
        }
        Ok(Self {
            conn,
            peer: peer.to_string(),
            hash_key,
            segments,
            last_block,
        })
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
        if r.block <= self.last_block {
            return Ok(Err(Refusal::StaleBlock {
                last_block: self.last_block,
            }));
        }
        let Some(s) = self.segments.get(&r.segment) else {
            return Ok(Err(Refusal::NoSegment { segment: r.segment }));
        };
        if r.offset < s.watermark {
            return Ok(Err(Refusal::StalePads {
                segment: r.segment,
                watermark: s.watermark,
            }));
        }
        let end = r.offset.checked_add(r.len);
        if end.is_none_or(|e| e > s.bytes.len() as u64) {
            return Ok(Err(Refusal::OutOfRange { segment: r.segment }));
        }
        let end = end.unwrap_or_default();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE auth_segment SET watermark = ?3 WHERE peer = ?1 AND segment = ?2",
            params![self.peer, r.segment as i64, end as i64],
        )?;
        tx.execute(
            "UPDATE photon_link SET last_block = ?2 WHERE peer = ?1",
            params![self.peer, r.block as i64],
        )?;
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
        if let Some(s) = self.segments.get_mut(&r.segment) {
            // Only if nothing moved the watermark since (it is exactly the reservation's end).
            if s.watermark == r.offset + r.len && used <= r.len {
                s.watermark = r.offset + used;
                tx.execute(
                    "UPDATE auth_segment SET watermark = ?3 WHERE peer = ?1 AND segment = ?2",
                    params![self.peer, r.segment as i64, s.watermark as i64],
                )?;
            }
        }
        if !replenish.is_empty() {
            tx.execute(
                "INSERT OR REPLACE INTO auth_segment (peer, segment, bytes, watermark) VALUES (?1, ?2, ?3, 0)",
                params![self.peer, r.block as i64, replenish.expose()],
            )?;
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
                self.conn.execute(
                    "UPDATE photon_link SET last_block = ?2 WHERE peer = ?1",
                    params![self.peer, last_block as i64],
                )?;
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
                if let Some(s) = self.segments.get_mut(&segment) {
                    if watermark > s.watermark {
                        s.watermark = watermark;
                        self.conn.execute(
                            "UPDATE auth_segment SET watermark = ?3 WHERE peer = ?1 AND segment = ?2",
                            params![self.peer, segment as i64, watermark as i64],
                        )?;
                    }
                }
            }
            Refusal::StaleBlock { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Key {
        Key::from_vec((0..16 + 1000u32).map(|i| i as u8).collect())
    }

    fn pair(dir: &Path) -> (AuthLedger, AuthLedger) {
        (
            AuthLedger::open(&dir.join("a.db"), "b", boot).unwrap(),
            AuthLedger::open(&dir.join("b.db"), "a", boot).unwrap(),
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
        let bob = AuthLedger::open(&dir.join("b.db"), "a", || unreachable!()).unwrap();
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

    fn tempdir() -> std::path::PathBuf {
        crate::loopback::scratch_dir("ledger").unwrap()
    }
}
