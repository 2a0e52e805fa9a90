from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.events_delivered = Counter(
            "agentwire_events_delivered", "Events handed to subscribers", ["transport"], registry=self.registry
        )
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
