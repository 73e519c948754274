//! The two rings the engine computes in, both on 64-bit words: [`Z64`] (integers modulo 2^64,
//! one element per word) and [`Z2`] (bits, bit-sliced: one word holds 64 independent elements,
//! so one word operation is 64 gates). Code generic over [`Ring`] compiles to straight loops
//! that the compiler vectorises.

/// A ring whose elements (or lanes of elements) are stored in `u64` words.
pub trait Ring: Copy + Send + Sync + std::fmt::Debug + Default + 'static {
    /// Name for messages and reports.
    const NAME: &'static str;
    /// Addition.
    fn add(a: u64, b: u64) -> u64;
    /// Subtraction.
    fn sub(a: u64, b: u64) -> u64;
    /// Multiplication (AND in [`Z2`]).
    fn mul(a: u64, b: u64) -> u64;
    /// Negation.
    fn neg(a: u64) -> u64;
    /// The word of ones (1 in [`Z64`], all lanes 1 in [`Z2`]).
    const ONE: u64;
    /// 0 for [`Z64`], 1 for [`Z2`] (indexes per-ring bookkeeping).
    const INDEX: usize;
}

/// Integers modulo 2^64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Z64;

/// Bits, 64 per word (bit-sliced): addition is XOR, multiplication is AND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Z2;

impl Ring for Z64 {
    const NAME: &'static str = "Z_2^64";
    const ONE: u64 = 1;
    const INDEX: usize = 0;
    #[inline(always)]
    fn add(a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub(a: u64, b: u64) -> u64 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn mul(a: u64, b: u64) -> u64 {
        a.wrapping_mul(b)
    }
    #[inline(always)]
    fn neg(a: u64) -> u64 {
        a.wrapping_neg()
    }
}

impl Ring for Z2 {
    const NAME: &'static str = "Z_2";
    const ONE: u64 = u64::MAX;
    const INDEX: usize = 1;
    #[inline(always)]
    fn add(a: u64, b: u64) -> u64 {
        a ^ b
    }
    #[inline(always)]
    fn sub(a: u64, b: u64) -> u64 {
        a ^ b
    }
    #[inline(always)]
    fn mul(a: u64, b: u64) -> u64 {
        a & b
    }
    #[inline(always)]
    fn neg(a: u64) -> u64 {
        a
    }
}
