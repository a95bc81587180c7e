"""Writing results: JSON (machine-readable), a markdown table (docs/results.md pastes it; also
printed) and a PNG bar plot. Every file is written to a temporary name in the same folder and
renamed, so an interrupted benchmark never leaves a truncated report under the final name."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clda_deploy.checkpoint import atomic_write


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text if text.endswith("\n") else text + "\n"))


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None as an en dash (a missing value, not zero)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def machine_line(machine: dict[str, Any], threads: int, threads_note: str = "") -> str:
    """``CPU, N threads; load before/after; thread env`` with a warning when the machine was busy:
    on an oversubscribed CPU, PyTorch's OpenMP threads spin-wait for descheduled peers and eager
    latency can grow tenfold while ONNX Runtime's own thread pool barely notices."""
    load = machine.get("load_average_1m") or {}
    before, after = load.get("before"), load.get("after")
    line = f"{machine['cpu']}, {threads} thread{'s' if threads != 1 else ''}{threads_note}"
    if before is not None:
        line += f"; 1-min load average {before:.2f} before, {fmt(after)} after, on {machine['usable_cores']} cores"
    environment = machine.get("thread_env") or {}
    if environment:
        line += "; " + ", ".join(f"{key}={value}" for key, value in environment.items())
    if before is not None and before >= 0.5 * machine["usable_cores"]:
        line += " (**the machine was busy before the run: CPU numbers are pessimistic"
        if "OMP_WAIT_POLICY" not in environment:
            line += "; PyTorch eager suffers most, rerun with OMP_WAIT_POLICY=PASSIVE or on an idle machine"
        line += "**)"
    return line


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub markdown table; numbers go through ``fmt``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(panels: int = 1, width: float = 8.0, height: float = 4.5) -> tuple[Any, list[Any]]:
    """A matplotlib figure with ``panels`` axes side by side, on the Agg backend (no display on
    servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    return fig, list(axes[0])


def draw_bars(
    axes: Any,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    title: str,
    errors: dict[str, Sequence[float | None]] | None = None,
) -> None:
    """A bar per (group, series); missing values leave a gap. ``errors`` are upper error bars (e.g.
    p90 - p50), drawn so a reader sees the spread and not only the median."""
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [math.nan if v is None else v for v in values]
        spread = None
        if errors and name in errors:
            spread = [[0.0] * len(groups), [0.0 if e is None else max(e, 0.0) for e in errors[name]]]
        axes.bar(positions, heights, width=width, label=name, yerr=spread, capsize=3 if spread else 0)
    crowded = len(groups) > 6
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if series:
        axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)


def save_figure(path: Path, fig: Any) -> Path:
    """Write ``fig`` as PNG atomically and release it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def grouped_bars(
    path: Path,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    title: str,
    errors: dict[str, Sequence[float | None]] | None = None,
) -> Path:
    """One PNG with one bar chart (see ``draw_bars``)."""
    width = min(16.0, max(6.0, 0.45 * len(groups) * max(len(series), 1) + 2))
    fig, (axes,) = figure(1, width=width)
    draw_bars(axes, groups, series, ylabel, title, errors)
    return save_figure(path, fig)


def write_outputs(
    out_dir: Path, stem: str, payload: dict[str, Any], markdown: str, plot: Callable[[Path], Path]
) -> dict[str, str]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``; the markdown is printed."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "plot": out_dir / f"{stem}.png"}
    payload = {**payload, "files": {kind: str(path) for kind, path in paths.items()}}
    write_json(paths["json"], payload)
    write_text(paths["markdown"], markdown)
    plot(paths["plot"])
    print(markdown)
    print(f"\nwritten: {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return {kind: str(path) for kind, path in paths.items()}
