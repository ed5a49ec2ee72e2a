"""The prefix table's size as the router exports it (in process, fake upstream transport)."""

from __future__ import annotations

import uvloop
from fake_transport import FakeTransport
from inprocess import serving
from router_procs import MODEL, plan_dict

from kvplan.metric_names import router as rm

A, B = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


def test_the_prefix_table_size_is_on_the_metrics_page() -> None:
    plan = plan_dict([A, B])
    plan["buckets"][0]["endpoint_choice"] = {"policy": "prefix-cache", "table_blocks": 1000}
    series = f'{rm.PREFIX_TABLE_BLOCKS}{{pool="short-bf16"}}'

    async def main() -> None:
        async with serving(plan, FakeTransport()) as (router, client):

            async def exported() -> float:
                page = (await client.get(router.url("admin") + "/metrics")).text
                return float(next(ln for ln in page.splitlines() if ln.startswith(series)).split()[-1])

            assert await exported() == 0
            chooser = router.table.pools["short-bf16"].chooser
            for turn in range(1, 4):  # one conversation growing by a turn each time
                messages = [{"role": "user", "content": f"question {i} " * 100} for i in range(turn)]
                r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
                assert r.status_code == 200
                assert await exported() == chooser.table_size() > 0
            assert chooser.table_size() < 1000

    uvloop.run(main())
