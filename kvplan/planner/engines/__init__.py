"""Sizing on other serving engines than vLLM: SGLang, TensorRT-LLM and llama.cpp, each from its own
source code (the module of each engine cites the functions it follows). Modules load only when
`--engine` names them, so `kvplan size` stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kvplan.errors import NotFound, closest
from kvplan.formats import ENGINES as NAMES

# name -> module; the names are kvplan.formats.ENGINES. (`kvplan size` without a draft or a budget
# sizes vLLM with kvplan.planner.sizing directly; engines.vllm feeds it a draft or a budget.)
ENGINES: dict[str, str] = {name: f"{__name__}.{name}" for name in NAMES}
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
    return importlib.import_module(ENGINES[engine_name(name)])
