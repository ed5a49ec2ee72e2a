"""`kvplan size --engine sglang|trtllm|llamacpp`: one engine, several KV dtypes, with or without a
speculative draft and a window/eviction budget. Data here, printing in `render_*`.

The JSON form is the `kvplan.engine-size/v1` document: model, gpu, engine, config, rows[] (one
`EngineSizing` per KV dtype, each with `without_draft` when a draft is given), draft_verdict, notes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kvplan.errors import InputError, Unsupported
from kvplan.planner.engines import engine_module, engine_name
from kvplan.planner.engines.common import Draft, EngineSizing, Replica
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.models import ModelSpec

SCHEMA = "kvplan.engine-size/v1"
# KV dtypes that keep 16 bits or more, per engine: "fits only with a quantized KV" compares to these.
UNQUANTIZED = {"auto", "bf16", "bfloat16", "fp16", "f16", "f32"}


@dataclass(frozen=True)
class EngineRequest:
    model: ModelSpec
    gpu: GpuSpec
    engine: str
    dtypes: tuple[str, ...]
    replica: Replica


@dataclass(frozen=True)
class EngineRow:
    sizing: EngineSizing
    without_draft: EngineSizing | None = None


@dataclass(frozen=True)
class EngineReport:
    request: EngineRequest
    rows: tuple[EngineRow, ...]
    notes: tuple[str, ...] = ()

    @property
    def draft_verdict(self) -> str | None:
        """Whether the draft fits, and whether only with a quantized KV cache."""
        if self.request.replica.draft is None:
            return None
        fitting = [r.sizing.kv_dtype for r in self.rows if r.sizing.fits]
        plain = [r.sizing.kv_dtype for r in self.rows if r.sizing.kv_dtype.split("/")[0] in UNQUANTIZED]
        if not fitting:
            return "the draft does not fit with any KV dtype tried"
        if plain and not any(d in fitting for d in plain):
            return f"the draft fits only with a quantized KV: {', '.join(fitting)}"
        return f"the draft fits with {', '.join(fitting)}"

    def to_json(self) -> dict[str, Any]:
        req, m = self.request, self.request.model
        return {
            "schema": SCHEMA,
            "engine": req.engine,
            "model": {
                "name": m.name,
                "layers": m.layers,
                "kv_heads": m.num_kv_heads,
                "head_dim": None if m.is_mla else m.head_dim,
                "attention": m.attention.value,
                "mla_latent_dim": m.mla_latent_dim or None,
                "sliding_window_layers": m.sliding_layers,
                "weight_bytes": req.replica.weight_bytes,
                "source": m.source,
            },
            "gpu": {"name": req.gpu.name, "visible_memory_bytes": req.gpu.visible_memory_bytes},
            "config": {
                "max_model_len": req.replica.max_model_len,
                "tensor_parallel": req.replica.tensor_parallel,
                "pipeline_parallel": req.replica.pipeline_parallel,
                "engine_args": dict(req.replica.args.values),
                "budget": None if req.replica.budget is None else req.replica.budget.label,
                "draft": None if req.replica.draft is None else req.replica.draft.name,
            },
            "rows": [
                {
                    **r.sizing.to_json(),
                    "without_draft": None
                    if r.without_draft is None
                    else {
                        "kv_tokens": r.without_draft.kv_tokens,
                        "max_requests": r.without_draft.max_requests,
                        "fits": r.without_draft.fits,
                    },
                }
                for r in self.rows
            ],
            "draft_verdict": self.draft_verdict,
            "notes": list(self.notes),
        }


def default_dtypes(engine: str, gpu: GpuSpec) -> tuple[str, ...]:
    mod = engine_module(engine)
    dtypes: tuple[str, ...] = mod.DEFAULT_DTYPES
    if engine == "trtllm":
        dtypes = tuple(d for d in dtypes if d != "fp8" or gpu.fp8_supported) + (
            ("nvfp4",) if gpu.name.startswith(("b", "gb")) else ()
        )
    return dtypes


def _size_one(req: EngineRequest, dtype: str, draft: Draft | None) -> EngineSizing:
    result: EngineSizing = engine_module(req.engine).size(
        req.model, req.gpu, dtype, replace(req.replica, draft=draft)
    )
    return result


def run(req: EngineRequest) -> EngineReport:
    engine = engine_name(req.engine)
    req = replace(req, engine=engine)
    if not req.dtypes:
        raise InputError("give at least one KV dtype")
    if req.replica.activation_bytes is not None and engine != "trtllm":
        raise Unsupported(
            f"--activation-gib is a vLLM/TensorRT-LLM profile figure; {engine} does not take it"
        )
    rows = []
    for dtype in req.dtypes:
        with_draft = _size_one(req, dtype, req.replica.draft)
        without = _size_one(req, dtype, None) if req.replica.draft is not None else None
        rows.append(EngineRow(with_draft, without))
    notes: list[str] = []
    if req.model.is_mla:
        notes.append("MLA: one latent per token per layer, on every tensor-parallel rank")
    budget = req.replica.budget
    if budget is not None:
        notes.append(
            f"{budget.label}: each request keeps at most {budget.held(req.replica.max_model_len):,} tokens "
            "(a what-if: accuracy is the window's/budget's, not full attention's)"
        )
    return EngineReport(req, tuple(rows), tuple(notes))


def _rows(report: EngineReport) -> tuple[list[str], list[list[str]]]:
    draft = report.request.replica.draft is not None
    head = ["KV dtype", "B/token", "KV GiB", "KV tokens", "tok/request", "requests", "limit", "fits"]
    if draft:
        head += ["no-draft tokens", "no-draft requests"]
    out = []
    for r in report.rows:
        s = r.sizing
        row = [
            s.kv_dtype,
            f"{s.bytes_per_token:,.0f}",
            f"{s.kv_bytes / GIB:.2f}",
            f"{s.kv_tokens:,}",
            f"{s.tokens_per_request:,}",
            f"{s.max_requests:,}",
            "-" if s.running_limit is None else f"{s.running_limit:,}",
            "yes" if s.fits else "NO",
        ]
        if draft and r.without_draft is not None:
            row += [f"{r.without_draft.kv_tokens:,}", f"{r.without_draft.max_requests:,}"]
        out.append(row)
    return head, out


def _header(report: EngineReport) -> list[str]:
    req, m, r = report.request, report.request.model, report.request.replica
    geometry = (
        f"one {m.mla_latent_dim}-element latent" if m.is_mla else f"{m.num_kv_heads} KV heads x {m.head_dim}"
    )
    lines = [
        f"{req.engine}: {m.name}, {m.layers} layers, {geometry}; weights {r.weight_bytes / GIB:.2f} GiB",
        f"{req.gpu.name} ({req.gpu.visible_memory_gib:.2f} GiB visible), TP {r.tensor_parallel}, "
        f"PP {r.pipeline_parallel}, max_model_len {r.max_model_len:,}",
    ]
    d = r.draft
    if d is not None:
        lines.append(f"draft: {d.name} ({d.kind}), weights {d.weight_bytes / GIB:.2f} GiB")
    return lines


def _tail(report: EngineReport) -> list[str]:
    out = []
    for r in report.rows:
        out.append(f"{r.sizing.kv_dtype}: what {report.request.engine} prints:")
        out += [f"    {line}" for line in r.sizing.log]
        out += [f"    note: {n}" for n in r.sizing.notes]
    if report.draft_verdict:
        out.append(report.draft_verdict)
    out += [f"note: {n}" for n in report.notes]
    return out


def render_text(report: EngineReport) -> str:
    head, rows = _rows(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    table = [fmt.format(*head), *(fmt.format(*r) for r in rows)]
    return "\n".join([*_header(report), *table, *_tail(report)])


def render_markdown(report: EngineReport) -> str:
    head, rows = _rows(report)
    lines = [*(f"{h}  " for h in _header(report)), "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([*lines, "", *(f"> {t}" for t in _tail(report))])
