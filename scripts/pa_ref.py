#!/usr/bin/env python3
"""Toeplitz privacy amplification side by side: kagi's additive-FFT kernel (the `pa_files`
example) against the usual floating-point FFT method in numpy, on the same random seed and
input, output checked bit for bit.

    python3 scripts/pa_ref.py BIN [n ...]        (BIN: target/release/examples/pa_files)

For each n: r = n/2 output bits, seed of n + r - 1 bits. numpy computes the integer
convolution of the 0/1 vectors with a float64 real FFT (one bit per element, transform
length the next power of two >= 2n + r), rounds, takes it mod 2 and keeps coefficients
n-1 .. n+r-2 (y = T x with T[i][j] = t[n-1+i-j]). Memory: about 40 bytes per transform
element (10 GB at n = 10^8).
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def bits_to_words(bits):
    pad = (-len(bits)) % 64
    b = np.concatenate([bits, np.zeros(pad, dtype=np.uint8)])
    return np.packbits(b, bitorder="little").view("<u8")


def numpy_hash(seed_bits, x_bits, r):
    n = len(x_bits)
    m = len(seed_bits) + n - 1
    L = 1 << (m - 1).bit_length()
    fa = np.fft.rfft(seed_bits.astype(np.float64), L)
    fb = np.fft.rfft(x_bits.astype(np.float64), L)
    fa *= fb
    del fb
    prod = np.fft.irfft(fa, L)
    del fa
    mid = prod[n - 1 : n - 1 + r]
    err = float(np.max(np.abs(mid - np.rint(mid)))) if r else 0.0
    return (np.rint(mid).astype(np.int64) & 1).astype(np.uint8), err


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    exe = sys.argv[1]
    sizes = [int(float(s)) for s in sys.argv[2:]] or [10**6, 10**7, 10**8]
    threads = os.environ.get("PA_THREADS", "2")
    reps = os.environ.get("PA_REPS", "5")
    numpy_reps = int(os.environ.get("PA_NUMPY_REPS", "3"))
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            r = n // 2
            seed = rng.integers(0, 2, n + r - 1, dtype=np.uint8)
            x = rng.integers(0, 2, n, dtype=np.uint8)
            sp, xp, op = (os.path.join(d, f) for f in ("seed", "x", "out"))
            bits_to_words(seed).tofile(sp)
            bits_to_words(x).tofile(xp)
            out = subprocess.run(
                [exe, sp, xp, str(n), str(r), op, threads, reps],
                check=True, capture_output=True, text=True,
            ).stdout
            print(out, end="")
            walls = sorted(
                float(l.split("wall=")[1].split("s")[0]) for l in out.splitlines() if "wall=" in l
            )
            kagi_bits = np.unpackbits(
                np.fromfile(op, dtype=np.uint8), bitorder="little"
            )[:r]
            times = []
            y = None
            for _ in range(numpy_reps):
                t0 = time.perf_counter()
                y, err = numpy_hash(seed, x, r)
                times.append(time.perf_counter() - t0)
            times.sort()
            same = bool(np.array_equal(y, kagi_bits))
            print(
                f"numpy n={n}: min {times[0]:.3f}s median {times[len(times)//2]:.3f}s "
                f"({n / times[0] / 1e6:.1f} Mb/s best; max rounding error {err:.3g})"
            )
            print(
                f"SUMMARY n={n} kagi min {walls[0]:.4f}s median {walls[len(walls)//2]:.4f}s "
                f"({n / walls[0] / 1e6:.1f} Mb/s) | numpy min {times[0]:.3f}s "
                f"({n / times[0] / 1e6:.1f} Mb/s) | outputs identical: {same}"
            )
            if not same:
                sys.exit(1)


if __name__ == "__main__":
    main()
