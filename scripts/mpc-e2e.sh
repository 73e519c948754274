#!/usr/bin/env bash
# End-to-end MPC query times on a live local network: `kagi up --vault` (release build),
# the synthetic EMR table shared at three vault sites, the three demo queries over TLS and
# over one-time-pad (ITS) channels, semi-honest and malicious. Prints one JSON line per query
# (the `kagi mpc query --json` output plus the query, channel and security) and the network's
# link key rates, so that key spent per query can be set against them (docs/PERFORMANCE.md).
#   scripts/mpc-e2e.sh [patients] [rate-multiplier]      default 10000 4
# Environment: KAGI (binary; default: build and use target/release/kagi), MPC_E2E_DIR (data dir;
# default a fresh temporary one, removed at the end), MPC_E2E_SECURITY (default
# "semi-honest malicious").
set -euo pipefail
cd "$(dirname "$0")/.."
patients="${1:-10000}"
mult="${2:-4}"
if [ -z "${KAGI:-}" ]; then
    cargo build --release -p kagi
    KAGI="${CARGO_TARGET_DIR:-target}/release/kagi"
fi
dir="${MPC_E2E_DIR:-$(mktemp -d /tmp/kagi-mpc-e2e.XXXXXX)}"
up_pid=""
cleanup() {
    if [ -n "$up_pid" ]; then
        "$KAGI" up --stop --data-dir "$dir" >/dev/null 2>&1 || true
        kill "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    [ -n "${MPC_E2E_DIR:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(date -u +%FT%TZ), $patients patients"
"$KAGI" up --vault --data-dir "$dir" --rate-multiplier "$mult" --wait-secs 300 >"$dir/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 600); do
    [ -s "$dir/network.json" ] && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.log"; exit 1; }
    sleep 0.5
done
grep -iE "link|kb/s|b/s" "$dir/up.log" | head -20 || true
schema=$("$KAGI" mpc demo-table --out "$dir/patients.csv" --patients "$patients" 2>/dev/null)
start=$(date +%s.%N)
"$KAGI" vault put-table "$dir/patients.csv" --schema "$schema" --name patients --json --data-dir "$dir"
echo "put-table wall: $(printf "%.1f" "$(echo "$(date +%s.%N) - $start" | bc)") s"
run() {
    local q="$1" ch="$2" sec="$3" extra=()
    [ "$sec" = semi-honest ] && extra=(--semi-honest)
    local t0 out
    t0=$(date +%s.%N)
    out=$("$KAGI" mpc query patients "$q" --channel "$ch" "${extra[@]}" --json --data-dir "$dir")
    echo "{\"query\": \"$q\", \"wall_s\": $(printf "%.3f" "$(echo "$(date +%s.%N) - $t0" | bc)"), \"out\": $out}"
}
for sec in ${MPC_E2E_SECURITY:-semi-honest malicious}; do
    for ch in tls its; do
        run "count group by dx" "$ch" "$sec"
        run "mean(hba1c), count(hba1c) group by age_band" "$ch" "$sec"
        run "count where hba1c >= 6.5" "$ch" "$sec"
    done
done
