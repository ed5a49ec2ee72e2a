"""`kvplan worker sim`: one simulated vLLM replica (imports only typer at module level)."""

from __future__ import annotations

from typing import Annotated

import typer

worker_app = typer.Typer(help="Worker processes that stand in for vLLM replicas.", no_args_is_help=True)


@worker_app.command("sim")
def sim(
    model: Annotated[str, typer.Option(help="catalog name or config.json path")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU catalog name, e.g. h100")] = "h100",
    kv_format: Annotated[str, typer.Option(help="KV format (kvplan.formats)")] = "bf16",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="0 picks a free port (printed on stdout)", min=0, max=65535)
    ] = 8000,
    max_model_len: Annotated[int | None, typer.Option(help="default 32768")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(min=1)] = 1,
    gpu_memory_utilization: Annotated[float, typer.Option()] = 0.92,
    num_blocks: Annotated[int | None, typer.Option(help="override the planner's KV block count")] = None,
    kv_memory_gib: Annotated[float | None, typer.Option(help="KV memory instead of the memory model")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(min=1, help="default: vLLM's for the GPU")] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(min=1, help="default: vLLM's for the GPU")
    ] = None,
    speed_factor: Annotated[
        float, typer.Option(help="wall seconds per simulated GPU second; 0 = instant", min=0.0)
    ] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    mean_output_tokens: Annotated[
        int, typer.Option(help="mean natural answer length (EOS); 0 = answer until max_tokens", min=0)
    ] = 256,
    served_model_name: Annotated[str | None, typer.Option(help="the `model` clients send")] = None,
    enable_prefix_caching: Annotated[bool, typer.Option(help="vLLM's automatic prefix caching")] = True,
    kernels: Annotated[
        str,
        typer.Option(
            help="decode kernels timed: kvplan (byte-bound), measured (kvplan's, as measured on this"
            " GPU: h100, h200) or vllm"
        ),
    ] = "kvplan",
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer.json to count prompt tokens")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="require this bearer token on /v1 (vLLM's --api-key)")
    ] = None,
) -> None:
    """Serve vLLM's OpenAI API, /health, /tokenize and /metrics as one replica of MODEL on GPU
    with KV_FORMAT: blocks from the planner's memory model, timing from its roofline."""
    from kvplan.errors import InputError
    from kvplan.workers.sim.launch import READY_PREFIX, bind, serve, url_of
    from kvplan.workers.sim.profile import build_profile
    from kvplan.workers.sim.server import SimSettings, SimWorker
    from kvplan.workers.sim.text import FileTokenizer

    if kv_memory_gib is not None and kv_memory_gib <= 0:
        raise InputError(f"--kv-memory-gib must be positive, got {kv_memory_gib}")
    if not 0 < gpu_memory_utilization <= 1:
        raise InputError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}")
    profile = build_profile(
        model,
        gpu,
        kv_format,
        max_model_len=max_model_len,
        tensor_parallel=tensor_parallel_size,
        num_blocks=num_blocks,
        kv_memory_bytes=int(kv_memory_gib * 2**30) if kv_memory_gib is not None else None,
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        served_model_name=served_model_name,
        enable_prefix_caching=enable_prefix_caching,
        kernels=kernels,
    )
    tok = None
    if tokenizer is not None:
        try:
            tok = FileTokenizer(tokenizer)
        except Exception as exc:  # the tokenizers library raises its own Exception type
            raise InputError(f"--tokenizer {tokenizer}: cannot load ({exc})") from exc
    worker = SimWorker(profile, SimSettings(speed_factor, seed, mean_output_tokens, api_key), tok)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    e = profile.engine
    typer.echo(
        f"{READY_PREFIX}{url_of(sock)} ({profile.served_model_name}, {e.num_gpu_blocks} blocks of "
        f"{e.block_size} tokens, cache_dtype {profile.cache_dtype}, max_model_len {e.max_model_len})"
    )
    serve(worker, sock)


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(worker_app, name="worker")
