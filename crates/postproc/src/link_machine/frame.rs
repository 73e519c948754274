//! What the two ends of a photon link say to each other around the protocol's own frames, and
//! the control key that authenticates the frames that can change stored state.
//!
//! The protocol's frames carry their own Wegman–Carter tags, but `Start` names the pads those
//! tags use (so it must be believed before they can be checked), `Refuse` answers a reservation
//! that could not be taken (so no pad of it may be used), and `Hello` says an end restarted.
//! Each of the three carries a keyed BLAKE2b-256 tag under a key both ends derive from the link
//! secret, and is bound to what it answers (see the machine for the replay rules). The key
//! itself never leaves the [`ControlKey`]; it guards only the ledger's state: a forgery could at
//! most deny service, which anyone on the path can do by dropping frames; the secrecy and
//! integrity of the key rest on the protocol's one-time-pad tags.

use blake2::digest::consts::U32;
use blake2::digest::Mac;
use zeroize::Zeroizing;

use super::ledger::{Refusal, Reservation};
use crate::wire::{DecodeError, Reader, Writer};

/// Bytes of a control tag.
pub const CONTROL_TAG_LEN: usize = 32;
/// Largest protocol frame accepted inside a link frame.
const MAX_FRAME: usize = 1 << 30;

type Blake2bMac256 = blake2::Blake2bMac<U32>;

/// The 32-byte key that authenticates control frames (zeroized on drop, never printed).
#[derive(Clone)]
pub struct ControlKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(<redacted>)")
    }
}

impl ControlKey {
    /// The key from 32 bytes both ends derive from the link secret.
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    fn mac(&self) -> Blake2bMac256 {
        let mut m = <Blake2bMac256 as blake2::digest::KeyInit>::new_from_slice(&self.0[..])
            .unwrap_or_else(|_| unreachable!("a 32-byte key is a valid BLAKE2b key"));
        m.update(b"kagi-photon-link-control-v1\0");
        m
    }

    fn tag(&self, body: &[u8]) -> [u8; CONTROL_TAG_LEN] {
        let mut m = self.mac();
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// Constant-time check of `tag` over `body`.
    fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac();
        m.update(body);
        m.verify_slice(tag).is_ok()
    }
}

/// A link frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// Bob starts block `res.block` with the pads of `res`; `frame` is the protocol's first
    /// message.
    Start {
        /// The reservation.
        res: Reservation,
        /// The protocol's first frame (tagged with the reservation's first pad).
        frame: Vec<u8>,
    },
    /// A protocol message of block `block`.
    Proto {
        /// Block number.
        block: u64,
        /// The protocol frame.
        frame: Vec<u8>,
    },
    /// Alice refuses Bob's reservation `res`.
    Refuse {
        /// The reservation refused, exactly as Bob's `Start` named it.
        res: Reservation,
        /// Why.
        refusal: Refusal,
    },
    /// Alice (re)started and is in no block; `last_block` is the last block her ledger saw.
    Hello {
        /// Alice's last block.
        last_block: u64,
    },
}

const T_START: u8 = 1;
const T_PROTO: u8 = 2;
const T_REFUSE: u8 = 3;
const T_HELLO: u8 = 4;

fn put_res(w: &mut Writer, r: &Reservation) {
    w.u64(r.block);
    w.u64(r.segment);
    w.u64(r.offset);
    w.u64(r.len);
}

fn get_res(r: &mut Reader<'_>) -> Result<Reservation, DecodeError> {
    Ok(Reservation {
        block: r.u64()?,
        segment: r.u64()?,
        offset: r.u64()?,
        len: r.u64()?,
    })
}

fn put_refusal(w: &mut Writer, r: &Refusal) {
    match *r {
        Refusal::StaleBlock { last_block } => {
            w.u8(1);
            w.u64(last_block);
        }
        Refusal::NoSegment { segment } => {
            w.u8(2);
            w.u64(segment);
        }
        Refusal::StalePads { segment, watermark } => {
            w.u8(3);
            w.u64(segment);
            w.u64(watermark);
        }
        Refusal::OutOfRange { segment } => {
            w.u8(4);
            w.u64(segment);
        }
    }
}

fn get_refusal(r: &mut Reader<'_>) -> Result<Refusal, DecodeError> {
    Ok(match r.u8()? {
        1 => Refusal::StaleBlock {
            last_block: r.u64()?,
        },
        2 => Refusal::NoSegment { segment: r.u64()? },
        3 => Refusal::StalePads {
            segment: r.u64()?,
            watermark: r.u64()?,
        },
        4 => Refusal::OutOfRange { segment: r.u64()? },
        _ => return Err(DecodeError("unknown refusal")),
    })
}

/// Why a link frame was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not a link frame.
    #[error("malformed photon link frame: {0}")]
    Malformed(#[from] DecodeError),
    /// A control frame's tag is wrong: forged or altered.
    #[error("photon link control frame failed authentication")]
    BadTag,
}

impl LinkFrame {
    /// The frame's bytes; control frames are tagged with `key`.
    pub fn encode(&self, key: &ControlKey) -> Vec<u8> {
        let mut w = Writer::default();
        let control = match self {
            LinkFrame::Start { res, frame } => {
                w.u8(T_START);
                put_res(&mut w, res);
                w.bytes(frame);
                true
            }
            LinkFrame::Proto { block, frame } => {
                w.u8(T_PROTO);
                w.u64(*block);
                w.bytes(frame);
                false
            }
            LinkFrame::Refuse { res, refusal } => {
                w.u8(T_REFUSE);
                put_res(&mut w, res);
                put_refusal(&mut w, refusal);
                true
            }
            LinkFrame::Hello { last_block } => {
                w.u8(T_HELLO);
                w.u64(*last_block);
                true
            }
        };
        if control {
            let t = key.tag(&w.buf);
            w.buf.extend_from_slice(&t);
        }
        w.buf
    }

    /// Decodes `bytes`, checking a control frame's tag with `key` before anything else reads
    /// its fields.
    ///
    /// # Errors
    /// Malformed bytes or a control frame that fails authentication.
    pub fn decode(bytes: &[u8], key: &ControlKey) -> Result<Self, FrameError> {
        let Some(&t) = bytes.first() else {
            return Err(DecodeError("empty frame").into());
        };
        let body = if t == T_PROTO {
            bytes
        } else {
            if bytes.len() < 1 + CONTROL_TAG_LEN {
                return Err(DecodeError("short control frame").into());
            }
            let (body, tag) = bytes.split_at(bytes.len() - CONTROL_TAG_LEN);
            if !key.verify(body, tag) {
                return Err(FrameError::BadTag);
            }
            body
        };
        let mut r = Reader::new(&body[1..]);
        let f = match t {
            T_START => LinkFrame::Start {
                res: get_res(&mut r)?,
                frame: r.bytes(MAX_FRAME)?.to_vec(),
            },
            T_PROTO => LinkFrame::Proto {
                block: r.u64()?,
                frame: r.bytes(MAX_FRAME)?.to_vec(),
            },
            T_REFUSE => LinkFrame::Refuse {
                res: get_res(&mut r)?,
                refusal: get_refusal(&mut r)?,
            },
            T_HELLO => LinkFrame::Hello {
                last_block: r.u64()?,
            },
            _ => return Err(DecodeError("unknown link frame").into()),
        };
        r.finish()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ControlKey {
        ControlKey::new(Zeroizing::new([b; 32]))
    }

    #[test]
    fn frames_round_trip_and_control_frames_need_the_key() {
        let res = Reservation {
            block: 3,
            segment: 0,
            offset: 4096,
            len: 16384,
        };
        let frames = [
            LinkFrame::Start {
                res,
                frame: vec![1, 2, 3],
            },
            LinkFrame::Proto {
                block: 3,
                frame: vec![9; 40],
            },
            LinkFrame::Refuse {
                res,
                refusal: Refusal::StalePads {
                    segment: 0,
                    watermark: 9000,
                },
            },
            LinkFrame::Hello { last_block: 7 },
        ];
        for f in frames {
            let bytes = f.encode(&key(1));
            assert_eq!(LinkFrame::decode(&bytes, &key(1)), Ok(f.clone()));
            let control = !matches!(f, LinkFrame::Proto { .. });
            // Another key, or any flipped byte, fails a control frame's check.
            assert_eq!(
                LinkFrame::decode(&bytes, &key(2)).is_err(),
                control,
                "{f:?}"
            );
            if control {
                for i in 0..bytes.len() {
                    let mut b = bytes.clone();
                    b[i] ^= 0x10;
                    assert!(LinkFrame::decode(&b, &key(1)).is_err(), "{f:?} byte {i}");
                }
            }
        }
    }
}
