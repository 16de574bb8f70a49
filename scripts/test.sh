#!/usr/bin/env bash
# The test command (README, CI): fetch what the tests use (idempotent; verified by sha256),
# build the real-text corpus, then run every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# One feature set for fetch and tests so cargo builds the dependency graph once.
features=(--workspace --all-features --locked)

cargo run --quiet -p murmur-models --all-features --locked -- fetch --test-fixtures
python3 scripts/make_corpus.py

# Real peers for the tests: an S3-compatible server (moto), DuckDB, PyArrow (the reader of
# encrypted exports), schemathesis (the API conformance run) and the Kubernetes and compose
# schema validators from PyPI, in a venv of their own; Debian's Chromium and ChromeDriver for
# the dashboard test; Debian's promtool for the monitoring test.
tools="${MURMUR_TOOLS_DIR:-$HOME/.cache/murmur-tools}"
if ! "$tools/venv/bin/python" -c 'import moto.server, duckdb, pyarrow, schemathesis, kubernetes_validate, check_jsonschema' 2>/dev/null; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5' 'duckdb==1.4.1' \
    'pyarrow==26.0.1' 'schemathesis==4.32.5' 'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0'
fi
export MURMUR_TOOLS_PYTHON="$tools/venv/bin/python"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "the dashboard test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
# The container image test builds the manager's image with no daemon and reads it back.
if ! command -v mmdebstrap >/dev/null || ! command -v umoci >/dev/null || ! command -v skopeo >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq mmdebstrap umoci skopeo >/dev/null
  else
    echo "the container image test needs mmdebstrap, umoci and skopeo: apt-get install mmdebstrap umoci skopeo" >&2
    exit 1
  fi
fi
# Prometheus's promtool for the monitoring test: Debian's package unpacked into the tools
# directory (apt verifies it), not installed, so nothing is started and no root is needed.
if command -v promtool >/dev/null; then
  MURMUR_PROMTOOL=$(command -v promtool)
else
  MURMUR_PROMTOOL="$tools/prometheus/usr/bin/promtool"
  if [ ! -x "$MURMUR_PROMTOOL" ]; then
    mkdir -p "$tools/download"
    (cd "$tools/download" && rm -f prometheus_*.deb && apt-get download -qq prometheus &&
      dpkg-deb -x prometheus_*.deb "$tools/prometheus" && rm prometheus_*.deb)
  fi
fi
export MURMUR_PROMTOOL
"$MURMUR_PROMTOOL" --version >/dev/null
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run "${features[@]}" --no-fail-fast
else
  cargo test "${features[@]}" --no-fail-fast
fi
