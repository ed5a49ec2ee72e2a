"""Process entry for `kvplan serve`: settings from flags, the event loop, signals, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from kvplan.errors import InputError
from kvplan.plan import load_plan
from kvplan.procs import ROUTER_READY
from kvplan.router.app import Router
from kvplan.router.endpoints import Saturation
from kvplan.router.flags import open_flag_store
from kvplan.router.settings import Limits, Settings
from kvplan.router.upstream import UpstreamPool

log = logging.getLogger("kvplan.router")


def read_admin_token(path: Path | None) -> str | None:
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read admin token file {path}: {exc.strerror}") from exc
        if not token:
            raise InputError(f"admin token file {path} is empty")
        return token
    return os.environ.get("KVPLAN_ADMIN_TOKEN") or None


def _raise_fd_limit() -> None:
    """1,000+ concurrent streams need two sockets each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main(router: Router, host: str, port: int) -> None:
    try:
        await router.start(host, port)
    except OSError as exc:
        await router.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    print(f"{ROUTER_READY}http://{host}:{router.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new connections; waiting up to 10 s for requests in flight")
    assert router.server is not None
    router.server.close()
    deadline = loop.time() + 10
    while loop.time() < deadline and any(ep.in_flight for ep in router.table.endpoints.values()):
        await asyncio.sleep(0.05)
    await router.close()


def run(
    *,
    plan_path: Path,
    host: str,
    port: int,
    flag_store: str | None,
    admin_token_file: Path | None,
    cohort_header: str | None,
    provenance_log: str | None,
    max_body: int,
    max_in_flight: int,
    first_byte_timeout: float,
    idle_timeout: float,
    connect_timeout: float,
    log_level: str,
) -> None:
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    plan = load_plan(plan_path)
    if max_body <= 0 or max_in_flight <= 0:
        raise InputError("--max-body and --max-in-flight must be positive")
    settings = Settings(
        limits=Limits(
            max_body=max_body,
            max_in_flight=max_in_flight,
            first_byte_timeout=first_byte_timeout,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
        ),
        saturation=Saturation(),
        cohort_header=cohort_header.lower().encode() if cohort_header else None,
        admin_token=read_admin_token(admin_token_file),
        provenance_path=provenance_log,
    )
    store = open_flag_store(flag_store, plan, label=f"router@{host}:{port}")
    transport = UpstreamPool(settings.limits.connect_timeout)
    router = Router(plan, store, settings, plan_path.resolve(), transport=transport)
    _raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_main(router, host, port))
    except ImportError:
        asyncio.run(_main(router, host, port))
