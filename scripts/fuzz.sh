#!/usr/bin/env bash
# Fuzzes the sync protocol's message decoder and the engine's receive path with libFuzzer.
# Env: SECONDS_PER_TARGET (300), JOBS (1). Crashes land in sync-protocol/fuzz/artifacts/; copy
# each into sync-protocol/tests/fuzz-regressions/ so the test suite replays it.
set -euo pipefail
cd "$(dirname "$0")/../sync-protocol/fuzz"
seconds=${SECONDS_PER_TARGET:-300}
jobs=${JOBS:-1}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz passes unstable flags to rustc; the stable toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1
for target in $(ls fuzz_targets | sed "s/\.rs$//"); do
  echo "fuzzing $target for ${seconds}s" >&2
  cargo fuzz run "$target" --jobs "$jobs" -- -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048
done
