#!/usr/bin/env bash
# Backup and restore of one agent holding N memories (agent/bench/bench_backup.py): the pause
# writers see while a backup runs against idle, backup time against a cold `cp -a`, restore
# memories/s against the ingest rate. Env: N (100000).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release --locked -p murmur-agent -p murmur-models
"$target/release/murmur-models" fetch
venv=${MURMUR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/murmur/bench-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import numpy' 2>/dev/null || "$venv/bin/pip" install --quiet --disable-pip-version-check numpy
"$venv/bin/python" agent/bench/bench_backup.py --agent-bin "$target/release/murmur-agent" --memories "${N:-100000}"
