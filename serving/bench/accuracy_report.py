"""Markdown and PNG for ``accuracy`` results: the trade-off table, per-class IoU, skipped rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.bench.common import size_label
from serving.bench.report import grouped_bars, machine_line, markdown_table


def _pair(payload: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """Teacher and student results on the reference backend (the first one both ran on)."""
    settings, backend = payload["settings"], payload["reference_backend"]
    rows = {r["model"]: r for r in payload["results"] if r["backend"] == backend}
    return rows.get(settings["teacher"]), rows.get(settings["student"])


def _tradeoff_table(payload: dict[str, Any]) -> str:
    teacher = payload["settings"]["teacher"]
    miou_of = {(r["model"], r["backend"]): r["miou"] for r in payload["results"]}
    p50_of = {(r["model"], r["backend"]): r["latency_ms"]["p50"] for r in payload["results"]}
    rows = []
    for r in payload["results"]:
        base_miou, base_p50 = miou_of.get((teacher, r["backend"])), p50_of.get((teacher, r["backend"]))
        if r["model"] == teacher:  # the reference itself: no change to report
            base_miou = base_p50 = None
        delta = None if base_miou is None else r["miou"] - base_miou
        speedup = None if base_p50 is None else base_p50 / r["latency_ms"]["p50"]
        rows.append(
            [
                r["model"],
                r["backend"],
                r["num_images"],
                r["miou"],
                delta,
                size_label(r["size"]),
                r["latency_ms"]["p50"],
                r["latency_ms"]["p90"],
                speedup,
            ]
        )
    headers = [
        "model",
        "backend",
        "images",
        "mIoU",
        "Δ mIoU vs teacher",
        "size",
        "p50 ms",
        "p90 ms",
        "speedup vs teacher",
    ]
    return markdown_table(headers, rows)


def _per_class_table(payload: dict[str, Any]) -> str:
    teacher, student = _pair(payload)
    if teacher is None or student is None:
        return "(per-class table needs teacher and student on one backend)"
    rows = []
    for name, teacher_iou in teacher["per_class_iou"].items():
        student_iou = student["per_class_iou"].get(name)
        delta = None if teacher_iou is None or student_iou is None else student_iou - teacher_iou
        rows.append([name, teacher_iou, student_iou, delta])
    rows.append(["**mIoU**", teacher["miou"], student["miou"], student["miou"] - teacher["miou"]])
    return markdown_table(["class", "teacher IoU", "student IoU", "Δ"], rows, 1)


def render_markdown(payload: dict[str, Any]) -> str:
    dataset, settings = payload["dataset"], payload["settings"]
    parts = [
        "## Accuracy and latency: student vs teacher",
        "",
        f"`{payload['command']}`  ",
        f"{machine_line(payload['machine'], settings['threads'])}; device {settings['device']}  ",
        f"{dataset['format']} {dataset['root']} ({dataset['split']}), {dataset['evaluated']} of {dataset['images']} "
        f"images, {dataset['eval_mode']} inference; latency = {settings['warmup']} warm-up + {settings['iters']} "
        "timed calls on the first image, batch 1",
        "",
        _tradeoff_table(payload),
        "",
        f"Per-class IoU ({payload['reference_backend'] or 'no common backend'}):",
        "",
        _per_class_table(payload),
    ]
    if payload["skipped"]:
        skipped = [[s["model"], s["backend"], s["reason"]] for s in payload["skipped"]]
        parts += ["", "Skipped:", "", markdown_table(["model", "backend", "reason"], skipped)]
    return "\n".join(parts)


def render_plot(payload: dict[str, Any], path: Path) -> Path:
    """Per-class IoU bars, teacher vs student, on the reference backend."""
    teacher, student = _pair(payload)
    classes = list((teacher or student or {}).get("per_class_iou", {}))
    series = {}
    for label, result in (("teacher", teacher), ("student", student)):
        if result is not None:
            series[f"{label} ({result['miou']:.1f} mIoU)"] = [result["per_class_iou"].get(c) for c in classes]
    title = f"Per-class IoU on {payload['dataset']['split']} ({payload['reference_backend'] or '–'})"
    return grouped_bars(path, classes or ["(no results)"], series, "IoU (%)", title)
