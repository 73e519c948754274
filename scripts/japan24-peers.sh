#!/usr/bin/env bash
# Peer connections on the 24-node example with real node processes: `kagi up --topology
# docs/examples/japan24.toml --peers MODE` (MODE: neighbours or all), then the time to the first
# key between the farthest pair (ueno → osaka, 11 hops) from the first request, whether the key
# osaka serves for it is the same, and, SETTLE seconds after the network came up (default 45:
# past the 30 s after which an idle on-demand connection closes), per node: established TCP
# connections and RSS. Prints one line per node and a summary line (docs/PERFORMANCE.md).
#   scripts/japan24-peers.sh MODE [settle-seconds]
# Environment: KAGI (binary; default: build and use target/release/kagi), J24_DIR (data dir;
# default a fresh temporary one, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: scripts/japan24-peers.sh neighbours|all [settle-seconds]}"
settle="${2:-45}"
if [ -z "${KAGI:-}" ]; then
    cargo build --release -p kagi
    KAGI="${CARGO_TARGET_DIR:-target}/release/kagi"
fi
dir="${J24_DIR:-$(mktemp -d /tmp/kagi-j24.XXXXXX)}"
up_pid=""
cleanup() {
    if [ -n "$up_pid" ]; then
        "$KAGI" up --stop --data-dir "$dir" >/dev/null 2>&1 || true
        kill "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    [ -n "${J24_DIR:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(date -u +%FT%TZ), peers $mode"
t_start=$(date +%s.%N)
"$KAGI" up --data-dir "$dir" --topology docs/examples/japan24.toml --rate-multiplier 4 \
    --wait-secs 300 --peers "$mode" >"$dir/up.log" 2>&1 &
up_pid=$!
until [ -s "$dir/network.json" ] && jq -e '.nodes | length == 24' "$dir/network.json" >/dev/null 2>&1; do
    kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.log"; exit 1; }
    sleep 0.2
done
t_up=$(date +%s.%N)

# First key ueno → osaka, asked every 250 ms (503 while the far pool fills).
t0=$(date +%s.%N)
until got=$("$KAGI" keys --data-dir "$dir" --json get --sae sae-ueno-a --slave sae-osaka-a -n 1 2>/dev/null); do
    sleep 0.25
    if [ "$(echo "$(date +%s.%N) - $t0 > 300" | bc)" = 1 ]; then echo "no key in 300 s"; exit 1; fi
done
t_key=$(date +%s.%N)
id=$(echo "$got" | jq -r '.keys[0].key_ID')
key=$(echo "$got" | jq -r '.keys[0].key')
slave=$("$KAGI" keys --data-dir "$dir" --json retrieve --sae sae-osaka-a --master sae-ueno-a "$id" | jq -r '.keys[0].key')
match=$([ "$key" = "$slave" ] && echo yes || echo NO)

# Connections and memory once on-demand connections had time to close.
while [ "$(echo "$(date +%s.%N) - $t_up < $settle" | bc)" = 1 ]; do sleep 1; done
total_conn=0 total_rss=0 max_conn=0 max_rss=0
for id_ in $(jq -r '.nodes[].id' "$dir/network.json"); do
    pid=$(cat "$dir/nodes/$id_/node.pid")
    conn=$(ss -Htnp state established 2>/dev/null | grep -c "pid=$pid," || true)
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "node $id_: $conn established TCP connections, RSS $((rss / 1024)) MiB"
    total_conn=$((total_conn + conn)) total_rss=$((total_rss + rss))
    [ "$conn" -gt "$max_conn" ] && max_conn=$conn
    [ "$rss" -gt "$max_rss" ] && max_rss=$rss
done
printf 'peers %s: up in %.1f s; first key ueno→osaka %.1f s after the first request, same key at osaka: %s; %s s after up: connections per node %.1f mean, %d max; RSS per node %.1f MiB mean, %.1f MiB max\n' \
    "$mode" "$(echo "$t_up - $t_start" | bc)" "$(echo "$t_key - $t0" | bc)" "$match" "$settle" \
    "$(echo "$total_conn / 24" | bc -l)" "$max_conn" \
    "$(echo "$total_rss / 24 / 1024" | bc -l)" "$(echo "$max_rss / 1024" | bc -l)"
