"""Prometheus metrics of the control plane (names: kvplan.metric_names.control).

Flag-store health is exported by one collector that reads every live store in the process, so
the router's `/metrics` (the default registry) shows how old its routing state is and whether
its source answers, without the store doing any work per scrape beyond reading a few numbers.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kvplan.metric_names import control as cm


@dataclass
class SourceStats:
    """What a store knows about its source; the collector reads it, the store writes it."""

    label: str
    confirmed_at: float = field(default_factory=time.monotonic)  # monotonic
    up: bool = False
    loaded: bool = False
    version: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    updates: int = 0
    epoch_changes: int = 0

    def resynced(self, reason: str) -> None:
        self.resyncs[reason] = self.resyncs.get(reason, 0) + 1


class _HasStats(Protocol):
    stats: SourceStats


_stores: weakref.WeakSet[_HasStats] = weakref.WeakSet()
_lock = threading.Lock()
_registered = False


class FlagStoreCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = time.monotonic()
        age = GaugeMetricFamily(
            cm.STATE_AGE, "Seconds since the source confirmed the state", labels=["store"]
        )
        up = GaugeMetricFamily(cm.SOURCE_UP, "1 when the flag source answered last time", labels=["store"])
        loaded = GaugeMetricFamily(
            cm.STATE_LOADED, "0 while routing on the plan's defaults", labels=["store"]
        )
        version = GaugeMetricFamily(cm.STATE_VERSION, "Version of the state in use", labels=["store"])
        resyncs = CounterMetricFamily(
            cm.RESYNCS, "Full reloads of the flag state", labels=["store", "reason"]
        )
        updates = CounterMetricFamily(cm.UPDATES, "Changes applied from the stream", labels=["store"])
        epochs = CounterMetricFamily(cm.EPOCH_CHANGES, "Times the source's data was lost", labels=["store"])
        for store in list(_stores):
            s = store.stats
            age.add_metric([s.label], now - s.confirmed_at)
            up.add_metric([s.label], 1.0 if s.up else 0.0)
            loaded.add_metric([s.label], 1.0 if s.loaded else 0.0)
            version.add_metric([s.label], float(s.version))
            for reason in cm.RESYNC_REASONS:
                resyncs.add_metric([s.label, reason], float(s.resyncs.get(reason, 0)))
            updates.add_metric([s.label], float(s.updates))
            epochs.add_metric([s.label], float(s.epoch_changes))
        yield from (age, up, loaded, version, resyncs, updates, epochs)


def track(store: _HasStats) -> None:
    """Export this store's stats on the default registry (registered once per process)."""
    global _registered
    with _lock:
        if not _registered:
            REGISTRY.register(FlagStoreCollector())
            _registered = True
        _stores.add(store)


class RolloutMetrics:
    """The controller's own series, every label combination created up front (ratios read 0)."""

    def __init__(self, buckets: list[str], registry: CollectorRegistry = REGISTRY) -> None:
        self.weight = Gauge(cm.ROLLOUT_WEIGHT, "Candidate weight per bucket", ["bucket"], registry=registry)
        self.analyses = Counter(
            cm.ROLLOUT_ANALYSES, "Rollout analyses by verdict", ["bucket", "verdict"], registry=registry
        )
        self.aborts = Counter(
            cm.ROLLOUT_ABORTS, "Rollouts aborted by the analysis", ["bucket"], registry=registry
        )
        for b in buckets:
            self.weight.labels(b)
            self.aborts.labels(b)
            for v in cm.VERDICTS:
                self.analyses.labels(b, v)
