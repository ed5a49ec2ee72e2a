"""`kvplan flags` and `kvplan rollout` as a user runs them: real processes, real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from control_services import TOKEN, RedisServer, Router, free_port
from support.cli import kvplan


def test_kill_show_history_through_the_cli(seeded_redis: RedisServer, plan_file: Path) -> None:
    common = ["--plan", str(plan_file), "--flag-store", seeded_redis.url]
    out = kvplan(
        "flags", "kill", "--bucket", "32k", "--reason", "ttft regression", "--actor", "alice", *common
    )
    assert out.returncode == 0, out.stderr
    assert "32k: KILLED" in out.stdout
    shown = json.loads(kvplan("flags", "show", "--json", *common).stdout)
    assert shown["buckets"]["32k"]["killed"] is True and shown["version"] == 1
    hist = kvplan("flags", "history", "--bucket", "32k", *common).stdout.splitlines()
    assert "alice" in hist[-1] and "killed False -> True" in hist[-1] and "(ttft regression)" in hist[-1]
    out = kvplan("rollout", "start", "--bucket", "16k", "--steps", "10,50,100", "--interval", "30s", *common)
    assert out.returncode == 0 and "progressing at weight 10" in out.stdout, out.stderr
    status = kvplan("rollout", "status", "--bucket", "16k", *common).stdout
    assert "step 1/3" in status and "failures 0/1" in status


def test_set_shadow_through_the_cli_and_a_refused_share_keeps_the_stored_one(
    seeded_redis: RedisServer, plan_file: Path
) -> None:
    common = ["--plan", str(plan_file), "--flag-store", seeded_redis.url]
    out = kvplan("flags", "set-shadow", "--bucket", "16k", "--share", "10", "--reason", "watch int4", *common)
    assert out.returncode == 0, out.stderr
    assert "16k: shadow 10% of baseline requests mirrored to the candidate" in out.stdout
    refused = kvplan("flags", "set-shadow", "--bucket", "16k", "--share", "101", *common)
    assert refused.returncode == 2, refused.stderr
    shown = json.loads(kvplan("flags", "show", "--json", *common).stdout)
    assert (shown["buckets"]["16k"]["shadow"], shown["buckets"]["16k"]["weight"]) == (10, 0)
    hist = kvplan("flags", "history", "--bucket", "16k", *common).stdout.splitlines()
    assert "shadow 0 -> 10" in hist[-1] and "(watch int4)" in hist[-1], hist
    assert kvplan("flags", "kill", "--bucket", "16k", *common).returncode == 0
    killed = kvplan("flags", "set-shadow", "--bucket", "16k", "--share", "20", *common)
    assert (
        "16k: shadow 20% of baseline requests mirrored to the candidate (none now: the bucket is KILLED)"
        in (killed.stdout)
    ), killed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flags", "kill", "--bucket", "64k"], "error: unknown bucket '64k'; buckets: 8k, 16k, 32k"),
        (
            ["flags", "set-weight", "--bucket", "8k", "--weight", "101"],
            "error: weight must be an integer",
        ),
        (
            ["flags", "set-weight", "--bucket", "8k", "--weight", "-1"],
            "error: weight must be an integer",
        ),
        (
            ["rollout", "start", "--bucket", "16k", "--steps", "10,50,25"],
            "error: steps must be strictly",
        ),
        (["rollout", "start", "--bucket", "16k", "--interval", "soon"], "error: interval must look like"),
        (
            ["flags", "set-shadow", "--bucket", "16k", "--share", "101"],
            "error: shadow share must be an integer within 0..100",
        ),
        (["flags", "set-shadow", "--bucket", "16k", "--share", "ten"], "error: "),
        (["flags", "set-shadow", "--bucket", "16k"], "error: "),
        (
            ["rollout", "start", "--bucket", "16k", "--min-agreement", "85"],
            "error: --min-agreement is a share within 0..1, got 85",
        ),
        (
            ["rollout", "start", "--bucket", "16k", "--min-agreement", "-0.5"],
            "error: --min-agreement is a share within 0..1",
        ),
        (
            ["rollout", "start", "--bucket", "16k", "--min-pairs", "-3"],
            "error: threshold min_pairs must be a non-negative number, got -3",
        ),
        (["rollout", "pause", "--bucket", "16k"], "error: bucket '16k' has no progressing rollout"),
        (
            ["rollout", "start", "--bucket", "8k", "--steps", "10,50", "--interval", "0s"],
            "error: interval must be positive",
        ),
        (  # 192.0.2.1 (TEST-NET-1) is no address of this host: bind fails, nothing is sent
            [
                "rollout",
                "run",
                "--router-metrics",
                "http://127.0.0.1:9/metrics",
                "--metrics-port",
                "0",
                "--metrics-host",
                "192.0.2.1",
            ],
            "error: cannot serve the controller's /metrics on 192.0.2.1:0: ",
        ),
        (
            ["rollout", "run", "--router-metrics", "http://127.0.0.1:9/metrics", "--metrics-port", "70000"],
            "error: --metrics-port must be within 0..65535, got 70000",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    seeded_redis: RedisServer, plan_file: Path, args: list[str], message: str
) -> None:
    out = kvplan(*args, "--plan", str(plan_file), "--flag-store", seeded_redis.url)
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_redis_names_the_url(plan_file: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["flags", "show"], ["rollout", "status"], ["flags", "kill", "--bucket", "8k"]):
        out = kvplan(*args, "--plan", str(plan_file), "--flag-store", url)
        assert out.returncode == 2, out.stderr
        assert f"error: cannot reach the flag store at {url}" in out.stderr
        assert "Traceback" not in out.stderr


def test_a_router_starts_without_redis_on_plan_defaults_and_says_so(tmp_path: Path, plan_file: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    router = Router(tmp_path, "router", plan_file, url)
    try:
        state = httpx.get(
            f"{router.admin_url}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}
        ).json()
        assert state["source"] == "plan" and state["buckets"]["32k"]["weight"] == 10
        assert url in (tmp_path / "router.log").read_text()
    finally:
        router.stop()
