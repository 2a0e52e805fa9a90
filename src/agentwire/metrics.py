from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class Tally:
    """A plain counter for the delivery hot path: `value += n` costs a few nanoseconds, a Prometheus
    Counter's lock about a microsecond, once per event per subscriber."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _DeliveredCollector(Collector):
    def __init__(self, tallies: dict[str, Tally]) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("agentwire_events_delivered", "Events handed to subscribers",
                                     labels=["transport"])
        for transport, tally in sorted(self.tallies.items()):
            family.add_metric([transport], tally.value)
        yield family


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app, so tests can run many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.open_streams = Gauge(
            "agentwire_open_streams", "Subscriptions currently open", ["transport"], registry=self.registry
        )
        self.events_appended = Counter(
            "agentwire_events_appended", "Events stored in the journal", registry=self.registry
        )
        self._delivered: dict[str, Tally] = {}
        self.registry.register(_DeliveredCollector(self._delivered))
        self.slow_disconnects = Counter(
            "agentwire_slow_consumer_disconnects",
            "Subscribers disconnected because their buffer overflowed",
            registry=self.registry,
        )
        self.append_latency = Histogram(
            "agentwire_append_latency_seconds",
            "Time from append to stored",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.append_errors = Counter(
            "agentwire_append_errors", "Appends the journal refused", registry=self.registry
        )

    def delivered(self, transport: str) -> Tally:
        """The delivery count of a transport (`agentwire_events_delivered_total{transport=…}`)."""
        tally = self._delivered.get(transport)
        if tally is None:
            tally = self._delivered[transport] = Tally()
        return tally

    def render(self) -> bytes:
        return generate_latest(self.registry)
