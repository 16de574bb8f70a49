# Sourced by the packaging scripts. bundle_models DIR ARCH [MODELS_BIN]: the model, tokenizer
# and ONNX Runtime for ARCH (x86_64, aarch64) into DIR with their SHA256SUMS, copied from this
# machine's cache where verified there, downloaded otherwise; with MODELS_BIN that
# murmur-models binary does it, else `cargo run -p murmur-models`.
bundle_models() {
  local dir="$1" arch="$2" models_bin="${3:-}"
  echo "bundling the model and ONNX Runtime for $arch" >&2
  if [ -n "$models_bin" ]; then
    "$models_bin" bundle "$dir" --arch "$arch" >&2
  else
    cargo run --quiet --locked -p murmur-models --all-features -- bundle "$dir" --arch "$arch" >&2
  fi
}
