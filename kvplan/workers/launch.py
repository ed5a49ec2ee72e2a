"""From a pool plan to vLLM server launches: one per pool replica (pure; nothing starts here).

The command line of each is `kvplan.vllm_command.replica_argv` (how a KV format is served, native
or through kvplan's plugin, and what changes on a CPU); this module adds ports, logs, CPU pinning
and the model path, and checks that vLLM can serve the pool at all.

`check_pool` lists the reasons vLLM cannot serve a pool; `workers up` refuses a plan with any.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvplan.errors import KvplanError, NotFound, PlanError
from kvplan.plan import Plan, Pool
from kvplan.planner.capacity import server_of
from kvplan.procs import free_port
from kvplan.vllm_command import (
    Device,
    LaunchOptions,
    ServePath,
    replica_argv,
    serve_path,
)
from kvplan.workers.vllm_plugin.support import SUPPORTED_HEAD_DIMS, unsupported_reason

# vLLM's own attention backends take these head sizes (CPU_ATTN's list; GPU backends take more).
VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass(frozen=True)
class ReplicaLaunch:
    """Everything needed to start (and later identify) one vLLM server."""

    pool: str
    replica: int
    port: int
    host: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # added to the parent's environment
    log_path: Path = Path("vllm.log")

    @property
    def name(self) -> str:
        return f"{self.pool}-{self.replica}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def shell(self) -> str:
        """One copy-pasteable line (env, argv, log redirection)."""
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = " ".join(shlex.quote(a) for a in self.argv)
        return f"{env + ' ' if env else ''}{cmd} > {shlex.quote(str(self.log_path))} 2>&1"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_model(pool: Pool) -> str:
    """What vLLM's --model gets: a local directory as is, the test model's converted checkpoint,
    or a catalog entry's Hugging Face id."""
    path = Path(pool.model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from kvplan.planner.catalog import ALIASES, CATALOG

    key = ALIASES.get(pool.model.lower(), pool.model.lower())
    if key == "smollm2-135m":
        from kvplan.checkpoint import CHECKPOINT_NAME, cache_root

        return str(cache_root() / CHECKPOINT_NAME)  # `workers up` converts it first
    hf_id = CATALOG.get(key, {}).get("hf_id")
    if hf_id:
        return str(hf_id)
    raise NotFound(
        f"pool {pool.name!r}: model {pool.model!r} is neither a model directory nor a catalog entry"
    )


def check_pool(pool: Pool, opts: LaunchOptions) -> list[str]:
    """Reasons vLLM cannot serve this pool as planned (empty when it can)."""
    from kvplan.planner.capacity import pool_capacity
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model

    if pool.engine != "vllm":
        return [f"planned for {pool.engine}: kvplan workers start vLLM only (run it with {pool.engine})"]
    if pool.kv_budget:
        return [f"kv_budget {pool.kv_budget} is a what-if: vLLM keeps every token of full-attention layers"]
    fmt = pool.format
    reasons: list[str] = []
    try:
        model = get_model(pool.model)
    except KvplanError as exc:
        return [str(exc)]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a broken config.json is a reason too
        return [f"model {pool.model!r}: {exc}"]
    tp = pool.tensor_parallel
    if model.num_attention_heads % tp:
        reasons.append(f"tensor_parallel {tp} does not divide {model.num_attention_heads} attention heads")
    kv = model.num_kv_heads
    if not model.is_mla and kv % tp and tp % kv:
        reasons.append(f"tensor_parallel {tp} and {kv} KV heads: one must divide the other")
    if model.head_dim not in VLLM_HEAD_SIZES and not model.is_mla:
        reasons.append(f"head_dim {model.head_dim} is not supported by vLLM's attention ({VLLM_HEAD_SIZES})")
    path = serve_path(fmt)
    if path is ServePath.PLUGIN:
        why = unsupported_reason(fmt)
        if why:
            reasons.append(why)
        if model.is_mla:
            reasons.append(f"{fmt.name} through kvplan's plugin: MLA models are not supported")
        elif model.head_dim not in SUPPORTED_HEAD_DIMS:
            reasons.append(
                f"{fmt.name}: kvplan's kernels take head_dim {SUPPORTED_HEAD_DIMS}, not {model.head_dim}"
            )
        if model.sliding_layers:
            reasons.append(f"{fmt.name}: kvplan's attention has no sliding-window layers")
    if opts.device is Device.CPU:
        if fmt.vllm_native_dtype not in (None, "auto") and not fmt.vllm_native_dtype.startswith("fp8"):
            reasons.append(f"{fmt.name}: vLLM's CPU attention stores {fmt.vllm_native_dtype} KV only for a "
                           "model of that dtype; CPU pools run in float32")  # fmt: skip
        if (fmt.vllm_native_dtype or "").startswith("fp8") and not cpu_flags() & {"avx512f", "amx_tile"}:
            reasons.append(f"{fmt.name}: FP8 KV on CPU needs AVX-512 or AMX; this CPU has neither")
        if opts.kv_memory_bytes is None:
            reasons.append("on CPU give the KV memory (--kv-memory), vLLM cannot profile it there")
    if reasons:
        return reasons
    try:
        gpu, _ = get_gpu(pool.gpu)
    except NotFound as exc:
        return [f"pool {pool.name!r}: {exc}"]
    try:
        cap = pool_capacity(
            model, gpu, pool, server_of(pool, opts.device, kv_memory_bytes=opts.kv_memory_bytes)
        )
    except KvplanError as exc:  # e.g. max_model_len above the model's: vLLM refuses it too
        return [str(exc)]
    if not cap.fits:
        reasons.append(
            f"does not fit: one {pool.max_model_len}-token request needs "
            f"{cap.kv_bytes_needed / 2**30:.2f} GiB of KV, "
            f"{max(cap.available_kv_bytes, 0) / 2**30:.2f} GiB available on {pool.gpu} "
            f"(max_model_len that fits: {cap.max_model_len_that_fits})"
        )
    return reasons


def check_plan(plan: Plan, opts: LaunchOptions) -> None:
    """Raise PlanError listing every pool vLLM cannot serve (before anything starts)."""
    problems = [f"pool {p.name!r}: {r}" for p in plan.pools if p.replicas for r in check_pool(p, opts)]
    if problems:
        raise PlanError("vLLM cannot serve this plan: " + "; ".join(problems))


def render(plan: Plan, opts: LaunchOptions, ports: Sequence[int] | None = None) -> list[ReplicaLaunch]:
    """One launch per replica of every pool, in plan order; ports from `ports`, else consecutive
    from `opts.base_port` (0: free ephemeral ports)."""
    launches: list[ReplicaLaunch] = []
    cores = opts.cpu_cores or tuple(sorted(os.sched_getaffinity(0)))
    n = 0
    for pool in plan.pools:
        model = resolve_model(pool)
        for r in range(pool.replicas):
            if ports is not None:
                port = ports[n]
            elif opts.base_port == 0:
                port = free_port(opts.host)
            else:
                port = opts.base_port + n
            argv, env = replica_argv(pool, model, port, opts)
            if opts.device is Device.CPU:
                env["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[n % len(cores)])
            log = opts.log_dir / f"{pool.name}-{r}.log"
            launches.append(ReplicaLaunch(pool.name, r, port, opts.host, tuple(argv), env, log))
            n += 1
    return launches


def with_endpoints(plan: Plan, endpoints: dict[str, list[str]]) -> Plan:
    """A copy of the plan whose pools list the given endpoints (the router reads this file)."""
    buckets = []
    for b in plan.buckets:
        pools = [p.model_copy(update={"endpoints": tuple(endpoints.get(p.name, ()))}) for p in b.pools]
        buckets.append(b.model_copy(update={"baseline": pools[0], "candidates": tuple(pools[1:])}))
    return plan.model_copy(update={"buckets": tuple(buckets)})


def vllm_python_default() -> str:
    """`$KVPLAN_VLLM_PYTHON`, else the repository's `.venv-vllm` (scripts/setup-vllm.sh)."""
    env = os.environ.get("KVPLAN_VLLM_PYTHON")
    if env:
        return env
    repo = Path(__file__).resolve().parents[2]
    return str(repo / ".venv-vllm" / "bin" / "python")
