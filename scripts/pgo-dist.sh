#!/usr/bin/env bash
# The `dist` kagi binary with profile-guided optimisation, for long `kagi sim` runs:
#   scripts/pgo-dist.sh            -> target/x86_64-unknown-linux-gnu/dist/kagi
# 1. builds kagi with LLVM's instrumentation (`-Cprofile-generate`);
# 2. trains it on a short planning run (an hour of a 100-node, 10,000-SAE grid, another seed
#    than the benchmark's, so the profile is not the measured run's);
# 3. builds it again with the merged profile (`-Cprofile-use`).
# The code is the same as `cargo build --profile dist`'s; only the compiler's layout and
# inlining decisions follow the profile. Needs `llvm-profdata` of rustc's own LLVM: the script
# adds rustup's `llvm-tools` component when it is missing.
# `--target` keeps the flags off build scripts and proc macros (they run on the host).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
train_hours="${PGO_TRAIN_HOURS:-1}"
profiles="$(mktemp -d /tmp/kagi-pgo.XXXXXX)"
trap 'rm -rf "$profiles"' EXIT

sysroot="$(rustc --print sysroot)"
profdata="$sysroot/lib/rustlib/$triple/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools
fi

echo "== 1/3 instrumented build"
RUSTFLAGS="-Cprofile-generate=$profiles" \
  cargo build --profile dist -p kagi --target "$triple" \
  --target-dir "$target_dir/pgo-generate"

echo "== 2/3 training run ($train_hours simulated hours)"
"$target_dir/pgo-generate/$triple/dist/kagi" sim --grid-mesh 100 --saes-per-node 100 \
  --hours "$train_hours" --seed 7 --json >/dev/null
"$profdata" merge -o "$profiles/merged.profdata" "$profiles"

echo "== 3/3 optimised build"
RUSTFLAGS="-Cprofile-use=$profiles/merged.profdata" \
  cargo build --profile dist -p kagi --target "$triple" --target-dir "$target_dir"
echo "built $target_dir/$triple/dist/kagi"
