//! kagi-postproc: QKD post-processing as pure libraries (no I/O).
//!
//! From raw detections to identical secret keys at both ends:
//! * [`protocol`]: the two-party protocol, sans-I/O (sifting, parameter estimation, Cascade,
//!   verification, privacy amplification), every message framed and authenticated with the
//!   Wegman–Carter MAC of `kagi_keymat`, authentication key accounted and replenished.
//! * [`finite_key`]: finite-key length from observed counts (Lim et al. 2014).
//! * [`cascade`]: batched Cascade error reconciliation.
//! * [`ldpc`]: rate-adaptive (and blind) LDPC reconciliation with a fast min-sum decoder.
//! * [`toeplitz`]: privacy amplification by Toeplitz hashing, exact and fast (additive FFT over
//!   GF(2^64) with carry-less multiplication).
//! * [`ntt`]: Toeplitz hashing by a Goldilocks NTT, the GPU path's algorithm on the CPU.
//! * [`gf64`]: GF(2^64) arithmetic and its Cantor basis.
//! * [`bits`]: packed bit vectors for key material; [`wire`]: message encoding.
//! * [`block_plan`]: block size from the finite-key model.
//! * [`photon_records`]: Alice's and Bob's records from photon-simulator detections.
//! * [`toy`]: a small decoy-BB84 channel for tests and benchmarks.
#![warn(missing_docs)]

mod additive_fft;
pub mod bits;
pub mod block_plan;
pub mod cascade;
mod clmul_unsafe;
pub mod finite_key;
pub mod gf64;
#[cfg(feature = "gpu")]
mod gpu_unsafe;
/// Toeplitz hashing on an NVIDIA GPU (feature `gpu`), bit for bit equal to [`toeplitz`].
#[cfg(feature = "gpu")]
pub mod gpu {
    pub use crate::gpu_unsafe::{toeplitz_hash_gpu, GpuError, GpuHasher};
}
pub mod ldpc;
mod ldpc_simd_unsafe;
pub mod link_machine;
pub mod ntt;
pub mod photon_records;
pub mod protocol;
mod sifting;
mod simd_unsafe;
pub mod toeplitz;
pub mod toy;
pub mod wire;

pub use bits::BitVec;
