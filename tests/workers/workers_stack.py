"""Start real stacks for the workers tests: `kvplan workers up` (real vLLM CPU servers) and
`kvplan serve` (kvplan's router), each as the CLI a user runs, on loopback with free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvplan.procs import router_urls

REPO = Path(__file__).resolve().parents[2]
KVPLAN = str(Path(sys.executable).with_name("kvplan"))
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
KV_MEMORY = "0.25GiB"
KV_MEMORY_BYTES = 1 << 28
BUCKET = "short"
MAX_MODEL_LEN = 2048
SERVED_NAME = "smollm2"


# Fixed chat prompts for greedy-agreement checks (tests take the first 10 or a few; the
# benchmark bench/workers_vllm_cpu.py all 16).
PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain in one sentence what a CPU does.",
    "Write a haiku about the ocean.",
    "What is 12 times 12?",
    "Give me a synonym for 'happy'.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Translate 'good morning' into Spanish.",
    "List two benefits of regular exercise.",
    "What is photosynthesis?",
    "Why is the sky blue?",
    "Suggest a name for a pet cat.",
    "What does DNA stand for?",
    "How many legs does a spider have?",
    "Describe a sunset in one sentence.",
)


def write_plan(path: Path, model_dir: Path, pools: Sequence[tuple[str, str]], weight: int = 50) -> Path:
    """One bucket: the first (name, kv_format) is the baseline, the rest are candidates."""

    def pool(name: str, fmt: str) -> dict[str, Any]:
        return dict(name=name, model=str(model_dir), served_model_name=SERVED_NAME, kv_format=fmt,
                    max_model_len=MAX_MODEL_LEN)  # fmt: skip

    (base, *cands) = pools
    bucket = dict(name=BUCKET, max_tokens=MAX_MODEL_LEN, baseline=pool(*base),
                  candidates=[pool(*c) for c in cands], rollout=dict(weight=weight))  # fmt: skip
    path.write_text(yaml.safe_dump({"buckets": [bucket]}, sort_keys=False))
    return path


def cohort_users(bucket: str = BUCKET, weight: int = 50) -> tuple[str, str]:
    """A `user` the router sends to the baseline and one it sends to the candidate."""
    from kvplan.control.cohort import percentile

    base = next(f"user-{i}" for i in range(1000) if percentile(f"user-{i}", bucket) > weight)
    cand = next(f"user-{i}" for i in range(1000) if percentile(f"user-{i}", bucket) <= weight)
    return base, cand


def stop_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class Workers:
    """`kvplan workers up` running in the background."""

    run_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    pools: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def up(cls, plan: Path, run_dir: Path, pools: Sequence[str], *extra: str) -> Workers:
        log = run_dir / "up.log"
        run_dir.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [KVPLAN, "workers", "up", "--plan", str(plan), "--device", "cpu", "--kv-memory", KV_MEMORY,
                 "--port-base", "0", "--run-dir", str(run_dir), "--python", str(VLLM_PYTHON), *extra],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return cls(run_dir, proc, log, tuple(pools))

    @property
    def runtime_plan(self) -> Path:
        return self.run_dir / "pools.runtime.yaml"

    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "state.json").read_text()))

    def endpoints(self) -> dict[str, list[str]]:
        try:
            plan = yaml.safe_load(self.runtime_plan.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        out: dict[str, list[str]] = {}
        for b in plan["buckets"]:
            for p in [b["baseline"], *b.get("candidates", [])]:
                out[p["name"]] = list(p.get("endpoints") or [])
        return out

    def wait_ready(self, timeout: float = 900.0) -> dict[str, list[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            eps = self.endpoints()
            if eps and all(eps.get(p) for p in self.pools):
                return eps
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kvplan workers up exited ({self.proc.returncode}):\n{self.log.read_text()}"
                )
            time.sleep(1)
        raise AssertionError(f"workers not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        stop_group(self.proc, 120)


@dataclass
class Router:
    proc: subprocess.Popen[str]
    url: str  # the OpenAI API
    admin_url: str  # the admin API and /metrics

    @classmethod
    def serve(cls, plan: Path) -> Router:
        proc = subprocess.Popen(
            [KVPLAN, "serve", "--plan", str(plan), "--port", "0", "--admin-port", "0",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            urls = router_urls(proc, 60)
        except (RuntimeError, TimeoutError) as exc:
            stop_group(proc, 5)
            raise AssertionError(f"router did not start: {exc}") from exc
        return cls(proc, urls["api"], urls["admin"])

    def stop(self) -> None:
        stop_group(self.proc, 10)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
