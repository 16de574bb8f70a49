#!/usr/bin/env bash
# Embedding benchmark: Murmur's Rust embedder against Python onnxruntime on the same model
# files, runtime version and sentences, in alternating rounds; prints a Markdown table of
# medians and the Rust/Python ratio. Env: ROUNDS (3), SECONDS_PER_BATCH (5), BATCHES (1,8,32),
# DEVICE (cpu; cuda runs both sides on the GPU: the Rust side built with --features cuda, both
# on the onnxruntime-gpu wheel's runtime, which needs CUDA 13 and cuDNN 9 on the library path).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_BATCH:-5}
batches=${BATCHES:-1,8,32}
device=${DEVICE:-cpu}
venv=${MURMUR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/murmur/bench-venv}
features=()

cargo run --quiet --release -p murmur-models -- fetch
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r models/tools/requirements.txt
if [ "$device" = cuda ]; then
  features=(--features cuda)
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'onnxruntime-gpu==1.31.1'
  export ORT_DYLIB_PATH
  ORT_DYLIB_PATH=$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.31.1"))')
fi
cargo bench --quiet -p murmur-models "${features[@]}" --bench embed_throughput --no-run

out=$(mktemp -d)
for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds: rust" >&2
  cargo bench --quiet -p murmur-models "${features[@]}" --bench embed_throughput -- --seconds "$seconds" --batches "$batches" --device "$device" > "$out/rust-$round.json"
  echo "round $round/$rounds: rust, length bucketing off" >&2
  cargo bench --quiet -p murmur-models "${features[@]}" --bench embed_throughput -- --seconds "$seconds" --batches "$batches" --device "$device" --plain > "$out/rust-plain-$round.json"
  echo "round $round/$rounds: python" >&2
  "$venv/bin/python" models/tools/bench_embed.py --seconds "$seconds" --batches "$batches" --device "$device" > "$out/python-$round.json"
done
python3 models/tools/bench_report.py "$out"/*.json
