"""The HTTP overhead and the micro-batching gain, computed from one ``http`` run.

Overhead = end-to-end p50 at concurrency 1 / in-process p50 - 1, where the in-process number comes
from the very file the server runs (its path from ``/v1/models``), same backend, image, thread
count: the difference is decoding, the shared preprocessing, PNG encoding, HTTP and the queue,
which is what the service adds.

The two are measured *interleaved* (one HTTP request, then one in-process call, repeated), never
one series after the other: on a shared machine the speed of the same call drifts by 10-20 %
within minutes, which would swamp a 15 % overhead target measured from two separate series.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.bench.common import BenchError, ModelFile, backend_of, describe
from serving.bench.stats import ratio, summarize
from serving.bench.timing import open_predictor, predictor_details, synchronize


def interleaved_overhead(
    url: str, entries: dict[str, dict[str, Any]], body: bytes, rgb: np.ndarray, settings: Any
) -> dict[str, Any]:
    """Per served model: ``iters`` rounds of one PNG request to ``url`` and one in-process call of the
    served file (labels only, what ``format=png`` needs), alternating; summaries of both series."""
    import httpx

    from clda_deploy.data.transforms import preprocess_numpy

    images = preprocess_numpy(rgb)
    result: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=settings.timeout_s, trust_env=False) as client:
        for model, entry in entries.items():
            path = Path(entry.get("path") or "")
            try:
                predictor = open_predictor(ModelFile(model, backend_of(path), path), settings.device, settings.threads)
            except Exception as exc:  # e.g. a TensorRT engine served elsewhere, a file this process cannot read
                result[model] = {"path": str(path), "skipped": describe(exc)}
                continue
            try:
                http_ms, local_ms = _alternate(client, model, body, predictor, images, settings)
            finally:
                predictor.close()
            result[model] = {
                "path": str(path),
                **predictor_details(predictor),
                "latency_ms": summarize(local_ms),
                "http_latency_ms": summarize(http_ms),
                "interleaved": True,
            }
    return result


def _alternate(client: Any, model: str, body: bytes, predictor: Any, images: np.ndarray, settings: Any) -> tuple:
    device = str(getattr(predictor, "device", "cpu"))
    params = {"model": model, "format": settings.output_format}
    http_ms: list[float] = []
    local_ms: list[float] = []
    for round_index in range(max(settings.warmup, 1) + settings.inprocess_iters):
        start = time.perf_counter()
        response = client.post("/v1/segment", params=params, content=body, headers={"Content-Type": "image/png"})
        elapsed = (time.perf_counter() - start) * 1000.0
        if response.status_code != 200:
            raise BenchError(f"{model}: the server answered {response.status_code}: {response.text[:200]}")
        start = time.perf_counter()
        predictor.predict(images, want_logits=False)
        synchronize(device)
        if round_index >= max(settings.warmup, 1):  # the first rounds are warm-up
            http_ms.append(elapsed)
            local_ms.append((time.perf_counter() - start) * 1000.0)
    return http_ms, local_ms


def overheads(runs: list[dict[str, Any]], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """End-to-end p50 at concurrency 1 over the in-process p50, per server and model."""
    rows = []
    for run in runs:
        for cell in run["cells"]:
            base = reference.get(cell["model"], {}).get("latency_ms")
            if cell["concurrency"] != 1 or base is None or cell["latency_ms"] is None:
                continue
            http_p50, inproc_p50 = cell["latency_ms"]["p50"], base["p50"]
            rows.append(
                {
                    "server": run["label"],
                    "model": cell["model"],
                    "backend": cell["backend"],
                    "http_p50_ms": http_p50,
                    "inprocess_p50_ms": inproc_p50,
                    "overhead_pct": 100.0 * (http_p50 / inproc_p50 - 1.0),
                    # Where the time goes: the server's own split (its "inference" includes the
                    # shared preprocessing); the rest is decode, PNG encode, HTTP and the client.
                    "server_inference_p50_ms": (cell["server_inference_ms"] or {}).get("p50"),
                    "server_queue_p50_ms": (cell["server_queue_ms"] or {}).get("p50"),
                }
            )
    return rows


def batching_gains(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput with micro-batching over ``max_batch=1``, per model and concurrency."""
    if len(runs) < 2:
        return []
    off = {(c["model"], c["concurrency"]): c for c in runs[0]["cells"]}
    gains = []
    for cell in runs[1]["cells"]:
        base = off.get((cell["model"], cell["concurrency"]))
        if base is not None:
            gains.append(
                {
                    "model": cell["model"],
                    "concurrency": cell["concurrency"],
                    "throughput_off_rps": base["throughput_rps"],
                    "throughput_on_rps": cell["throughput_rps"],
                    "speedup": ratio(cell["throughput_rps"], base["throughput_rps"]),
                }
            )
    return gains
