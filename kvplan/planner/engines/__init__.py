"""Sizing on other serving engines than vLLM: SGLang, TensorRT-LLM and llama.cpp, each from its own
source code (the module of each engine cites the functions it follows). Modules load only when
`--engine` names them, so `kvplan size` stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kvplan.errors import NotFound, closest
from kvplan.formats import ENGINES as NAMES

# name -> module (None: vLLM, sized by kvplan.planner.sizing); the names are kvplan.formats.ENGINES
ENGINES: dict[str, str | None] = {name: None if name == "vllm" else f"{__name__}.{name}" for name in NAMES}
ALIASES = {
    "tensorrt-llm": "trtllm",
    "tensorrt_llm": "trtllm",
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
}


def engine_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ENGINES:
        raise NotFound(
            f"unknown engine {name!r}"
            + closest(key, [*ENGINES, *ALIASES])
            + f" (known: {', '.join(ENGINES)})"
        )
    return key


def engine_module(name: str) -> ModuleType:
    path = ENGINES[engine_name(name)]
    if path is None:
        raise ValueError("vLLM is sized by kvplan.planner.sizing")
    return importlib.import_module(path)
