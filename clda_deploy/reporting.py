"""Writing results: JSON (machine-readable), markdown tables (also printed), PNG bar plots, the
generated sections of docs/results.md, and the acceptance ``Target`` records a command checks.

Every file is written to a temporary name in the same folder and renamed, so an interrupted
measurement never leaves a truncated report under the final name. A docs section is delimited by
``<!-- KEY:start -->`` / ``<!-- KEY:end -->``: a command replaces its own section and leaves the
hand-written text around it alone; a section not there yet is appended under its heading.
The writers import ``atomic_write`` (and matplotlib) when they write: building a report, or a
command only parsing its flags, does not import torch.

A ``Target`` is either a *gate* (a failure changes the command's exit status: parity, gpu-check)
or *informational* (reported as met / NOT met: benchmark targets measured on whatever machine
runs them, where a busy CPU must not fail ``make bench``).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

GATE_FAILED = 3  # exit status of a command whose gate failed (the parity gate's, DESIGN §8)
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """``value comparison threshold`` (e.g. overhead <= 15 %). ``value`` None: not measured, which
    never meets a target. ``gate``: a failure sets the exit status (see ``gate_status``)."""

    name: str
    value: float | None
    threshold: float
    comparison: Literal[">=", "<=", ">", "<"]
    gate: bool = False
    unit: str = ""

    def __post_init__(self) -> None:
        if self.comparison not in _COMPARE:
            raise ValueError(f"comparison must be one of {', '.join(_COMPARE)}, got {self.comparison!r}")

    @property
    def met(self) -> bool:
        return self.value is not None and bool(_COMPARE[self.comparison](self.value, self.threshold))

    @property
    def kind(self) -> str:
        return "gate" if self.gate else "informational"

    def verdict(self) -> str:
        return "met" if self.met else "NOT met"

    def describe(self) -> str:
        """``name: value unit (target >= threshold unit: met)``, the line a report prints."""
        value = "not measured" if self.value is None else f"{self.value:.5g}{self.unit}"
        target = f"{self.comparison} {self.threshold:g}{self.unit}"
        return f"{self.name}: {value} (target {target}: {self.verdict()}, {self.kind})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold,
                "comparison": self.comparison, "kind": self.kind, "met": self.met}  # fmt: skip


def gate_status(targets: Iterable[Target]) -> int:
    """The exit status the targets call for: ``GATE_FAILED`` when a gate is not met, else 0."""
    return GATE_FAILED if any(target.gate and not target.met for target in targets) else 0


def write_json(path: Path, payload: Any) -> Path:
    """``payload`` as indented JSON; NaN and infinity are refused (they are not JSON)."""
    from clda_deploy.checkpoint import atomic_write

    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: Path, text: str) -> Path:
    """``text`` with exactly one final newline."""
    from clda_deploy.checkpoint import atomic_write

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


@dataclass(frozen=True)
class Bars:
    """One bar chart: a bar per (group, series); a None value leaves a gap. ``errors`` are upper
    error bars (e.g. p90 - p50), drawn so a reader sees the spread and not only the median."""

    groups: Sequence[str]
    series: dict[str, Sequence[float | None]]
    ylabel: str
    title: str
    errors: dict[str, Sequence[float | None]] | None = None


def draw_bars(axes: Any, bars: Bars) -> None:
    """``bars`` on matplotlib ``axes``."""
    groups, series, errors = bars.groups, bars.series, bars.errors
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
    axes.set_ylabel(bars.ylabel)
    axes.set_title(bars.title)
    if series:
        axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)


def save_figure(path: Path, fig: Any) -> Path:
    """Write ``fig`` as PNG atomically and release it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    from clda_deploy.checkpoint import atomic_write

    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def grouped_bars(path: Path, bars: Bars) -> Path:
    """One PNG with one bar chart, as wide as its bars need."""
    width = min(16.0, max(6.0, 0.45 * len(bars.groups) * max(len(bars.series), 1) + 2))
    fig, (axes,) = figure(1, width=width)
    draw_bars(axes, bars)
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


def section_markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def write_section(path: str | Path, key: str, heading: str, body: str) -> Path:
    """Put ``body`` between the ``key`` markers of ``path`` (appended under ``## heading`` if absent)."""
    from clda_deploy.checkpoint import atomic_write

    path = Path(path)
    start, end = section_markers(key)
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = f"{text.rstrip()}\n\n## {heading}\n\n{block}\n".lstrip()
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_table_section(path: str | Path, key: str, table: str, fallback_heading: str) -> Path:
    """``write_section`` for a table whose first line is its own ``## heading``: it becomes the
    section's heading (a table without one goes under ``fallback_heading``)."""
    first, _, rest = table.strip().partition("\n")
    if first.startswith("#"):
        return write_section(path, key, first.lstrip("#").strip(), rest)
    return write_section(path, key, fallback_heading, table)
