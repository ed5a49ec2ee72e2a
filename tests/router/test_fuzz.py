"""Property-based fuzzing of the router over real loopback sockets (hypothesis).

Requests are drawn from the router's own OpenAPI documents (/openapi.json on the API and admin
listeners: every path and method, bodies generated from the schemas, then mutated), plus raw
HTTP: any method, target, header block and body bytes. The upstream (the fake transport) answers
every completion with a 200, so whatever the router answers is the request's doing. Properties:

- an answer always comes back: never a reset or a close without a response;
- no 5xx: nothing a request alone sends makes the router fail;
- every 4xx is in OpenAI's error shape (JSON `{"error": {message, type, param, code}}`).

Bounded for CI: a fixed number of examples per test (about 30 s in all on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from fake_transport import FakeTransport
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import TOKEN, serving
from router_procs import MODEL, plan_dict

from kvplan.router.app import Router
from kvplan.router.server import HttpLimits

A = "http://127.0.0.1:1001"
# Short client timeouts: an incomplete request is answered (408) in half a second.
LIMITS = HttpLimits(header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5, linger=0.5)
FUZZ = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def router() -> Iterator[Router]:
    """One router for the module, on its own event loop in a thread; tests talk to it over sockets."""
    loop = uvloop.new_event_loop()
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        held["stop"] = asyncio.Event()
        async with serving(
            plan_dict([A], buckets=(("short", 4096), ("long", 16384))), FakeTransport(), LIMITS
        ) as (
            r,
            _,
        ):
            held["router"] = r
            ready.set()
            await held["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the router did not start"
    yield held["router"]
    loop.call_soon_threadsafe(held["stop"].set)
    thread.join(30)


def exchange(port: int, data: bytes) -> bytes:
    """Everything the router sends back for `data` until it closes; fails on a reset before any
    answer or no answer within 10 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # refused part-way (e.g. a body over the limit): the answer is still to be read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            assert got.startswith(b"HTTP/1.1 "), f"reset without a response (had {got[:80]!r})"
        except TimeoutError:
            pytest.fail(f"no close within 10 s after {got[:200]!r}")
    assert got.startswith(b"HTTP/1.1 "), f"closed without a response: {got[:200]!r}"
    return got


def check(answer: bytes, head_only: bool = False) -> int:
    """The properties of the first response in `answer` (after any 100 Continue)."""
    while answer.startswith(b"HTTP/1.1 100 "):
        answer = answer.partition(b"\r\n\r\n")[2]
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head[9:12])
    assert status < 500, head.decode("latin-1")[:500] + rest[:500].decode("latin-1")
    if 400 <= status < 500 and not head_only:
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        assert fields[b"content-type"].startswith(b"application/json"), head
        body = rest[: int(fields[b"content-length"])]
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}, body
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    return status


# -- requests from the OpenAPI documents --
def document(router: Router, listener: str) -> dict[str, Any]:
    answer = exchange(
        router.listeners[listener].port, b"GET /openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert check(answer) == 200
    return dict(json.loads(answer.partition(b"\r\n\r\n")[2]))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def from_schema(
    schema: dict[str, Any], defs: dict[str, Any], depth: int = 0, full: bool = False
) -> st.SearchStrategy[Any]:
    """Values shaped like the (pydantic-made) JSON Schema, loosely: bounds widened a little so
    both sides of each check get drawn. `full`: every optional field present (a body with more
    places for `mutated` to break)."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs, depth, full)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, defs, depth, full) for s in schema[key]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = {
            # mostly the served model, so that drawn bodies get past the model check
            name: st.one_of(
                st.just(MODEL), st.just(MODEL), st.just(MODEL), from_schema(s, defs, depth + 1, full)
            )
            if name == "model"
            else from_schema(s, defs, depth + 1, full)
            for name, s in schema.get("properties", {}).items()
        }
        required = set(props) if full else set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    if kind == "array":
        items = from_schema(schema.get("items", {}), defs, depth + 1, full) if depth < 4 else JSON_VALUES
        low = schema.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=low + 3)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=20)
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(
            min_value=None if low is None else low - 2, max_value=None if high is None else high + 2
        )
    if kind == "number":
        return st.floats()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON_VALUES


def paths_in(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON value: object keys and array indexes, at every depth."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    out = []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths_in(child, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A drawn body with one value anywhere in it (a field, an item, a content part's text)
    replaced by any JSON value, or dropped."""
    value = draw(base)
    # deeper places weigh more: a top-level field is one of few, a content part's text one of many
    places = [path for path in paths_in(value) for _ in range(len(path) ** 2)]
    if places:
        *parents, key = draw(st.sampled_from(places))
        node = value
        for k in parents:
            node = node[k]
        if draw(st.integers(0, 3)):
            node[key] = draw(JSON_VALUES)
        else:
            del node[key]
    return value


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            ops.append((path, method.upper(), body))
    return ops


def encode(value: Any) -> bytes:
    try:
        return json.dumps(value, allow_nan=True).encode()
    except (ValueError, TypeError):
        return b"{}"


@st.composite
def document_request(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[bytes, bool]:
    defs = doc["components"]["schemas"]
    ops = operations(doc)
    path, method, schema = draw(st.sampled_from(ops + [op for op in ops if op[2] is not None] * 3))
    path = path.replace(
        "{bucket}", draw(st.sampled_from(["short", "long", "nope"]) | st.text("abc-_%.", max_size=8))
    )
    if draw(st.integers(0, 9)) == 0:  # another method on the same path
        method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    body = b""
    if schema is not None or method == "POST":
        shaped = from_schema(schema, defs) if schema is not None else JSON_VALUES
        full = from_schema(schema, defs, full=True) if schema is not None else JSON_VALUES
        how = draw(st.sampled_from(["shaped", "mutated", "mutated", "mutated", "any"]))
        body = encode(draw({"shaped": shaped, "mutated": mutated(full), "any": JSON_VALUES}[how]))
    if path == "/admin/history":
        path += "?limit=" + draw(st.sampled_from(["10", "0", "-5", "abc", "99999999999999999999", ""]))
    auth = b"authorization: Bearer %s\r\n" % TOKEN.encode() if draw(st.integers(0, 4)) else b""
    head = b"%s %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n" % (
        method.encode(),
        path.encode(),
    )
    return head + auth + b"content-length: %d\r\n\r\n" % len(body) + body, method == "HEAD"


def test_api_requests_from_the_openapi_document(router: Router) -> None:
    doc = document(router, "api")
    port = router.listeners["api"].port

    @FUZZ
    @given(document_request(doc))
    def one(req: tuple[bytes, bool]) -> None:
        check(exchange(port, req[0]), head_only=req[1])

    one()


def test_admin_requests_from_the_openapi_document(router: Router) -> None:
    doc = document(router, "admin")
    port = router.listeners["admin"].port

    @settings(FUZZ, max_examples=100)
    @given(document_request(doc))
    def one(req: tuple[bytes, bool]) -> None:
        check(exchange(port, req[0]), head_only=req[1])

    one()


# -- raw HTTP --
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
METHODS = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PRI"]
) | st.text(TOKEN_CHARS, min_size=1, max_size=10).map(str.encode)
TARGETS = st.sampled_from(
    [
        b"/v1/chat/completions",
        b"/v1/completions",
        b"/v1/models",
        b"/health",
        b"/ready",
        b"/openapi.json",
        b"*",
    ]
) | st.binary(min_size=1, max_size=40).map(
    lambda b: b"/" + b.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")
)
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"content-type",
                b"expect",
                b"transfer-encoding",
                b"content-length",
                b"x-request-id",
                b"authorization",
                b"upgrade",
                b"x-kvplan-precision",
            ]
        )
        | st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode),
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    max_size=6,
)


@st.composite
def raw_request(draw: st.DrawFn) -> tuple[bytes, bool]:
    method, target = draw(METHODS), draw(TARGETS)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTX/1.1"]))
    body = draw(
        st.binary(max_size=200)
        | st.just(b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % MODEL.encode())
    )
    headers = draw(HEADERS)
    block = b"".join(b"%s: %s\r\n" % h for h in headers)
    framing = draw(st.sampled_from(["length", "none", "chunked"]))
    if framing == "length":
        block += b"content-length: %d\r\n" % len(body)
    elif framing == "chunked":
        block += b"transfer-encoding: chunked\r\n"
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    data = b"%s %s %s\r\nhost: x\r\nconnection: close\r\n%s\r\n%s" % (method, target, version, block, body)
    if draw(st.integers(0, 9)) == 0:  # cut anywhere: an incomplete request
        data = data[: draw(st.integers(len(method) + 1, len(data)))]
    return data, method == b"HEAD"


@settings(FUZZ, max_examples=250)
@given(raw_request())
def test_raw_http_requests_always_get_an_answer_and_never_a_5xx(
    router: Router, req: tuple[bytes, bool]
) -> None:
    check(exchange(router.port, req[0]), head_only=req[1])


@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=300))
def test_any_bytes_after_a_request_line_get_an_answer(router: Router, tail: bytes) -> None:
    check(exchange(router.port, b"POST /v1/chat/completions HTTP/1.1\r\n" + tail))
