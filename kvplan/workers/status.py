"""`workers status`: each replica's health and vLLM's own KV cache report (`vllm:cache_config_info`)
next to what kvplan's planner predicts for the same pool and KV memory.

With a fixed KV memory (`--kv-cache-memory-bytes`, always on CPU) the block count is arithmetic
and must match exactly; when vLLM profiled the memory itself the prediction is an estimate and
a gap above `PROFILED_TOLERANCE` is flagged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from kvplan.errors import InputError
from kvplan.metric_names import vllm as vm
from kvplan.plan import Plan, load_plan
from kvplan.planner.capacity import server_of
from kvplan.vllm_command import Device, effective_format
from kvplan.workers.probe import is_healthy, scrape_metrics

PROFILED_TOLERANCE = 0.05


def _int_label(labels: dict[str, str], key: str) -> int | None:
    raw = labels.get(key)
    try:
        return int(raw) if raw not in (None, "None", "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ReplicaStatus:
    pool: str
    url: str
    healthy: bool
    kv_format: str  # the plan's
    stored_as: str  # what the server really stores (fp32 for a bf16 pool on CPU)
    num_blocks: int | None = None  # vLLM's num_gpu_blocks
    block_size: int | None = None
    cache_dtype: str | None = None
    kv_memory_bytes: int | None = None
    kv_tokens: int | None = None
    predicted_blocks: int | None = None
    mismatch: str | None = None  # why the prediction and vLLM's report disagree
    requests_running: float | None = None
    error: str | None = None


def predicted_blocks(
    plan: Plan, pool_name: str, device: Device, block_size: int, kv_memory_bytes: int | None
) -> int:
    from kvplan.planner.capacity import capacity_of

    pool = plan.pool(pool_name)
    return capacity_of(pool, server_of(pool, device, block_size, kv_memory_bytes)).num_blocks


def replica_status(plan: Plan, pool_name: str, url: str, device: Device) -> ReplicaStatus:
    pool = plan.pool(pool_name)
    base = dict(
        pool=pool_name, url=url, kv_format=pool.kv_format, stored_as=effective_format(pool, device).name
    )
    healthy = is_healthy(url)
    try:
        samples = scrape_metrics(url)
    except httpx.HTTPError as exc:
        return ReplicaStatus(**base, healthy=healthy, error=f"cannot scrape /metrics: {exc}")  # type: ignore[arg-type]
    info = next((s.labels for s in samples if s.name == vm.CACHE_CONFIG_INFO), None)
    running = sum(s.value for s in samples if s.name == vm.NUM_REQUESTS_RUNNING)
    if info is None:
        return ReplicaStatus(**base, healthy=healthy, requests_running=running,  # type: ignore[arg-type]
                             error=f"no {vm.CACHE_CONFIG_INFO} on /metrics")  # fmt: skip
    blocks = _int_label(info, "num_gpu_blocks")
    bs = _int_label(info, "block_size")
    mem = _int_label(info, "kv_cache_memory_bytes")
    predicted = mismatch = None
    if blocks is not None and bs is not None:
        predicted = predicted_blocks(plan, pool_name, device, bs, mem)
        if mem is not None and predicted != blocks:
            mismatch = f"vLLM reports {blocks} blocks, kvplan predicts {predicted} for {mem} B of KV"
        elif mem is None and abs(predicted - blocks) > PROFILED_TOLERANCE * max(blocks, 1):
            mismatch = f"vLLM reports {blocks} blocks, kvplan predicts {predicted} (profiled memory)"
    return ReplicaStatus(
        **base,  # type: ignore[arg-type]
        healthy=healthy,
        num_blocks=blocks,
        block_size=bs,
        cache_dtype=info.get("cache_dtype"),
        kv_memory_bytes=mem,
        kv_tokens=_int_label(info, "kv_cache_size_tokens"),
        predicted_blocks=predicted,
        mismatch=mismatch,
        requests_running=running,
    )


def read_state(state_file: Path) -> dict[str, Any]:
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise InputError(f"no workers state at {state_file}: start them with `kvplan workers up`") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read workers state {state_file}: {exc}") from exc
    if not isinstance(state, dict) or "replicas" not in state:
        raise InputError(f"{state_file} is not a kvplan workers state file")
    return state


def status_of(state_file: Path) -> list[ReplicaStatus]:
    state = read_state(state_file)
    plan = load_plan(state["runtime_plan"])
    device = Device(state["device"])
    return [replica_status(plan, r["pool"], r["url"], device) for r in state["replicas"]]


def as_json(statuses: list[ReplicaStatus]) -> str:
    return json.dumps([asdict(s) for s in statuses], indent=2)
