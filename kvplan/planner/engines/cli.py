"""The `kvplan size --engine ...` edge: parse the engine-specific flags into an `EngineRequest`,
run it, print it. Loaded only when one of those flags is given."""

from __future__ import annotations

import json
from typing import Any

from kvplan.errors import InputError
from kvplan.planner.engines import engine_name
from kvplan.planner.engines.common import Budget, Draft, EngineArgs, Replica, draft_heads, draft_model
from kvplan.planner.engines.gguf import GgufFile, read_gguf
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.memory import weight_bytes
from kvplan.planner.models import ModelSpec, get_model
from kvplan.planner.units import parse_tokens


def load_model(ref: str) -> tuple[ModelSpec, GgufFile | None]:
    """A catalog name, config.json, model directory, or a .gguf file (header only)."""
    if ref.lower().endswith(".gguf"):
        from kvplan.planner.engines.llamacpp import model_from_gguf

        g = read_gguf(ref)
        return model_from_gguf(g), g
    return get_model(ref), None


def _weights(model: ModelSpec, gguf: GgufFile | None, weight_dtype: str) -> int:
    if gguf is not None:
        if weight_dtype not in ("auto", ""):
            raise InputError("a .gguf model's weights are read from its tensors: drop --weight-dtype")
        return gguf.weight_bytes
    return weight_bytes(model, weight_dtype)


def build_draft(
    target: ModelSpec,
    ref: str | None,
    kind: str,
    layers: int,
    kv_dtype: str | None,
    weights_gib: float | None,
    weight_dtype: str,
) -> Draft | None:
    given = round(weights_gib * GIB) if weights_gib is not None else None
    if kind == "model":
        if ref is None:
            if kv_dtype is not None or weights_gib is not None:
                raise InputError(
                    "--draft-kv-format/--draft-weights-gib need --draft MODEL or --draft-kind eagle|mtp"
                )
            return None
        model, gguf = load_model(ref)
        return draft_model(
            model, given if given is not None else _weights(model, gguf, weight_dtype), kv_dtype
        )
    if ref is not None:
        raise InputError(f"--draft-kind {kind} runs heads at the target's geometry: drop --draft {ref}")
    return draft_heads(target, kind, layers, given, kv_dtype)


def build_budget(window: str | None, sink_tokens: int, kv_budget: str | None) -> Budget | None:
    if window is not None and kv_budget is not None:
        raise InputError("give --window or --kv-budget, not both")
    if window is not None:
        return Budget("window", parse_tokens(window, "--window"), sink_tokens)
    if kv_budget is not None:
        return Budget("budget", parse_tokens(kv_budget, "--kv-budget"), sink_tokens)
    if sink_tokens:
        raise InputError("--sink-tokens needs --window")
    return None


def size_engine(
    *,
    engine: str,
    model_ref: str,
    gpu: GpuSpec,
    gpu_count: int,
    kv_format: str,
    max_model_len: int | None,
    tp: int | None,
    pp: int,
    weight_dtype: str,
    activation_bytes: int | None,
    engine_arg: str | None,
    draft: str | None,
    draft_kind: str,
    draft_layers: int,
    draft_kv_format: str | None,
    draft_weights_gib: float | None,
    window: str | None,
    sink_tokens: int,
    kv_budget: str | None,
    as_json: bool,
    markdown: bool,
    echo: Any,
) -> None:
    from kvplan.planner.engines.report import EngineRequest, default_dtypes, render_markdown, render_text, run

    name = engine_name(engine)
    model, gguf = load_model(model_ref)
    ranks_tp = tp if tp is not None else max(1, gpu_count // pp)
    if gpu_count < ranks_tp * pp:
        raise InputError(
            f"TP {ranks_tp} x PP {pp} needs {ranks_tp * pp} GPUs; use --gpu {gpu.name}:{ranks_tp * pp}"
        )
    length = max_model_len or int(model.max_position_embeddings or 8192)
    dtypes = tuple(f.strip() for f in kv_format.split(",") if f.strip()) or default_dtypes(name, gpu)
    replica = Replica(
        max_model_len=length,
        weight_bytes=_weights(model, gguf, weight_dtype),
        tensor_parallel=ranks_tp,
        pipeline_parallel=pp,
        args=EngineArgs.parse(engine_arg),
        draft=build_draft(model, draft, draft_kind, draft_layers, draft_kv_format, draft_weights_gib, "auto"),
        budget=build_budget(window, sink_tokens, kv_budget),
        activation_bytes=activation_bytes,
        gguf=gguf,
    )
    req = EngineRequest(model=model, gpu=gpu, engine=name, dtypes=dtypes, replica=replica)
    report = run(req)
    if as_json:
        echo(json.dumps(report.to_json(), indent=2))
    elif markdown:
        echo(render_markdown(report))
    else:
        echo(render_text(report))
