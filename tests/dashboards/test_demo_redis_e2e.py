"""`kvplan demo --redis`: flags in a local Redis and the rollout controller running, so a
rollout started from a second terminal is analysed and stepped; and every dashboard panel's query
returns data from the demo's real Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from demo_harness import Running, cli, demo_process, query, stop_with_sigint, substitute

from kvplan.dashboards import build, grafana
from kvplan.plan import Slo


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with demo_process("--redis") as r:
        yield r


def test_a_rollout_started_from_a_second_terminal_is_analysed(running: Running) -> None:
    run = cli(running, "rollout", "start", "--bucket", "8k", "--steps", "60,100", "--interval", "5s",
              "--min-requests", "1")  # fmt: skip
    assert run.returncode == 0 and "8k: rollout progressing at weight 60" in run.stdout, (
        run.stdout + run.stderr
    )
    deadline = time.monotonic() + 60
    while True:
        history = cli(running, "flags", "history", "--bucket", "8k").stdout
        if "rollout-controller" in history:
            break
        assert time.monotonic() < deadline, f"the controller never acted:\n{history}"
        time.sleep(1)
    assert cli(running, "rollout", "status", "--bucket", "8k").returncode == 0


def test_every_dashboard_query_returns_data_from_prometheus(running: Running) -> None:
    queries = [
        (name, f"{title} {ref}", substitute(t["expr"]))
        for name, d in build.dashboard_json(Slo()).items()
        for title, ref, t in grafana.queries(d)
    ]
    deadline = time.monotonic() + 60
    while True:
        empty = [(n, title, expr) for n, title, expr in queries if not query(running.prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not empty, "queries without data:\n" + "\n".join(f"{n} / {t}: {e}" for n, t, e in empty)


def test_sigint_stops_everything_it_started(running: Running) -> None:
    # 4 workers, Redis, router, Prometheus, rollout controller
    stop_with_sigint(running, expected_children=8)
