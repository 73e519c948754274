#!/usr/bin/env bash
# GPU privacy amplification on an NVIDIA machine, in one command:
#   scripts/gpu-pa-bench.sh [n ...]            default: 1e8 1e9 (input bits; output n/2)
# 1. the bit-for-bit test of the `gpu` feature (GPU hash == CPU hash, 10^8 bits here);
# 2. kagi's GPU path and CPU path on the same random seed and input, outputs compared with cmp,
#    wall time min/median of GPU_REPS runs (the first run includes compiling the kernels and
#    computing the twiddles; later runs reuse them, as a node hashing block after block does).
# Needs the NVIDIA driver and NVRTC (libnvrtc) at run time; building needs no CUDA toolkit.
# Without network on the GPU machine, build here first and carry the binaries:
#   cargo build --release -p kagi-postproc --features gpu --example pa_files
#   cargo test --release -p kagi-postproc --features gpu --test gpu --no-run   # prints the test binary
#   PA_FILES=path/to/pa_files GPU_TEST_BIN=path/to/gpu-test-binary scripts/gpu-pa-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1e8 1e9)
reps="${GPU_REPS:-5}"
target="${CARGO_TARGET_DIR:-target}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "cores: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"

# 1. Bit-for-bit test (fails if the GPU is not usable: no silent skip here).
export KAGI_GPU_TEST_BITS="${KAGI_GPU_TEST_BITS:-1e8}"
if [ -n "${GPU_TEST_BIN:-}" ]; then
  out=$("$GPU_TEST_BIN" --nocapture 2>&1) || { echo "$out"; exit 1; }
else
  out=$(cargo test --release -p kagi-postproc --features gpu --test gpu -- --nocapture 2>&1) || { echo "$out"; exit 1; }
fi
echo "$out" | grep -E "test result|SKIPPED" || true
if echo "$out" | grep -q SKIPPED; then echo "GPU not usable: test skipped"; exit 1; fi

# 2. Throughput, GPU beside CPU.
exe="${PA_FILES:-}"
if [ -z "$exe" ]; then
  cargo build --release -p kagi-postproc --features gpu --example pa_files
  exe="$target/release/examples/pa_files"
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for s in "${sizes[@]}"; do
  n=$(python3 -c "print(int(float('$s')))" 2>/dev/null || awk "BEGIN{printf \"%d\", $s}")
  r=$((n / 2))
  head -c $(( (n + r + 63) / 64 * 8 )) /dev/urandom > "$tmp/seed"
  head -c $(( (n + 63) / 64 * 8 )) /dev/urandom > "$tmp/x"
  "$exe" "$tmp/seed" "$tmp/x" "$n" "$r" "$tmp/gpu.out" 1 "$reps" gpu | tee "$tmp/gpu.log"
  "$exe" "$tmp/seed" "$tmp/x" "$n" "$r" "$tmp/cpu.out" "$(nproc)" 2 | tee "$tmp/cpu.log"
  if cmp -s "$tmp/gpu.out" "$tmp/cpu.out"; then same=yes; else same=NO; fi
  walls=$(grep -o 'wall=[0-9.]*' "$tmp/gpu.log" | tail -n +2 | cut -d= -f2 | sort -g)
  [ -n "$walls" ] || walls=$(grep -o 'wall=[0-9.]*' "$tmp/gpu.log" | cut -d= -f2)
  min=$(echo "$walls" | head -1); med=$(echo "$walls" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  cpu=$(grep -o 'wall=[0-9.]*' "$tmp/cpu.log" | cut -d= -f2 | sort -g | head -1)
  echo "SUMMARY n=$n gpu min ${min}s median ${med}s ($(awk "BEGIN{printf \"%.2f\", $n/$min/1e9}") Gb/s) | cpu ($(nproc) threads) ${cpu}s | identical: $same"
  [ "$same" = yes ] || exit 1
done
