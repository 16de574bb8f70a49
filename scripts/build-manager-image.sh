#!/usr/bin/env bash
# Builds the manager's container image with no container daemon and no registry: a Debian
# root filesystem made from the apt mirror (mmdebstrap: the essential packages, CA certificates
# and libstdc++), the stripped manager, the default model, its tokenizer and ONNX Runtime
# (verified by sha256), a system user, all written as an OCI image layout by umoci.
#
#   bash scripts/build-manager-image.sh [--binary PATH] [--models-bin PATH] [--out DIR]
#       [--tag TAG] [--suite bookworm] [--mirror URL] [--security-mirror URL]
#
# Without --binary the manager is built with the `dist` profile; without --models-bin the
# bundle is made with `cargo run -p murmur-models`. The image is for this machine's
# architecture (amd64 here; an arm64 image needs the Debian packages' scripts run under
# emulation, which this script does not do). Needs root (mmdebstrap, umoci repack keep file
# owners), mmdebstrap and umoci. The base is Debian SUITE with its -updates and -security
# fixes of the day. Writes the layout to DIR (target/image; replaced only if it is an OCI
# layout) and prints `oci:DIR:TAG` (DIR absolute), which skopeo pushes or loads:
#
#   skopeo copy oci:$PWD/target/image:0.1.0 docker://registry.example/murmur/manager:0.1.0
#   skopeo copy oci:$PWD/target/image:0.1.0 docker-archive:manager.tar:murmur/manager:0.1.0
#   docker load -i manager.tar
#
# deploy/manager.Dockerfile builds an image with the same contents and configuration where a
# Docker-style builder and Docker Hub are at hand.
set -euo pipefail
umask 022
# Paths the caller gave are resolved before the move to the repository root.
absolute() { realpath -m -- "$1"; }

binary=""
models_bin=""
out=""
tag=""
suite="bookworm"
mirror="http://deb.debian.org/debian"
security_mirror="http://deb.debian.org/debian-security"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$(absolute "$2"); shift 2 ;;
    --models-bin) models_bin=$(absolute "$2"); shift 2 ;;
    --out) out=$(absolute "$2"); shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --suite) suite="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --security-mirror) security_mirror="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
. scripts/lib/bundle.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' manager/Cargo.toml | head -1)
tag="${tag:-$version}"
out="${out:-$PWD/target/image}"
if [ -e "$out" ] && [ ! -f "$out/oci-layout" ]; then
  echo "$out exists and is not an OCI image layout: not replacing it" >&2
  exit 1
fi
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root: mmdebstrap and umoci keep the image's file owners" >&2; exit 1; }
target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "$binary" ]; then
  echo "building murmur-manager (profile dist)" >&2
  cargo build --locked --profile dist -p murmur-manager
  binary="$target_dir/dist/murmur-manager"
fi
[ -x "$binary" ] || { echo "no manager binary at $binary" >&2; exit 1; }

# The image's user and its state: one data directory, a volume, owned by nobody else.
uid=10001
data=/var/lib/murmur-manager
cache=/usr/lib/murmur/cache

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
install -d "$stage/usr/bin" "$stage$cache"
install -m 0755 "$binary" "$stage/usr/bin/murmur-manager"
strip --strip-all "$stage/usr/bin/murmur-manager"
bundle_models "$stage$cache" "$(uname -m)" "$models_bin"

rm -rf "$out"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci unpack --image "$out:$tag" "$work/bundle" >&2
# Documentation, manual pages and translations are left out: nobody reads them in a container.
echo "making the root filesystem (Debian $suite from $mirror, with its updates)" >&2
mmdebstrap --quiet --variant=essential --include=ca-certificates,libstdc++6 \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="sync-in '$stage' /" \
  --customize-hook="echo 'murmur:x:$uid:$uid:Murmur manager:$data:/usr/sbin/nologin' >> \"\$1/etc/passwd\"" \
  --customize-hook="echo 'murmur:x:$uid:' >> \"\$1/etc/group\"" \
  --customize-hook="install -d -o $uid -g $uid -m 0750 \"\$1$data\"" \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
  "$suite" "$work/bundle/rootfs" "deb $mirror $suite main" "deb $mirror $suite-updates main" \
  "deb $security_mirror $suite-security main" >&2
umoci repack --image "$out:$tag" "$work/bundle" >&2
umoci config --image "$out:$tag" \
  --config.user "$uid:$uid" \
  --config.env "PATH=/usr/bin:/bin" \
  --config.env "MURMUR_MANAGER_DATA_DIR=$data" \
  --config.env "MURMUR_CACHE_DIR=$cache" \
  --config.workingdir "$data" \
  --config.exposedports 7720/udp --config.exposedports 7721/tcp \
  --config.volume "$data" \
  --config.entrypoint /usr/bin/murmur-manager \
  --config.cmd run --config.cmd --uplink-listen --config.cmd 0.0.0.0:7720 \
  --config.cmd --http-listen --config.cmd 0.0.0.0:7721 \
  --config.label "org.opencontainers.image.title=murmur-manager" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0" \
  --author "Murmur developers" >&2
umoci gc --layout "$out"
echo "oci:$out:$tag"
