"""Supervisor mechanics with small real processes (Python's own HTTP server answering /health):
start waits for health, a server dying on start is reported with its log tail, a crash is
unpublished and restarted with backoff, SIGTERM-style stop leaves nothing running."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from kvplan.plan import parse_plan
from kvplan.procs import free_port
from kvplan.vllm_command import Device, LaunchOptions
from kvplan.workers.launch import ReplicaLaunch
from kvplan.workers.supervise import Supervisor, WorkerStartError

WEB_POOL = {"name": "web", "model": "llama-3.1-8b", "max_model_len": 1024}
PLAN = parse_plan(yaml.safe_dump({"buckets": [{"name": "b", "max_tokens": 1024, "baseline": WEB_POOL}]}))


def http_server(tmp_path: Path, name: str = "web") -> ReplicaLaunch:
    """A real HTTP server whose /health answers 200 (a file named `health` in its directory)."""
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "health").write_text("ok")
    port = free_port()
    argv = (sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root))
    return ReplicaLaunch(name, 0, port, "127.0.0.1", argv, {}, tmp_path / f"{name}.log")


def supervisor(tmp_path: Path, launches: list[ReplicaLaunch]) -> Supervisor:
    return Supervisor(PLAN, launches, LaunchOptions(device=Device.CPU, kv_memory_bytes=1),
                      tmp_path / "pools.runtime.yaml", tmp_path / "state.json",
                      start_timeout=60, backoff=(0.5, 4.0), say=lambda _: None)  # fmt: skip


def published(sup: Supervisor) -> tuple[str, ...]:
    plan = parse_plan(sup.runtime_plan.read_text())
    return plan.pool("web").endpoints


def test_start_publish_crash_restart_stop(tmp_path: Path) -> None:
    lc = http_server(tmp_path)
    sup = supervisor(tmp_path, [lc])
    try:
        sup.start_all()
        assert published(sup) == (lc.url,)
        rep = sup.replicas[0]
        assert rep.proc is not None
        rep.proc.kill()
        rep.proc.wait(10)
        sup.check_once()
        assert published(sup) == ()  # unpublished as soon as the crash is seen
        assert rep.restart_at is not None and rep.restarts == 0
        sup.check_once(now=rep.restart_at - 0.1)  # backoff not over: nothing yet
        assert not rep.alive()
        deadline = time.monotonic() + 30
        while published(sup) != (lc.url,):
            assert time.monotonic() < deadline, "restarted server never republished"
            sup.check_once()
            time.sleep(0.2)
        assert rep.restarts == 1 and rep.alive()
        assert '"restarts": 1' in sup.state_file.read_text()
    finally:
        sup.drain_and_stop(drain_timeout=1)
    assert not sup.replicas[0].alive()
    assert published(sup) == ()


def test_backoff_doubles_up_to_the_cap(tmp_path: Path) -> None:
    dies = ReplicaLaunch("web", 0, free_port(), "127.0.0.1", (sys.executable, "-c", "raise SystemExit(3)"),
                         {}, tmp_path / "web.log")  # fmt: skip
    sup = supervisor(tmp_path, [dies])
    rep = sup.replicas[0]
    rep.spawn()
    assert rep.proc is not None
    rep.proc.wait(10)
    delays = []
    now = 1000.0
    for _ in range(5):
        sup.check_once(now=now)  # notices the exit, schedules
        assert rep.restart_at is not None
        delays.append(rep.restart_at - now)
        now = rep.restart_at
        sup.check_once(now=now)  # restarts it; it dies again
        assert rep.proc is not None
        rep.proc.wait(10)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    sup.stop_all()


def test_server_dying_on_start_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    code = "print('loading model'); print('ValueError: model architecture Foo is not supported'); exit(1)"
    argv = (sys.executable, "-c", code)
    dies = ReplicaLaunch("web", 1, free_port(), "127.0.0.1", argv, {}, tmp_path / "web-1.log")
    healthy = http_server(tmp_path, "web")
    sup = supervisor(tmp_path, [healthy, dies])
    with pytest.raises(WorkerStartError) as err:
        sup.start_all()
    msg = str(err.value)
    assert "web-1 exited with code 1 while starting" in msg
    assert "architecture Foo is not supported" in msg
    assert not any(r.alive() for r in sup.replicas)  # the healthy one was stopped too
