#!/usr/bin/env bash
# The chaos suite's long run: an hour of faults (up to 760 steps of at least 3 s; a step with a
# kill and restart takes longer: 3.4 s on average on 2 vCPU at this pace) against five agents
# and two managers. MURMUR_CHAOS_SEED replays a schedule; the seed and every step are printed.
# The same package selection and features as the test command, so nothing is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
export MURMUR_CHAOS_STEPS="${MURMUR_CHAOS_STEPS:-760}"
# An hour of faults at most, whatever the steps cost: a restart's cost grows with the state.
export MURMUR_CHAOS_MINUTES="${MURMUR_CHAOS_MINUTES:-60}"
# A request per client every ~1.5 s (CI's short run: every 90 ms), so the hour's state stays
# what restarts can reload within a step or two.
export MURMUR_CHAOS_CLIENT_PAUSE_MS="${MURMUR_CHAOS_CLIENT_PAUSE_MS:-1500}"
export MURMUR_CHAOS_STEP_MS="${MURMUR_CHAOS_STEP_MS:-3000}"
export MURMUR_CHAOS_SEED="${MURMUR_CHAOS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
exec cargo nextest run --workspace --all-features --locked -E 'binary(chaos)' --no-capture
