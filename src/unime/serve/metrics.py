"""Prometheus metrics of the service (own registry per app, text format at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("unime_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("unime_request_errors_total", "HTTP requests answered with an error status",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("unime_request_latency_seconds", "request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("unime_batch_size", "items per encoder batch", buckets=BATCH_BUCKETS, registry=r)
        self.rerank_batch_size = Histogram("unime_rerank_batch_size", "listwise rerank requests per generation batch",
                                           buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("unime_queue_depth", "items waiting for the encoder", registry=r)
        self.in_flight = Gauge("unime_in_flight_requests", "requests being served", registry=r)
        self.listwise_picks = Counter("unime_listwise_picks_total", "listwise rerank picks by source: the model's "
                                      "answer, or a fallback to the pairwise scores (an answer naming no document)",
                                      ["source"], registry=r)
        self.items = Counter("unime_items_total", "items encoded or scored", ["kind"], registry=r)
