"""Prometheus metrics of the server (its own registry: nothing else of the process leaks into /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "convit_serve_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "convit_serve_request_seconds", "Request latency (first byte in to last byte out)", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "convit_serve_errors", "Requests answered with an error, by endpoint and kind (client: 4xx, server: 5xx)",
            ["endpoint", "kind"], registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "convit_serve_batch_size", "Images per runtime call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.images = Counter(
            "convit_serve_images", "Images (tensor rows) run through the model", registry=self.registry
        )
        self.in_flight = Gauge("convit_serve_in_flight_requests", "Requests being handled", registry=self.registry)
        self.ready = Gauge("convit_serve_ready", "1 once the model is loaded and warmed", registry=self.registry)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(endpoint, "client" if code < 500 else "server").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
