//! Key material for kagi.
//!
//! * [`Key`] is the one type that holds secret key bytes anywhere in kagi: it zeroizes on drop,
//!   prints as `Key(<redacted N bytes>)` in `Debug` and `Display`, and compares in constant time.
//!   For the simulator only, a key may be lazy: a range of a [`LazyKeySource`] produced when first
//!   read or written.
//! * [`its_mac`] is the Wegman–Carter information-theoretically secure MAC (polynomial hash over
//!   GF(2^128), tag one-time-padded) used for relay messages, classical post-processing messages and
//!   storage shares.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod its_mac;
mod key;

pub use its_mac::{MacKey, Tag, MAC_KEY_LEN, TAG_LEN};
pub use key::{live_bytes, Key, LazyKeySource};
