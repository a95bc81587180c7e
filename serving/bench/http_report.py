"""Markdown and PNG for ``http`` results (load cells, overhead, batching) and ``--overload``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.bench.common import size_label
from serving.bench.report import draw_bars, figure, fmt, machine_line, markdown_table, save_figure


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in statuses.items()) or "–"


def _header(payload: dict[str, Any], title: str) -> list[str]:
    settings, image = payload["settings"], payload["image"]
    return [
        f"## {title}",
        "",
        f"`{payload['command']}`  ",
        f"{machine_line(payload['machine'], settings['threads'], ' (server and in-process)')}; "
        f"device {settings['device']}  ",
        f"{size_label(image['size'])} PNG of {image['bytes'] / 1024:.0f} KiB ({image['source']}), "
        f"format={settings['output_format']}",
        "",
    ]


def _cells_table(runs: list[dict[str, Any]]) -> str:
    headers = [
        "server",
        "model",
        "backend",
        "conc.",
        "ok/sent",
        "statuses",
        "p50 ms",
        "p99 ms",
        "req/s",
        "server infer p50 ms",
        "queue p50 ms",
        "mean batch",
        "peak RSS MiB",
    ]
    rows = []
    for run in runs:
        for cell in run["cells"]:
            latency = cell["latency_ms"] or {}
            rows.append(
                [
                    run["label"],
                    cell["model"],
                    cell["backend"],
                    cell["concurrency"],
                    f"{cell['ok']}/{cell['requests']}",
                    _statuses(cell["statuses"]),
                    latency.get("p50"),
                    latency.get("p99"),
                    cell["throughput_rps"],
                    (cell["server_inference_ms"] or {}).get("p50"),
                    (cell["server_queue_ms"] or {}).get("p50"),
                    cell["mean_batch_size"],
                    run["rss"]["peak_mib"],
                ]
            )
    return markdown_table(headers, rows)


def _summary_lines(payload: dict[str, Any]) -> list[str]:
    lines = []
    for row in payload["overhead"]:
        lines.append(
            f"- HTTP overhead ({row['server']}, {row['model']}, {row['backend']}, concurrency 1): "
            f"{row['http_p50_ms']:.1f} ms end-to-end vs {row['inprocess_p50_ms']:.1f} ms in-process = "
            f"{row['overhead_pct']:+.1f}% (server-reported: inference incl. preprocessing "
            f"{fmt(row['server_inference_p50_ms'], 1)} ms, queue {fmt(row['server_queue_p50_ms'], 1)} ms)"
        )
    headline = payload["headline"]["overhead"]
    if headline is not None:
        met = "met" if headline["met"] else "NOT met"
        lines.append(
            f"- headline overhead ({headline['model']}, {headline['server']}, HTTP and in-process calls interleaved): "
            f"{headline['http_p50_ms']:.1f} ms vs {headline['inprocess_p50_ms']:.1f} ms = "
            f"{headline['overhead_pct']:+.1f}% (target ≤ {headline['target_pct']:g}%: {met})"
        )
    for gain in payload["batching"]:
        lines.append(
            f"- micro-batching ({gain['model']}, concurrency {gain['concurrency']}): {fmt(gain['speedup'])}× "
            f"the throughput of max_batch=1"
        )
    for name, ref in payload["inprocess"].items():
        if "skipped" in ref:
            lines.append(f"- in-process reference for {name}: skipped ({ref['skipped']})")
    for run in payload["servers"]:
        rss = run["rss"]
        lines.append(
            f"- server {run['label']}: RSS before {fmt(rss['before_mib'], 0)} MiB, peak {fmt(rss['peak_mib'], 0)}, "
            f"after {fmt(rss['after_mib'], 0)}; ready after {fmt(run['ready_s'], 1)} s"
        )
    return lines


def _overload_markdown(payload: dict[str, Any]) -> str:
    load = payload["overload"]
    rss = load["rss"]
    verdict = "yes" if load["only_200_503"] else "NO"
    rows = [
        [
            load["server"],
            load["model"],
            load["queue_capacity"],
            load["requests"],
            len(load["waves"]),
            _statuses(load["statuses"]),
            verdict,
            rss["before_mib"],
            rss["peak_mib"],
            rss["after_mib"],
            load["rss_growth_mib"],
        ]
    ]
    headers = [
        "server",
        "model",
        "queue capacity",
        "requests at once",
        "waves",
        "statuses",
        "only 200/503",
        "RSS before MiB",
        "peak MiB",
        "after MiB",
        "growth MiB",
    ]
    waves = [
        [index + 1, _statuses(wave["statuses"]), wave["wall_s"], wave["rss_after_mib"]]
        for index, wave in enumerate(load["waves"])
    ]
    title = f"Overload: {load['factor']}× the queue capacity at once"
    return "\n".join(
        _header(payload, title)
        + [
            markdown_table(headers, rows, 1),
            "",
            markdown_table(["wave", "statuses", "wall s", "RSS after MiB"], waves, 1),
        ]
    )


def render_markdown(payload: dict[str, Any]) -> str:
    if "overload" in payload:
        return _overload_markdown(payload)
    return "\n".join(
        _header(payload, "HTTP load (loopback)") + [_cells_table(payload["servers"]), "", *_summary_lines(payload)]
    )


def render_plot(payload: dict[str, Any], path: Path) -> Path:
    """Load: p50 (bar to p99) and throughput per (model, concurrency) and server.
    Overload: status counts and RSS before/peak/after."""
    if "overload" in payload:
        return _overload_plot(payload["overload"], path)
    runs = payload["servers"]
    groups = list(dict.fromkeys(f"{c['model']}\nc={c['concurrency']}" for run in runs for c in run["cells"]))
    p50: dict[str, list[float | None]] = {run["label"]: [None] * len(groups) for run in runs}
    spread: dict[str, list[float | None]] = {run["label"]: [None] * len(groups) for run in runs}
    rps: dict[str, list[float | None]] = {run["label"]: [None] * len(groups) for run in runs}
    for run in runs:
        for cell in run["cells"]:
            index = groups.index(f"{cell['model']}\nc={cell['concurrency']}")
            latency = cell["latency_ms"]
            p50[run["label"]][index] = None if latency is None else latency["p50"]
            spread[run["label"]][index] = None if latency is None else latency["p99"] - latency["p50"]
            rps[run["label"]][index] = cell["throughput_rps"]
    fig, (left, right) = figure(2, width=min(12.0, max(6.0, 1.2 * len(groups) + 2)))
    draw_bars(left, groups, p50, "milliseconds", "End-to-end latency (p50, bar to p99)", spread)
    draw_bars(right, groups, rps, "requests / s", "Throughput (200s only)")
    return save_figure(path, fig)


def _overload_plot(load: dict[str, Any], path: Path) -> Path:
    fig, (left, right) = figure(2, width=6.0)
    statuses = list(load["statuses"])
    draw_bars(
        left,
        statuses,
        {"responses": [load["statuses"][s] for s in statuses]},
        "count",
        f"{len(load['waves'])} x {load['requests']} requests at once (queue {load['queue_capacity']})",
    )
    rss = load["rss"]
    draw_bars(
        right,
        ["before", "peak", "after"],
        {"server RSS": [rss["before_mib"], rss["peak_mib"], rss["after_mib"]]},
        "MiB",
        "Server memory",
    )
    return save_figure(path, fig)
