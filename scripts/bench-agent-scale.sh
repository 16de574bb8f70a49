#!/usr/bin/env bash
# One agent as what it holds grows: ingest/s, RSS, disk per memory, stats and search latency,
# restart after SIGTERM and SIGKILL (agent/bench/bench_scale.py). Env: SIZES (10000,100000);
# BASELINE=path of another murmur-agent binary (say, built from an older commit) to run first,
# as the peer in the same run; CHROMA=1 adds ChromaDB (embedded) at the same sizes as the peer.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release --locked -p murmur-agent -p murmur-models
"$target/release/murmur-models" fetch
bins=()
[ -n "${BASELINE:-}" ] && bins+=(--agent-bin "baseline=$BASELINE")
bins+=(--agent-bin "this=$target/release/murmur-agent")
venv=${MURMUR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/murmur/bench-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import numpy' 2>/dev/null || "$venv/bin/pip" install --quiet --disable-pip-version-check numpy
peers=()
if [ -n "${CHROMA:-}" ]; then
  "$venv/bin/python" -c 'import chromadb' 2>/dev/null || "$venv/bin/pip" install --quiet --disable-pip-version-check chromadb
  peers+=(--chroma)
fi
"$venv/bin/python" agent/bench/bench_scale.py "${bins[@]}" "${peers[@]}" --sizes "${SIZES:-10000,100000}"
