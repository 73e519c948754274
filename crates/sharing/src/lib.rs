//! Secret sharing for kagi: the long-term secure storage layer and multi-path key relay.
//!
//! * [`split`] / [`recover`]: Shamir k-of-n over GF(2^8) with a run-time-selected SIMD kernel
//!   (AVX2 split-nibble lookups, scalar fallback; see [`Backend`]) and uniformly random
//!   coefficients (zero included);
//! * [`xor_split`] / [`xor_combine`]: n-of-n XOR sharing;
//! * [`repair`]: rebuild a lost share from `k` others without reconstructing the secret anywhere;
//! * [`refresh`]: proactive refresh with sharings of zero;
//! * [`amd`]: algebraic manipulation detection codes: share an AMD encoding of a secret and the
//!   rebuilt secret shows whether any share was altered (robust secret sharing);
//! * [`integrity`]: per-share Wegman–Carter tags, one per verifying party, with the keymat MAC;
//! * [`recover_correcting`]: Reed–Solomon (Berlekamp–Welch) decoding that names and corrects up to
//!   ⌊(m − k)/2⌋ corrupted shares;
//! * [`RandomSource`]: randomness behind a trait, so a hardware RNG can be plugged in;
//! * [`demo_emr`]: clearly synthetic electronic medical records in an SS-MIX2-like layout.
//!
//! The library does no I/O, except [`demo_emr::write_to_dir`], which writes demo files.
#![warn(missing_docs)]

pub mod amd;
pub mod demo_emr;
mod error;
pub mod gf256;
pub mod integrity;
mod kernel;
pub mod refresh;
pub mod repair;
mod rng;
mod rs_decode;
mod shamir;
#[cfg(target_arch = "x86_64")]
mod simd_unsafe_avx2;
mod xor;

pub use error::{Result, SharingError};
pub use kernel::Backend;
pub use rng::{OsRandom, RandomSource};
pub use rs_decode::{berlekamp_welch, recover_correcting, Corrected};
pub use shamir::{
    recover, recover_into, recover_into_with, recover_with, split, split_into, split_into_with,
    split_with, Params, Share, SHARE_HEADER_LEN,
};
pub use xor::{xor_combine, xor_split};
