"""`kvplan serve` with an admin token (and shadow options), and the shadow metrics the quality
tests read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from support.router import RouterProcess

TOKEN = "quality-test-token"


@contextmanager
def serve(workdir: Path, plan: dict[str, Any], *extra: str) -> Iterator[RouterProcess]:
    """`kvplan serve` on free ports (admin token TOKEN): `.url` its OpenAI API, `.admin_url` its
    admin API and /metrics; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "pools.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    router = RouterProcess(path, "--log-level", "warning", *extra, name="router", token=TOKEN)
    try:
        yield router
    finally:
        router.stop()


def admin(router: RouterProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.request(method, router.admin_url + path, json=body, headers=router.admin, timeout=10)
    r.raise_for_status()
    return r.json()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def shadow_counts(router: RouterProcess, bucket: str, pool: str) -> dict[str, float]:
    from kvplan.metric_names import router as rm

    text = httpx.get(router.metrics_url + "/metrics", timeout=10).text
    out = {
        "sampled": metric(text, f"{rm.SHADOW_SAMPLED}_total", bucket=bucket, pool=pool),
        "pairs": metric(text, f"{rm.SHADOW_PAIRS}_total", bucket=bucket, pool=pool),
    }
    for reason in rm.SHADOW_DROP_REASONS:
        out[reason] = metric(text, f"{rm.SHADOW_DROPPED}_total", bucket=bucket, pool=pool, reason=reason)
    out["dropped"] = sum(out[r] for r in rm.SHADOW_DROP_REASONS)
    return out


def shadow_settled(router: RouterProcess, bucket: str, pool: str) -> Callable[[], bool]:
    """Every sampled copy was compared or dropped (none queued or in flight)."""

    def done() -> bool:
        c = shadow_counts(router, bucket, pool)
        return c["sampled"] > 0 and c["pairs"] + c["dropped"] == c["sampled"]

    return done
