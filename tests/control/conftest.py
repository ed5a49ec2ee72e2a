"""Fixtures for the control tests; the services themselves live in control_services.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from control_services import PLAN, RedisServer

from kvplan.plan import Plan, parse_plan


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def seeded_redis(redis_server: RedisServer) -> RedisServer:
    """A redis-server holding the plan's defaults, as after a router's first start (commands never
    seed an empty store themselves)."""
    import asyncio

    from kvplan.control.stores import open_store

    async def seed() -> None:
        store = open_store(redis_server.url, parse_plan(PLAN))  # a router's Seeding.DEFAULTS
        await store.start()
        await store.close()

    asyncio.run(seed())
    return redis_server


@pytest.fixture
def plan() -> Plan:
    return parse_plan(PLAN)


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "pools.yaml"
    path.write_text(PLAN)
    return path
