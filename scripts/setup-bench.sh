#!/usr/bin/env bash
# What the benchmarks need beyond `scripts/setup.sh test`: wrk (load generator) and the Rust
# vllm-router the router benchmark compares against. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v wrk >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends wrk
fi
.venv/bin/pip install -q vllm-router==0.1.17
