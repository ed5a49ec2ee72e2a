"""`kvplan demo --redis`: flags in a local Redis and the rollout controller running, so a
rollout started from a second terminal is analysed and stepped; and every dashboard panel's query
returns data from the demo's real Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from demo_harness import Running, cli, demo_process, query, stop_with_sigint, substitute
from support.waiting import poll

from kvplan.dashboards import build, grafana
from kvplan.metric_names import control as cm
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

    def acted() -> bool:
        return "rollout-controller" in cli(running, "flags", "history", "--bucket", "8k").stdout

    poll(acted, 60, "the rollout controller to act (flags history)", interval=1)
    assert cli(running, "rollout", "status", "--bucket", "8k").returncode == 0


# The rollout controller's own series (kvplan.metric_names.control): separate, so that a missing
# exporter is reported as exactly that.
CONTROLLER = (cm.ROLLOUT_ANALYSES, cm.ROLLOUT_ABORTS)


def _queries(controller: bool) -> list[tuple[str, str, str]]:
    return [
        (name, f"{title} {ref}", substitute(t["expr"]))
        for name, d in build.dashboard_json(Slo()).items()
        for title, ref, t in grafana.queries(d)
        if any(m in t["expr"] for m in CONTROLLER) == controller
    ]


def _without_data(running: Running, queries: list[tuple[str, str, str]], wait: float) -> list[str]:
    deadline = time.monotonic() + wait
    while True:
        empty = [f"{n} / {t}: {e}" for n, t, e in queries if not query(running.prometheus, e)]
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(2)


def test_every_dashboard_query_returns_data_from_prometheus(running: Running) -> None:
    empty = _without_data(running, _queries(controller=False), 60)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_rollout_controller_series_reach_prometheus(running: Running) -> None:
    """Needs kvplan.control to export its rollout metrics where Prometheus scrapes them."""
    queries = _queries(controller=True)
    assert queries
    empty = _without_data(running, queries, 10)
    assert not empty, "the rollout controller exports none of these yet:\n" + "\n".join(empty)


def test_sigint_stops_everything_it_started(running: Running) -> None:
    # 4 workers, Redis, router, Prometheus, rollout controller
    stop_with_sigint(running, expected_children=8)
