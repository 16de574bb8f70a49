#!/usr/bin/env bash
# Fuzzes every target of every fuzz crate (sync-protocol/fuzz: the message decoder, the
# record/tombstone/entry decoder and the engine's receive path; uplink/fuzz: the frame and
# handshake decoders; manager/fuzz: the bucket segment decoder) with libFuzzer, starting from the
# committed inputs.
# Env: SECONDS_PER_TARGET (300), JOBS (all cores; libFuzzer's fork mode), TARGETS (all).
# Crashes land in <crate>/fuzz/artifacts/<target>/; copy each into
# <crate>/fuzz/regressions/<target>/ so the test suite replays it
# (tests/tests/fuzz_regressions.rs). The last `#N` line of each log is the executions done.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_TARGET:-300}
jobs=${JOBS:-$(nproc)}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz passes unstable flags to rustc; the stable toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1
for fuzz in */fuzz; do
  crate=$(dirname "$fuzz")
  for target in $(ls "$fuzz/fuzz_targets" | sed "s/\.rs$//"); do
    if [ -n "${TARGETS:-}" ] && ! grep -qw "$target" <<<"$TARGETS"; then continue; fi
    echo "fuzzing $crate/$target for ${seconds}s on $jobs processes" >&2
    corpus="$fuzz/corpus/$target"
    artifacts="$fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    cp "$fuzz/regressions/$target"/* "$corpus"/
    (cd "$fuzz" && cargo fuzz run "$target" "corpus/$target" -- -fork="$jobs" \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 \
      -artifact_prefix="artifacts/$target/") 2>&1 | tee "$fuzz/artifacts/$target.log" |
      grep -E '^#[0-9]+' | tail -1
  done
done
