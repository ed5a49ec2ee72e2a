"""Every bad input gets a specific OpenAI-shaped error and the router keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from router_procs import MODEL, TOKEN, Backend, RouterProc, plan_dict

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    b = Backend("a")
    path = tmp_path_factory.mktemp("bad") / "pools.yaml"
    path.write_text(yaml.safe_dump(plan_dict([b.url])))
    r = RouterProc(path, "--max-body", "2048", "--metrics-port", "0")
    yield r
    r.stop()
    b.stop()


@pytest.fixture(scope="module")
def base(served: RouterProc) -> str:
    return served.url


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    return dict(err)


def test_malformed_json(base: str) -> None:
    err = _error(httpx.post(base + CHAT, content=b'{"model": "test-model", "messages": [', timeout=5), 400)
    assert "parse the JSON" in str(err["message"])


def test_body_not_an_object(base: str) -> None:
    _error(httpx.post(base + CHAT, content=b"[1, 2]", timeout=5), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "user": 42}, "user"),
    ],
)
def test_wrong_types_name_the_param(base: str, body: dict[str, object], param: str) -> None:
    err = _error(httpx.post(base + CHAT, json=body, timeout=5), 400)
    assert err["param"] == param


def test_negative_max_tokens(base: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}
    err = _error(httpx.post(base + CHAT, json=body, timeout=5), 400)
    assert err["param"] == "max_tokens" and "-5" in str(err["message"])


def test_steering_headers_with_garbage_are_refused(served: RouterProc) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for value in ("ultra", "low", "high;q=1", ""):
        r = httpx.post(served.url + CHAT, json=body, headers={"X-KV-Precision": value}, timeout=5)
        err = _error(r, 400)
        assert err["param"] == "X-KV-Precision" and err["code"] == "invalid_header_value", value
    ok = httpx.post(served.url + CHAT, json=body, headers={"X-KV-Precision": "HIGH"}, timeout=10)
    assert ok.status_code == 200, ok.text
    forced = {"X-Kvplan-Force-Pool": "short-bf16"}
    for token in ({}, {"X-Kvplan-Token": "wrong"}):
        err = _error(httpx.post(served.url + CHAT, json=body, headers=forced | token, timeout=5), 403)
        assert err["type"] == "permission_error" and err["code"] == "pool_forcing_forbidden"
    nowhere = {"X-Kvplan-Force-Pool": "../nope;", "X-Kvplan-Token": TOKEN}
    err = _error(httpx.post(served.url + CHAT, json=body, headers=nowhere, timeout=5), 404)
    assert err["code"] == "pool_not_found" and err["param"] == "X-Kvplan-Force-Pool"


def test_completions_prompt_of_wrong_type(base: str) -> None:
    err = _error(
        httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": {"a": 1}}, timeout=5), 400
    )
    assert err["param"] == "prompt"


def test_unknown_model_404_lists_models(base: str) -> None:
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    err = _error(httpx.post(base + CHAT, json=body, timeout=5), 404)
    assert err["code"] == "model_not_found" and MODEL in str(err["message"])


def test_too_long_400_context_length_exceeded(base: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 1500}], "max_tokens": 4000}
    err = _error(httpx.post(base + CHAT, json=body, timeout=5), 400)
    assert err["code"] == "context_length_exceeded" and "4096" in str(err["message"])


def test_body_over_limit_413(base: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    err = _error(httpx.post(base + CHAT, json=body, timeout=5), 413)
    assert "2048" in str(err["message"])
    # the connection and the router stay usable
    ok = httpx.post(
        base + CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=5
    )
    assert ok.status_code == 200


def test_unknown_path_and_wrong_method(base: str) -> None:
    _error(httpx.get(base + "/v1/nothing", timeout=5), 404)
    _error(httpx.get(base + CHAT, timeout=5), 405)


def test_missing_or_wrong_admin_token_401(served: RouterProc) -> None:
    admin = served.admin_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        err = _error(httpx.get(admin + "/admin/state", headers=headers, timeout=5), 401)
        assert err["type"] == "authentication_error"
    _error(httpx.post(admin + "/admin/buckets/short/kill", timeout=5), 401)
    # the API listener has no admin API and no /metrics; a separate listener serves /metrics alone
    _error(httpx.get(served.url + "/admin/state", headers=served.admin, timeout=5), 404)
    _error(httpx.get(served.url + "/metrics", timeout=5), 404)
    assert served.metrics_url != served.admin_url
    metrics = httpx.get(served.metrics_url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert 'kvplan_router_admin_auth_failures_total{reason="wrong"}' in metrics.text
    _error(httpx.get(served.metrics_url + "/admin/state", headers=served.admin, timeout=5), 404)


def test_shadow_share_garbage_is_400(served: RouterProc) -> None:
    url = served.admin_url + "/admin/buckets/short/shadow"
    for body in ({"share": 101}, {"share": -1}, {"share": "50"}, {"share": True}, {"share": 5.5}, {}):
        err = _error(httpx.post(url, json=body, headers=served.admin, timeout=5), 400)
        assert err["param"] == "share", body
    _error(httpx.post(url, content=b"share=5", headers=served.admin, timeout=5), 400)  # not JSON


def test_malformed_http_is_400_not_a_crash(base: str) -> None:
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
    assert httpx.get(base + "/health", timeout=5).status_code == 200


def test_oversized_headers_431_and_expect_continue(base: str) -> None:
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(base)
    huge = httpx.get(base + "/health", headers={"x-filler": "a" * 70_000}, timeout=5)
    _error(huge, 431)
    body = b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}'
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "kvplan.cli", "serve", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    missing = serve("--plan", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read plan")
    plan = tmp_path / "pools.yaml"
    plan.write_text(yaml.safe_dump(plan_dict(["http://127.0.0.1:9"])))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = serve("--plan", str(plan), "--port", str(busy.getsockname()[1]))
    assert taken.returncode == 2 and taken.stderr.strip().startswith("error: cannot listen on")
    assert "Traceback" not in taken.stderr and len(taken.stderr.strip().splitlines()) == 1
    token = tmp_path / "short.token"
    token.write_text("hunter2\n")
    weak = serve("--plan", str(plan), "--port", "0", "--admin-port", "0", "--admin-token-file", str(token))
    assert weak.returncode == 2 and "at least 16" in weak.stderr and "hunter2" not in weak.stderr
    assert len(weak.stderr.strip().splitlines()) == 1
    for flags, says in (
        (("--port", "70000"), "--port must be within 0..65535"),  # was: silently port 70000 - 65536
        (("--first-byte-timeout", "-1"), "--first-byte-timeout must be positive"),
        (("--probe-timeout", "nan"), "--probe-timeout must be positive"),
        (("--load-stale-after", "0.5"), "--load-stale-after must exceed the 1 s between load scrapes"),
        (("--log-level", "loud"), "--log-level is one of"),
        (("--shadow-record-share", "200"), "--shadow-record-share is a percent"),
        (("--shadow-queue", "0"), "--shadow-queue"),
        (("--shadow-redact", "os:getcwd"), "--shadow-redact os:getcwd: failed on a probe string"),
        (("--shadow-redact", ".relative:f"), "--shadow-redact .relative:f: cannot load it"),
        (("--shadow-redact", "json"), "--shadow-redact json: give module:function"),
    ):
        flagged = serve("--plan", str(plan), "--admin-port", "0", *flags)
        assert flagged.returncode == 2, (flags, flagged.stderr)
        assert flagged.stderr.startswith(f"error: {says}"), (flags, flagged.stderr)
        assert len(flagged.stderr.strip().splitlines()) == 1, (flags, flagged.stderr)
    for choice, field in (
        ({"policy": "least-busy"}, "endpoint_choice.policy"),
        ({"policy": "prefix-cache", "load_bound": -2}, "endpoint_choice.load_bound"),
    ):
        bad = plan_dict(["http://127.0.0.1:9"])
        bad["buckets"][0]["endpoint_choice"] = choice
        plan.write_text(yaml.safe_dump(bad))
        refused = serve("--plan", str(plan), "--port", "0")
        assert refused.returncode == 2 and f"buckets.0.{field}: " in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
