//! Split / recover / MAC throughput, beside the `blahaj` crate in the same run.
//!
//! Run: `cargo bench -p kagi-sharing --bench sharing` (1 MiB to 64 MiB; add `KAGI_BENCH_1G=1`
//! for 256 MiB and 1 GiB of both (3,5) and (5,9): a 1 GiB (5,9) split holds 10 GiB in memory).
//! blahaj runs in the same process at 1, 4 and 16 MiB (at 3–40 MB/s a 1 GiB sample would take
//! minutes and 9 GiB). Results and machine are in docs/PERFORMANCE.md.

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use kagi_keymat::its_mac::{tag, MacKey};
use kagi_sharing::{
    recover_correcting, recover_into_with, split_into_with, Backend, Params, RandomSource, Result,
    Share,
};
use rand_core::SeedableRng;

const MIB: usize = 1 << 20;

fn main() {
    divan::main();
}

/// "Randomness excluded": leaves the coefficient buffer as it is (the kernel's cost does not depend
/// on the coefficient values). Only for benchmarks.
struct NoRandomness;
impl RandomSource for NoRandomness {
    fn fill(&mut self, _dest: &mut [u8]) -> Result<()> {
        Ok(())
    }
}

/// blahaj's sizes: where a sample takes seconds, not minutes.
const BLAHAJ_SIZES: [usize; 3] = [MIB, 4 * MIB, 16 * MIB];

fn sizes() -> Vec<usize> {
    let mut v = vec![MIB, 4 * MIB, 16 * MIB, 64 * MIB];
    if std::env::var_os("KAGI_BENCH_1G").is_some() {
        v.extend([256 * MIB, 1024 * MIB]);
    }
    v
}

fn secret(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

fn bench_split(
    b: Bencher,
    k: usize,
    n: usize,
    len: usize,
    backend: Backend,
    rng: &mut impl RandomSource,
) {
    let p = Params::new(k, n).unwrap();
    let s = secret(len);
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![1u8; len]).collect();
    b.counter(BytesCount::new(len)).bench_local(|| {
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
        split_into_with(backend, black_box(&s), p, rng, &mut outs).unwrap();
    });
}

fn bench_recover(b: Bencher, k: usize, n: usize, len: usize, backend: Backend) {
    let p = Params::new(k, n).unwrap();
    let s = secret(len);
    let shares: Vec<Share> =
        kagi_sharing::split(&s, p, &mut rand_chacha::ChaCha12Rng::seed_from_u64(1)).unwrap();
    // The last k shares (indices n-k+1..=n), to avoid any special case of index 1.
    let subset = &shares[n - k..];
    let mut out = vec![0u8; len];
    b.counter(BytesCount::new(len)).bench_local(|| {
        recover_into_with(backend, black_box(subset), &mut out).unwrap();
    });
    assert_eq!(out, s);
}

mod split_3_5 {
    use super::*;
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn gfni(b: Bencher, len: usize) {
        bench_split(b, 3, 5, len, Backend::Gfni, &mut NoRandomness);
    }
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn avx2(b: Bencher, len: usize) {
        bench_split(b, 3, 5, len, Backend::Avx2, &mut NoRandomness);
    }
    #[divan::bench(args = [MIB, 16 * MIB], sample_count = 10, sample_size = 1)]
    fn avx2_with_chacha12(b: Bencher, len: usize) {
        bench_split(
            b,
            3,
            5,
            len,
            Backend::Avx2,
            &mut rand_chacha::ChaCha12Rng::seed_from_u64(2),
        );
    }
    #[divan::bench(args = [MIB], sample_count = 10, sample_size = 1)]
    fn scalar(b: Bencher, len: usize) {
        bench_split(b, 3, 5, len, Backend::Scalar, &mut NoRandomness);
    }
    #[divan::bench(args = BLAHAJ_SIZES, sample_count = 3, sample_size = 1)]
    fn blahaj(b: Bencher, len: usize) {
        let s = secret(len);
        let sharks = ::blahaj::Sharks(3);
        b.counter(BytesCount::new(len)).bench_local(|| {
            let shares: Vec<::blahaj::Share> = sharks.dealer(black_box(&s)).take(5).collect();
            black_box(shares);
        });
    }
}

mod split_5_9 {
    use super::*;
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn gfni(b: Bencher, len: usize) {
        bench_split(b, 5, 9, len, Backend::Gfni, &mut NoRandomness);
    }
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn avx2(b: Bencher, len: usize) {
        bench_split(b, 5, 9, len, Backend::Avx2, &mut NoRandomness);
    }
    #[divan::bench(args = [MIB, 16 * MIB], sample_count = 10, sample_size = 1)]
    fn avx2_with_chacha12(b: Bencher, len: usize) {
        bench_split(
            b,
            5,
            9,
            len,
            Backend::Avx2,
            &mut rand_chacha::ChaCha12Rng::seed_from_u64(3),
        );
    }
    #[divan::bench(args = BLAHAJ_SIZES, sample_count = 3, sample_size = 1)]
    fn blahaj(b: Bencher, len: usize) {
        let s = secret(len);
        let sharks = ::blahaj::Sharks(5);
        b.counter(BytesCount::new(len)).bench_local(|| {
            let shares: Vec<::blahaj::Share> = sharks.dealer(black_box(&s)).take(9).collect();
            black_box(shares);
        });
    }
}

fn blahaj_recover(b: Bencher, k: u8, n: usize, len: usize) {
    let s = secret(len);
    let sharks = ::blahaj::Sharks(k);
    let shares: Vec<::blahaj::Share> = sharks.dealer(&s).take(n).collect();
    let subset = &shares[n - k as usize..];
    b.counter(BytesCount::new(len)).bench_local(|| {
        let out = sharks.recover(black_box(subset)).unwrap();
        black_box(out);
    });
}

mod recover_3_5 {
    use super::*;
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn gfni(b: Bencher, len: usize) {
        bench_recover(b, 3, 5, len, Backend::Gfni);
    }
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn avx2(b: Bencher, len: usize) {
        bench_recover(b, 3, 5, len, Backend::Avx2);
    }
    #[divan::bench(args = [MIB], sample_count = 10, sample_size = 1)]
    fn scalar(b: Bencher, len: usize) {
        bench_recover(b, 3, 5, len, Backend::Scalar);
    }
    #[divan::bench(args = BLAHAJ_SIZES, sample_count = 3, sample_size = 1)]
    fn blahaj(b: Bencher, len: usize) {
        blahaj_recover(b, 3, 5, len);
    }
}

mod recover_5_9 {
    use super::*;
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn gfni(b: Bencher, len: usize) {
        bench_recover(b, 5, 9, len, Backend::Gfni);
    }
    #[divan::bench(args = sizes(), sample_count = 10, sample_size = 1)]
    fn avx2(b: Bencher, len: usize) {
        bench_recover(b, 5, 9, len, Backend::Avx2);
    }
    #[divan::bench(args = BLAHAJ_SIZES, sample_count = 3, sample_size = 1)]
    fn blahaj(b: Bencher, len: usize) {
        blahaj_recover(b, 5, 9, len);
    }
}

/// Error-checking recovery from all five shares of a (3,5) sharing, nothing corrupted: the
/// price of checking two extra shares.
#[divan::bench(args = [16 * MIB], sample_count = 10, sample_size = 1)]
fn recover_correcting_3_5_all_clean(b: Bencher, len: usize) {
    let p = Params::new(3, 5).unwrap();
    let shares = kagi_sharing::split(
        &secret(len),
        p,
        &mut rand_chacha::ChaCha12Rng::seed_from_u64(4),
    )
    .unwrap();
    b.counter(BytesCount::new(len)).bench_local(|| {
        let c = recover_correcting(black_box(&shares)).unwrap();
        assert!(c.bad.is_empty());
    });
}

/// The keymat Wegman–Carter MAC (POLYVAL + one-time pad) over one share.
#[divan::bench(args = [MIB, 16 * MIB], sample_count = 10, sample_size = 1)]
fn its_mac(b: Bencher, len: usize) {
    let s = secret(len);
    b.counter(BytesCount::new(len)).bench_local(|| {
        let key = MacKey::from_bytes(&[7u8; 32]).unwrap();
        black_box(tag(key, black_box(&s)));
    });
}
