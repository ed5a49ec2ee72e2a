#!/usr/bin/env bash
# ON the GPU machine, first in every call: installs the bundle that scripts/vllm-gpu-bundle.sh
# built (carried with the call as .gpu-bundle) into /tmp/site. A warm machine that already has
# this bundle installed skips the install. Then run with PYTHONPATH=/tmp/site.
#   bash bench/vllm_gpu/setup_device.sh && export PYTHONPATH=/tmp/site
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${KVPLAN_GPU_BUNDLE:-$repo/.gpu-bundle}
site=${KVPLAN_GPU_SITE:-/tmp/site}
if [ ! -f "$bundle/MANIFEST" ]; then
  echo "error: no bundle at $bundle: run scripts/vllm-gpu-bundle.sh on the build machine and carry .gpu-bundle" >&2
  exit 2
fi
if [ -f "$site/.kvplan-bundle" ] && cmp -s "$site/.kvplan-bundle" "$bundle/MANIFEST"; then
  echo "bundle already installed in $site"
  exit 0
fi
rm -rf "$site"
mkdir -p "$site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$bundle"/whl/*.whl
tar xzf "$bundle"/vllm-*.tgz -C "$site"
python3 "$repo/bench/vllm_gpu/site_setup.py" "$site"
cp "$bundle/MANIFEST" "$site/.kvplan-bundle"
echo "bundle installed in $site ($(du -sh "$site" | cut -f1))"
