"""Real services for the control tests .

redis-server and prometheus on loopback, on ephemeral ports, in temp dirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from support import ROOT
from support.procs import stop
from support.router import RouterProcess
from support.waiting import poll

from kvplan.procs import free_port, ready_url, wait_port
from kvplan.workers.sim.launch import READY_PREFIX as SIM_READY

PLAN = """\
version: 1
slo: {ttft_seconds: 0.5, itl_seconds: 0.05}
buckets:
  - name: 8k
    max_tokens: 8192
    baseline: {name: b8k-bf16, model: llama-3.1-8b, max_model_len: 8192}
    candidates:
      - {name: b8k-int8, model: llama-3.1-8b, kv_format: int8, max_model_len: 8192}
  - name: 16k
    max_tokens: 16384
    baseline: {name: b16k-bf16, model: llama-3.1-8b, max_model_len: 16384}
    candidates:
      - {name: b16k-int4, model: llama-3.1-8b, kv_format: int4, max_model_len: 16384}
  - name: 32k
    max_tokens: 32768
    baseline: {name: b32k-bf16, model: llama-3.1-8b, max_model_len: 32768}
    candidates:
      - {name: b32k-int8, model: llama-3.1-8b, kv_format: int8, max_model_len: 32768}
    rollout: {weight: 10}
"""


class RedisServer:
    """A redis-server without persistence: a restart loses everything, as in production caches."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (scripts/setup.sh test installs it)"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], check=True, capture_output=True, text=True
        )
        return out.stdout


TOKEN = "control-test-token"


def kvplan_proc(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvplan.cli", *args],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


class SimWorker:
    """`kvplan worker sim`: a vLLM-like OpenAI server (simulated GPU timing)."""

    def __init__(
        self, workdir: Path, name: str, kv_format: str, speed: float = 1.0, mean_output_tokens: int = 0
    ) -> None:
        self.proc = kvplan_proc(
            [
                "worker",
                "sim",
                "--port",
                "0",
                "--kv-format",
                kv_format,
                "--served-model-name",
                "m",
                "--speed-factor",
                str(speed),
                "--max-model-len",
                "32768",
                "--mean-output-tokens",
                str(mean_output_tokens),
            ],
            workdir / f"{name}.log",
        )
        self.url = ready_url(self.proc, SIM_READY)

    def stop(self) -> None:
        stop(self.proc)


class Router(RouterProcess):
    """`kvplan serve` on the shared flag store; its store traces every change it applies."""

    def __init__(self, workdir: Path, name: str, plan_path: Path, flag_store: str) -> None:
        self.trace = workdir / f"{name}.trace"
        self.provenance = workdir / f"{name}.provenance.jsonl"
        super().__init__(
            plan_path,
            "--flag-store", flag_store,
            "--log-level", "warning",
            "--provenance-log", str(self.provenance),
            name=name,
            token=TOKEN,
            env={"KVPLAN_FLAG_TRACE": str(self.trace)},
        )  # fmt: skip

    def applied(self) -> dict[int, float]:
        """version -> unix time this router applied it (current epoch only is the caller's concern)."""
        out: dict[int, float] = {}
        if self.trace.exists():
            for line in self.trace.read_text().split("\n")[:-1]:  # the last line may be half written
                v, _epoch, t = line.split()
                out[int(v)] = float(t)
        return out

    def records(self) -> list[dict[str, object]]:
        """The router's provenance records (one JSON object per finished request)."""
        if not self.provenance.exists():
            return []
        lines = self.provenance.read_text().split("\n")[:-1]  # the last line may be half written
        return [json.loads(line) for line in lines if line.strip()]


def routed_plan(baseline_url: str, candidate_url: str) -> str:
    """One bucket (16k) whose baseline and candidate pools are real simulated workers."""
    return f"""\
version: 1
slo: {{ttft_seconds: 0.5, itl_seconds: 0.05}}
default_max_tokens: 16
buckets:
  - name: 16k
    max_tokens: 16384
    baseline: {{name: b16k-bf16, model: llama-3.1-8b, served_model_name: m, max_model_len: 32768,
                endpoints: ["{baseline_url}"]}}
    candidates:
      - {{name: b16k-int8, model: llama-3.1-8b, served_model_name: m, kv_format: int8,
          max_model_len: 32768, endpoints: ["{candidate_url}"]}}
    rollout: {{weight: 100}}
"""


class Prometheus:
    """A real prometheus on an ephemeral port, scraping the given targets every second."""

    def __init__(self, workdir: Path, jobs: dict[str, list[tuple[str, dict[str, str]]]]) -> None:
        import yaml

        exe = shutil.which("prometheus")
        assert exe, "prometheus is not installed (scripts/setup.sh test installs it)"
        scrape = []
        for job, targets in jobs.items():
            static = [{"targets": [url.split("://", 1)[1]], "labels": labels} for url, labels in targets]
            scrape.append({"job_name": job, "scrape_interval": "1s", "static_configs": static})
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": scrape}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "prometheus.log").open("w"),
            text=True,
        )
        poll(self._ready, 30, "prometheus to become ready", interval=0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop(self.proc)
