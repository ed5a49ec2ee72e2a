"""Counter, gauge and histogram families cheap enough for the hot path, exposed via prometheus_client.

prometheus_client's own metrics take a lock and run Python loops per observation (about 3-5 us
each; a routed request records about eight). The router is one event-loop thread, so its
children are plain attributes: `inc` is an addition and `observe` one C bisect. A collector
turns them into standard metric families at scrape time; the exposition format is
prometheus_client's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild(CounterChild):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = float(value)

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("counts", "edges", "sum")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)  # last: above every edge (+Inf only)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.edges, value)] += 1  # le is inclusive: value <= edge
        self.sum += value


class _Family(Collector):
    def __init__(self, name: str, doc: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], object] = {}
        registry.register(self)

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")

    def describe(self) -> list[Metric]:
        return []  # nothing to check for duplicates beyond our own module's names


class Counter(_Family):
    def labels(self, *values: str) -> CounterChild:
        child = self.children.get(values)
        if child is None:
            self._check(values)
            child = self.children[values] = CounterChild()
        assert isinstance(child, CounterChild)
        return child

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children.items():
            assert isinstance(child, CounterChild)
            fam.add_metric(list(values), child.value)
        yield fam


class Gauge(_Family):
    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str] = (), registry: CollectorRegistry | None = None
    ) -> None:
        assert registry is not None
        super().__init__(name, doc, labelnames, registry)
        if not self.labelnames:
            self.children[()] = GaugeChild()

    def labels(self, *values: str) -> GaugeChild:
        child = self.children.get(values)
        if child is None:
            self._check(values)
            child = self.children[values] = GaugeChild()
        assert isinstance(child, GaugeChild)
        return child

    def set(self, value: float) -> None:
        self.labels().set(value)

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children.items():
            assert isinstance(child, GaugeChild)
            fam.add_metric(list(values), child.value)
        yield fam


class Histogram(_Family):
    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(name, doc, labelnames, registry)
        self.edges = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        if not self.labelnames:
            self.children[()] = HistogramChild(self.edges)

    def labels(self, *values: str) -> HistogramChild:
        child = self.children.get(values)
        if child is None:
            self._check(values)
            child = self.children[values] = HistogramChild(self.edges)
        assert isinstance(child, HistogramChild)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children.items():
            assert isinstance(child, HistogramChild)
            cumulative, buckets = 0, []
            for edge, count in zip((*self.edges, float("inf")), child.counts, strict=True):
                cumulative += count
                buckets.append((_edge(edge), float(cumulative)))
            fam.add_metric(list(values), buckets, child.sum)
        yield fam


def _edge(edge: float) -> str:
    return "+Inf" if edge == float("inf") else repr(float(edge))
