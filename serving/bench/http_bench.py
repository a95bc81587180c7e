"""``python -m serving.bench http``: end-to-end latency and throughput of the service on loopback.

Per server configuration (spawned: ``max_batch=1`` and ``max_batch=4``, one after the other, never
at the same time), per model and concurrency level, a fixed number of requests. The HTTP
overhead is the end-to-end p50 at concurrency 1 over the in-process p50 of the very file the
server runs (its path from ``/v1/models``), same backend, size and thread count, measured in the
same run while no server is busy. ``--overload`` instead fires 4x the queue capacity at once and
checks that the answers are only 200/503 and the server's memory stays bounded; ``--soak``
runs a long mixed load instead (``serving.bench.soak``).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clda_deploy.profiling import predictor_details, time_alternating
from clda_deploy.statistics import summarize_timings
from serving.bench.common import BenchError, describe
from serving.bench.http_load import RssSampler, run_load
from serving.bench.http_results import HttpResult, Overload, ServerRun
from serving.bench.http_settings import HttpSettings
from serving.bench.models import bench_file, open_predictor
from serving.bench.server import (
    Server,
    check_loopback,
    check_reachable,
    served_models,
    spawn_server,
    stop_server,
    wait_ready,
)
from serving.bench.soak import plan_from, run_soak
from serving.bench.soak_results import SoakResult

OVERLOAD_FACTOR = 4
BATCHING_MAX_BATCH = 4  # the micro-batching server's max_batch unless --max-batch says otherwise


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


def run_cells(server: Server, settings: HttpSettings, body: bytes, bar: Any) -> ServerRun:
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
    return ServerRun(server.label, server.url, server.env, server.ready_s, cells, entries, first.get("max_batch"),
                     first.get("queue_capacity"), sampler.stop(settle_s=0.5))  # fmt: skip


def run_overload(server: Server, settings: HttpSettings, body: bytes) -> Overload:
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
    return Overload(server.label, model, waves[0]["backend"], capacity, OVERLOAD_FACTOR, count,
                    dict(sorted(statuses.items())), set(statuses) <= {"200", "503"}, rss, growth,
                    sum(wave["wall_s"] for wave in waves), waves)  # fmt: skip


def interleaved_overhead(
    url: str, entries: dict[str, dict[str, Any]], body: bytes, rgb: np.ndarray, settings: HttpSettings
) -> dict[str, Any]:
    """Per served model: ``inprocess_iters`` rounds of one request to ``url`` and one in-process call
    of the served file (labels only, what ``format=png`` needs), alternating; both series' summaries."""
    import httpx

    from clda_deploy.data.transforms import preprocess_numpy

    images = preprocess_numpy(rgb)
    result: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=settings.timeout_s, trust_env=False) as client:
        for model, entry in entries.items():
            path = Path(entry.get("path") or "")
            try:
                predictor = open_predictor(bench_file(path, model), settings.device, settings.threads)
            except Exception as exc:  # e.g. a TensorRT engine served elsewhere, a file this process cannot read
                result[model] = {"path": str(path), "skipped": describe(exc)}
                continue

            def request(model: str = model) -> None:
                params = {"model": model, "format": settings.output_format}
                response = client.post("/v1/segment", params=params, content=body,
                                       headers={"Content-Type": "image/png"})  # fmt: skip
                if response.status_code != 200:
                    raise BenchError(f"{model}: the server answered {response.status_code}: {response.text[:200]}")

            def local(predictor: Any = predictor) -> None:
                predictor.predict(images, want_logits=False)

            try:
                device = str(getattr(predictor, "device", "cpu"))
                iters = settings.inprocess_iters
                http_ms, local_ms = time_alternating(request, local, max(settings.warmup, 1), iters, device)
            finally:
                predictor.close()
            result[model] = {"path": str(path), **predictor_details(predictor),
                             "latency_ms": summarize_timings(local_ms), "http_latency_ms": summarize_timings(http_ms),
                             "interleaved": True}  # fmt: skip
    return result


def _servers(settings: HttpSettings) -> list[tuple[str, dict[str, str] | None]]:
    """(label, env) per server to load; env None = the running ``--url`` server."""
    if settings.url:
        return [("as running", None)]
    if settings.overload or settings.soak_minutes is not None:
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


def run_http(settings: HttpSettings) -> HttpResult | SoakResult:
    """Steps: 1 request image; 2 per server: spawn/wait, cells or overload, stop; 3 in-process
    reference (interleaved with HTTP requests to the first server). ``--soak``: 2 only, one server."""
    body, rgb, source = request_image(settings)
    if settings.soak_minutes is not None:
        plan_from(settings, settings.url or "http://127.0.0.1")  # a bad --soak value fails before a spawn
        server = _open(*_servers(settings)[0], settings)
        try:
            return run_soak(server, settings, body, {"size": list(rgb.shape[:2]), "bytes": len(body), "source": source})
        finally:
            stop_server(server)
    runs: list[ServerRun] = []
    overload, reference = None, {}
    total = 0 if settings.overload else len(settings.models) * len(settings.concurrency) * settings.requests
    bar = tqdm(total=total * len(_servers(settings)), desc="http", unit="req", disable=not settings.progress,
               leave=False)  # fmt: skip
    with bar:
        for label, env in _servers(settings):
            server = _open(label, env, settings)
            try:
                if settings.overload:
                    overload = run_overload(server, settings, body)
                    runs.append(ServerRun(label, server.url, server.env, server.ready_s, []))
                else:
                    runs.append(run_cells(server, settings, body, bar))
                    if len(runs) == 1:  # the first server (max_batch=1 when both run): HTTP vs in-process
                        bar.set_postfix_str(f"{label} HTTP vs in-process, interleaved")
                        reference = interleaved_overhead(server.url, runs[0].models or {}, body, rgb, settings)
            finally:
                stop_server(server)
    image = {"size": list(rgb.shape[:2]), "bytes": len(body), "source": source}
    return HttpResult(settings, image, runs, reference, overload)
