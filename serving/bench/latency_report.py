"""Markdown and PNG for ``latency`` results (kept apart from the measuring code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.bench.common import size_label
from serving.bench.report import fmt, grouped_bars, machine_line, markdown_table


def _results_table(rows: list[dict]) -> str:
    headers = [
        "model",
        "backend",
        "size",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "img/s",
        "GFLOP",
        "GFLOP/s",
        "eff. %",
    ]
    body = [
        [
            r["model"],
            r["backend"],
            size_label(r["size"]),
            r["batch"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p90"],
            r["latency_ms"]["p99"],
            r["latency_ms"]["mean"],
            r["images_per_s"],
            r["gflop"],
            r["achieved_gflops"],
            r["efficiency_pct"],
        ]
        for r in rows
    ]
    return markdown_table(headers, body)


def _ratio_lines(payload: dict[str, Any]) -> list[str]:
    ratios, matmul = payload["ratios"], payload["matmul"]
    primary = ratios["primary"]
    where = f"{primary['model']}, {size_label(primary['size'])}, batch {primary['batch']}"
    headline = ratios["headline"]
    lines = [f"- fp32 matmul rate ({matmul['size']}², threads {matmul['threads']}): {matmul['gflops']:.1f} GFLOP/s"]
    speedup = headline["ort_vs_torch_speedup"]
    if speedup is None:
        lines.append(f"- ONNX Runtime vs PyTorch eager ({where}): not measured (needs both rows)")
    else:
        met = "met" if speedup["met"] else "NOT met"
        lines.append(
            f"- ONNX Runtime vs PyTorch eager ({where}): {speedup['speedup']:.2f}× "
            f"(target ≥ {speedup['target']:g}×: {met})"
        )
    efficiency = headline["student_efficiency"]
    if efficiency is None:
        lines.append(f"- efficiency ({where}): not measured (needs the model's .safetensors for FLOPs)")
    else:
        met = "met" if efficiency["met"] else "NOT met"
        lines.append(
            f"- efficiency ({where}, {efficiency['backend']}): {efficiency['achieved_gflops']:.1f} GFLOP/s = "
            f"{efficiency['efficiency_pct']:.1f}% of the matmul rate (target ≥ {efficiency['target_pct']:g}%: {met})"
        )
    for entry in ratios["student_vs_teacher"]:
        lines.append(
            f"- student vs teacher ({entry['backend']}, {size_label(entry['size'])}, batch {entry['batch']}): "
            f"speedup {fmt(entry['speedup'])}×"
        )
    for entry in ratios["ort_vs_torch"]:
        lines.append(
            f"- ONNX Runtime vs PyTorch eager ({entry['model']}, {size_label(entry['size'])}, batch {entry['batch']}): "
            f"speedup {fmt(entry['speedup'])}×"
        )
    return lines


def render_markdown(payload: dict[str, Any]) -> str:
    """The table a reader wants first, then the ratios, then what was skipped and why."""
    settings = payload["settings"]
    parts = [
        "## In-process latency",
        "",
        f"`{payload['command']}`  ",
        f"{machine_line(payload['machine'], settings['threads'], ' (PyTorch and ONNX Runtime alike)')}  ",
        f"device {settings['device']}, {settings['warmup']} warm-up + {settings['iters']} timed calls per row",
        "",
        _results_table(payload["results"]),
        "",
        *_ratio_lines(payload),
    ]
    if payload["skipped"]:
        skipped = [
            [s["model"], s["backend"], size_label(s["size"]) if "size" in s else "all", s["reason"]]
            for s in payload["skipped"]
        ]
        parts += ["", "Skipped:", "", markdown_table(["model", "backend", "size", "reason"], skipped)]
    return "\n".join(parts)


def render_plot(payload: dict[str, Any], path: Path) -> Path:
    """p50 bars per (model, size, batch) and backend, with the p90 as the upper error bar."""
    rows = payload["results"]
    groups = list(dict.fromkeys(_group(r) for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    series: dict[str, list[float | None]] = {b: [None] * len(groups) for b in backends}
    errors: dict[str, list[float | None]] = {b: [None] * len(groups) for b in backends}
    for row in rows:
        index = groups.index(_group(row))
        series[row["backend"]][index] = row["latency_ms"]["p50"]
        errors[row["backend"]][index] = row["latency_ms"]["p90"] - row["latency_ms"]["p50"]
    title = f"In-process latency (p50, bar to p90), {payload['settings']['threads']} threads"
    return grouped_bars(path, groups or ["(no results)"], series, "milliseconds", title, errors)


def _group(row: dict) -> str:
    batch = "" if row["batch"] == 1 else f" b{row['batch']}"
    return f"{row['model']}\n{size_label(row['size'])}{batch}"
