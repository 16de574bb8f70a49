#!/usr/bin/env bash
# The chaos suite's long run: about an hour of faults (760 steps of at least 3 s; a step with a
# kill and restart takes longer, ~4.7 s on average on 2 vCPU) against five agents and two
# managers. MURMUR_CHAOS_SEED replays a schedule; the seed and every step are printed.
# The same package selection and features as the test command, so nothing is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
export MURMUR_CHAOS_STEPS="${MURMUR_CHAOS_STEPS:-760}"
export MURMUR_CHAOS_STEP_MS="${MURMUR_CHAOS_STEP_MS:-3000}"
export MURMUR_CHAOS_SEED="${MURMUR_CHAOS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
exec cargo nextest run --workspace --all-features --locked -E 'binary(chaos)' --no-capture
