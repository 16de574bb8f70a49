#!/usr/bin/env bash
# Manager benchmarks (docs/BENCHMARKS.md): memories merged and persisted per second by a real
# manager process with 1, 10 and 100 agents uploading over QUIC at once (against a bare
# in-process engine merging the same state), and a 1M-memory Parquet export (against JSON
# Lines of the same rows), with RSS. Prints Markdown tables.
# Env: MURMUR_BENCH_AGENTS (1,10,100), MURMUR_BENCH_MEMORIES (20000),
#      MURMUR_BENCH_EXPORT_MEMORIES (1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --quiet --locked -p murmur-manager --bench merge_throughput
cargo bench --quiet --locked -p murmur-manager --bench export_parquet
