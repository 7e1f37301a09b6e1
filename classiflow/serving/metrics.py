"""Prometheus metrics of one app, in a registry of its own.

A private ``CollectorRegistry`` (not the process-global default) lets several apps live in one process, as the
tests do, without "duplicated timeseries" errors, and keeps /metrics to what this server did. Endpoint labels
are route paths from a fixed set, never the raw URL, so a scanner probing random paths cannot blow up the
number of series.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from classiflow.serving.model import LoadedModel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "classiflow_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "classiflow_request_latency_seconds",
            "Time from receiving a request to sending its response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "classiflow_errors",
            "Refused or failed requests by kind (bad_image, too_large, unsupported_media_type, ...).",
            ["kind"],
            registry=self.registry,
        )
        self.images = Counter("classiflow_images", "Images classified.", registry=self.registry)
        self.batch_size = Histogram(
            "classiflow_batch_size",
            "Images per model call (dynamic micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "classiflow_model_info",
            "The model being served (value 1).",
            ["name", "version", "runtime"],
            registry=self.registry,
        )
        self.reloads = Counter("classiflow_reloads", "Model reloads by outcome.", ["outcome"], registry=self.registry)

    def served(self, model: LoadedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(model.name, model.version, model.runtime).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
