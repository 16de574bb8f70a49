#!/usr/bin/env bash
# Sync protocol benchmark: bytes on the wire per pushed memory and per anti-entropy exchange
# (against the raw payload), digest and idle-round size, merge throughput (against plain
# automerge on the same changes). Prints a Markdown table. Env: MEMORIES (10000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --quiet -p murmur-sync --bench sync_wire
