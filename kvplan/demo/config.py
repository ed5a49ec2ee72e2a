"""What the demo runs: its options, its four pools in two buckets, and the pool plan they make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvplan.plan import Bucket, Plan, Pool, Rollout

MODEL = "llama-3.1-8b"
GPU = "h100"


@dataclass(frozen=True)
class DemoPool:
    bucket: str
    max_tokens: int
    name: str
    kv_format: str


# (bucket, its max tokens, pool, KV format); the first pool of a bucket is its baseline.
POOLS = (
    DemoPool("8k", 8192, "demo-8k-bf16", "bf16"),
    DemoPool("8k", 8192, "demo-8k-int8", "int8"),
    DemoPool("32k", 32768, "demo-32k-bf16", "bf16"),
    DemoPool("32k", 32768, "demo-32k-int4", "int4"),
)
WEIGHTS = {"8k": 50, "32k": 20}  # initial candidate weights (the flag store owns them afterwards)
SHADOW = 10  # percent of each bucket's baseline requests mirrored to its candidate and compared


@dataclass(frozen=True)
class DemoOptions:
    duration: float = 0.0  # seconds; 0 runs until interrupted
    rps: float = 4.0
    port: int = 8080  # router; 0 picks a free one
    prometheus: bool = True
    prometheus_port: int = 9090  # 0 picks a free one; a busy 9090 falls back to a free one
    scrape_interval: str = "2s"
    speed_factor: float = 1.0  # simulated GPU seconds per wall second (sim workers)
    seed: int = 0
    workdir: Path | None = None  # default: a temporary directory, removed at the end
    # Opt-in: a local redis-server as the flag store plus the rollout controller, so that
    # `kvplan rollout start` from a second terminal is analysed and stepped. Default: in memory.
    redis: bool = False


def demo_plan(endpoints: dict[str, str]) -> Plan:
    """The demo's pool plan; `endpoints` maps pool name -> URL of its one replica."""
    buckets = []
    for name in dict.fromkeys(p.bucket for p in POOLS):
        members = [p for p in POOLS if p.bucket == name]
        pools = [
            Pool(
                name=p.name,
                model=MODEL,
                kv_format=p.kv_format,
                max_model_len=p.max_tokens,
                gpu=GPU,
                endpoints=(endpoints[p.name],) if p.name in endpoints else (),
            )
            for p in members
        ]
        buckets.append(
            Bucket(
                name=name,
                max_tokens=members[0].max_tokens,
                baseline=pools[0],
                candidates=tuple(pools[1:]),
                rollout=Rollout(weight=WEIGHTS[name], shadow=SHADOW),
            )
        )
    return Plan(buckets=tuple(buckets), generated_by="kvplan demo")
