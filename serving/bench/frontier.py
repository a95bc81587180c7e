"""``python -m serving.bench frontier``: the accuracy-latency frontier of every variant.

It measures nothing itself: it joins what two measurements wrote, so each number has one source.
Latency comes from ``serving.bench latency`` (``bench/latency.json``: every variant timed
round-robin in one run, at one size and batch); accuracy and the gate verdict come from the parity
gate (``export/parity.json``: target-val mIoU of each variant and its verdict against PyTorch
fp32, which is the ``torch`` row). A variant is on the Pareto front when no gated variant is both
at least as fast and at least as accurate, and better in one of the two (per model: each model's
own trade-off curve; the student is faster and more accurate than every teacher variant here). The two speed targets of
issue #15 are informational here, as for every benchmark: the student's fastest gate-passing
variant against the student's and the teacher's ONNX Runtime fp32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import PARITY_INDEX, RunLayout
from clda_deploy.reporting import Target, markdown_table
from clda_deploy.statistics import ratio
from serving.bench.common import BenchError, BenchRun, CommonSettings, option, parse_size, size_label

BASELINE = "onnxruntime"  # the fp32 ONNX Runtime row both speedups are measured against
STUDENT_SPEEDUP_TARGET = 2.0  # fastest passing student variant over the student's ONNX Runtime fp32
STUDENT_SPEEDUP_GOAL = 3.0
TEACHER_SPEEDUP_TARGET = 3.5  # ... over the teacher's ONNX Runtime fp32
DEFAULT_LAYOUT = RunLayout()


@dataclass(frozen=True)
class FrontierSettings(CommonSettings):
    latency: str = option("--latency", help="latency JSON of serving.bench latency",
                          default=str(DEFAULT_LAYOUT.bench / "latency.json"), metavar="JSON")  # fmt: skip
    parity: str = option("--parity", help="parity.json of python -m export",
                         default=str(DEFAULT_LAYOUT.export / PARITY_INDEX), metavar="JSON")  # fmt: skip
    size: tuple[int, int] = option("--size", help="the latency rows' input size (default 512x1024)",
                                   default=(512, 1024), type=parse_size, metavar="HxW")  # fmt: skip
    batch: int = option("--batch", help="the latency rows' batch (default 1)", default=1, type=int, positive=True)
    student: str = option("--student", help="name of the student model (default student)", default="student")
    teacher: str = option("--teacher", help="name of the teacher model (default teacher)", default="teacher")


@dataclass(frozen=True)
class FrontierRow:
    model: str
    variant: str
    precision_used: str
    p50_ms: float
    miou: float | None
    delta_miou: float | None
    worst_class_drop: float | None
    gate: str  # "reference" | "pass" | "FAIL" | "not gated"
    path: str
    sha256: str
    vs_student: float | None = None  # student ORT fp32 p50 / this p50
    vs_teacher: float | None = None
    pareto: bool = False

    @property
    def usable(self) -> bool:
        """Gated and passed (or the PyTorch reference itself): what may be served."""
        return self.gate in ("reference", "pass") and self.miou is not None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_json(path: Path, what: str, how: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{what} not found: {path} ({how})") from None
    except (OSError, ValueError) as exc:
        raise BenchError(f"{what} {path} is unreadable: {exc}") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return "missing"
    return digest.hexdigest()


def pareto_front(rows: list[FrontierRow]) -> set[int]:
    """Indexes of the usable rows no other usable row *of the same model* dominates (faster-or-equal
    and at least as accurate, strictly better in one): each model's own trade-off curve."""
    front = set()
    for model in dict.fromkeys(row.model for row in rows):
        front |= _front([(index, row) for index, row in enumerate(rows) if row.model == model and row.usable])
    return front


def _front(usable: list[tuple[int, FrontierRow]]) -> set[int]:
    front = set()
    for index, row in usable:
        dominated = any(
            other.p50_ms <= row.p50_ms
            and other.miou >= row.miou  # type: ignore[operator]
            and (other.p50_ms < row.p50_ms or other.miou > row.miou)  # type: ignore[operator]
            for _, other in usable
        )
        if not dominated:
            front.add(index)
    return front


def frontier_rows(latency: dict[str, Any], parity: dict[str, Any], settings: FrontierSettings) -> list[FrontierRow]:
    """One row per latency result at ``settings.size`` / ``batch``, with its parity record."""
    wanted = [r for r in latency.get("results", []) if tuple(r["size"]) == tuple(settings.size)]
    wanted = [r for r in wanted if r["batch"] == settings.batch]
    if not wanted:
        raise BenchError(
            f"no latency rows at {size_label(settings.size)} batch {settings.batch} in the latency JSON "
            "(run serving.bench latency with that --sizes / --batches)"
        )
    baseline = {r["model"]: r["latency_ms"]["p50"] for r in wanted if r["backend"] == BASELINE}
    rows = []
    for result in wanted:
        record = parity.get(result["model"], {})
        if result["backend"] == "torch":
            entry = {"miou": record.get("reference", {}).get("miou"), "delta_miou": 0.0, "worst_class_drop": 0.0}
            gate = "reference" if entry["miou"] is not None else "not gated"
        else:
            entry = record.get("backends", {}).get(result["backend"], {})
            gate = "not gated" if not entry else ("pass" if entry.get("passed") else "FAIL")
        p50 = result["latency_ms"]["p50"]
        rows.append(
            FrontierRow(
                model=result["model"],
                variant=result["backend"],
                precision_used=str(result.get("precision_used", "?")),
                p50_ms=p50,
                miou=entry.get("miou"),
                delta_miou=entry.get("delta_miou"),
                worst_class_drop=entry.get("worst_class_drop"),
                gate=gate,
                path=result["path"],
                sha256=file_sha256(result["path"]),
                vs_student=ratio(baseline.get(settings.student), p50),
                vs_teacher=ratio(baseline.get(settings.teacher), p50),
            )
        )
    front = pareto_front(rows)
    return [
        dataclasses.replace(row, pareto=index in front)
        for index, row in sorted(
            enumerate(rows), key=lambda item: (item[1].model != settings.teacher, item[1].model, item[1].p50_ms)
        )  # fmt: skip
    ]


@dataclass(frozen=True)
class FrontierResult:
    settings: FrontierSettings
    rows: list[FrontierRow]
    latency_command: str
    parity_file: str
    stem: str = "frontier"
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def fastest_student(self) -> FrontierRow | None:
        passing = [r for r in self.rows if r.model == self.settings.student and r.usable]
        return min(passing, key=lambda r: r.p50_ms, default=None)

    def targets(self) -> list[Target]:
        best = self.fastest_student()
        vs_student = None if best is None else best.vs_student
        vs_teacher = None if best is None else best.vs_teacher
        return [
            Target("fastest passing student vs student ONNX Runtime fp32", vs_student, STUDENT_SPEEDUP_TARGET, ">=",
                   unit="×"),
            Target("fastest passing student vs teacher ONNX Runtime fp32", vs_teacher, TEACHER_SPEEDUP_TARGET, ">=",
                   unit="×"),
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        best = self.fastest_student()
        return {
            "settings": {
                "size": list(self.settings.size),
                "batch": self.settings.batch,
                "student": self.settings.student,
                "teacher": self.settings.teacher,
            },  # fmt: skip
            "sources": {"latency_command": self.latency_command, "parity": self.parity_file},
            "rows": [row.to_json() for row in self.rows],
            "fastest_passing_student": None if best is None else best.variant,
            "targets": [target.to_json() for target in self.targets()],
            "skipped": self.skipped,
        }

    def markdown(self, run: BenchRun) -> str:
        headers = ["model", "variant", "runs in", "p50 ms", "× vs student ORT fp32", "× vs teacher ORT fp32",
                   "mIoU", "ΔmIoU", "worst class Δ", "gate", "Pareto"]  # fmt: skip
        body = [
            [r.model, r.variant, r.precision_used, r.p50_ms, r.vs_student, r.vs_teacher, r.miou, r.delta_miou,
             None if r.worst_class_drop is None else -r.worst_class_drop, r.gate, "●" if r.pareto else ""]
            for r in self.rows
        ]  # fmt: skip
        best = self.fastest_student()
        lines = [
            "## Accuracy-latency frontier",
            "",
            f"`{run.command}`  ",
            f"latency: `{self.latency_command}` ({size_label(self.settings.size)}, batch {self.settings.batch}); "
            f"accuracy and gate: {self.parity_file} (target-val mIoU; ΔmIoU against PyTorch fp32)",
            "",
            markdown_table(headers, body),
            "",
            f"- fastest gate-passing student variant: {best.variant if best else 'none'}",
            *[f"- {target.describe()}" for target in self.targets()],
            "",
            "Model files (sha256): "
            + "; ".join(
                f"`{Path(r.path).name}` {r.sha256[:12]}" for r in {r.path: r for r in self.rows}.values()
            ),  # fmt: skip
        ]
        return "\n".join(lines)

    def plot(self, path: Path) -> Path:
        return render_frontier(self, path)


def _short(path: str) -> str:
    """``student/model.safetensors`` for a run folder's checkpoint (the name alone is ambiguous), else the name."""
    path_ = Path(path)
    return f"{path_.parent.name}/{path_.name}" if path_.name == "model.safetensors" else path_.name


def render_frontier(result: FrontierResult, path: Path) -> Path:
    """One panel per model: mIoU against p50 latency (log scale), gate failures hollow, the model's
    Pareto front as a dashed step line; the panels share the latency axis."""
    from clda_deploy.reporting import figure, save_figure

    models = list(dict.fromkeys(r.model for r in result.rows)) or ["(no results)"]
    fig, panels = figure(len(models), width=7.0, height=5.0)
    times = [r.p50_ms for r in result.rows] or [1.0]
    for axes, model, colour in zip(panels, models, ("C1", "C0", "C2", "C3"), strict=False):
        rows = sorted((r for r in result.rows if r.model == model and r.miou is not None), key=lambda r: r.p50_ms)
        for usable in (True, False):
            chosen = [r for r in rows if r.usable == usable]
            if chosen:
                axes.scatter(
                    [r.p50_ms for r in chosen],
                    [r.miou for r in chosen],
                    color=colour,
                    facecolors=colour if usable else "none",
                    label="gate passed" if usable else "gate failed",
                )
        for index, row in enumerate(rows):  # alternate label sides so neighbours do not overprint
            axes.annotate(row.variant, (row.p50_ms, row.miou), fontsize=7, xytext=(4, 6 if index % 2 else -10),
                          textcoords="offset points")  # fmt: skip
        front = [r for r in rows if r.pareto]
        if front:
            axes.step([r.p50_ms for r in front], [r.miou for r in front], where="post", color="0.4", linewidth=1,
                      linestyle="--", label="Pareto front")  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlim(min(times) * 0.8, max(times) * 1.5)
        axes.set_xlabel(f"p50 latency, ms ({size_label(result.settings.size)}, batch {result.settings.batch})")
        axes.set_ylabel("target-val mIoU")
        axes.set_title(f"{model}: accuracy vs latency, backend x precision")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="lower right")
    return save_figure(path, fig)


def run_frontier(settings: FrontierSettings) -> FrontierResult:
    latency = _read_json(Path(settings.latency), "latency results", "run python -m serving.bench latency first")
    parity = _read_json(Path(settings.parity), "parity index", "run python -m export (make export) first")
    rows = frontier_rows(latency, parity, settings)
    return FrontierResult(settings, rows, str(latency.get("command", settings.latency)), settings.parity,
                          skipped=list(latency.get("skipped", [])))  # fmt: skip
