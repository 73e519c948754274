#!/usr/bin/env bash
# Privacy amplification, side by side in one run: kagi's CPU kernel (additive FFT over
# GF(2^64)) and a numpy float-FFT reference on the same data, outputs compared bit for bit.
#   scripts/pa-bench.sh [n ...]          default 1e6 1e7 1e8
# Environment: PA_THREADS (default 2), PA_REPS (kagi runs, default 5), PA_NUMPY_REPS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install --quiet numpy
cargo build --release -p kagi-postproc --example pa_files
dir="${CARGO_TARGET_DIR:-target}/release/examples"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(date -u +%FT%TZ)"
python3 scripts/pa_ref.py "$dir/pa_files" "$@"
