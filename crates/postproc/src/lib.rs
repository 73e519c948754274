//! kagi-postproc: QKD post-processing as pure libraries (no I/O).
//!
//! From raw detections to identical secret keys at both ends:
//! * [`toeplitz`]: privacy amplification by Toeplitz hashing, exact and fast (additive FFT over
//!   GF(2^64) with carry-less multiplication).
//! * [`bits`]: packed bit vectors for key material.
#![warn(missing_docs)]

mod additive_fft;
pub mod bits;
mod clmul_unsafe;
pub mod gf64;
pub mod toeplitz;

pub use bits::BitVec;
pub mod cascade;
pub mod finite_key;
pub mod protocol;
pub mod toy;
pub mod wire;
