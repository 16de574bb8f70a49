#!/usr/bin/env bash
# Swarm benchmark: N real agents (default 20) in one private swarm on loopback; propagation
# latency against the loopback delay, bytes per memory per peer, CPU and RSS per agent.
# Env: AGENTS (20), MEMORIES (100), RATE (2 per second).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p murmur-agent
cargo run --quiet --release -p murmur-models -- fetch
python3 agent/bench/bench_swarm.py "${CARGO_TARGET_DIR:-target}/release/murmur-agent" \
  --agents "${AGENTS:-20}" --memories "${MEMORIES:-100}" --rate "${RATE:-2}"
