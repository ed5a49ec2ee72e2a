#!/usr/bin/env bash
# Builds, on this machine (it needs the package index), the bundle that lets vLLM's own Python
# engine run on the GPU machine: there torch is 2.11 and nothing can be downloaded, while vLLM's
# wheel carries compiled extensions built for torch 2.14. The bundle holds vLLM's Python source
# without those extensions and the pure/cp312 wheels of what its engine imports that the GPU
# image lacks (found by importing it there). bench/vllm_gpu/setup_device.sh installs it there.
#   bash scripts/vllm-gpu-bundle.sh [DEST]        (default .gpu-bundle, ignored by git; ~31 MB)
# Idempotent: a bundle whose MANIFEST matches these pins is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu-bundle}
VLLM_VERSION=${VLLM_VERSION:-0.33.0}
PY=${PY:-python3}
CACHE=${KVPLAN_WHEEL_CACHE:-$HOME/.cache/kvplan/wheels}
MAX_MB=40  # a call carries 64 MiB in all, the repository (~7 MB) included

WHEELS=(
  cbor2==6.3.0 pyzmq==27.3.0 msgspec==0.23.0 pybase64==1.5.1 cachetools==8.0.2
  openai==3.57.0 openai-harmony==0.0.8 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
  fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 partial-json-parser==0.2.1.1.post7
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2 llguidance==1.9.1
  opentelemetry-api==1.45.2 compressed-tensors==0.17.0 loguru==0.7.3
  gguf==0.19.0  # SmolLM2's GGUF -> checkpoint conversion (transformers is on the GPU image)
)
PLATFORMS=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_26_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
  PLATFORMS+=(--platform "$p")
done

spec="vllm==$VLLM_VERSION ${WHEELS[*]}"
if [ -f "$DEST/MANIFEST" ] && [ "$(head -1 "$DEST/MANIFEST")" = "spec: $spec" ]; then
  echo "bundle up to date: $DEST ($(du -sh "$DEST" | cut -f1))"
  exit 0
fi

rm -rf "$DEST"
mkdir -p "$DEST/whl" "$CACHE"
fetch() {  # cp312 wheels for the GPU machine (x86_64, Python 3.12), no dependencies
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$1" "${@:2}" 2>&1 | grep -v "^WARNING: Location" || true
}
fetch "$CACHE" "vllm==$VLLM_VERSION"
whl=$(ls "$CACHE"/vllm-"$VLLM_VERSION"-*.whl)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# vLLM's Python source: no compiled extensions (.so), no C++/CUDA sources or headers
unzip -q "$whl" 'vllm/*' "vllm-$VLLM_VERSION.dist-info/*" -d "$tmp" \
  -x '*.so' 'vllm/vllm-rs' '*.h' '*.hpp' '*.cuh' '*.cu' '*.inl' '*.cpp'
tar czf "$DEST/vllm-$VLLM_VERSION.tgz" -C "$tmp" vllm "vllm-$VLLM_VERSION.dist-info"
for w in "${WHEELS[@]}"; do
  fetch "$DEST/whl" "$w"
done
n=$(ls "$DEST"/whl/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "error: expected ${#WHEELS[@]} wheels in $DEST/whl, got $n" >&2
  exit 1
fi
{
  echo "spec: $spec"
  (cd "$DEST" && sha256sum "vllm-$VLLM_VERSION.tgz" whl/*.whl)
} > "$DEST/MANIFEST"
mb=$(du -sm "$DEST" | cut -f1)
if [ "$mb" -gt "$MAX_MB" ]; then
  echo "error: bundle is $mb MB, more than $MAX_MB MB: it would not fit in a call with the repository" >&2
  exit 1
fi
echo "bundle built: $DEST ($mb MB, $n wheels, vLLM $VLLM_VERSION)"
