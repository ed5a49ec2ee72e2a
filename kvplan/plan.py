"""The pool plan (`pools.yaml`): the one document the planner writes and everything else reads.

Per context-length bucket: a baseline pool (BF16 KV) and candidate pools (quantized KV). Runtime
state that changes by the second (rollout weight, kill switch, health) is not stored here: the
`rollout` section only seeds the flag store's defaults.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kvplan.errors import PlanError
from kvplan.formats import ENGINE_KV_DTYPES, ENGINES, KVFormat, get_format

PLAN_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pool(_Strict):
    """One deployment: a model served with one KV format, N identical replicas, on one engine
    (vLLM unless `engine` says otherwise; kvplan's workers and deploy run only vLLM pools)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=50)
    model: str = Field(min_length=1, description="catalog name, config.json path or model dir")
    served_model_name: str | None = Field(None, description="OpenAI model name clients send")
    engine: str = Field("vllm", description="vllm, sglang, trtllm or llamacpp")
    kv_format: str = Field("bf16", description="a kvplan format (vLLM pools) or the engine's KV dtype")
    kv_budget: str | None = Field(
        None,
        pattern=r"^(window:[0-9]+\+[0-9]+|budget:[0-9]+)$",
        description="what-if sized with a window (window:W+SINK) or a per-sequence budget (budget:B)",
    )
    max_model_len: int = Field(gt=0)
    gpu: str = "h100"
    gpus_per_replica: int = Field(1, gt=0)
    tensor_parallel: int = Field(1, gt=0)
    pipeline_parallel: int = Field(1, gt=0)
    replicas: int = Field(1, ge=0)
    gpu_memory_utilization: float = Field(0.92, gt=0, le=1)
    max_concurrency: int | None = Field(None, gt=0, description="per replica, from the planner")
    endpoints: tuple[str, ...] = ()
    tokenizer: str | None = Field(None, description="path to a tokenizer.json")
    weight_dtype: str = "bf16"

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; known: {', '.join(ENGINES)}")
        return v

    @field_validator("kv_format")
    @classmethod
    def _known_format(cls, v: str, info: ValidationInfo) -> str:
        engine = info.data.get("engine", "vllm")  # declared before kv_format, so validated first
        if engine == "vllm":
            get_format(v)  # UnknownFormat (a ValueError) becomes this field's error
            return v
        if engine not in ENGINES:
            return v  # the engine's own error says it
        offered = ENGINE_KV_DTYPES[engine]
        if any(part not in offered for part in v.split("/")):
            raise ValueError(f"{engine} has no KV dtype {v!r}; {engine} supports: {', '.join(offered)}")
        return v

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        return tuple(u.rstrip("/") for u in v)

    @model_validator(mode="after")
    def _parallel(self) -> Pool:
        if self.tensor_parallel * self.pipeline_parallel != self.gpus_per_replica:
            raise ValueError(
                f"gpus_per_replica ({self.gpus_per_replica}) must equal tensor_parallel x "
                f"pipeline_parallel ({self.tensor_parallel} x {self.pipeline_parallel})"
            )
        return self

    @property
    def model_name(self) -> str:
        """The name clients put in `model`."""
        return self.served_model_name or self.model

    @property
    def format(self) -> KVFormat:
        """The pool's KV format (checked when the plan was read; a vLLM pool's `kv_format`)."""
        return get_format(self.kv_format)


class Rollout(_Strict):
    """Initial flag state for a bucket (the flag store owns it at runtime)."""

    weight: int = Field(0, ge=0, le=100)
    killed: bool = False
    shadow: int = Field(0, ge=0, le=100, description="percent of baseline requests mirrored to the candidate")


class Precision(_Strict):
    """Which requests the `precision` policy keeps off a lossy candidate, even inside the weight.

    A request is risky when it asks (`X-KV-Precision: high`, if `header`), when the plan's rule
    says so (`structured`: it offers tools or asks for JSON, where one flipped token breaks the
    call), or by the prompt heuristic: at least `min_sources` distinct cited sources ([1], [S3],
    [doc-4], <document ...>) in a prompt of at least `min_prompt_tokens` tokens, the long
    retrieval prompts where quantized attention drops or invents citations.
    """

    to: str | None = Field(None, description="pool of this bucket that serves them (default: the baseline)")
    header: bool = True
    structured: bool = False
    min_sources: int | None = Field(None, gt=0)
    min_prompt_tokens: int = Field(0, ge=0)


PREFIX_LOAD_BOUND = 8.0  # requests of load over the least-loaded replica (see EndpointChoice)
PREFIX_TABLE_BLOCKS = 262_144


class EndpointPolicyName(enum.StrEnum):
    """How a request picks one replica of its pool (one file each in kvplan/router/endpoint_policy/)."""

    POWER_OF_TWO = "power-of-two"  # the lower load of two random replicas
    ROUND_ROBIN = "round-robin"
    PREFIX_CACHE = "prefix-cache"  # the replica holding the longest cached prefix, within a load bound


class EndpointChoice(_Strict):
    """Replica choice inside the bucket's pools.

    `prefix-cache` sends a request to the replica that already holds the longest leading blocks of
    its prompt while that replica's load stays within `load_bound` of the pool's least-loaded one
    (load: the router's in-flight count plus twice the scraped `vllm:num_requests_waiting`, +8 at
    `kv_usage` saturation); beyond it, to the least loaded. It remembers at most `table_blocks`
    (prefix key, replica) pairs per pool (12 keys for a 2,000-token prompt), about 256 bytes each
    (262,144: 64 MiB, bench/results/prefix_replay.md). Both apply to
    `prefix-cache` only (unset otherwise).
    """

    policy: EndpointPolicyName = EndpointPolicyName.POWER_OF_TWO
    load_bound: float | None = Field(None, ge=0, allow_inf_nan=False)
    table_blocks: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _prefix_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("policy") == EndpointPolicyName.PREFIX_CACHE:
            return {"load_bound": PREFIX_LOAD_BOUND, "table_blocks": PREFIX_TABLE_BLOCKS, **data}
        given = [k for k in ("load_bound", "table_blocks") if data.get(k) is not None]
        if given:
            policy = data.get("policy", EndpointPolicyName.POWER_OF_TWO.value)
            raise ValueError(f"{' and '.join(given)}: only policy prefix-cache takes it, not {policy}")
        return data


class Bucket(_Strict):
    """Requests whose prompt + max_tokens fit in `max_tokens` (and not in a smaller bucket)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=30)
    max_tokens: int = Field(gt=0)
    baseline: Pool
    candidates: tuple[Pool, ...] = ()
    rollout: Rollout = Rollout()
    policy: str = "length-bucket"
    endpoint_choice: EndpointChoice = EndpointChoice()
    precision: Precision = Precision()

    @property
    def pools(self) -> tuple[Pool, ...]:
        return (self.baseline, *self.candidates)

    @model_validator(mode="after")
    def _pools_fit(self) -> Bucket:
        for pool in self.pools:
            if pool.max_model_len < self.max_tokens:
                raise ValueError(
                    f"pool {pool.name!r} max_model_len {pool.max_model_len} is below the "
                    f"bucket's max_tokens {self.max_tokens}"
                )
        names = [p.name for p in self.pools]
        if self.precision.to is not None and self.precision.to not in names:
            raise ValueError(
                f"precision.to {self.precision.to!r} is not a pool of this bucket; pools: {', '.join(names)}"
            )
        return self


class Slo(_Strict):
    """Service-level bounds shared by router histograms, rollout analysis and dashboards."""

    ttft_seconds: float = Field(2.0, gt=0)
    itl_seconds: float = Field(0.15, gt=0)
    e2e_seconds: float = Field(60.0, gt=0)


class Plan(_Strict):
    version: int = PLAN_VERSION
    buckets: tuple[Bucket, ...] = Field(min_length=1)
    slo: Slo = Slo()
    default_max_tokens: int = Field(256, gt=0, description="when a request sets no max_tokens")
    generated_by: str | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != PLAN_VERSION:
            raise ValueError(f"unsupported plan version {v}; this kvplan reads version {PLAN_VERSION}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        bounds = [b.max_tokens for b in self.buckets]
        if bounds != sorted(set(bounds)):
            raise ValueError(f"bucket max_tokens must be strictly increasing, got {bounds}")
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"bucket names must be unique, got {names}")
        pools = [p.name for b in self.buckets for p in b.pools]
        dup = sorted({p for p in pools if pools.count(p) > 1})
        if dup:
            raise ValueError(f"pool names must be unique across the plan; repeated: {dup}")
        return self

    def bucket(self, name: str) -> Bucket:
        for b in self.buckets:
            if b.name == name:
                return b
        raise KeyError(f"unknown bucket {name!r}; buckets: {', '.join(b.name for b in self.buckets)}")

    def pool(self, name: str) -> Pool:
        for b in self.buckets:
            for p in b.pools:
                if p.name == name:
                    return p
        raise KeyError(f"unknown pool {name!r}")

    @property
    def pools(self) -> tuple[Pool, ...]:
        return tuple(p for b in self.buckets for p in b.pools)

    def vllm_part(self) -> tuple[Plan | None, tuple[Bucket, ...]]:
        """The buckets whose pools all run on vLLM as planned (what kvplan deploys and runs: no other
        engine, no window/budget what-if), and the others."""
        keep = tuple(b for b in self.buckets if all(p.engine == "vllm" and not p.kv_budget for p in b.pools))
        other = tuple(b for b in self.buckets if b not in keep)
        if not other:
            return self, ()
        return (self.model_copy(update={"buckets": keep}) if keep else None), other


def json_schema() -> dict[str, Any]:
    return Plan.model_json_schema()


def _line_of(node: yaml.Node, loc: tuple[int | str, ...]) -> int | None:
    """Walk a composed YAML node tree along a pydantic error location; return a 1-based line."""
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(key, str):
            match = next((v for k, v in node.value if k.value == key), None)
            if match is None:
                return line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Parse and validate plan YAML; errors name the field path and the line."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PlanError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict) or root is None:
        raise PlanError(f"{source}: a plan must be a YAML mapping with a 'buckets' list")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PlanError(f"{source}:{line}: {field}: {msg}{more}") from exc


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read plan {p}: {exc.strerror}") from exc
    return parse_plan(text, str(p))


def dump_plan(plan: Plan) -> str:
    data = json.loads(plan.model_dump_json(exclude_defaults=False))
    for bucket in data["buckets"]:  # vLLM pools read as before the engine field existed
        for pool in (bucket["baseline"], *bucket["candidates"]):
            if pool["engine"] == "vllm":
                del pool["engine"]
            if pool["kv_budget"] is None:
                del pool["kv_budget"]
    return yaml.safe_dump(data, sort_keys=False)


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(dump_plan(plan))
