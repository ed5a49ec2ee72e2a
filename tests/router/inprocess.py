"""`kvplan serve`'s Router in this process, on a loopback port, over the fake upstream transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
from fake_transport import FakeTransport

from kvplan.control.state import MemoryFlagStore
from kvplan.plan import Plan
from kvplan.router.app import Router
from kvplan.router.server import HttpLimits
from kvplan.router.settings import Limits, Listen, Settings

TOKEN = "test-admin-token"
# Background probes every hour: tests run a probe round themselves when they mean one.
QUIET = Limits(probe_interval=3600.0, reload_interval=3600.0, controller_poll=3600.0)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@asynccontextmanager
async def serving(
    plan: dict[str, Any], transport: FakeTransport, http: HttpLimits | None = None, **limits: Any
) -> AsyncIterator[tuple[Router, httpx.AsyncClient]]:
    """The router on the API and admin listeners (loopback, free ports), and a client of its API."""
    p = Plan.model_validate(plan)
    settings = Settings(limits=replace(QUIET, **limits), http=http or HttpLimits(), admin_token=TOKEN)
    router = Router(p, MemoryFlagStore(p), settings, transport=transport)
    await router.start(Listen("127.0.0.1", 0), Listen("127.0.0.1", 0))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as client:
            yield router, client
    finally:
        await router.close()
