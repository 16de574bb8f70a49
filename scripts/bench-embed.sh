#!/usr/bin/env bash
# Embedding benchmark: Murmur's Rust embedder against Python onnxruntime on the same model
# files, runtime version and sentences, in alternating rounds; prints a Markdown table of
# medians and the Rust/Python ratio. Env: ROUNDS (3), SECONDS_PER_BATCH (5), BATCHES (1,8,32).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_BATCH:-5}
batches=${BATCHES:-1,8,32}
venv=${MURMUR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/murmur/bench-venv}

cargo run --quiet --release -p murmur-models -- fetch
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r models/tools/requirements.txt
cargo bench --quiet -p murmur-models --bench embed_throughput --no-run

out=$(mktemp -d)
for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds: rust" >&2
  cargo bench --quiet -p murmur-models --bench embed_throughput -- --seconds "$seconds" --batches "$batches" > "$out/rust-$round.json"
  echo "round $round/$rounds: rust, length bucketing off" >&2
  cargo bench --quiet -p murmur-models --bench embed_throughput -- --seconds "$seconds" --batches "$batches" --plain > "$out/rust-plain-$round.json"
  echo "round $round/$rounds: python" >&2
  "$venv/bin/python" models/tools/bench_embed.py --seconds "$seconds" --batches "$batches" > "$out/python-$round.json"
done
python3 models/tools/bench_report.py "$out"/*.json
