"""The HTTP overhead and the micro-batching gain, computed from one ``http`` run.

Overhead = end-to-end p50 at concurrency 1 / in-process p50 - 1, where the in-process number comes
from the very file the server runs (its path from ``/v1/models``), same backend, image, thread
count, measured in the same run while no server is busy: the difference is decoding, the shared
preprocessing, PNG encoding, HTTP and the queue, which is what the service adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.bench.common import ModelFile, backend_of, describe
from serving.bench.stats import ratio, summarize
from serving.bench.timing import open_predictor, predictor_details, time_predictor


def inprocess_reference(
    entries: dict[str, dict[str, Any]], device: str, threads: int, warmup: int, iters: int, rgb: np.ndarray
) -> dict[str, Any]:
    """In-process latency of each served file (``entries``: ``/v1/models`` entry per model) on the
    request's image, preprocessed as the server does, labels only (what ``format=png`` needs)."""
    from clda_deploy.data.transforms import preprocess_numpy

    images = preprocess_numpy(rgb)
    reference: dict[str, Any] = {}
    for model, entry in entries.items():
        path = Path(entry.get("path") or "")
        if not path.is_file():
            reference[model] = {"skipped": f"served file {path} not readable from here"}
            continue
        try:
            predictor = open_predictor(ModelFile(model, backend_of(path), path), device, threads)
        except Exception as exc:  # e.g. a TensorRT engine served elsewhere, a file this process cannot read
            reference[model] = {"path": str(path), "skipped": describe(exc)}
            continue
        try:
            times = time_predictor(predictor, images, warmup, iters)
            reference[model] = {"path": str(path), **predictor_details(predictor), "latency_ms": summarize(times)}
        finally:
            predictor.close()
    return reference


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
