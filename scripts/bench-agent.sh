#!/usr/bin/env bash
# Agent benchmark: Murmur's agent against ChromaDB (embedded, persistent) on the same Debian
# package descriptions and model files. Env: N (10000), QUERIES (200); INGEST_VECTORS=1 gives
# both stores precomputed vectors (for large N, where embedding would dominate the run).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MURMUR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/murmur/bench-venv}

cargo build --quiet --release --locked -p murmur-agent -p murmur-models
"${CARGO_TARGET_DIR:-target}/release/murmur-models" fetch
python3 scripts/make_corpus.py --with-paragraphs
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check chromadb -r models/tools/requirements.txt
"$venv/bin/python" agent/bench/bench_vs_chroma.py \
  --agent-bin "${CARGO_TARGET_DIR:-target}/release/murmur-agent" --n "${N:-10000}" --queries "${QUERIES:-200}" ${INGEST_VECTORS:+--ingest-vectors}
