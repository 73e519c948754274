#!/usr/bin/env bash
# Every issue-14 post-processing benchmark in one run, each repeated, min / median in one table
# (wall time and process CPU time, so a loaded machine still gives the CPU figure):
#   - privacy amplification at 10^8 bits, 2 threads (kagi), and the numpy float-FFT reference
#     on the same data with the outputs compared bit for bit (skipped when python3 has no
#     numpy: this script installs nothing);
#   - LDPC reconciliation (default blind min-sum; with each blind round restarted from the
#     channel LLRs as before 2026-12-03; and `ldpc-fast`, first attempt at f = 1.5) at QBER
#     1 / 3 / 5 %: Mb/s, f and belief-propagation iterations per frame over all attempts;
#   - Cascade at QBER 1 / 3 / 5 %: Mb/s, f and rounds;
#   - `kagi link-sim --distance 25`: sifted Mb/s (mean over blocks) with both ends overlapped;
#     `kagi link-sim --distance 45`: secret bits with the default (auto) block.
#
#   scripts/pp-bench.sh               # about 4-6 min on 2 idle cores after the build (3 min at load 8)
# Environment: PP_REPS (default 3), PP_THREADS (2), PP_NUMPY_BITS (reference size, 1e8),
# PP_NUMPY_REPS (1 at 10^8: it takes ~1 min and ~10 GB), PP_SKIP (words among pa numpy ldpc
# cascade link25 link45 to leave out), CARGO_TARGET_DIR as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

linksim() { # distance, label
    local km="$1" label="$2" i j
    local tmp
    tmp="$(mktemp -d)"
    for ((i = 0; i < reps; i++)); do
        "$kagi" link-sim --distance "$km" --json >"$tmp/$i.json"
    done
    python3 - "$tmp" "$reps" "$km" "$label" <<'EOF' >>"$rows"
import json, sys, glob
d, reps, km, label = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = [json.load(open(f)) for f in sorted(glob.glob(d + "/*.json"))]
def mm(v):
    v = sorted(v)
    return v[0], v[len(v) // 2]
w = mm([r["postprocessing_s"] for r in runs])
c = mm([r["postprocessing_cpu_s"] for r in runs])
mb = sorted(r["mean_block_sifted_mbps"] for r in runs)
sec = mm([r["secret_bits"] for r in runs])
same = all(r["keys_identical"] for r in runs)
r0 = runs[0]
note = (f"{label}: sifted {r0['sifted_bits']} bits in {len(r0['block_sifted_mbps'])} block(s), "
        f"f {r0['ec_efficiency']:.3f}, secret bits min/med {sec[0]}/{sec[1]}, "
        f"CPU/bit {c[1] / r0['sifted_bits'] * 1e9:.0f} ns, keys identical {same}, "
        f"elapsed {mm([r['elapsed_s'] for r in runs])[1]:.1f} s with the photon simulation")
print(f"ROW\tlink-sim {km} km (post-processing)\t{len(runs)}\t{w[0]:.3f}\t{w[1]:.3f}\t"
      f"{c[0]:.2f}\t{c[1]:.2f}\t{mb[-1]:.2f}\t{mb[len(mb) // 2]:.2f}\t{note}")
EOF
    rm -rf "$tmp"
}

# The whole run is one function, parsed before it starts (editing the file mid-run is safe).
main() {
    reps="${PP_REPS:-3}"
    threads="${PP_THREADS:-2}"
    skip=" ${PP_SKIP:-} "
    want() { [[ "$skip" != *" $1 "* ]]; }
    target="${CARGO_TARGET_DIR:-target}"
    cargo build --release -p kagi-postproc --example line_rate --example pa_files
    cargo build --release -p kagi --bin kagi
    ex="$target/release/examples"
    kagi="$target/release/kagi"
    rows="$(mktemp)"
    trap 'rm -f "$rows"' EXIT
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%TZ)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "ROW	benchmark	reps	wall_min_s	wall_med_s	cpu_min_s	cpu_med_s	Mbps_best	Mbps_med	note" >"$rows"

    # Kagi's own kernels: PA, LDPC (default, and cold-restarted blind rounds), Cascade.
    what=()
    want pa && what+=(pa)
    want ldpc && what+=(ldpc ldpc-cold ldpc-fast)
    want cascade && what+=(cascade)
    if ((${#what[@]})); then
        PP_THREADS="$threads" "$ex/line_rate" "$reps" "${what[@]}" | tee /dev/stderr | grep '^ROW' | tail -n +2 >>"$rows"
    fi

    # numpy reference on the same data (bit-for-bit check inside pa_ref.py).
    if want numpy; then
        if python3 -c 'import numpy' 2>/dev/null; then
            nb="${PP_NUMPY_BITS:-1e8}"
            out="$(PA_THREADS="$threads" PA_REPS="$reps" PA_NUMPY_REPS="${PP_NUMPY_REPS:-1}" \
                python3 scripts/pa_ref.py "$ex/pa_files" "$nb")"
            echo "$out" >&2
            echo "$out" | grep '^SUMMARY' | sed -E 's/.*numpy min ([0-9.]+)s \(([0-9.]+) Mb\/s\) \| outputs identical: (\w+)/ROW\tpa numpy float FFT n='"$nb"'\t'"${PP_NUMPY_REPS:-1}"'\t\1\t-\t-\t-\t\2\t-\tidentical to kagi: \3/' >>"$rows"
        else
            printf 'ROW\tpa numpy float FFT\t0\t-\t-\t-\t-\t-\t-\tSKIPPED: python3 has no numpy\n' >>"$rows"
        fi
    fi

    # Whole pipeline through the photon simulator (post-processing timed by link-sim itself).
    want link25 && linksim 25 "mean over blocks"
    want link45 && linksim 45 "default block"

    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    cut -f2- "$rows" | column -t -s $'\t'
}

main "$@"
