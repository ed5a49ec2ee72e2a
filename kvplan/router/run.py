"""Process entry for `kvplan serve`: settings from flags, the event loop, signals, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvplan.errors import InputError
from kvplan.plan import load_plan
from kvplan.procs import ROUTER_READY
from kvplan.router.app import Router
from kvplan.router.endpoints import Saturation
from kvplan.router.flags import open_flag_store
from kvplan.router.server import HttpLimits
from kvplan.router.settings import MIN_ADMIN_TOKEN, Limits, Listen, Settings, ShadowSettings
from kvplan.router.upstream import UpstreamPool

log = logging.getLogger("kvplan.router")


@dataclass(frozen=True)
class ServeOptions:
    """`kvplan serve`'s command line, as given."""

    plan_path: Path
    api: Listen
    admin: Listen
    metrics: Listen | None
    flag_store: str | None
    admin_token_file: Path | None
    cohort_header: str | None
    provenance_log: str | None
    max_body: int
    max_in_flight: int
    first_byte_timeout: float
    idle_timeout: float
    connect_timeout: float
    probe_timeout: float
    load_stale_after: float
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    log_level: str
    shadow: ShadowSettings = field(default_factory=ShadowSettings)


def read_admin_token(path: Path | None) -> str | None:
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read admin token file {path}: {exc.strerror}") from exc
        source = f"admin token file {path}"
    else:
        token = os.environ.get("KVPLAN_ADMIN_TOKEN", "").strip()
        source = "$KVPLAN_ADMIN_TOKEN"
        if not token:
            return None
    if len(token) < MIN_ADMIN_TOKEN:
        raise InputError(
            f"{source} holds {len(token)} characters; use at least {MIN_ADMIN_TOKEN} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return token


LOG_LEVELS = ("debug", "info", "warning", "error")


def settings_of(o: ServeOptions) -> Settings:
    for name, value in (
        ("--max-body", o.max_body),
        ("--max-in-flight", o.max_in_flight),
        ("--first-byte-timeout", o.first_byte_timeout),
        ("--idle-timeout", o.idle_timeout),
        ("--connect-timeout", o.connect_timeout),
        ("--probe-timeout", o.probe_timeout),
        ("--load-stale-after", o.load_stale_after),
        ("--header-timeout", o.header_timeout),
        ("--body-timeout", o.body_timeout),
        ("--keepalive-timeout", o.keepalive_timeout),
    ):
        if not value > 0:  # nan too
            raise InputError(f"{name} must be positive, got {value}")
    if not o.load_stale_after > Limits.probe_interval:  # scrapes come once per interval at best
        raise InputError(
            f"--load-stale-after must exceed the {Limits.probe_interval:g} s between load scrapes, "
            f"got {o.load_stale_after:g}"
        )
    for flag, where in (("--port", o.api), ("--admin-port", o.admin), ("--metrics-port", o.metrics)):
        if where is not None and not 0 <= where.port <= 65535:
            raise InputError(f"{flag} must be within 0..65535, got {where.port}")
    return Settings(
        limits=Limits(
            max_in_flight=o.max_in_flight,
            first_byte_timeout=o.first_byte_timeout,
            idle_timeout=o.idle_timeout,
            connect_timeout=o.connect_timeout,
            probe_timeout=o.probe_timeout,
        ),
        http=HttpLimits(
            max_body=o.max_body,
            header_timeout=o.header_timeout,
            body_timeout=o.body_timeout,
            keepalive_timeout=o.keepalive_timeout,
        ),
        cohort_header=o.cohort_header.lower().encode() if o.cohort_header else None,
        admin_token=read_admin_token(o.admin_token_file),
        provenance_path=o.provenance_log,
        saturation=Saturation(stale_after=o.load_stale_after),
        shadow=o.shadow,
    )


def load_redactor(spec: str | None) -> Callable[[str], str] | None:
    """`module:function` -> that function (None: the router's default redaction)."""
    if spec is None:
        return None
    import importlib

    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name) if module and name else None
    except Exception as exc:  # the hook's module is the user's code: any failure is bad input
        raise InputError(f"--shadow-redact {spec}: cannot load it ({exc})") from exc
    if not callable(fn):
        raise InputError(f"--shadow-redact {spec}: give module:function, a function from str to str")
    try:
        text = fn("probe a@b.io")
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise InputError(f"--shadow-redact {spec}: failed on a probe string ({why})") from exc
    if not isinstance(text, str):
        raise InputError(f"--shadow-redact {spec}: returned {type(text).__name__}, not str")
    return fn  # type: ignore[no-any-return]


def shadow_settings(
    log_path: str | None, record_share: float, queue: int, concurrency: int, timeout: float, hook: str | None
) -> ShadowSettings:
    if not 0 <= record_share <= 100:
        raise InputError(f"--shadow-record-share is a percent within 0..100, got {record_share}")
    if queue < 1 or concurrency < 1 or timeout <= 0:
        raise InputError("--shadow-queue, --shadow-concurrency and --shadow-timeout must be positive")
    return ShadowSettings(queue, concurrency, timeout, record_share, log_path, load_redactor(hook))


def _raise_fd_limit() -> None:
    """1,000+ concurrent streams need two sockets each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ready_line(router: Router) -> str:
    """`<ROUTER_READY>http://api admin http://admin [metrics http://metrics]` (tests parse it)."""
    return f"{ROUTER_READY}{router.url('api')} " + " ".join(
        f"{name} {router.url(name)}" for name in ("admin", "metrics") if name in router.listeners
    )


async def _main(router: Router, o: ServeOptions) -> None:
    try:
        await router.start(o.api, o.admin, o.metrics)
    except OSError as exc:
        await router.close()
        raise InputError(f"cannot listen on {exc}") from exc
    print(ready_line(router), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new connections; waiting up to 10 s for requests in flight")
    router.stop_listening()
    deadline = loop.time() + 10
    while loop.time() < deadline and any(ep.in_flight for ep in router.table.endpoints.values()):
        await asyncio.sleep(0.05)
    await router.close()


def run(o: ServeOptions) -> None:
    if o.log_level.lower() not in LOG_LEVELS:
        raise InputError(f"--log-level is one of {', '.join(LOG_LEVELS)}, got {o.log_level!r}")
    logging.basicConfig(
        level=o.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    plan = load_plan(o.plan_path)
    settings = settings_of(o)
    store = open_flag_store(o.flag_store, plan, label=f"router@{o.api.host}:{o.api.port}")
    transport = UpstreamPool(settings.limits.connect_timeout)
    router = Router(plan, store, settings, o.plan_path.resolve(), transport=transport)
    _raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_main(router, o))
    except ImportError:
        asyncio.run(_main(router, o))
