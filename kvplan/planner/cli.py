"""`kvplan size` and `kvplan plan` (imports only typer at module level; the planner, rich and numpy
load inside the commands so that `kvplan size` starts fast)."""

# No `from __future__ import annotations` here: typer would eval every string annotation (and
# rebuild every typer.Option) on each start, which costs more than the rest of `kvplan size`.
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from kvplan.planner.fleet import FleetPlan
    from kvplan.planner.sizing import SizeReport

GIB = 1 << 30


def _gib_to_bytes(value: float | None, flag: str) -> int | None:
    if value is None:
        return None
    from kvplan.errors import InputError

    if not value >= 0:
        raise InputError(f"{flag} must not be negative, got {value}")
    return round(value * GIB)


def _positive_gib(value: float | None, flag: str) -> int | None:
    from kvplan.errors import InputError

    if value is not None and not value > 0:
        raise InputError(f"{flag} must be positive, got {value}")
    return _gib_to_bytes(value, flag)


def _formats(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip())


def size(
    model: Annotated[
        str, typer.Argument(help="catalog name (kvplan size --list), config.json or model dir")
    ] = "",
    gpu: Annotated[str, typer.Option(help="GPU kind, optionally with a count: h100, h100:8")] = "h100",
    kv_format: Annotated[
        str,
        typer.Option(
            "--kv-format",
            "-k",
            help="comma-separated KV formats (default: bf16,fp8_e4m3,int8,int4, or the engine's)",
        ),
    ] = "",
    max_model_len: Annotated[
        str | None, typer.Option(help="tokens per request, e.g. 32k (default: the model's, as vLLM)")
    ] = None,
    tp: Annotated[
        int | None, typer.Option("--tp", help="tensor parallel (default: all GPUs given / pp)")
    ] = None,
    pp: Annotated[int, typer.Option("--pp", help="pipeline parallel")] = 1,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="vLLM's --gpu-memory-utilization (default: the version's, 0.92)")
    ] = None,
    block_size: Annotated[int, typer.Option(help="vLLM's --block-size")] = 16,
    weight_dtype: Annotated[
        str, typer.Option(help="auto (the checkpoint's), bf16, fp8, int8, int4 (awq/gptq), mxfp4, nvfp4")
    ] = "auto",
    vllm_version: Annotated[
        str | None, typer.Option(help="vLLM release whose memory model and log lines to follow (0.6-0.34)")
    ] = None,
    assume_full_attention: Annotated[
        bool, typer.Option(help="size every layer as full attention when kvplan does not model the model")
    ] = False,
    disable_hybrid_kv_cache_manager: Annotated[
        bool, typer.Option(help="vLLM's --disable-hybrid-kv-cache-manager (windows cached in full)")
    ] = False,
    no_prefix_caching: Annotated[
        bool, typer.Option(help="vLLM's --no-enable-prefix-caching (one Mamba state block per request)")
    ] = False,
    text_only: Annotated[
        bool,
        typer.Option(help="multimodal model served text-only (--limit-mm-per-prompt 0): no vision tower"),
    ] = False,
    allow_long_max_model_len: Annotated[
        bool, typer.Option(help="size a max_model_len above the model's (VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)")
    ] = False,
    flashinfer_sampler: Annotated[
        bool,
        typer.Option(
            help="the server samples with FlashInfer (logs 'Using FlashInfer for top-p & top-k sampling')"
        ),
    ] = False,
    activation_gib: Annotated[
        float | None, typer.Option(help="measured peak activation (vLLM: torch peak memory increase)")
    ] = None,
    non_torch_gib: Annotated[float | None, typer.Option(help="measured non-torch memory")] = None,
    cuda_graph_gib: Annotated[float | None, typer.Option(help="measured CUDA graph memory")] = None,
    enforce_eager: Annotated[bool, typer.Option(help="no CUDA graphs (vLLM --enforce-eager)")] = False,
    kv_cache_memory_gib: Annotated[
        float | None,
        typer.Option(help="KV memory per GPU (vLLM --kv-cache-memory-bytes, or a logged figure)"),
    ] = None,
    gpu_memory_gib: Annotated[float | None, typer.Option(help="override the GPU's visible memory")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(help="vLLM's scheduler token budget")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="vLLM's --max-num-seqs")] = None,
    traffic: Annotated[Path | None, typer.Option(help="JSONL/CSV requests, for expected concurrency")] = None,
    context_mix: Annotated[
        str | None, typer.Option(help="e.g. 8k:60,16k:25,32k:15 (instead of --traffic)")
    ] = None,
    tpot_slo_ms: Annotated[float, typer.Option(help="time-per-output-token SLO")] = 150.0,
    batch: Annotated[
        int | None, typer.Option(help="decode batch for TPOT (default: the guaranteed concurrency)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the kvplan.size/v1 JSON document")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="print a markdown table")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a capacity plot PNG (needs kvplan[plot])")] = None,
    list_models: Annotated[bool, typer.Option("--list", help="list catalog models and GPUs")] = False,
    engine: Annotated[str, typer.Option(help="vllm, sglang, trtllm or llamacpp")] = "vllm",
    engine_arg: Annotated[str | None, typer.Option(help="engine settings: key=value,... (README)")] = None,
    draft: Annotated[
        str | None, typer.Option(help="speculative draft model (name, config, dir, .gguf)")
    ] = None,
    draft_kind: Annotated[str, typer.Option(help="draft: model, eagle or mtp (heads)")] = "model",
    draft_layers: Annotated[int, typer.Option(help="EAGLE/MTP draft layers")] = 1,
    draft_kv_format: Annotated[str | None, typer.Option(help="the draft's KV dtype")] = None,
    draft_weights_gib: Annotated[float | None, typer.Option(help="the draft's weights")] = None,
    window: Annotated[str | None, typer.Option(help="what-if: keep the last W tokens (StreamingLLM)")] = None,
    sink_tokens: Annotated[int, typer.Option(help="sink tokens kept with --window")] = 0,
    kv_budget: Annotated[str | None, typer.Option(help="what-if: keep B tokens per sequence (H2O)")] = None,
) -> None:
    """How much KV cache a replica gets (vLLM, or --engine sglang|trtllm|llamacpp), what the engine
    will log, and what each KV format buys."""
    from kvplan.errors import InputError
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model
    from kvplan.planner.sizing import DEFAULT_SIZE_FORMATS, SizeRequest, with_lengths
    from kvplan.planner.sizing import size as run_size
    from kvplan.planner.units import parse_tokens

    if list_models:
        _print_catalog()
        return
    if not model:
        raise InputError(
            "give a model: a catalog name (kvplan size --list), a config.json or a model directory"
        )
    if tpot_slo_ms <= 0:
        raise InputError(f"--tpot-slo-ms must be positive, got {tpot_slo_ms}")
    if (tp is not None and tp <= 0) or pp <= 0:
        raise InputError("--tp and --pp must be positive")
    gpu_spec, count = get_gpu(gpu)
    engine_only = (engine_arg, draft, draft_kv_format, draft_weights_gib, window, kv_budget)
    if engine != "vllm" or any(x is not None for x in engine_only) or draft_kind != "model" or sink_tokens:
        # what only `kvplan size`'s vLLM memory model reads: refused here, never sized without it
        unread = {
            "--gpu-memory-utilization": gpu_memory_utilization is not None,
            "--block-size": block_size != 16,
            "--vllm-version": vllm_version is not None,
            "--assume-full-attention": assume_full_attention,
            "--disable-hybrid-kv-cache-manager": disable_hybrid_kv_cache_manager,
            "--no-prefix-caching": no_prefix_caching,
            "--text-only": text_only,
            "--allow-long-max-model-len": allow_long_max_model_len,
            "--flashinfer-sampler": flashinfer_sampler,
            "--non-torch-gib": non_torch_gib is not None,
            "--cuda-graph-gib": cuda_graph_gib is not None,
            "--enforce-eager": enforce_eager,
            "--kv-cache-memory-gib": kv_cache_memory_gib is not None,
            "--gpu-memory-gib": gpu_memory_gib is not None,
            "--max-num-batched-tokens": max_num_batched_tokens is not None,
            "--max-num-seqs": max_num_seqs is not None,
            "--traffic": traffic is not None,
            "--context-mix": context_mix is not None,
            "--batch": batch is not None,
            "--plot": plot is not None,
        }
        if any(unread.values()):
            given = ", ".join(k for k, v in unread.items() if v)
            raise InputError(
                f"{given}: read only by kvplan's vLLM memory model, which --engine, --engine-arg, --draft, "
                "--window and --kv-budget bypass; drop them (engine settings go in --engine-arg)"
            )
        from kvplan.planner.engines.cli import size_engine

        size_engine(
            engine=engine, model_ref=model, gpu=gpu_spec, gpu_count=count, kv_format=kv_format,
            max_model_len=parse_tokens(max_model_len, "--max-model-len") if max_model_len else None,
            tp=tp, pp=pp, weight_dtype=weight_dtype,
            activation_bytes=_gib_to_bytes(activation_gib, "--activation-gib"), engine_arg=engine_arg,
            draft=draft, draft_kind=draft_kind, draft_layers=draft_layers, draft_kv_format=draft_kv_format,
            draft_weights_gib=draft_weights_gib, window=window, sink_tokens=sink_tokens, kv_budget=kv_budget,
            as_json=as_json, markdown=markdown, echo=typer.echo,
        )  # fmt: skip
        return
    spec = get_model(model, assume_full_attention=assume_full_attention)
    req = SizeRequest(
        model=spec,
        gpu=gpu_spec,
        gpu_count=count,
        formats=_formats(kv_format) or DEFAULT_SIZE_FORMATS,
        max_model_len=parse_tokens(max_model_len, "--max-model-len") if max_model_len else None,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        gpu_memory_utilization=gpu_memory_utilization,
        block_size=block_size,
        weight_dtype=weight_dtype,
        activation_bytes=_gib_to_bytes(activation_gib, "--activation-gib"),
        kv_memory_bytes=_positive_gib(kv_cache_memory_gib, "--kv-cache-memory-gib"),
        gpu_memory_bytes=_positive_gib(gpu_memory_gib, "--gpu-memory-gib"),
        non_torch_bytes=_gib_to_bytes(non_torch_gib, "--non-torch-gib"),
        cuda_graph_bytes=_gib_to_bytes(cuda_graph_gib, "--cuda-graph-gib"),
        enforce_eager=enforce_eager,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        tpot_slo_seconds=tpot_slo_ms / 1000,
        decode_batch=batch,
        vllm_version=vllm_version,
        hybrid_allocator=not disable_hybrid_kv_cache_manager,
        prefix_caching=not no_prefix_caching,
        text_only=text_only,
        allow_long_max_model_len=allow_long_max_model_len,
        flashinfer_sampler=flashinfer_sampler,
    )
    if traffic is not None or context_mix is not None:
        req = with_lengths(req, _traffic_lengths(traffic, context_mix))
    report = run_size(req)
    if plot is not None:
        _plot_capacity(req, plot)
    if as_json:
        import json

        typer.echo(json.dumps(report.to_json(), indent=2))
    elif markdown:
        typer.echo(_size_markdown(report))
    else:
        _size_rich(report)


def _traffic_lengths(traffic: Path | None, context_mix: str | None) -> tuple[int, ...]:
    from kvplan.errors import InputError
    from kvplan.planner.traffic import load_traffic, parse_context_mix

    if traffic is not None and context_mix is not None:
        raise InputError("give --traffic or --context-mix, not both")
    if traffic is not None:
        t = load_traffic(traffic, rps=1.0)
        return tuple(int(x) for x in t.total_tokens)
    assert context_mix is not None
    mix = parse_context_mix(context_mix, rps=1.0)
    # A mix of percentages becomes 100 representative requests.
    assert mix.weight is not None
    counts = [round(float(w) * 100) for w in mix.weight]
    return tuple(int(n) for n, c in zip(mix.total_tokens, counts, strict=True) for _ in range(c))


def _size_rows(report: "SizeReport") -> tuple[list[str], list[list[str]]]:
    slo = f"SLO {report.request.tpot_slo_seconds * 1000:.0f}ms"
    head = ["format", "KiB/tok", "KV GiB", "blocks", "KV tokens", "max conc", "guar.", "exp.", "fits",
            "batch", "TPOT ms", "tok/s", slo]  # fmt: skip
    rows = []
    for r in report.rows:
        c = r.capacity
        rows.append(
            [
                r.kv_format,
                f"{c.bytes_per_token / 1024:,.1f}",
                f"{c.available_kv_bytes / GIB:.2f}",
                f"{c.num_blocks:,}",
                f"{c.kv_tokens:,}",
                f"{c.max_concurrency:.2f}x",
                str(c.guaranteed_concurrency),
                "-" if r.expected_concurrency is None else f"{r.expected_concurrency:.1f}",
                "yes" if c.fits else "NO",
                str(r.decode_batch) if c.fits else "-",
                "-" if r.tpot_seconds is None else f"{r.tpot_seconds * 1000:.1f}",
                "-" if r.tokens_per_second is None else f"{r.tokens_per_second:,.0f}",
                "-" if r.tpot_slo_ok is None else ("ok" if r.tpot_slo_ok else f"batch<={r.slo_batch}"),
            ]
        )
    return head, rows


def _size_header(report: "SizeReport") -> list[str]:
    req, m, c = report.request, report.request.model, report.rows[0].capacity
    windows = sorted({w for w in m.layer_windows if w})
    attn = m.attention.value.upper() + (
        f", sliding {windows} on {m.sliding_layers}/{m.layers} layers" if windows else ""
    )
    lines = [
        f"{m.name}: {m.layers} layers, "
        + (
            f"one {m.mla_latent_dim}-element latent"
            if m.is_mla
            else f"{m.num_kv_heads} KV heads x {m.head_dim}"
        )
        + f" ({attn}), "
        f"{m.params / 1e9:.1f}B params{', MoE' if m.is_moe else ''}",
        f"{req.gpu_count} x {req.gpu.name} ({c.total_memory_bytes / GIB:.2f} GiB visible), "
        f"TP {c.tensor_parallel}, PP {c.pipeline_parallel}, {report.replicas_per_node} replica(s), "
        f"max_model_len {c.max_model_len:,}, util {c.gpu_memory_utilization}, vLLM {c.vllm_version}",
        f"per GPU: requested {c.requested_bytes / GIB:.2f} GiB = weights {c.weights_bytes / GIB:.2f}"
        f" + activation {c.activation_bytes / GIB:.2f} + non-torch {c.non_torch_bytes / GIB:.2f}"
        f" + CUDA graphs {c.cuda_graph_bytes / GIB:.2f} + KV {c.available_kv_bytes / GIB:.2f}"
        + (" (KV memory given)" if c.kv_memory_override else ""),
        f"prefill of one {c.max_model_len:,}-token prompt: {report.rows[0].prefill_seconds:.2f} s "
        f"(roofline); TPOT at {c.max_model_len:,} tokens of context, batch = "
        + (f"{req.decode_batch} (capped at what fits)" if req.decode_batch else "guaranteed concurrency"),
    ]
    return lines


def _console() -> Any:
    """A rich console; when output is piped, wide enough that tables do not wrap."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _size_rich(report: "SizeReport") -> None:
    from rich.table import Table

    console = _console()
    for line in _size_header(report):
        console.print(line, highlight=False)
    head, rows = _size_rows(report)
    table = Table(show_lines=False)
    for h in head:
        table.add_column(h, justify="left" if h == "format" else "right")
    for row in rows:
        table.add_row(*row, style=None if row[8] == "yes" else "red")
    console.print(table)
    if not report.rows[0].capacity.fits:
        first = report.rows[0]
        console.print(
            f"[bold red]{first.kv_format}: vLLM will not start[/]: one "
            f"{first.capacity.max_model_len:,}-token request needs "
            f"{first.capacity.kv_bytes_needed / GIB:.2f} GiB of KV, "
            f"{max(first.capacity.available_kv_bytes, 0) / GIB:.2f} GiB available. What would fit:"
        )
        for s in report.suggestions:
            console.print(f"  {'✓' if s.fits else '✗'} {s.change}: {s.detail}", highlight=False)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")


def _size_markdown(report: "SizeReport") -> str:
    head, rows = _size_rows(report)
    out = [*(f"{line}  " for line in _size_header(report)), "", "| " + " | ".join(head) + " |"]
    out.append("|" + "|".join("---" for _ in head) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if report.suggestions:
        out += ["", "Does not fit; what would:", ""]
        out += [
            f"- `{s.change}`: {s.detail}{'' if s.fits else ' (still does not fit)'}"
            for s in report.suggestions
        ]
    out += ["", *(f"> {n}" for n in report.notes)]
    return "\n".join(out)


def _plot_capacity(req: Any, path: Path) -> None:
    """Concurrency (guaranteed) vs context length per KV format."""
    from kvplan.errors import InputError
    from kvplan.formats import get_format

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'kvplan[plot]'") from None
    lengths = [1024 * 2**i for i in range(0, 8)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in req.formats:
        ys = [req.capacity(get_format(name), max_model_len=n).max_concurrency for n in lengths]
        ax.plot([n // 1024 for n in lengths], ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length per request (K tokens)")
    ax.set_ylabel("max concurrent requests (vLLM's figure)")
    ax.set_title(f"{req.model.name} on {req.gpu_count} x {req.gpu.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc
    plt.close(fig)


def _print_catalog() -> None:
    from rich.console import Console
    from rich.table import Table

    from kvplan.errors import Unsupported
    from kvplan.planner.catalog import CATALOG
    from kvplan.planner.gpus import GPUS
    from kvplan.planner.models import get_model
    from kvplan.planner.sizing import layer_kind_counts

    t = Table("model", "attention", "layers", "KV heads", "head_dim", "params", "window", "layer kinds")
    for name in CATALOG:
        try:
            m = get_model(name)
        except Unsupported as exc:  # listed, with what kvplan does not model
            t.add_row(name, "-", "-", "-", "-", "-", "-", f"exits 2: {str(exc).split(': ', 1)[-1][:40]}")
            continue
        w = sorted({x for x in m.layer_windows if x})
        kinds = " ".join(f"{n}{k.value.split('_')[0][:5]}" for k, n in layer_kind_counts(m).items())
        t.add_row(name, m.attention.value, str(m.layers), str(m.num_kv_heads), str(m.head_dim),
                  f"{m.params / 1e9:.1f}B", ",".join(map(str, w)) or "-", kinds)  # fmt: skip
    g = Table("GPU", "visible GiB", "source", "TB/s", "BF16 TFLOPS", "FP8")
    for gs in GPUS.values():
        bandwidth = f"{gs.bandwidth_bytes_s / 1e12:.2f}"
        g.add_row(gs.name, f"{gs.visible_memory_gib:.2f}", gs.memory_source, bandwidth,
                  f"{gs.bf16_flops / 1e12:.0f}", "yes" if gs.fp8_supported else "no")  # fmt: skip
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(t, g)


def plan(
    model: Annotated[str, typer.Argument(help="catalog name, config.json or model dir")],
    traffic: Annotated[
        Path | None, typer.Option(help="JSONL/CSV requests (prompt_tokens, output_tokens[, timestamp])")
    ] = None,
    context_mix: Annotated[str | None, typer.Option(help="e.g. 8k:60,16k:25,32k:15")] = None,
    rps: Annotated[float | None, typer.Option(help="requests per second (default: from timestamps)")] = None,
    output_tokens: Annotated[int, typer.Option(help="output tokens per request for --context-mix")] = 256,
    gpu: Annotated[str, typer.Option(help="GPU kind")] = "h100",
    buckets: Annotated[str, typer.Option(help="bucket upper bounds")] = "8k,16k,32k",
    kv_format: Annotated[
        str | None,
        typer.Option("--kv-format", help="override candidates: int8, or 8k=fp8_e4m3,16k=int8+int4"),
    ] = None,
    allow_int4_above_16k: Annotated[bool, typer.Option(help="let the INT4 pilot run above 16K")] = False,
    engine: Annotated[
        str, typer.Option(help="engine per bucket: sglang, or 32k=trtllm,8k=llamacpp (default vllm)")
    ] = "vllm",
    kv_window: Annotated[
        str | None, typer.Option(help="what-if: keep a window W[+SINK] per sequence: 4k+4, or 32k=4k+4")
    ] = None,
    kv_budget: Annotated[
        str | None, typer.Option(help="what-if: keep B tokens per sequence (H2O): 2k, or 32k=2k")
    ] = None,
    headroom: Annotated[float, typer.Option(help="KV headroom kept free (0.10-0.15 recommended)")] = 0.13,
    tpot_slo_ms: Annotated[float, typer.Option(help="time-per-output-token SLO")] = 150.0,
    tp: Annotated[
        int | None, typer.Option("--tp", help="tensor parallel (default: cheapest of 1,2,4,8)")
    ] = None,
    gpu_memory_utilization: Annotated[float, typer.Option()] = 0.92,
    weight_dtype: Annotated[str, typer.Option(help="auto, bf16, fp8, int8, int4")] = "auto",
    kernels: Annotated[
        str,
        typer.Option(
            help="decode speed of quantized KV: kvplan (byte-bound ideal), measured (kvplan's"
            " kernels as measured on the GPU: h100, h200) or vllm (vLLM's own kernels)"
        ),
    ] = "kvplan",
    prices: Annotated[Path | None, typer.Option(help="price file overriding the shipped one")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the pool plan")] = Path(
        "pools.yaml"
    ),
    as_json: Annotated[
        bool, typer.Option("--json", help="print the kvplan.plan-report/v1 JSON document")
    ] = False,
    markdown: Annotated[bool, typer.Option("--markdown")] = False,
) -> None:
    """Size a fleet per context bucket (BF16 baseline + quantized candidates) and write pools.yaml."""
    from kvplan.errors import InputError
    from kvplan.kernel_speeds import KERNELS, kv_read_efficiency
    from kvplan.planner.fleet import PlanOptions, load_prices, plan_fleet, to_plan
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model
    from kvplan.planner.roofline import Efficiency
    from kvplan.planner.traffic import load_traffic, parse_context_mix
    from kvplan.planner.units import parse_tokens

    if (traffic is None) == (context_mix is None):
        raise InputError("give exactly one of --traffic FILE or --context-mix MIX (with --rps)")
    if not 0 <= headroom < 1:
        raise InputError(f"--headroom must be in [0, 1), got {headroom}")
    if tpot_slo_ms <= 0:
        raise InputError(f"--tpot-slo-ms must be positive, got {tpot_slo_ms}")
    if kernels not in KERNELS:
        raise InputError(f"--kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    gpu_spec, _count = get_gpu(gpu)
    spec = get_model(model)
    bucket_bounds = tuple(parse_tokens(b, "bucket bound") for b in buckets.split(",") if b.strip())
    if traffic is not None:
        mix = load_traffic(traffic, rps)
    else:
        assert context_mix is not None
        mix = parse_context_mix(context_mix, rps, output_tokens)
    eff = Efficiency(kv_read_efficiency=kv_read_efficiency(kernels, gpu_spec.name))
    opts = PlanOptions(
        buckets=bucket_bounds,
        target_kv_utilization=1 - headroom,
        tpot_slo_seconds=tpot_slo_ms / 1000,
        gpu_memory_utilization=gpu_memory_utilization,
        weight_dtype=weight_dtype,
        tensor_parallel=tp,
        formats=_format_overrides(kv_format, bucket_bounds),
        engines=_engine_overrides(engine, bucket_bounds),
        budgets=_budget_overrides(kv_window, kv_budget, bucket_bounds),
        allow_int4_above_16k=allow_int4_above_16k,
        efficiency=eff,
    )
    fleet = plan_fleet(spec, gpu_spec, mix, opts, load_prices(prices))
    pool_plan = to_plan(fleet, model, opts)
    from kvplan.plan import save_plan

    try:
        save_plan(pool_plan, out)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}") from exc
    if as_json:
        import json

        typer.echo(json.dumps({**fleet.to_json(), "pools_yaml": str(out)}, indent=2))
    elif markdown:
        typer.echo(_plan_markdown(fleet, out))
    else:
        _plan_rich(fleet, out)


def _engine_overrides(spec: str, bounds: tuple[int, ...]) -> dict[str, str]:
    """`sglang` (every bucket) or `32k=trtllm,8k=llamacpp`; buckets not named stay on vLLM."""
    from kvplan.planner.engines import engine_name

    if "=" not in spec:
        name = engine_name(spec)
        return {} if name == "vllm" else {b: name for b in _bucket_names(bounds)}
    out = {}
    for bucket, value in _bucket_pairs(spec, bounds, "--engine", "BUCKET=ENGINE, like 32k=trtllm").items():
        name = engine_name(value)
        if name != "vllm":
            out[bucket] = name
    return out


def _budget_overrides(window: str | None, budget: str | None, bounds: tuple[int, ...]) -> dict[str, Any]:
    """Per bucket, a window (`4k+4`: W + sink tokens) or a per-sequence budget (`2k`)."""
    from kvplan.errors import InputError
    from kvplan.planner.engines.common import Budget
    from kvplan.planner.units import parse_tokens

    if window is not None and budget is not None:
        raise InputError("give --kv-window or --kv-budget, not both")
    spec, kind = (window, "window") if window is not None else (budget, "budget")
    if spec is None:
        return {}
    pairs = (
        _bucket_pairs(
            spec, bounds, f"--kv-{kind}", f"BUCKET=N, like 32k={'4k+4' if kind == 'window' else '2k'}"
        )
        if "=" in spec
        else dict.fromkeys(_bucket_names(bounds), spec)
    )
    out = {}
    for name, value in pairs.items():
        tokens, _, sink = value.partition("+")
        if sink and kind == "budget":
            raise InputError(f"--kv-budget {value!r}: sink tokens go with --kv-window")
        out[name] = Budget(kind, parse_tokens(tokens, f"--kv-{kind}"), int(sink) if sink.isdigit() else 0)
        if sink and not sink.isdigit():
            raise InputError(f"--kv-window {value!r}: sink tokens must be a whole number")
    return out


def _bucket_names(bounds: tuple[int, ...]) -> list[str]:
    from kvplan.planner.fleet import bucket_name

    return [bucket_name(b) for b in bounds]


def _bucket_pairs(spec: str, bounds: tuple[int, ...], flag: str, form: str) -> dict[str, str]:
    """`8k=a,16k=b` -> {"8k": "a", "16k": "b"}, every bucket one of the plan's."""
    from kvplan.errors import InputError
    from kvplan.planner.fleet import bucket_name
    from kvplan.planner.units import parse_tokens

    names = _bucket_names(bounds)
    out: dict[str, str] = {}
    for part in spec.split(","):
        bucket, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise InputError(f"bad {flag} entry {part!r}: use {form}")
        name = bucket_name(parse_tokens(bucket, "bucket"))
        if name not in names:
            raise InputError(f"{flag} names bucket {bucket!r}, not one of {', '.join(names)}")
        out[name] = value.strip()
    return out


def _format_overrides(spec: str | None, bounds: tuple[int, ...]) -> dict[str, tuple[str, ...]]:

    if not spec:
        return {}
    if "=" not in spec:
        return {n: tuple(spec.split("+")) for n in _bucket_names(bounds)}
    pairs = _bucket_pairs(spec, bounds, "--kv-format", "BUCKET=FORMAT[+FORMAT], like 16k=int8+int4")
    return {name: tuple(f.strip() for f in fmts.split("+")) for name, fmts in pairs.items()}


def _plan_rows(fleet: "FleetPlan") -> tuple[list[str], list[list[str]]]:
    head = ["bucket", "share", "req/s", "mean in/out", "pool", "KV", "TP x replicas", "GPUs", "$/h", "seqs",
            "TPOT ms", "KV util", "bound"]  # fmt: skip
    rows = []
    for b in fleet.buckets:
        for i, p in enumerate((b.baseline, *b.candidates)):
            first = i == 0
            rows.append(
                [
                    b.load.name if first else "",
                    f"{b.load.share:.1%}" if first else "",
                    f"{b.load.rps:.2f}" if first else "",
                    f"{b.load.mean_prompt:,.0f}/{b.load.mean_output:,.0f}" if first else "",
                    "baseline" if first else ("candidate" if i == 1 else "pilot"),
                    p.kv_format if p.engine == "vllm" else f"{p.engine}:{p.kv_format}",
                    f"{p.tensor_parallel} x {p.replicas}",
                    str(p.gpus),
                    f"{p.cost_per_hour:,.2f}",
                    f"{p.concurrent_sequences:.1f}",
                    f"{p.tpot_seconds * 1000:.1f}",
                    f"{p.kv_utilization:.0%}",
                    p.bound,
                ]
            )
    return head, rows


def _plan_summary(fleet: "FleetPlan", out: Path) -> list[str]:
    share = fleet.saving_per_hour / fleet.baseline_cost if fleet.baseline_cost else 0.0
    lines = [
        f"{fleet.model.name} on {fleet.gpu.name}: {fleet.traffic_source}"
        + (f" ({fleet.requests:,} requests), " if fleet.from_file else ", ")
        + f"{fleet.rps:.2f} req/s; {fleet.share_over_8k:.1%} over 8K, {fleet.share_over_16k:.1%} over 16K",
        f"policy: {fleet.policy}",
        f"cost: all-BF16 ${fleet.baseline_cost:,.2f}/h, with candidates ${fleet.candidate_cost:,.2f}/h, "
        f"saving ${fleet.saving_per_hour:,.2f}/h ({share:.0%}); prices as of {fleet.prices.as_of}",
        f"wrote {out}",
    ]
    small = [b.load.name for b in fleet.buckets if 0 < b.load.share < 0.01]
    if small:
        lines.insert(
            2,
            f"note: bucket(s) {', '.join(small)} carry under 1% of requests but at least one replica each; "
            "consider fewer buckets (--buckets)",
        )
    if fleet.over_largest > 0:
        lines.insert(
            2,
            f"warning: {fleet.over_largest:.1%} of requests exceed the largest bucket and are not served "
            "(add a bucket, e.g. --buckets 8k,16k,32k,128k)",
        )
    return lines


def _plan_rich(fleet: "FleetPlan", out: Path) -> None:
    from rich.table import Table

    console = _console()
    head, rows = _plan_rows(fleet)
    table = Table()
    for h in head:
        table.add_column(h, justify="left" if h in ("bucket", "pool", "KV", "bound") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in _plan_summary(fleet, out):
        console.print(line, highlight=False)


def _plan_markdown(fleet: "FleetPlan", out: Path) -> str:
    head, rows = _plan_rows(fleet)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([*lines, "", *(f"{s}  " for s in _plan_summary(fleet, out))])


def register(app: typer.Typer) -> None:
    """Add `kvplan size` and `kvplan plan`."""
    app.command("size")(size)
    app.command("plan")(plan)


def run_fast(argv: list[str]) -> bool:
    """Run `kvplan size` / `kvplan plan` without typer's argument machinery (planner/argv.py
    says why); False when typer should handle argv (another command, or --help)."""
    commands: dict[str, Callable[..., None]] = {"size": size, "plan": plan}
    if not argv or argv[0] not in commands or any(a in ("--help", "-h") for a in argv[1:]):
        return False
    from kvplan.planner import argv as fast

    fast.run(argv[0], commands[argv[0]], argv[1:])
    return True
