//! The pad-reservation protocol's vocabulary and the storage a link end needs.
//!
//! Every classical message of a block is tagged with a one-time pad (Wegman–Carter). Pads live
//! in *segments*: segment 0 is the link's pre-shared key, segment `b` the part of block `b`'s
//! key set aside to authenticate later blocks. A block reserves `[offset, offset + len)` of one
//! segment. A pad must never tag two different messages, so each end refuses a reservation that
//! starts below its *watermark* for the segment and moves the watermark past the whole
//! reservation — durably — before any pad of it is used ([`PadLedger::reserve`]).

use std::collections::BTreeMap;

use kagi_keymat::Key;

/// Why this end refuses a block's reservation. Sent back to the other end, which catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The durable authentication-key ledger of one link end, as the state machine uses it. The
/// node implements it on SQLite; [`MemLedger`] is the in-memory one of tests and simulations.
///
/// Contract (what keeps a pad from tagging two messages across crashes): [`PadLedger::reserve`]
/// moves the watermark past the whole reservation and the last block to the reservation's, in
/// durable storage, before it returns the pads.
pub trait PadLedger {
    /// Storage failure.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The last block this end took part in.
    fn last_block(&self) -> u64;

    /// Pad bytes not yet used, over all segments.
    fn available(&self) -> u64;

    /// The next reservation of `len` bytes this end would propose (the oldest segment with
    /// room, for the block after `floor` and after the last one seen), or `None` when no
    /// segment has room.
    fn propose(&self, len: u64, floor: u64) -> Option<Reservation>;

    /// Takes the pads of `r` if this end may use them, durably moving the watermark past the
    /// whole range and the last block to `r.block` first. Returns the 16-byte hash key followed
    /// by the pads; `Ok(Err(refusal))` when this end may not use them (nothing changed).
    ///
    /// # Errors
    /// Storage failures.
    fn reserve(&mut self, r: Reservation) -> Result<Result<Key, Refusal>, Self::Error>;

    /// After block `r` ended: hands back the reservation's tail from `r.offset + used` (only if
    /// nothing moved the watermark since, and `used <= r.len`) and, when `replenish` is not
    /// empty, adds it as segment `r.block`. Segments used up are deleted.
    ///
    /// # Errors
    /// Storage failures.
    fn settle(&mut self, r: Reservation, used: u64, replenish: Key) -> Result<(), Self::Error>;

    /// Learns from the other end's (authenticated) refusal, so the next proposal is acceptable.
    ///
    /// # Errors
    /// Storage failures.
    fn learn(&mut self, refusal: &Refusal) -> Result<(), Self::Error>;
}

/// A segment's bytes and how far they are used.
#[derive(Debug)]
struct Segment {
    bytes: Key,
    watermark: u64,
}

/// Pure reservation rules shared by every [`PadLedger`]: what [`PadLedger::reserve`] refuses.
///
/// `segment` is this end's `(length, watermark)` of `r.segment`, if it holds it. Returns the end
/// of the range when accepted.
///
/// # Errors
/// The refusal to send back.
pub fn check_reservation(
    r: &Reservation,
    last_block: u64,
    segment: Option<(u64, u64)>,
) -> Result<u64, Refusal> {
    if r.block <= last_block {
        return Err(Refusal::StaleBlock { last_block });
    }
    let Some((len, watermark)) = segment else {
        return Err(Refusal::NoSegment { segment: r.segment });
    };
    if r.offset < watermark {
        return Err(Refusal::StalePads {
            segment: r.segment,
            watermark,
        });
    }
    match r.offset.checked_add(r.len) {
        Some(end) if end <= len => Ok(end),
        _ => Err(Refusal::OutOfRange { segment: r.segment }),
    }
}

/// Pure settling rule shared by every [`PadLedger`]: the watermark a settled block leaves on its
/// segment, when it hands back the unused tail of its reservation (`used` bytes were consumed).
/// Only if nothing moved the watermark since the reservation (it is exactly the reservation's
/// end); `None`: the watermark stays.
pub fn handed_back(watermark: u64, r: &Reservation, used: u64) -> Option<u64> {
    (r.offset.checked_add(r.len) == Some(watermark) && used <= r.len).then_some(r.offset + used)
}

/// An in-memory [`PadLedger`] (its "durable" storage is the value itself: a simulated crash
/// keeps the ledger and drops the state machine). For tests and simulations.
#[derive(Debug)]
pub struct MemLedger {
    hash_key: Key,
    segments: BTreeMap<u64, Segment>,
    last_block: u64,
}

/// [`MemLedger`] never fails.
#[derive(Debug, thiserror::Error)]
#[error("in-memory ledger")]
pub struct Infallible;

impl MemLedger {
    /// A ledger holding the pre-shared `bootstrap` key: 16 bytes of hash key, then segment 0.
    ///
    /// # Panics
    /// If `bootstrap` is shorter than 16 bytes (a test's mistake).
    pub fn new(mut bootstrap: Key) -> Self {
        assert!(bootstrap.len() >= 16, "bootstrap key shorter than 16 bytes");
        let hash_key = bootstrap.take_front(16);
        let mut segments = BTreeMap::new();
        segments.insert(
            0,
            Segment {
                bytes: bootstrap,
                watermark: 0,
            },
        );
        Self {
            hash_key,
            segments,
            last_block: 0,
        }
    }

    /// Bytes `[offset, offset + len)` of segment `segment`, if held (to check pad use in tests).
    pub fn pads(&self, segment: u64, offset: u64, len: u64) -> Option<&[u8]> {
        let s = self.segments.get(&segment)?;
        let end = offset.checked_add(len)?;
        s.bytes.expose().get(offset as usize..end as usize)
    }

    /// The watermark of `segment`, if held.
    pub fn watermark(&self, segment: u64) -> Option<u64> {
        self.segments.get(&segment).map(|s| s.watermark)
    }
}

impl PadLedger for MemLedger {
    type Error = Infallible;

    fn last_block(&self) -> u64 {
        self.last_block
    }

    fn available(&self) -> u64 {
        self.segments
            .values()
            .map(|s| (s.bytes.len() as u64).saturating_sub(s.watermark))
            .sum()
    }

    fn propose(&self, len: u64, floor: u64) -> Option<Reservation> {
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

    fn reserve(&mut self, r: Reservation) -> Result<Result<Key, Refusal>, Infallible> {
        let seg = self
            .segments
            .get(&r.segment)
            .map(|s| (s.bytes.len() as u64, s.watermark));
        let end = match check_reservation(&r, self.last_block, seg) {
            Ok(e) => e,
            Err(refusal) => return Ok(Err(refusal)),
        };
        self.last_block = r.block;
        let Some(s) = self.segments.get_mut(&r.segment) else {
            return Ok(Err(Refusal::NoSegment { segment: r.segment }));
        };
        s.watermark = end;
        let mut out = Key::from_slice(self.hash_key.expose());
        out.extend_from(&Key::from_slice(
            &s.bytes.expose()[r.offset as usize..end as usize],
        ));
        Ok(Ok(out))
    }

    fn settle(&mut self, r: Reservation, used: u64, replenish: Key) -> Result<(), Infallible> {
        if let Some(s) = self.segments.get_mut(&r.segment) {
            if let Some(w) = handed_back(s.watermark, &r, used) {
                s.watermark = w;
            }
        }
        self.segments
            .retain(|_, s| s.watermark < s.bytes.len() as u64);
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

    fn learn(&mut self, refusal: &Refusal) -> Result<(), Infallible> {
        match *refusal {
            Refusal::StaleBlock { last_block } => self.last_block = self.last_block.max(last_block),
            Refusal::NoSegment { segment } | Refusal::OutOfRange { segment } => {
                self.segments.remove(&segment);
            }
            Refusal::StalePads { segment, watermark } => {
                if let Some(s) = self.segments.get_mut(&segment) {
                    s.watermark = s.watermark.max(watermark);
                }
            }
        }
        Ok(())
    }
}
