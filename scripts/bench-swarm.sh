#!/usr/bin/env bash
# Swarm benchmark: N real agents (default 20) in one private swarm on loopback; propagation
# latency against the loopback delay, bytes per memory per peer, CPU and RSS per agent.
# Env: AGENTS (20), MEMORIES (100), RATE (2 per second); CONFIGS: agent TOML files (for
# example agent/bench/gossip/*.toml), each run in turn with the same binary, to compare tunings.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p murmur-agent
cargo run --quiet --release -p murmur-models -- fetch
binary="${CARGO_TARGET_DIR:-target}/release/murmur-agent"
args=(--agents "${AGENTS:-20}" --memories "${MEMORIES:-100}" --rate "${RATE:-2}")
if [ -z "${CONFIGS:-}" ]; then
  python3 agent/bench/bench_swarm.py "$binary" "${args[@]}"
else
  for config in $CONFIGS; do
    python3 agent/bench/bench_swarm.py "$binary" "${args[@]}" --config "$config"
  done
fi
