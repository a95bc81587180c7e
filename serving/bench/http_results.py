"""The results of ``python -m serving.bench http``: typed records, the numbers derived from them
(HTTP overhead, micro-batching gain) and their markdown and PNG.

Overhead = end-to-end p50 at concurrency 1 / in-process p50 - 1, where the in-process number comes
from the very file the server runs (its path from ``/v1/models``), same backend, image, thread
count: the difference is decoding, the shared preprocessing, PNG encoding, HTTP and the queue,
which is what the service adds. The headline number (an informational target) comes from the
interleaved rounds (``clda_deploy.profiling.time_alternating``), not from two separate series.
A load cell is the ``http_load.summarize_cell`` dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clda_deploy.reporting import Bars, Target, draw_bars, figure, fmt, machine_line, markdown_table, save_figure
from clda_deploy.statistics import ratio
from serving.bench.common import BenchRun, recorded_settings, size_label

OVERHEAD_TARGET_PCT = 15.0


@dataclass
class ServerRun:
    """One server's run: how it was started, what it served, its memory and its load cells."""

    label: str
    url: str
    env: dict[str, str]
    ready_s: float | None
    cells: list[dict[str, Any]]
    models: dict[str, dict[str, Any]] | None = None  # /v1/models entries; None for an overload run
    max_batch: int | None = None
    queue_capacity: int | None = None
    rss: dict[str, float | None] | None = None

    def to_json(self) -> dict[str, Any]:
        head = {"label": self.label, "url": self.url, "env": self.env, "ready_s": self.ready_s}
        if self.models is None:
            return {**head, "cells": self.cells}
        return {**head, "max_batch": self.max_batch, "queue_capacity": self.queue_capacity, "models": self.models,
                "rss": self.rss, "cells": self.cells}  # fmt: skip


@dataclass(frozen=True)
class Overload:
    """``factor`` x the queue capacity at once, in waves: the statuses and the server's memory."""

    server: str
    model: str
    backend: Any
    queue_capacity: int
    factor: int
    requests: int
    statuses: dict[str, int]
    only_200_503: bool
    rss: dict[str, float | None]
    rss_growth_mib: float | None
    wall_s: float
    waves: list[dict[str, Any]]


@dataclass
class HttpResult:
    settings: Any  # HttpSettings
    image: dict[str, Any]  # size, bytes, source
    servers: list[ServerRun]
    inprocess: dict[str, dict[str, Any]]  # per model: the interleaved in-process and HTTP series
    overload: Overload | None = None

    @property
    def stem(self) -> str:
        return "http_overload" if self.overload is not None else "http"

    def overheads(self) -> list[dict[str, Any]]:
        """End-to-end p50 at concurrency 1 over the in-process p50, per server and model."""
        rows = []
        for run in self.servers:
            for cell in run.cells:
                base = self.inprocess.get(cell["model"], {}).get("latency_ms")
                if cell["concurrency"] != 1 or base is None or cell["latency_ms"] is None:
                    continue
                http_p50, inproc_p50 = cell["latency_ms"]["p50"], base["p50"]
                # Where the time goes: the server's own split (its "inference" includes the shared
                # preprocessing); the rest is decode, PNG encode, HTTP and the client.
                rows.append({"server": run.label, "model": cell["model"], "backend": cell["backend"],
                             "http_p50_ms": http_p50, "inprocess_p50_ms": inproc_p50,
                             "overhead_pct": 100.0 * (http_p50 / inproc_p50 - 1.0),
                             "server_inference_p50_ms": (cell["server_inference_ms"] or {}).get("p50"),
                             "server_queue_p50_ms": (cell["server_queue_ms"] or {}).get("p50")})  # fmt: skip
        return rows

    def batching_gains(self) -> list[dict[str, Any]]:
        """Throughput with micro-batching over ``max_batch=1``, per model and concurrency."""
        if len(self.servers) < 2:
            return []
        off = {(c["model"], c["concurrency"]): c for c in self.servers[0].cells}
        gains = []
        for cell in self.servers[1].cells:
            base = off.get((cell["model"], cell["concurrency"]))
            if base is not None:
                gains.append({"model": cell["model"], "concurrency": cell["concurrency"],
                              "throughput_off_rps": base["throughput_rps"], "throughput_on_rps": cell["throughput_rps"],
                              "speedup": ratio(cell["throughput_rps"], base["throughput_rps"])})  # fmt: skip
        return gains

    def overhead_target(self) -> tuple[dict[str, Any], Target] | None:
        """The first model's interleaved HTTP and in-process p50 on the first server, and the target."""
        if not self.servers:
            return None
        run, model = self.servers[0], self.settings.models[0]
        entry = self.inprocess.get(model, {})
        if "http_latency_ms" not in entry:
            return None
        http_p50, inproc_p50 = entry["http_latency_ms"]["p50"], entry["latency_ms"]["p50"]
        backend = entry.get("runtime", (run.models or {}).get(model, {}).get("backend"))
        where = {"server": run.label, "model": model, "backend": backend, "http_p50_ms": http_p50,
                 "inprocess_p50_ms": inproc_p50}  # fmt: skip
        overhead = 100.0 * (http_p50 / inproc_p50 - 1.0)
        return where, Target("HTTP overhead", overhead, OVERHEAD_TARGET_PCT, "<=", unit="%")

    def targets(self) -> list[Target]:
        headline = None if self.overload is not None else self.overhead_target()
        return [] if headline is None else [headline[1]]

    def to_json(self) -> dict[str, Any]:
        payload = {"settings": {**recorded_settings(self.settings), "size": list(self.image["size"])},
                   "image": self.image, "servers": [run.to_json() for run in self.servers]}  # fmt: skip
        if self.overload is not None:
            return {**payload, "overload": asdict(self.overload)}
        headline = self.overhead_target()
        overhead = None
        if headline is not None:
            where, target = headline
            overhead = {**where, "overhead_pct": target.value, "method": "interleaved",
                        "target_pct": target.threshold, "met": target.met}  # fmt: skip
        return {**payload, "inprocess": self.inprocess, "overhead": self.overheads(),
                "batching": self.batching_gains(), "headline": {"overhead": overhead}}  # fmt: skip

    def markdown(self, run: BenchRun) -> str:
        return render_markdown(self, run)

    def plot(self, path: Path) -> Path:
        return render_plot(self, path)


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in statuses.items()) or "–"


def _header(result: HttpResult, run: BenchRun, title: str) -> list[str]:
    settings, image = result.settings, result.image
    return [
        f"## {title}",
        "",
        f"`{run.command}`  ",
        f"{machine_line(run.machine, settings.threads, ' (server and in-process)')}; device {settings.device}  ",
        f"{size_label(image['size'])} PNG of {image['bytes'] / 1024:.0f} KiB ({image['source']}), "
        f"format={settings.output_format}",
        "",
    ]


def _cells_table(servers: list[ServerRun]) -> str:
    headers = ["server", "model", "backend", "conc.", "ok/sent", "statuses", "p50 ms", "p99 ms", "req/s",
               "server infer p50 ms", "queue p50 ms", "mean batch", "peak RSS MiB"]  # fmt: skip
    rows = []
    for run in servers:
        for cell in run.cells:
            latency = cell["latency_ms"] or {}
            rows.append([run.label, cell["model"], cell["backend"], cell["concurrency"],
                         f"{cell['ok']}/{cell['requests']}", _statuses(cell["statuses"]), latency.get("p50"),
                         latency.get("p99"), cell["throughput_rps"], (cell["server_inference_ms"] or {}).get("p50"),
                         (cell["server_queue_ms"] or {}).get("p50"), cell["mean_batch_size"],
                         (run.rss or {}).get("peak_mib")])  # fmt: skip
    return markdown_table(headers, rows)


def _summary_lines(result: HttpResult) -> list[str]:
    lines = []
    for row in result.overheads():
        lines.append(
            f"- HTTP overhead ({row['server']}, {row['model']}, {row['backend']}, concurrency 1): "
            f"{row['http_p50_ms']:.1f} ms end-to-end vs {row['inprocess_p50_ms']:.1f} ms in-process = "
            f"{row['overhead_pct']:+.1f}% (server-reported: inference incl. preprocessing "
            f"{fmt(row['server_inference_p50_ms'], 1)} ms, queue {fmt(row['server_queue_p50_ms'], 1)} ms)"
        )
    headline = result.overhead_target()
    if headline is not None:
        where, target = headline
        lines.append(
            f"- headline overhead ({where['model']}, {where['server']}, HTTP and in-process calls interleaved): "
            f"{where['http_p50_ms']:.1f} ms vs {where['inprocess_p50_ms']:.1f} ms = "
            f"{target.value:+.1f}% (target ≤ {target.threshold:g}%: {target.verdict()})"
        )
    for gain in result.batching_gains():
        lines.append(f"- micro-batching ({gain['model']}, concurrency {gain['concurrency']}): "
                     f"{fmt(gain['speedup'])}× the throughput of max_batch=1")  # fmt: skip
    for name, reference in result.inprocess.items():
        if "skipped" in reference:
            lines.append(f"- in-process reference for {name}: skipped ({reference['skipped']})")
    for run in result.servers:
        rss = run.rss or {}
        lines.append(f"- server {run.label}: RSS before {fmt(rss.get('before_mib'), 0)} MiB, peak "
                     f"{fmt(rss.get('peak_mib'), 0)}, after {fmt(rss.get('after_mib'), 0)}; ready after "
                     f"{fmt(run.ready_s, 1)} s")  # fmt: skip
    return lines


def _overload_markdown(result: HttpResult, run: BenchRun) -> str:
    load = result.overload
    assert load is not None
    rss = load.rss
    row = [load.server, load.model, load.queue_capacity, load.requests, len(load.waves), _statuses(load.statuses),
           "yes" if load.only_200_503 else "NO", rss["before_mib"], rss["peak_mib"], rss["after_mib"],
           load.rss_growth_mib]  # fmt: skip
    headers = ["server", "model", "queue capacity", "requests at once", "waves", "statuses", "only 200/503",
               "RSS before MiB", "peak MiB", "after MiB", "growth MiB"]  # fmt: skip
    waves = [[index + 1, _statuses(wave["statuses"]), wave["wall_s"], wave["rss_after_mib"]]
             for index, wave in enumerate(load.waves)]  # fmt: skip
    title = f"Overload: {load.factor}× the queue capacity at once"
    tables = [markdown_table(headers, [row], 1), "", markdown_table(["wave", "statuses", "wall s", "RSS after MiB"],
                                                                    waves, 1)]  # fmt: skip
    return "\n".join(_header(result, run, title) + tables)


def render_markdown(result: HttpResult, run: BenchRun) -> str:
    if result.overload is not None:
        return _overload_markdown(result, run)
    table = [_cells_table(result.servers), "", *_summary_lines(result)]
    return "\n".join(_header(result, run, "HTTP load (loopback)") + table)


def render_plot(result: HttpResult, path: Path) -> Path:
    """Load: p50 (bar to p99) and throughput per (model, concurrency) and server.
    Overload: status counts and RSS before/peak/after."""
    if result.overload is not None:
        return _overload_plot(result.overload, path)
    runs = result.servers
    groups = list(dict.fromkeys(f"{c['model']}\nc={c['concurrency']}" for run in runs for c in run.cells))
    p50: dict[str, list[float | None]] = {run.label: [None] * len(groups) for run in runs}
    spread: dict[str, list[float | None]] = {run.label: [None] * len(groups) for run in runs}
    rps: dict[str, list[float | None]] = {run.label: [None] * len(groups) for run in runs}
    for run in runs:
        for cell in run.cells:
            index = groups.index(f"{cell['model']}\nc={cell['concurrency']}")
            latency = cell["latency_ms"]
            p50[run.label][index] = None if latency is None else latency["p50"]
            spread[run.label][index] = None if latency is None else latency["p99"] - latency["p50"]
            rps[run.label][index] = cell["throughput_rps"]
    fig, (left, right) = figure(2, width=min(12.0, max(6.0, 1.2 * len(groups) + 2)))
    draw_bars(left, Bars(groups, p50, "milliseconds", "End-to-end latency (p50, bar to p99)", spread))
    draw_bars(right, Bars(groups, rps, "requests / s", "Throughput (200s only)"))
    return save_figure(path, fig)


def _overload_plot(load: Overload, path: Path) -> Path:
    fig, (left, right) = figure(2, width=6.0)
    statuses = list(load.statuses)
    title = f"{len(load.waves)} x {load.requests} requests at once (queue {load.queue_capacity})"
    draw_bars(left, Bars(statuses, {"responses": [load.statuses[s] for s in statuses]}, "count", title))
    rss = [load.rss["before_mib"], load.rss["peak_mib"], load.rss["after_mib"]]
    draw_bars(right, Bars(["before", "peak", "after"], {"server RSS": rss}, "MiB", "Server memory"))
    return save_figure(path, fig)
