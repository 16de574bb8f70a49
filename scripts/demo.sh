#!/usr/bin/env bash
# The main job on embedded defaults, end to end: build, start an agent (it fetches its model on
# first start), import 512 real texts, search them, show the agent's stats, stop it cleanly.
# The agent's data stays in $MURMUR_DEMO_DIR (default ./murmur-data/demo-agent) after the run;
# each run starts it afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p murmur-agent
bin="${CARGO_TARGET_DIR:-target}/release/murmur-agent"
data="${MURMUR_DEMO_DIR:-murmur-data/demo-agent}"
rm -rf "$data"
mkdir -p "$data"

"$bin" run --data-dir "$data" --api-addr 127.0.0.1:0 &
agent=$!
trap 'kill -TERM $agent 2>/dev/null || true; wait $agent 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  [ -s "$data/api.addr" ] && break
  kill -0 $agent 2>/dev/null || { echo "agent failed to start" >&2; exit 1; }
  sleep 0.2
done
export MURMUR_AGENT_URL="http://$(cat "$data/api.addr")"
echo "agent at $MURMUR_AGENT_URL (data in $data)"

"$bin" import models/testdata/bench_sentences.txt --namespace debian
"$bin" remember "The forklift battery in bay 7 is below 20 percent charge." --namespace warehouse --tag forklift
for query in "tools to edit photos" "play music from the command line" "which vehicle needs charging?"; do
  echo; echo "? $query"
  "$bin" recall "$query" -k 3
done
echo
"$bin" stats
