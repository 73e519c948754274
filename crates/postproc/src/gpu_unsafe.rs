//! Toeplitz hashing on an NVIDIA GPU (feature `gpu`): the Goldilocks NTT of [`crate::ntt`]
//! as CUDA kernels, compiled at run time by NVRTC and launched through `cudarc` (CUDA driver
//! and NVRTC are loaded dynamically, so building needs no CUDA toolkit and a machine without a
//! GPU gets [`GpuError`], not a crash).
//!
//! Each kernel is a line-for-line transliteration of the CPU function named beside it in
//! [`crate::ntt`] (`dif_grouped`, `dit_grouped`, the pointwise product, the parity packing),
//! whose index arithmetic the crate's ordinary tests check; `tests/gpu.rs` compares the GPU
//! output with the CPU path bit for bit where a GPU exists.
//!
//! `unsafe` is needed only to launch kernels (`cudarc`'s `launch` cannot check a kernel's
//! signature). Sound because each launch passes exactly the argument types the kernel source
//! declares, every buffer has the length the kernel's bounds checks assume (each thread
//! returns when its index is past the end), and every kernel runs on one stream in order.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx, CompileError};

use crate::bits::BitVec;
use crate::ntt::{self, P};
use crate::toeplitz::ToeplitzError;

/// Why the GPU path could not run.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No CUDA driver or no device (the CPU path is the one to use).
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// NVRTC failed to compile the kernels.
    #[error("NVRTC: {0}")]
    Compile(#[from] CompileError),
    /// The CUDA driver or NVRTC library could not be loaded (no NVIDIA driver or toolkit).
    #[error("CUDA not available: {0}")]
    Unavailable(String),
    /// Bad arguments (as for the CPU path).
    #[error(transparent)]
    Toeplitz(#[from] ToeplitzError),
}

/// CUDA source of the kernels; see the CPU twins in [`crate::ntt`].
const SRC: &str = r#"
typedef unsigned long long u64;
#define P 0xffffffff00000001ULL
#define EPS 0xffffffffULL
#define GROUP_LOG 5

__device__ __forceinline__ u64 gadd(u64 a, u64 b) {
    u64 s = a + b;
    if (s < a) s += EPS;
    if (s >= P) s -= P;
    return s;
}
__device__ __forceinline__ u64 gsub(u64 a, u64 b) {
    return a >= b ? a - b : a - b + P;
}
__device__ __forceinline__ u64 gmul(u64 a, u64 b) {
    u64 lo = a * b;
    u64 hi = __umul64hi(a, b);
    u64 hh = hi >> 32, hl = hi & EPS;
    u64 t0 = lo - hh;
    if (lo < hh) t0 -= EPS;
    u64 t1 = hl * EPS;
    u64 t2 = t0 + t1;
    if (t2 < t0) t2 += EPS;
    if (t2 >= P) t2 -= P;
    return t2;
}
__device__ __forceinline__ u64 gid() {
    return (u64)blockIdx.x * (u64)blockDim.x + (u64)threadIdx.x;
}

// bits (packed, little-endian words) -> one field element per bit, zero-padded to len.
extern "C" __global__ void expand(const u64* bits, u64 nbits, u64* out, u64 len) {
    u64 i = gid();
    if (i >= len) return;
    out[i] = i < nbits ? ((bits[i >> 6] >> (i & 63)) & 1ULL) : 0ULL;
}

// tw[i] = w^i, i < half.
extern "C" __global__ void twiddles(u64* tw, u64 half, u64 w) {
    u64 i = gid();
    if (i >= half) return;
    u64 r = 1, a = w, e = i;
    while (e) {
        if (e & 1) r = gmul(r, a);
        a = gmul(a, a);
        e >>= 1;
    }
    tw[i] = r;
}

// ntt::dif_grouped, thread g.
extern "C" __global__ void dif_pass(u64* a, const u64* tw, u64 l, u64 h_top, unsigned k) {
    u64 g = gid();
    if (g >= (l >> k)) return;
    u64 lo = h_top >> (k - 1);
    u64 blk = g / lo, j = g % lo;
    u64 base = blk * 2 * h_top + j;
    u64 x[1 << GROUP_LOG];
    unsigned cnt = 1u << k;
    for (unsigned m = 0; m < cnt; m++) x[m] = a[base + m * lo];
    for (unsigned s = 0; s < k; s++) {
        u64 h = h_top >> s, step = h / lo, scale = l / (2 * h);
        for (unsigned m = 0; m < cnt; m++) {
            if ((m & step) == 0) {
                u64 p = (base + m * lo) % (2 * h);
                u64 u = x[m], v = x[m + step];
                x[m] = gadd(u, v);
                x[m + step] = gmul(gsub(u, v), tw[p * scale]);
            }
        }
    }
    for (unsigned m = 0; m < cnt; m++) a[base + m * lo] = x[m];
}

// ntt::dit_grouped, thread g (inverse twiddles: w^-i = -w^(l/2 - i)).
extern "C" __global__ void dit_pass(u64* a, const u64* tw, u64 l, u64 h_top, unsigned k) {
    u64 g = gid();
    if (g >= (l >> k)) return;
    u64 half = l / 2;
    u64 lo = h_top >> (k - 1);
    u64 blk = g / lo, j = g % lo;
    u64 base = blk * 2 * h_top + j;
    u64 x[1 << GROUP_LOG];
    unsigned cnt = 1u << k;
    for (unsigned m = 0; m < cnt; m++) x[m] = a[base + m * lo];
    for (int s = (int)k - 1; s >= 0; s--) {
        u64 h = h_top >> s, step = h / lo, scale = l / (2 * h);
        for (unsigned m = 0; m < cnt; m++) {
            if ((m & step) == 0) {
                u64 p = (base + m * lo) % (2 * h);
                u64 ti = p * scale;
                u64 wi = ti == 0 ? 1ULL : gsub(0, tw[half - ti]);
                u64 u = x[m], v = gmul(x[m + step], wi);
                x[m] = gadd(u, v);
                x[m + step] = gsub(u, v);
            }
        }
    }
    for (unsigned m = 0; m < cnt; m++) a[base + m * lo] = x[m];
}

extern "C" __global__ void pointwise(u64* a, const u64* b, u64 l) {
    u64 i = gid();
    if (i < l) a[i] = gmul(a[i], b[i]);
}

// Parities of coefficients first .. first + r - 1 (scaled by 1/L), 64 per thread.
extern "C" __global__ void pack(const u64* a, u64 first, u64 r, u64 linv, u64* out) {
    u64 w = gid();
    if (w >= (r + 63) / 64) return;
    u64 acc = 0;
    for (unsigned b = 0; b < 64; b++) {
        u64 i = 64 * w + b;
        if (i < r) acc |= (gmul(a[first + i], linv) & 1ULL) << b;
    }
    out[w] = acc;
}
"#;

/// A GPU with the kernels loaded, reusable across blocks (keeps the twiddles of the last
/// transform length).
pub struct GpuHasher {
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    expand: CudaFunction,
    twiddles: CudaFunction,
    dif: CudaFunction,
    dit: CudaFunction,
    pointwise: CudaFunction,
    pack: CudaFunction,
    tw: Option<(u32, CudaSlice<u64>)>,
}

impl std::fmt::Debug for GpuHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHasher").finish_non_exhaustive()
    }
}

/// One thread per element, 256 per block.
fn cfg(n: u64) -> LaunchConfig {
    let threads = 256u64;
    LaunchConfig {
        grid_dim: (n.div_ceil(threads).max(1) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl GpuHasher {
    /// Opens GPU `ordinal` and compiles the kernels.
    ///
    /// # Errors
    /// [`GpuError::Driver`] where there is no CUDA driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        // cudarc panics when it cannot load libcuda / libnvrtc: turn that into an error.
        std::panic::catch_unwind(|| Self::open(ordinal)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "CUDA libraries could not be loaded".into());
            Err(GpuError::Unavailable(msg))
        })
    }

    fn open(ordinal: usize) -> Result<Self, GpuError> {
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let module = ctx.load_module(compile_ptx(SRC)?)?;
        let f = |name: &str| module.load_function(name);
        Ok(Self {
            expand: f("expand")?,
            twiddles: f("twiddles")?,
            dif: f("dif_pass")?,
            dit: f("dit_pass")?,
            pointwise: f("pointwise")?,
            pack: f("pack")?,
            stream,
            _module: module,
            tw: None,
        })
    }

    /// Twiddles for transforms of length 2^log, computed on the GPU once per length.
    fn twiddles_for(&mut self, log: u32) -> Result<(), GpuError> {
        if self.tw.as_ref().is_some_and(|(l, _)| *l == log) {
            return Ok(());
        }
        self.tw = None;
        let half = (1u64 << log) / 2;
        let mut tw = self.stream.alloc_zeros::<u64>(half as usize)?;
        let w = ntt::root_of_unity(log);
        let mut b = self.stream.launch_builder(&self.twiddles);
        b.arg(&mut tw).arg(&half).arg(&w);
        // SAFETY: twiddles(u64*, u64, u64); tw has `half` elements.
        unsafe { b.launch(cfg(half)) }?;
        self.tw = Some((log, tw));
        Ok(())
    }

    /// The Toeplitz hash of `input` to `r` bits with `seed` (as
    /// [`crate::toeplitz::toeplitz_hash`], bit for bit).
    ///
    /// # Errors
    /// [`GpuError::Toeplitz`] for bad arguments, [`GpuError::Driver`] for GPU failures
    /// (including running out of device memory: 24 bytes per transform element).
    pub fn hash(&mut self, seed: &BitVec, input: &BitVec, r: usize) -> Result<BitVec, GpuError> {
        ntt::check(seed, input, r)?;
        let n = input.len();
        if r == 0 {
            return Ok(BitVec::zeros(0));
        }
        let log = ntt::transform_log(n, r)?;
        let l = 1u64 << log;
        self.twiddles_for(log)?;
        let s = &self.stream;
        let load = |bits: &BitVec, f: &CudaFunction| -> Result<CudaSlice<u64>, GpuError> {
            let words = s.memcpy_stod(bits.words())?;
            let mut out = s.alloc_zeros::<u64>(l as usize)?;
            let nbits = bits.len() as u64;
            let mut b = s.launch_builder(f);
            b.arg(&words).arg(&nbits).arg(&mut out).arg(&l);
            // SAFETY: expand(const u64*, u64, u64*, u64); `words` holds ⌈nbits/64⌉ words,
            // `out` holds l elements.
            unsafe { b.launch(cfg(l)) }?;
            Ok(out)
        };
        let mut a = load(seed, &self.expand)?;
        let mut x = load(input, &self.expand)?;
        let tw = &self.tw.as_ref().expect("twiddles were just made").1;
        let passes = ntt::passes(log);
        for buf in [&mut a, &mut x] {
            for &(h_top, k) in &passes {
                let h = h_top as u64;
                let mut b = s.launch_builder(&self.dif);
                b.arg(&mut *buf).arg(tw).arg(&l).arg(&h).arg(&k);
                // SAFETY: dif_pass(u64*, const u64*, u64, u64, unsigned); buf holds l
                // elements, tw l/2; threads past l >> k return.
                unsafe { b.launch(cfg(l >> k)) }?;
            }
        }
        let mut b = s.launch_builder(&self.pointwise);
        b.arg(&mut a).arg(&x).arg(&l);
        // SAFETY: pointwise(u64*, const u64*, u64); both hold l elements.
        unsafe { b.launch(cfg(l)) }?;
        drop(x);
        for &(h_top, k) in passes.iter().rev() {
            let h = h_top as u64;
            let mut b = s.launch_builder(&self.dit);
            b.arg(&mut a).arg(tw).arg(&l).arg(&h).arg(&k);
            // SAFETY: dit_pass(u64*, const u64*, u64, u64, unsigned), as dif_pass.
            unsafe { b.launch(cfg(l >> k)) }?;
        }
        let words = r.div_ceil(64);
        let mut out = s.alloc_zeros::<u64>(words)?;
        let (first, rr, linv) = ((n - 1) as u64, r as u64, ntt::pow(l % P, P - 2));
        let mut b = s.launch_builder(&self.pack);
        b.arg(&a).arg(&first).arg(&rr).arg(&linv).arg(&mut out);
        // SAFETY: pack(const u64*, u64, u64, u64, u64*); first + r ≤ l, out holds ⌈r/64⌉.
        unsafe { b.launch(cfg(words as u64)) }?;
        let host = s.memcpy_dtov(&out)?;
        Ok(BitVec::from_words(host, r))
    }
}

/// One-shot GPU Toeplitz hash on device 0 (compiles the kernels each call; keep a
/// [`GpuHasher`] for repeated blocks).
///
/// # Errors
/// As [`GpuHasher::new`] and [`GpuHasher::hash`].
pub fn toeplitz_hash_gpu(seed: &BitVec, input: &BitVec, r: usize) -> Result<BitVec, GpuError> {
    GpuHasher::new(0)?.hash(seed, input, r)
}
