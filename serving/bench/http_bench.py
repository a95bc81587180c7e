"""``python -m serving.bench http``: end-to-end latency and throughput of the service on loopback.

Per server configuration (spawned: ``max_batch=1`` and ``max_batch=4``, one after the other, never
at the same time), per model and concurrency level, a fixed number of requests. The HTTP
overhead is the end-to-end p50 at concurrency 1 over the in-process p50 of the very file the
server runs (its path from ``/v1/models``), same backend, size and thread count, measured in the
same run while no server is busy. ``--overload`` instead fires 4x the queue capacity at once and
checks that the answers are only 200/503 and the server's memory stays bounded.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from serving.bench.common import BenchError
from serving.bench.http_load import RssSampler, run_load
from serving.bench.overhead import batching_gains, interleaved_overhead, overheads
from serving.bench.server import (
    Server,
    check_loopback,
    check_reachable,
    served_models,
    spawn_server,
    stop_server,
    wait_ready,
)

OVERHEAD_TARGET_PCT = 15.0
OVERLOAD_FACTOR = 4
BATCHING_MAX_BATCH = 4  # the micro-batching server's max_batch unless --max-batch says otherwise


@dataclass(frozen=True)
class HttpSettings:
    url: str | None = None
    models_dir: str | None = None  # --spawn: the folder the spawned servers serve
    models: tuple[str, ...] = ("student", "teacher")
    concurrency: tuple[int, ...] = (1, 8)
    requests: int = 32
    warmup: int = 2
    size: tuple[int, int] = (512, 1024)
    image: str | None = None
    output_format: str = "png"
    batching: str = "both"  # --spawn: both | on | off
    max_batch: int | None = None
    max_wait_ms: float | None = None
    queue_size: int | None = None
    threads: int = 1
    device: str = "cpu"
    deadline_s: float = 300.0
    timeout_s: float = 60.0
    ready_timeout_s: float = 300.0
    inprocess_iters: int = 20
    overload: bool = False
    overload_waves: int = 3
    pid: int | None = None
    progress: bool = True


def request_image(settings: HttpSettings) -> tuple[bytes, np.ndarray, str]:
    """PNG bytes to send, the decoded RGB image and where it came from. By default a SynthCity
    target-style scene at ``size``: real content, so PNG decode/encode cost what they would cost
    (noise would inflate both, a flat image would hide them)."""
    from PIL import Image

    if settings.image:
        path = Path(settings.image)
        if not path.is_file():
            raise BenchError(f"--image not found: {path}")
        data = path.read_bytes()
        return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), str(path)
    from clda_deploy.data.synthcity import render_scene

    rgb, _ = render_scene(seed=0, index=0, domain="target", height=settings.size[0], width=settings.size[1])
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue(), rgb, "synthcity target render (seed 0, index 0)"


def server_env(settings: HttpSettings, mode: str) -> dict[str, str]:
    """``CLDA_*`` settings of a spawned server: same threads as the in-process reference, warm-up
    at the request size (so the first timed request is not the first at that size), quiet logs.

    ``mode``: ``off`` = ``max_batch=1``; ``on`` = micro-batching with ``--max-batch`` (default
    ``BATCHING_MAX_BATCH``: the server's own default is 1 on CPU, so "default" would compare a
    server with itself there); ``default`` = whatever the server chooses (used by ``--overload``).
    """
    env = {
        "CLDA_THREADS": str(settings.threads),
        "CLDA_DEVICE": settings.device,
        "CLDA_LOG_LEVEL": "warning",
        "CLDA_WARMUP_HEIGHT": str(max(settings.size[0], 32)),
        "CLDA_WARMUP_WIDTH": str(max(settings.size[1], 32)),
    }
    if settings.queue_size is not None:
        env["CLDA_QUEUE_SIZE"] = str(settings.queue_size)
    if mode == "off":
        env["CLDA_MAX_BATCH"] = "1"
    elif mode == "on" or settings.max_batch is not None:
        env["CLDA_MAX_BATCH"] = str(settings.max_batch or BATCHING_MAX_BATCH)
    if mode != "off" and settings.max_wait_ms is not None:
        env["CLDA_MAX_WAIT_MS"] = str(settings.max_wait_ms)
    return env


def _entries(url: str, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The default-backend ``/v1/models`` entry of every requested model (BenchError if absent)."""
    entries = [entry for entry in served_models(url) if entry.get("default", True)]
    by_name = {entry["name"]: entry for entry in entries}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise BenchError(
            f"{url} does not serve model(s) {', '.join(missing)}; it serves {', '.join(by_name) or 'none'}"
        )
    return {name: by_name[name] for name in names}


def _cell(server: Server, settings: HttpSettings, model: str, body: bytes, concurrency: int, requests: int) -> dict:
    return run_load(server.url, model, body, concurrency, requests, settings.deadline_s, settings.timeout_s,
                    settings.output_format)  # fmt: skip


def run_cells(server: Server, settings: HttpSettings, body: bytes, bar: Any) -> dict[str, Any]:
    """Every (model, concurrency) cell on one server, with the server's RSS over the whole run."""
    entries = _entries(server.url, settings.models)
    sampler = RssSampler(server.pid).start()
    cells = []
    for model in settings.models:
        if settings.warmup > 0:  # untimed: the first requests of a model pay one-off costs
            _cell(server, settings, model, body, 1, settings.warmup)
        for concurrency in settings.concurrency:
            bar.set_postfix_str(f"{server.label} {model} c={concurrency}")
            cells.append(_cell(server, settings, model, body, concurrency, settings.requests))
            bar.update(settings.requests)
    first = entries[settings.models[0]]
    return {
        "label": server.label,
        "url": server.url,
        "env": server.env,
        "ready_s": server.ready_s,
        "max_batch": first.get("max_batch"),
        "queue_capacity": first.get("queue_capacity"),
        "models": entries,
        "rss": sampler.stop(settle_s=0.5),
        "cells": cells,
    }


def run_overload(server: Server, settings: HttpSettings, body: bytes) -> dict[str, Any]:
    """``OVERLOAD_FACTOR`` x queue capacity requests at once to the first model, in
    ``overload_waves`` successive bursts: memory that is bounded stays flat from wave to wave,
    memory that leaks per rejected request grows with every wave."""
    model = settings.models[0]
    capacity = int(_entries(server.url, (model,))[model].get("queue_capacity") or settings.queue_size or 0)
    if capacity < 1:
        raise BenchError(f"{server.url} does not report the queue capacity of {model}; pass --queue-size")
    count = OVERLOAD_FACTOR * capacity
    sampler = RssSampler(server.pid).start()
    waves = []
    for _ in range(settings.overload_waves):
        cell = _cell(server, settings, model, body, count, count)
        waves.append({**cell, "rss_after_mib": sampler.current_mib()})
    rss = sampler.stop(settle_s=1.0)
    statuses: Counter[str] = Counter()
    for wave in waves:
        statuses.update(wave["statuses"])
    growth = None if rss["peak_mib"] is None or rss["before_mib"] is None else rss["peak_mib"] - rss["before_mib"]
    return {
        "server": server.label,
        "model": model,
        "backend": waves[0]["backend"],
        "queue_capacity": capacity,
        "factor": OVERLOAD_FACTOR,
        "requests": count,
        "statuses": dict(sorted(statuses.items())),
        "only_200_503": set(statuses) <= {"200", "503"},
        "rss": rss,
        "rss_growth_mib": growth,
        "wall_s": sum(wave["wall_s"] for wave in waves),
        "waves": waves,
    }


def _servers(settings: HttpSettings) -> list[tuple[str, dict[str, str] | None]]:
    """(label, env) per server to load; env None = the running ``--url`` server."""
    if settings.url:
        return [("as running", None)]
    if settings.overload:
        label = "server default" if settings.max_batch is None else f"max_batch={settings.max_batch}"
        return [(label, server_env(settings, "default"))]
    modes = {"both": ("off", "on"), "on": ("on",), "off": ("off",)}[settings.batching]
    batched = f"max_batch={settings.max_batch or BATCHING_MAX_BATCH}"
    return [("max_batch=1" if mode == "off" else batched, server_env(settings, mode)) for mode in modes]


def _open(label: str, env: dict[str, str] | None, settings: HttpSettings) -> Server:
    if env is None:
        server = Server(check_loopback(settings.url or ""), settings.pid, label)
        check_reachable(server.url)
        server.ready_s = wait_ready(server, settings.ready_timeout_s)
        return server
    return spawn_server(Path(settings.models_dir or "runs/default/export"), env, label, settings.ready_timeout_s)


def _interleaved_headline(run: dict[str, Any], reference: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The overhead target's number: HTTP p50 over in-process p50 from the interleaved rounds."""
    entry = reference.get(model, {})
    if "http_latency_ms" not in entry:
        return None
    http_p50, inproc_p50 = entry["http_latency_ms"]["p50"], entry["latency_ms"]["p50"]
    overhead = 100.0 * (http_p50 / inproc_p50 - 1.0)
    return {
        "server": run["label"],
        "model": model,
        "backend": entry.get("runtime", run["models"].get(model, {}).get("backend")),
        "http_p50_ms": http_p50,
        "inprocess_p50_ms": inproc_p50,
        "overhead_pct": overhead,
        "method": "interleaved",
        "target_pct": OVERHEAD_TARGET_PCT,
        "met": overhead <= OVERHEAD_TARGET_PCT,
    }


def run_http(settings: HttpSettings) -> dict[str, Any]:
    """Steps: 1 request image; 2 per server: spawn/wait, cells or overload, stop; 3 in-process
    reference; 4 overhead and batching ratios."""
    body, rgb, source = request_image(settings)
    runs, overload = [], None
    total = 0 if settings.overload else len(settings.models) * len(settings.concurrency) * settings.requests
    with tqdm(
        total=total * len(_servers(settings)), desc="http", unit="req", disable=not settings.progress, leave=False
    ) as bar:
        reference: dict[str, Any] = {}
        for label, env in _servers(settings):
            server = _open(label, env, settings)
            try:
                if settings.overload:
                    overload = run_overload(server, settings, body)
                    runs.append(
                        {"label": label, "url": server.url, "env": server.env, "ready_s": server.ready_s, "cells": []}
                    )
                else:
                    runs.append(run_cells(server, settings, body, bar))
                    if len(runs) == 1:  # the first server (max_batch=1 when both run): HTTP vs in-process
                        bar.set_postfix_str(f"{label} HTTP vs in-process, interleaved")
                        reference = interleaved_overhead(server.url, runs[0]["models"], body, rgb, settings)
            finally:
                stop_server(server)
    payload: dict[str, Any] = {
        "settings": {**asdict(settings), "size": list(rgb.shape[:2])},
        "image": {"size": list(rgb.shape[:2]), "bytes": len(body), "source": source},
        "servers": runs,
    }
    if overload is not None:
        return {**payload, "overload": overload}
    rows = overheads(runs, reference)
    headline = _interleaved_headline(runs[0], reference, settings.models[0]) if runs else None
    return {
        **payload,
        "inprocess": reference,
        "overhead": rows,
        "batching": batching_gains(runs),
        "headline": {"overhead": headline},
    }
