"""The embedded seams: rollout transitions through an admin call on the in-memory store."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import pytest

from kvplan.control.embedded import rollout_admin
from kvplan.control.state import MemoryFlagStore, flags_from_record
from kvplan.errors import InputError
from kvplan.plan import Plan


def test_rollout_through_admin_calls(plan: Plan) -> None:
    async def main() -> None:
        store = MemoryFlagStore(plan)
        after = await rollout_admin(
            store, "16k", "start", {"steps": "10,50,100", "interval": "1m", "actor": "al"}
        )
        assert (after.rollout, after.weight) == ("progressing", 10)
        assert after.progress is not None and after.progress.interval_s == 60
        assert flags_from_record(asdict(after)) == after  # the router's JSON shape reads back
        assert (await rollout_admin(store, "16k", "pause", {})).rollout == "paused"
        assert (await rollout_admin(store, "16k", "resume", {})).rollout == "progressing"
        aborted = await rollout_admin(store, "16k", "abort", {"reason": "looks wrong"})
        assert (aborted.rollout, aborted.weight, aborted.killed) == ("aborted", 0, True)
        hist = await store.history("16k")
        assert [h.action for h in hist] == [
            "rollout:start",
            "rollout:pause",
            "rollout:resume",
            "rollout:abort",
        ]
        assert hist[-1].reason == "looks wrong"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("bucket", "op", "body", "message"),
    [
        ("64k", "start", {}, "unknown bucket"),
        ("16k", "jump", {}, "unknown rollout operation"),
        ("16k", "start", {"steps": "50,10"}, "strictly increasing"),
        ("16k", "start", {"failure_limit": "two"}, "failure_limit must be an integer"),
        ("16k", "pause", {}, "no progressing rollout"),
    ],
)
def test_bad_admin_rollout_calls(
    plan: Plan, bucket: str, op: str, body: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        asyncio.run(rollout_admin(MemoryFlagStore(plan), bucket, op, body))
