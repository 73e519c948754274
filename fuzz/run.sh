#!/usr/bin/env bash
# Coverage-guided fuzzing of kagi's parsers and message handlers with libFuzzer, on the stable
# toolchain (sanitizer-coverage passes through -C flags; no cargo-fuzz, no nightly).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     run (default: 60 s each, every target)
#   fuzz/run.sh --runs N [TARGET...]                 run each target for N executions
#   fuzz/run.sh --merge [TARGET...]                  fold new finds into the committed corpora
#
# New inputs go to fuzz/work/<target>/ (not committed); crashes to fuzz/artifacts/<target>/.
# Limits per input: 1 s, 2048 MiB RSS, 64 KiB. Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")"
all=(etsi014_request peer_messages store_record vault_wire config_text)
merge=0
budget=()
if [ "${1:-}" = "--merge" ]; then merge=1; shift
elif [ "${1:-}" = "--runs" ]; then budget=(-runs="$2"); shift 2
else budget=(-max_total_time="${1:-60}"); shift || true; fi
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
export CARGO_TARGET_DIR="${KAGI_FUZZ_TARGET_DIR:-$PWD/target}"
# --target keeps the instrumentation off build scripts and proc macros.
cargo build --release --target "$triple" --bins
bin="$CARGO_TARGET_DIR/$triple/release"
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t" "corpus/$t"
  if [ $merge = 1 ]; then
    "$bin/$t" -merge=1 "corpus/$t" "work/$t"
    continue
  fi
  echo "== $t: ${budget[*]} $(date -u +%FT%TZ)"
  "$bin/$t" "${budget[@]}" -timeout=1 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "work/$t" "corpus/$t" 2>&1 \
    | grep -E "^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|stat::average_exec_per_sec|.*(panicked|deadly|Timeout|out-of-memory))" || true
  if compgen -G "artifacts/$t/*" >/dev/null; then
    echo "finding in $t: $(ls artifacts/$t)"; exit 1
  fi
done
