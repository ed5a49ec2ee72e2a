"""What `kvplan flags` writes into the audit trail, and what it says when a router misbehaves:
a real `kvplan serve` (in-memory flags) and the CLI as an operator runs them."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_services import TOKEN, Router
from support.cli import kvplan
from support.faults import LossyProxy

from kvplan.control.commands import format_history

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def router(tmp_path: Path, plan_file: Path) -> Iterator[Router]:
    r = Router(tmp_path, "router", plan_file, "memory")
    yield r
    r.stop()


def flags(router_url: str, tmp_path: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return kvplan(
        "flags", *args, "--router", router_url, "--admin-token-file", str(tmp_path / "router.token"), **kw
    )


def history(router: Router) -> list[dict[str, Any]]:
    resp = httpx.get(f"{router.admin_url}/admin/history", headers=ADMIN)
    entries: list[dict[str, Any]] = resp.json()["entries"]
    return entries


def test_a_write_whose_answer_is_lost_is_reported_from_the_audit_trail(
    router: Router, tmp_path: Path
) -> None:
    proxy = LossyProxy(int(router.admin_url.rsplit(":", 1)[1]))
    try:
        proxy.lose_reply_to(b"POST /admin/buckets/8k/weight")
        run = flags(proxy.url, tmp_path, "set-weight", "--bucket", "8k", "--weight", "30", "--reason", "step")
    finally:
        proxy.close()
    assert proxy.lost == 1
    assert run.returncode == 0 and run.stdout.startswith("8k: weight 30  [version 1]"), (
        run.stdout + run.stderr
    )
    assert [e["after"]["weight"] for e in history(router)] == [30]


@pytest.mark.parametrize(
    ("reason", "refusal"),
    [
        ("step\n2026-01-01 00:00:00Z  v9  8k  mallory  unkill  killed True -> False", "one line"),
        ("tab\tinside", "one line"),
        ("x" * 2000, "at most 1000"),
    ],
)
def test_a_reason_is_one_bounded_line(router: Router, tmp_path: Path, reason: str, refusal: str) -> None:
    run = flags(router.admin_url, tmp_path, "kill", "--bucket", "8k", "--reason", reason)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and refusal in run.stderr, run.stderr
    api = httpx.post(f"{router.admin_url}/admin/buckets/8k/kill", json={"reason": reason}, headers=ADMIN)
    assert api.status_code == 400 and refusal in api.json()["error"]["message"], api.text
    assert history(router) == []  # nothing was written


def test_history_prints_a_stored_control_character_as_an_escape() -> None:
    row = {"at": 0, "version": 1, "bucket": "8k", "actor": "a\nb", "action": "kill", "reason": "x\ny",
           "before": None, "after": {"weight": 0, "killed": True, "rollout": "idle"}}  # fmt: skip
    text = format_history([row])
    assert "\n" not in text and "a\\nb" in text and "(x\\ny)" in text


@pytest.mark.parametrize("limit", ["-5", "0", "abc", "10001"])
def test_a_bad_history_limit_is_a_400_in_openai_shape(router: Router, limit: str) -> None:
    resp = httpx.get(f"{router.admin_url}/admin/history", params={"limit": limit}, headers=ADMIN)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (
        error["param"] == "limit" and error["type"] == "invalid_request_error" and "limit" in error["message"]
    )


def test_a_router_that_never_answers_is_named_with_the_reason(tmp_path: Path, plan_file: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {"KVPLAN_ADMIN_TIMEOUT": "1"}
        shown = kvplan("flags", "show", "--router", url, env=env)
        killed = kvplan("flags", "kill", "--bucket", "8k", "--router", url, env=env)
    assert shown.returncode == 2 and shown.stderr.count("\n") == 1, shown.stderr
    assert f"cannot reach the router at {url}: connected, but no answer within 1 s" in shown.stderr
    assert killed.returncode == 2 and killed.stderr.count("\n") == 1, killed.stderr
    assert "sent but not confirmed" in killed.stderr and "kvplan flags history --bucket 8k" in killed.stderr
