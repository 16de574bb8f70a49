#!/usr/bin/env bash
# The test command (README, CI): fetch what the tests use (idempotent; verified by sha256),
# build the real-text corpus, then run every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# One feature set for fetch and tests so cargo builds the dependency graph once.
features=(--workspace --all-features --locked)

cargo run --quiet -p murmur-models --all-features --locked -- fetch --test-fixtures
python3 scripts/make_corpus.py
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run "${features[@]}" --no-fail-fast
else
  cargo test "${features[@]}" --no-fail-fast
fi
