"""`kvplan plan` as data: buckets, Little's law, replicas and GPUs per pool, cost, the KV-format
policy, and the pool plan (`kvplan.plan.Plan`) it all becomes.

Per bucket (requests whose prompt + output fits the bucket and not a smaller one):
  arrival rate            lambda = rps x share
  time in system          W = prefill + output x TPOT          (TPOT from the roofline)
  concurrent sequences    N = lambda x W                        (Little's law)
  KV blocks in use        lambda x E[prefill x blocks(prompt) + output x TPOT x blocks(prompt + output/2)]
  replicas                max(KV blocks in use / (usable blocks x target utilisation),
                              N / largest batch within the TPOT SLO, N / max_num_seqs)
TPOT depends on the batch per replica, so replicas and TPOT are solved together (a fixed point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvplan.errors import InputError
from kvplan.formats import UnknownFormat, get_format
from kvplan.planner.capacity import Server, Shape, pool_capacity
from kvplan.planner.gpus import GpuSpec
from kvplan.planner.memory import Capacity, engine_defaults, weight_quant
from kvplan.planner.models import ModelSpec
from kvplan.planner.roofline import DEFAULT_EFFICIENCY, Efficiency, decode_step_seconds, prefill_seconds

if TYPE_CHECKING:
    from kvplan.plan import Plan
    from kvplan.planner.engines.common import Budget
    from kvplan.planner.engines.fleet import EnginePoolCapacity
    from kvplan.planner.traffic import Traffic

DEFAULT_BUCKETS = (8192, 16384, 32768)
DEFAULT_TARGET_KV_UTILIZATION = 0.87  # 13% headroom, inside the 10-15% band
BASELINE_FORMAT = "bf16"


@dataclass(frozen=True)
class Prices:
    per_gpu_hour: dict[str, float]
    as_of: str
    source: str

    def of(self, gpu: GpuSpec) -> float:
        price = self.per_gpu_hour.get(gpu.name)
        if price is None:  # no list price (e.g. a desktop GB10)
            raise InputError(
                f"no $/GPU-hour known for {gpu.name}: give one in a price file (--prices FILE with "
                f"'prices: {{{gpu.name}: ...}}')"
            )
        return price


def load_prices(path: str | Path | None = None) -> Prices:
    """The shipped dated price file, or a user's file of the same shape (listed GPUs override)."""
    import yaml

    shipped = Path(__file__).with_name("data") / "prices.yaml"
    base = yaml.safe_load(shipped.read_text())
    prices = {k: float(v) for k, v in base["prices"].items()}
    as_of, source = str(base["as_of"]), str(shipped)
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise InputError(f"cannot read price file {p}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise InputError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("prices"), dict):
            raise InputError(f"{p}: a price file needs a 'prices' mapping of GPU name to $/GPU-hour")
        for k, v in data["prices"].items():
            if not isinstance(v, int | float) or v < 0:
                raise InputError(f"{p}: price of {k!r} must be a non-negative number, got {v!r}")
            prices[str(k)] = float(v)
        as_of, source = str(data.get("as_of", "undated")), str(p)
    return Prices(prices, as_of, source)


@dataclass(frozen=True)
class PlanOptions:
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    target_kv_utilization: float = DEFAULT_TARGET_KV_UTILIZATION
    tpot_slo_seconds: float = 0.150
    gpu_memory_utilization: float = 0.92
    block_size: int = 16
    weight_dtype: str = "auto"
    tensor_parallel: int | None = None  # None: the cheapest of 1, 2, 4, 8 per pool
    formats: dict[str, tuple[str, ...]] = field(default_factory=dict)  # bucket name -> candidates
    allow_int4_above_16k: bool = False
    efficiency: Efficiency = DEFAULT_EFFICIENCY
    activation_bytes: int | None = None
    engines: dict[str, str] = field(default_factory=dict)  # bucket name -> engine (default vllm)
    budgets: dict[str, Budget] = field(default_factory=dict)  # bucket name -> window/eviction what-if


@dataclass(frozen=True)
class BucketLoad:
    name: str
    max_tokens: int
    share: float  # of requests
    rps: float
    mean_prompt: float
    mean_output: float
    p99_total: float


@dataclass(frozen=True)
class PoolSizing:
    kv_format: str
    tensor_parallel: int
    replicas: int
    gpus: int
    cost_per_hour: float
    capacity: Capacity | EnginePoolCapacity
    concurrent_sequences: float  # Little's law, whole bucket
    tpot_seconds: float
    kv_utilization: float  # blocks in use / usable blocks at the planned replicas
    bound: str  # what set the replica count: "kv", "tpot", "max_num_seqs", "min"
    engine: str = "vllm"


@dataclass(frozen=True)
class BucketPlan:
    load: BucketLoad
    baseline: PoolSizing
    candidates: tuple[PoolSizing, ...]
    reason: str


@dataclass(frozen=True)
class FleetPlan:
    model: ModelSpec
    gpu: GpuSpec
    traffic_source: str
    rps: float
    requests: int
    share_over_8k: float
    share_over_16k: float
    over_largest: float  # share of requests longer than the largest bucket (unserved)
    buckets: tuple[BucketPlan, ...]
    prices: Prices
    policy: str
    from_file: bool = True  # False: a context mix (lengths with shares, not requests)

    @property
    def baseline_cost(self) -> float:
        return sum(b.baseline.cost_per_hour for b in self.buckets)

    @property
    def candidate_cost(self) -> float:
        return sum((b.candidates[0] if b.candidates else b.baseline).cost_per_hour for b in self.buckets)

    @property
    def saving_per_hour(self) -> float:
        return self.baseline_cost - self.candidate_cost

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "kvplan.plan-report/v1",
            "model": self.model.name,
            "gpu": self.gpu.name,
            "traffic": {
                "source": self.traffic_source,
                "requests": self.requests,
                "rps": round(self.rps, 3),
                "share_over_8k": round(self.share_over_8k, 4),
                "share_over_16k": round(self.share_over_16k, 4),
                "share_over_largest_bucket": round(self.over_largest, 4),
            },
            "policy": self.policy,
            "prices": {"as_of": self.prices.as_of, "source": self.prices.source},
            "buckets": [
                {
                    "name": b.load.name,
                    "max_tokens": b.load.max_tokens,
                    "share": round(b.load.share, 4),
                    "rps": round(b.load.rps, 3),
                    "mean_prompt_tokens": round(b.load.mean_prompt, 1),
                    "mean_output_tokens": round(b.load.mean_output, 1),
                    "reason": b.reason,
                    "pools": [_pool_json(p, i == 0) for i, p in enumerate((b.baseline, *b.candidates))],
                }
                for b in self.buckets
            ],
            "cost_per_hour": {
                "all_bf16": round(self.baseline_cost, 2),
                "with_candidates": round(self.candidate_cost, 2),
                "saving": round(self.saving_per_hour, 2),
                "saving_share": round(self.saving_per_hour / self.baseline_cost, 4)
                if self.baseline_cost
                else 0.0,
            },
        }


def _pool_json(p: PoolSizing, baseline: bool) -> dict[str, Any]:
    return {
        "role": "baseline" if baseline else "candidate",
        "engine": p.engine,
        "kv_format": p.kv_format,
        "tensor_parallel": p.tensor_parallel,
        "replicas": p.replicas,
        "gpus": p.gpus,
        "cost_per_hour": round(p.cost_per_hour, 2),
        "concurrent_sequences": round(p.concurrent_sequences, 1),
        "tpot_seconds": round(p.tpot_seconds, 4),
        "kv_utilization": round(p.kv_utilization, 3),
        "bound": p.bound,
        "guaranteed_concurrency_per_replica": p.capacity.guaranteed_concurrency,
        "kv_tokens_per_replica": p.capacity.kv_tokens,
    }


def bucket_name(max_tokens: int) -> str:
    return f"{max_tokens // 1024}k" if max_tokens % 1024 == 0 else str(max_tokens)


def policy_formats(
    share_over_8k: float,
    share_over_16k: float,
    buckets: tuple[int, ...],
    gpu: GpuSpec,
    allow_int4_above_16k: bool,
) -> tuple[dict[int, tuple[str, ...]], str]:
    """The issue's decision framework: >=30% of requests over 8K -> INT8; >=10% over 16K -> an
    INT4 pilot on the long buckets; INT4 only up to 16K by default (INT4 <=16K, INT8 16-32K)."""
    out: dict[int, tuple[str, ...]] = {}
    if share_over_8k < 0.30:
        fmt = "fp8_e4m3" if gpu.fp8_supported else "int8"
        why = (
            f"{share_over_8k:.0%} of requests exceed 8K (< 30%): short-context traffic stays near BF16; "
            f"candidate {fmt}"
        )
        return {b: (fmt,) for b in buckets}, why
    why = f"{share_over_8k:.0%} of requests exceed 8K (>= 30%): INT8 recommended"
    pilot = share_over_16k >= 0.10
    if pilot:
        why += f"; {share_over_16k:.0%} exceed 16K (>= 10%): INT4 pilot on long buckets up to 16K"
    for b in buckets:
        if pilot and b > 8192 and (b <= 16384 or allow_int4_above_16k):
            out[b] = ("int8", "int4")
        else:
            out[b] = ("int8",)
    return out, why


def bucket_loads(traffic: Traffic, buckets: tuple[int, ...]) -> tuple[tuple[BucketLoad, ...], float]:
    """Per-bucket share, rate and mean lengths; and the share above the largest bucket."""
    import numpy as np

    total = traffic.total_tokens
    w = traffic.weight if traffic.weight is not None else np.ones(total.shape[0])
    wsum = float(np.sum(w))
    rps = traffic.rps or 0.0
    loads, lo = [], 0
    for hi in buckets:
        sel = (total > lo) & (total <= hi)
        share = float(np.sum(w[sel])) / wsum
        ws = w[sel]
        mean_p = float(np.average(traffic.prompt_tokens[sel], weights=ws)) if share else 0.0
        mean_o = float(np.average(traffic.output_tokens[sel], weights=ws)) if share else 0.0
        p99 = float(np.percentile(total[sel], 99)) if traffic.weight is None and share else float(hi)
        loads.append(BucketLoad(bucket_name(hi), hi, share, rps * share, mean_p, mean_o, p99))
        lo = hi
    over = float(np.sum(w[total > buckets[-1]])) / wsum
    return tuple(loads), over


def _blocks(tokens: float, block_size: int) -> float:
    return math.ceil(tokens / block_size) if tokens > 0 else 0.0


def size_pool(
    model: ModelSpec,
    gpu: GpuSpec,
    load: BucketLoad,
    fmt_name: str,
    tp: int,
    opts: PlanOptions,
    prices: Prices,
    engine: str = "vllm",
) -> PoolSizing | None:
    """Replicas of one pool for one bucket's load at tensor parallel `tp` (None: does not fit)."""
    cap: Capacity | EnginePoolCapacity | None
    budget = opts.budgets.get(load.name)
    if engine == "vllm" and budget is None:
        fmt = get_format(fmt_name)
        shape = Shape(
            model.name, gpu.name, fmt_name, load.max_tokens, tp, 1, opts.gpu_memory_utilization,
            opts.weight_dtype,
        )  # fmt: skip
        weight_quant(model, opts.weight_dtype)  # an unmodelled quantization is refused, not a TP to skip
        try:
            cap = pool_capacity(
                model, gpu, shape, Server(block_size=opts.block_size, activation_bytes=opts.activation_bytes)
            )
        except InputError:
            return None
        seqs_limit = engine_defaults(gpu).max_num_seqs
    else:
        from kvplan.planner.engines.fleet import engine_capacity, roofline_format

        fmt = get_format(fmt_name if engine == "vllm" else roofline_format(fmt_name))
        cap = engine_capacity(
            model, gpu, engine, fmt_name, max_model_len=load.max_tokens, tensor_parallel=tp,
            weight_dtype=opts.weight_dtype, budget=budget,
        )  # fmt: skip
        if cap is None:
            return None
        seqs_limit = cap.running_limit
    if not cap.fits or cap.usable_blocks <= 0:
        return None
    if load.rps <= 0:  # no traffic in this bucket: the pool exists, with no replicas
        return PoolSizing(fmt_name, tp, 0, 0, 0.0, cap, 0.0, 0.0, 0.0, "empty", engine)
    eff = opts.efficiency
    block = cap.block_size
    context = max(load.mean_prompt + load.mean_output / 2, 1.0)
    held_prompt = load.mean_prompt
    if budget is not None:  # a sequence keeps at most the window/budget (decode reads that much too)
        context, held_prompt = min(context, budget.held(int(context))), budget.held(int(load.mean_prompt))
    prefill = prefill_seconds(
        model, gpu, prompt_tokens=max(int(load.mean_prompt), 1), tensor_parallel=tp, efficiency=eff
    )

    def step(batch: int) -> float:
        return decode_step_seconds(
            model, gpu, fmt, batch=batch, context_tokens=int(context), tensor_parallel=tp,
            weight_dtype=opts.weight_dtype, block_size=opts.block_size, efficiency=eff,
        )  # fmt: skip

    slo_batch = max(_slo_batch(model, gpu, fmt.name, int(context), tp, opts), 1)
    replicas, bound, tpot = 1, "min", step(1)
    seqs = kv_blocks = 0.0
    for _ in range(50):
        seqs = load.rps * (prefill + load.mean_output * tpot)  # Little's law
        tpot = step(max(1, math.ceil(seqs / replicas)))
        seqs = load.rps * (prefill + load.mean_output * tpot)
        kv_blocks = load.rps * (
            prefill * _blocks(held_prompt, block) + load.mean_output * tpot * _blocks(context, block)
        )
        need = {
            "kv": kv_blocks / (cap.usable_blocks * opts.target_kv_utilization),
            "tpot": seqs / slo_batch,
            "max_num_seqs": seqs / seqs_limit,
        }
        bound, worst = max(need.items(), key=lambda item: item[1])
        if worst <= 1:
            bound = "min"  # one replica carries the bucket
        # Replicas only grow: more replicas lower TPOT, which can lower the need; stop at the
        # first count that covers its own need (conservative, and it cannot oscillate).
        new = max(1, math.ceil(worst))
        if new <= replicas:
            break
        replicas = new
    kv_util = kv_blocks / (replicas * cap.usable_blocks)
    gpus = replicas * tp
    cost = gpus * prices.of(gpu)
    return PoolSizing(fmt_name, tp, replicas, gpus, cost, cap, seqs, tpot, kv_util, bound, engine)


def _slo_batch(
    model: ModelSpec, gpu: GpuSpec, fmt_name: str, context: int, tp: int, opts: PlanOptions
) -> int:
    from kvplan.planner.roofline import max_batch_within

    return max_batch_within(
        model, gpu, get_format(fmt_name), tpot_seconds=opts.tpot_slo_seconds, context_tokens=context,
        tensor_parallel=tp, weight_dtype=opts.weight_dtype, efficiency=opts.efficiency,
    )  # fmt: skip


def cheapest_pool(
    model: ModelSpec,
    gpu: GpuSpec,
    load: BucketLoad,
    fmt_name: str,
    opts: PlanOptions,
    prices: Prices,
    engine: str = "vllm",
) -> PoolSizing:
    options = (opts.tensor_parallel,) if opts.tensor_parallel else (1, 2, 4, 8)
    if engine == "llamacpp":
        options = (1,)  # llama.cpp has no tensor parallel
    sized = [
        p
        for tp in options
        if (p := size_pool(model, gpu, load, fmt_name, tp, opts, prices, engine)) is not None
    ]
    if not sized:
        tps = ", ".join(str(t) for t in options)
        raise InputError(
            f"{model.name} with {fmt_name} KV does not fit a {load.max_tokens}-token request on {gpu.name} "
            f"({engine}) at tensor parallel {tps}; try a larger GPU, --weight-dtype fp8 or a smaller bucket"
        )
    return min(sized, key=lambda p: (p.gpus, p.tensor_parallel))


def plan_fleet(
    model: ModelSpec, gpu: GpuSpec, traffic: Traffic, opts: PlanOptions, prices: Prices
) -> FleetPlan:
    """Size a baseline (BF16) and candidate pool(s) per bucket."""
    buckets = tuple(opts.buckets)
    if not buckets or list(buckets) != sorted(set(buckets)):
        raise InputError(f"buckets must be strictly increasing token counts, got {list(buckets)}")
    if not 0 < opts.target_kv_utilization <= 1:
        raise InputError(f"target KV utilisation must be in (0, 1], got {opts.target_kv_utilization}")
    if traffic.rps is None or traffic.rps <= 0:
        raise InputError("the traffic needs a positive arrival rate (timestamps or --rps)")
    for name, fmts in opts.formats.items():
        if opts.engines.get(name, "vllm") != "vllm":
            continue  # the engine's own dtypes, checked by its sizing
        for f in fmts:
            try:
                get_format(f)
            except UnknownFormat as exc:
                raise InputError(f"bucket {name}: {exc}") from None
    over8, over16 = traffic.share_above(8192), traffic.share_above(16384)
    chosen, why = policy_formats(over8, over16, buckets, gpu, opts.allow_int4_above_16k)
    loads, over = bucket_loads(traffic, buckets)
    plans = []
    for load in loads:
        engine = opts.engines.get(load.name, "vllm")
        if engine == "vllm":
            baseline = BASELINE_FORMAT
            fmts = opts.formats.get(load.name, chosen[load.max_tokens])
            reason = "override" if load.name in opts.formats else why
        else:
            from kvplan.planner.engines.fleet import BASELINE, candidates

            baseline = BASELINE[engine]
            fmts = opts.formats.get(load.name, candidates(engine, gpu))
            reason = f"on {engine}: " + (
                "override" if load.name in opts.formats else "the engine's KV dtypes"
            )
        base = cheapest_pool(model, gpu, load, baseline, opts, prices, engine)
        cands = tuple(cheapest_pool(model, gpu, load, f, opts, prices, engine) for f in fmts if f != baseline)
        plans.append(BucketPlan(load, base, cands, reason))
    return FleetPlan(
        model,
        gpu,
        traffic.source,
        traffic.rps,
        traffic.requests,
        over8,
        over16,
        over,
        tuple(plans),
        prices,
        why,
        from_file=traffic.weight is None,
    )


def _pool_name(bucket: str, fmt: str, engine: str = "vllm") -> str:
    name = fmt.replace("_", "-").replace("/", "-").lower()
    return f"{bucket}-{name}" if engine == "vllm" else f"{bucket}-{engine}-{name}"


def to_plan(fleet: FleetPlan, model_ref: str, opts: PlanOptions) -> Plan:
    """The pool plan the router, workers and deploy renderer read."""
    from kvplan.plan import Bucket, Plan, Pool, Slo

    def pool(bucket: str, p: PoolSizing) -> Pool:
        budget = opts.budgets.get(bucket)
        return Pool(
            name=_pool_name(bucket, p.kv_format, p.engine),
            model=model_ref,
            engine=p.engine,
            kv_budget=None if budget is None else budget.spec,
            kv_format=p.kv_format,
            max_model_len=p.capacity.max_model_len,
            gpu=fleet.gpu.name,
            gpus_per_replica=p.tensor_parallel,
            tensor_parallel=p.tensor_parallel,
            replicas=p.replicas,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            max_concurrency=max(1, p.capacity.guaranteed_concurrency),
            weight_dtype=opts.weight_dtype
            if opts.weight_dtype != "auto"
            else fleet.model.native_weight_dtype,
        )

    buckets = tuple(
        Bucket(
            name=b.load.name,
            max_tokens=b.load.max_tokens,
            baseline=pool(b.load.name, b.baseline),
            candidates=tuple(pool(b.load.name, c) for c in b.candidates),
        )
        for b in fleet.buckets
    )
    return Plan(
        buckets=buckets,
        slo=Slo(itl_seconds=opts.tpot_slo_seconds),
        generated_by=(
            f"kvplan plan {date.today().isoformat()} ({fleet.traffic_source}, {fleet.rps:.2f} req/s)"
        ),
    )
