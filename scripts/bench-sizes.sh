#!/usr/bin/env bash
# Sizes of what ships: the release binaries as cargo builds them (line tables kept for
# backtraces), the same binaries stripped as packages carry them, and the agent's Debian
# package with its model and ONNX Runtime. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release --locked -p murmur-agent -p murmur-manager -p murmur-models --all-features
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| binary | release (line tables) | stripped | stripped / release |"
echo "|---|---:|---:|---:|"
for bin in murmur-agent murmur-manager; do
  strip --strip-all -o "$work/$bin" "$target/release/$bin"
  full=$(stat -c %s "$target/release/$bin")
  stripped=$(stat -c %s "$work/$bin")
  awk -v b="$bin" -v f="$full" -v s="$stripped" \
    'BEGIN { printf "| %s | %.1f MB | %.1f MB | %.2f |\n", b, f / 1e6, s / 1e6, s / f }'
done
deb=$(bash scripts/package-deb.sh --binary "$target/release/murmur-agent" \
  --models-bin "$target/release/murmur-models" --out "$work/deb")
echo
echo "| package | file | installed |"
echo "|---|---:|---:|"
awk -v n="$(basename "$deb")" -v f="$(stat -c %s "$deb")" \
  -v i="$(dpkg-deb -f "$deb" Installed-Size)" \
  'BEGIN { printf "| %s | %.1f MB | %.1f MB |\n", n, f / 1e6, i * 1024 / 1e6 }'
echo
echo "| in the package | bytes |"
echo "|---|---:|"
dpkg-deb -c "$deb" | awk '$3 > 100000 { printf "| %s | %d |\n", $6, $3 }'
