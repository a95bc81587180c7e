"""Prometheus metrics of one app instance (its own registry, so several apps in one process,
as in tests, never collide on metric names).

Labels are bounded: ``model`` and ``backend`` are the names loaded at startup (or ``"none"`` when a
request never resolved one) and ``reason`` a setting's name, never a client-supplied string, so a
scanner cannot blow up cardinality.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: CPU inference of a small model is tens of ms, a big one on a slow CPU several seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Request counters of the model endpoints: path -> (metric, help, the labels the endpoint sets in
# ``request.state.metric_labels``); the status label comes last. A compare request is one count of
# its own counter, labelled by both models, not two counts of clda_requests (which stays "one image,
# one model" so its rates keep their meaning).
REQUEST_COUNTERS = {
    "/v1/segment": ("clda_requests", "Segmentation requests by outcome", ("model", "backend")),
    "/v1/compare": (
        "clda_compare_requests",
        "Student-teacher comparisons by outcome",
        ("student", "student_backend", "teacher", "teacher_backend"),
    ),
}


class ServiceMetrics:
    """Counters and histograms named ``clda_*``; ``render`` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.endpoint_requests = {
            path: Counter(name, text, [*labels, "status"], registry=registry)
            for path, (name, text, labels) in REQUEST_COUNTERS.items()
        }
        self.requests = self.endpoint_requests["/v1/segment"]
        self.compare_seconds = Histogram(
            "clda_compare_seconds",
            "Whole /v1/compare time inside the server (read, decode, both models, encode, agreement)",
            list(REQUEST_COUNTERS["/v1/compare"][2]),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "clda_queue_wait_seconds",
            "Time from submission to the start of the request's batch",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute = Histogram(
            "clda_compute_seconds",
            "Predictor time per batch (preprocessing + inference)",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "clda_request_seconds",
            "Whole request time inside the server (read, decode, queue, compute, encode)",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        batch_buckets = tuple(float(size) for size in range(1, max(max_batch, 1) + 1))
        self.batch_size = Histogram(
            "clda_batch_size", "Images per micro-batch", ["model", "backend"], buckets=batch_buckets, registry=registry
        )
        self.queue_depth = Gauge(
            "clda_queue_depth", "Requests holding a queue slot", ["model", "backend"], registry=registry
        )
        self.ready = Gauge("clda_ready", "1 once every model is loaded and warmed up", registry=registry)
        # ``reason`` is the name of the setting that refused (max_uploads_per_client, min_body_rate, ...).
        self.refusals = Counter(
            "clda_refusals", "Requests refused by a bound, by the setting that refused", ["reason"], registry=registry
        )
        self.inflight_bytes = Gauge(
            "clda_inflight_bytes", "Bytes reserved by requests without a queue slot (max_inflight_bytes)",
            registry=registry,
        )  # fmt: skip
        self.uploads = Gauge("clda_uploads", "Request bodies being read", registry=registry)

    def observe_batch(self, model: str, backend: str, size: int, compute_seconds: float) -> None:
        """Called by the batcher's worker thread after each batch (prometheus_client is thread-safe)."""
        self.batch_size.labels(model, backend).observe(size)
        self.compute.labels(model, backend).observe(compute_seconds)

    def count_request(self, path: str, labels: tuple[str, ...] | None, status: int) -> None:
        """One response of the endpoint at ``path``; ``labels`` None (no model resolved) reads "none"."""
        names = REQUEST_COUNTERS[path][2]
        values = labels if labels is not None else ("none",) * len(names)
        self.endpoint_requests[path].labels(*values, str(status)).inc()

    def render(self) -> bytes:
        """The current values in Prometheus' text format."""
        return generate_latest(self.registry)
