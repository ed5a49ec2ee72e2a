"""What a running vLLM server says about itself over HTTP: `/health` and `/metrics`.

The supervisor (is it up, is it drained) and `workers status` (what does it report) both ask.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from kvplan.metric_names import vllm as vm


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape_metrics(url: str, timeout: float = 5.0) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    resp = httpx.get(f"{url}/metrics", timeout=timeout)
    resp.raise_for_status()
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    ]


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def requests_in_flight(url: str) -> float:
    """vLLM's running + waiting requests (0 when it cannot be scraped: nothing to wait for)."""
    try:
        samples = scrape_metrics(url)
    except httpx.HTTPError:
        return 0.0
    return sum(s.value for s in samples if s.name in (vm.NUM_REQUESTS_RUNNING, vm.NUM_REQUESTS_WAITING))
