"""``python -m serving.bench latency``: in-process latency per model x backend x size x batch.

The speedups that matter are computed inside one run (same machine, same load, same thread count
for every runtime, so none wins by using more cores): ONNX Runtime over PyTorch eager, student
over teacher, and the student's achieved GFLOP/s against the measured fp32 matmul rate. Every
file is open at once and the timed calls go round-robin (one call of each, then the next round),
so all rows of one size see the same drift of a shared machine and their ratios compare like with
like. Backends that cannot run here are listed as skipped with the reason. The two targets are
informational: they describe the machine that ran the benchmark as much as the models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clda_deploy.profiling import (
    MatmulRate,
    count_flops,
    matmul_rate,
    predictor_details,
    random_images,
    time_round_robin,
)
from clda_deploy.reporting import Bars, Target, fmt, grouped_bars, machine_line, markdown_table
from clda_deploy.statistics import ratio, summarize_timings
from serving.bench.common import (
    BenchError,
    BenchRun,
    Skipped,
    describe,
    option,
    parse_size,
    recorded_settings,
    size_label,
)
from serving.bench.models import ModelSettings, open_predictor
from serving.model_files import ModelFile

SPEEDUP_TARGET = 2.0  # ORT over PyTorch eager, student at the primary size
EFFICIENCY_TARGET_PCT = 40.0  # student's achieved GFLOP/s over the matmul rate


@dataclass(frozen=True)
class LatencySettings(ModelSettings):
    sizes: tuple[tuple[int, int], ...] = option(
        "--sizes", help="input sizes", default=[(512, 1024), (256, 512)], nargs="+", type=parse_size, metavar="HxW"
    )
    batches: tuple[int, ...] = option(
        "--batches", help="batch sizes", default=[1], nargs="+", type=int, metavar="B", positive=True
    )
    warmup: int = option("--warmup", help="untimed calls per row (default 3)", default=3, type=int)
    iters: int = option("--iters", help="timed calls per row (default 20)", default=20, type=int, positive=True)
    matmul_size: int = option(
        "--matmul-size", help="N of the N x N fp32 matmul ceiling", default=2048, type=int, positive=True
    )
    want_logits: bool = option(
        "--logits", help="also fetch logits (default: labels only, as served)", default=False, action="store_true"
    )


@dataclass(frozen=True)
class LatencyRow:
    """One timed (model file, size, batch): the summary, the raw times, and the rates from its p50."""

    model: str
    backend: str
    path: str
    size: tuple[int, int]
    batch: int
    runtime: str
    device: str
    providers: list[str]
    precision_used: str
    latency_ms: dict[str, float | int]
    times_ms: list[float]
    images_per_s: float
    power: dict[str, Any] | None = None  # clda_deploy.power.PowerReading, or its reason for none
    gflop: float | None = None
    achieved_gflops: float | None = None
    efficiency_pct: float | None = None

    @property
    def p50(self) -> float:
        return float(self.latency_ms["p50"])

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size)}


@dataclass(frozen=True)
class Speedup:
    """``baseline`` p50 over ``faster`` p50 in one cell; ``where`` names what the two share."""

    where: tuple[str, str]  # ("model", "student") or ("backend", "onnxruntime")
    size: tuple[int, int]
    batch: int
    baseline: tuple[str, float]  # (label, p50 ms)
    faster: tuple[str, float]

    @property
    def speedup(self) -> float | None:
        return ratio(self.baseline[1], self.faster[1])

    def to_json(self) -> dict[str, Any]:
        return {
            self.where[0]: self.where[1],
            "size": list(self.size),
            "batch": self.batch,
            f"{self.baseline[0]}_p50_ms": self.baseline[1],
            f"{self.faster[0]}_p50_ms": self.faster[1],
            "speedup": self.speedup,
        }


@dataclass(frozen=True)
class LatencyResult:
    settings: LatencySettings
    backends_available: dict[str, Any]
    matmul: MatmulRate
    flops: dict[tuple[str, int, int], int]
    results: list[LatencyRow]
    skipped: list[Skipped]
    ort_vs_torch: list[Speedup] = field(default_factory=list)
    student_vs_teacher: list[Speedup] = field(default_factory=list)
    stem: str = "latency"

    @property
    def primary(self) -> tuple[tuple[int, int], int]:
        return tuple(self.settings.sizes[0]), self.settings.batches[0]  # type: ignore[return-value]

    def speedup_target(self) -> Target | None:
        size, batch = self.primary
        student = (self.settings.student, size, batch)
        speedup = next((s.speedup for s in self.ort_vs_torch if (s.where[1], s.size, s.batch) == student), None)
        return None if speedup is None else Target("ONNX Runtime vs PyTorch eager", speedup, SPEEDUP_TARGET, ">=")

    def efficiency(self) -> tuple[LatencyRow, Target] | None:
        """The student's most efficient fp32 backend at the primary cell, and the efficiency target
        (the ceiling is the fp32 matmul rate: an INT8 or bf16 row can exceed it, which says nothing
        about how well fp32 uses the machine)."""
        size, batch = self.primary
        rows = [r for r in self.results if (r.model, r.size, r.batch) == (self.settings.student, size, batch)]
        rows = [r for r in rows if _precision(r.backend) == "fp32"]
        best = max((r for r in rows if r.efficiency_pct is not None), key=lambda r: r.efficiency_pct, default=None)
        if best is None:
            return None
        return best, Target("student efficiency", best.efficiency_pct, EFFICIENCY_TARGET_PCT, ">=", unit="%")

    def targets(self) -> list[Target]:
        efficiency = self.efficiency()
        return [t for t in (self.speedup_target(), efficiency and efficiency[1]) if t is not None]

    def to_json(self) -> dict[str, Any]:
        speedup, efficiency = self.speedup_target(), self.efficiency()
        size, batch = self.primary
        headline = {
            "ort_vs_torch_speedup": None
            if speedup is None
            else {"speedup": speedup.value, "target": speedup.threshold, "met": speedup.met},
            "student_efficiency": None
            if efficiency is None
            else {
                "backend": efficiency[0].backend,
                "achieved_gflops": efficiency[0].achieved_gflops,
                "efficiency_pct": efficiency[1].value,
                "target_pct": efficiency[1].threshold,
                "met": efficiency[1].met,
            },
        }
        return {
            "settings": recorded_settings(self.settings),
            "backends_available": self.backends_available,
            "matmul": self.matmul.to_json(),
            "flops": [
                {"model": m, "size": [h, w], "flops": f, "gflop": f / 1e9} for (m, h, w), f in self.flops.items()
            ],
            "results": [row.to_json() for row in self.results],
            "skipped": [entry.to_json() for entry in self.skipped],
            "ratios": {
                "primary": {"size": list(size), "batch": batch, "model": self.settings.student},
                "ort_vs_torch": [entry.to_json() for entry in self.ort_vs_torch],
                "student_vs_teacher": [entry.to_json() for entry in self.student_vs_teacher],
                "headline": headline,
            },
        }

    def markdown(self, run: BenchRun) -> str:
        return render_markdown(self, run)

    def plot(self, path: Path) -> Path:
        return render_plot(self, path)


def _precision(variant: str) -> str:
    from clda_deploy.artifacts import ArtifactError, kind_of_variant

    try:
        return kind_of_variant(variant).precision
    except ArtifactError:
        return "fp32"


def model_flops(files: list[ModelFile], settings: LatencySettings) -> dict[tuple[str, int, int], int]:
    """FLOPs at batch 1 per (model, height, width), counted on each model's PyTorch file."""
    from clda_deploy import load_segmenter

    counts = {}
    for item in files:
        if item.backend != "torch":
            continue
        model = load_segmenter(str(item.path))
        for height, width in settings.sizes:
            counts[(item.name, height, width)] = count_flops(model, height, width)
    return counts


def _open_all(files: list[ModelFile], settings: LatencySettings) -> tuple[list[tuple[ModelFile, Any]], list[Skipped]]:
    opened, skipped = [], []
    for item in files:
        try:
            opened.append((item, open_predictor(item, settings.device, settings.threads)))
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            skipped.append(Skipped(item.name, item.backend, describe(exc), path=str(item.path)))
    return opened, skipped


def _measure_cell(
    opened: list[tuple[ModelFile, Any]], size: tuple[int, int], batch: int, settings: LatencySettings, bar: Any
) -> tuple[list[dict], list[Skipped]]:
    """One size x batch of every open file, timed round-robin (dicts of ``LatencyRow`` fields less the rates)."""
    images = random_images(*size, batch)
    bar.set_postfix_str(f"{size_label(size)} b{batch}")
    calls, cells, skipped = {}, {}, []
    for index, (item, predictor) in enumerate(opened):
        cell = {
            "model": item.name,
            "backend": item.backend,
            "path": str(item.path),
            "size": tuple(size),
            "batch": batch,
        }
        try:  # one call first: a size outside a TensorRT profile fails here, not mid-round
            predictor.predict(images, want_logits=settings.want_logits)
        except Exception as exc:
            skipped.append(Skipped(reason=describe(exc), **cell))
            bar.update(settings.warmup + settings.iters)
            continue
        key = str(index)
        calls[key] = lambda p=predictor: p.predict(images, want_logits=settings.want_logits)
        cells[key] = (cell, predictor)
    devices = {key: str(getattr(predictor, "device", "cpu")) for key, (_, predictor) in cells.items()}
    times = time_round_robin(calls, settings.warmup, settings.iters, devices, bar)
    rows = [
        {**cell, **predictor_details(predictor), "latency_ms": summarize_timings(times[key]), "times_ms": times[key],
         "power": energy_per_image(calls[key], devices[key], settings.iters * batch, settings.iters)}
        for key, (cell, predictor) in cells.items()
    ]  # fmt: skip
    return rows, skipped


def energy_per_image(call: Any, device: str, images: int, iters: int) -> dict[str, Any]:
    """Power and energy per image of ``iters`` more calls, where the device has a power sensor
    (NVML, tegrastats); otherwise the reason there is none (clda_deploy.power), nothing measured.
    Separate from the round-robin timing: a sensor's reading cannot be split between variants."""
    from clda_deploy.power import PowerMonitor, PowerReading, power_source

    source, reason = power_source(device)
    if source is None:
        return PowerReading(None, None, None, None, 0, reason).as_dict()
    with PowerMonitor(device) as monitor:
        for _ in range(iters):
            call()
    return monitor.result(images).as_dict()


def with_rates(timing: dict[str, Any], flops: dict[tuple[str, int, int], int], matmul_gflops: float) -> LatencyRow:
    """Images/s and, where FLOPs are known, achieved GFLOP/s and efficiency % (from the p50)."""
    p50_s = timing["latency_ms"]["p50"] / 1000.0
    per_image = flops.get((timing["model"], *timing["size"]))
    if per_image is None:
        return LatencyRow(**timing, images_per_s=timing["batch"] / p50_s)
    gflop = per_image * timing["batch"] / 1e9
    return LatencyRow(
        **timing,
        images_per_s=timing["batch"] / p50_s,
        gflop=gflop,
        achieved_gflops=gflop / p50_s,
        efficiency_pct=100.0 * gflop / p50_s / matmul_gflops,
    )


def speedups(rows: list[LatencyRow], settings: LatencySettings) -> tuple[list[Speedup], list[Speedup]]:
    """ONNX Runtime over PyTorch per model, student over teacher per backend, in every cell."""
    by_key = {(r.model, r.backend, tuple(r.size), r.batch): r for r in rows}
    models = list(dict.fromkeys(r.model for r in rows))
    backends = list(dict.fromkeys(r.backend for r in rows))
    ort_vs_torch, student_vs_teacher = [], []
    for size in map(tuple, settings.sizes):
        for batch in settings.batches:
            for model in models:
                eager, ort = by_key.get((model, "torch", size, batch)), by_key.get((model, "onnxruntime", size, batch))
                if eager and ort:
                    pair = (("torch", eager.p50), ("onnxruntime", ort.p50))
                    ort_vs_torch.append(Speedup(("model", model), size, batch, *pair))
            for backend in backends:
                teacher = by_key.get((settings.teacher, backend, size, batch))
                student = by_key.get((settings.student, backend, size, batch))
                if teacher and student:
                    pair = (("teacher", teacher.p50), ("student", student.p50))
                    student_vs_teacher.append(Speedup(("backend", backend), size, batch, *pair))
    return ort_vs_torch, student_vs_teacher


def _compute_device(device: str) -> str:
    """Where the models run, so the matmul ceiling is measured on the same hardware."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} requested but CUDA is not available here; use --device cpu or auto")
    return device


def run_latency(settings: LatencySettings) -> LatencyResult:
    """Steps: 1 files and device; 2 FLOPs per model/size; 3 matmul rate; 4 time every
    file/size/batch; 5 rates and speedups."""
    from clda_deploy.runtime import available_backends
    from serving.bench.models import select_models

    files, missing = select_models(settings.run_dir, settings.model_specs, settings.backends)
    device = _compute_device(settings.device)
    flops = model_flops(files, settings)
    matmul = matmul_rate(settings.threads, size=settings.matmul_size, device=device)
    timings: list[dict] = []
    skipped = [Skipped(**entry) for entry in missing]
    opened, not_opened = _open_all(files, settings)
    skipped += not_opened
    total = len(opened) * len(settings.sizes) * len(settings.batches) * (settings.warmup + settings.iters)
    try:
        with tqdm(total=total, desc="latency", unit="call", disable=not settings.progress, leave=False) as bar:
            for size in settings.sizes:
                for batch in settings.batches:
                    cell_rows, cell_skipped = _measure_cell(opened, tuple(size), batch, settings, bar)
                    timings += cell_rows
                    skipped += cell_skipped
    finally:
        for _, predictor in opened:
            predictor.close()
    rows = [with_rates(timing, flops, matmul.gflops) for timing in timings]
    ort_vs_torch, student_vs_teacher = speedups(rows, settings)
    return LatencyResult(settings, available_backends(), matmul, flops, rows, skipped, ort_vs_torch, student_vs_teacher)


def _ratio_lines(result: LatencyResult) -> list[str]:
    matmul, (size, batch) = result.matmul, result.primary
    where = f"{result.settings.student}, {size_label(size)}, batch {batch}"
    lines = [f"- fp32 matmul rate ({matmul.size}², threads {matmul.threads}): {matmul.gflops:.1f} GFLOP/s"]
    speedup = result.speedup_target()
    if speedup is None:
        lines.append(f"- ONNX Runtime vs PyTorch eager ({where}): not measured (needs both rows)")
    else:
        lines.append(
            f"- ONNX Runtime vs PyTorch eager ({where}): {speedup.value:.2f}× "
            f"(target ≥ {speedup.threshold:g}×: {speedup.verdict()})"
        )
    efficiency = result.efficiency()
    if efficiency is None:
        lines.append(f"- efficiency ({where}): not measured (needs the model's .safetensors for FLOPs)")
    else:
        row, target = efficiency
        lines.append(
            f"- efficiency ({where}, {row.backend}): {row.achieved_gflops:.1f} GFLOP/s = "
            f"{target.value:.1f}% of the matmul rate (target ≥ {target.threshold:g}%: {target.verdict()})"
        )
    for entry, label in [(e, "student vs teacher") for e in result.student_vs_teacher] + [
        (e, "ONNX Runtime vs PyTorch eager") for e in result.ort_vs_torch
    ]:
        lines.append(
            f"- {label} ({entry.where[1]}, {size_label(entry.size)}, batch {entry.batch}): "
            f"speedup {fmt(entry.speedup)}×"
        )
    return lines


def render_markdown(result: LatencyResult, run: BenchRun) -> str:
    """The table a reader wants first, then the ratios, then what was skipped and why."""
    settings = result.settings
    headers = ["model", "backend", "runs in", "size", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s",
               "GFLOP", "GFLOP/s", "eff. %", "J/img"]  # fmt: skip
    latency = [[r.latency_ms[key] for key in ("p50", "p90", "p99", "mean")] for r in result.results]
    body = [[r.model, r.backend, r.precision_used, size_label(r.size), r.batch, *times, r.images_per_s, r.gflop,
             r.achieved_gflops, r.efficiency_pct, (r.power or {}).get("joules_per_image")]
            for r, times in zip(result.results, latency, strict=True)]  # fmt: skip
    parts = [
        "## In-process latency",
        "",
        f"`{run.command}`  ",
        f"{machine_line(run.machine, settings.threads, ' (every runtime alike)')}  ",
        f"device {settings.device}, {settings.warmup} warm-up + {settings.iters} timed calls per row",
        "",
        markdown_table(headers, body),
        "",
        *_ratio_lines(result),
        *sorted({f"- power: {r.power['reason']}" for r in result.results if r.power and r.power["source"] is None}),
    ]
    if result.skipped:
        skipped = [
            [s.model, s.backend, "all" if s.size is None else size_label(s.size), s.reason] for s in result.skipped
        ]
        parts += ["", "Skipped:", "", markdown_table(["model", "backend", "size", "reason"], skipped)]
    return "\n".join(parts)


def render_plot(result: LatencyResult, path: Path) -> Path:
    """p50 bars per (model, size, batch) and backend, with the p90 as the upper error bar."""

    def group(row: LatencyRow) -> str:
        return f"{row.model}\n{size_label(row.size)}{'' if row.batch == 1 else f' b{row.batch}'}"

    groups = list(dict.fromkeys(group(r) for r in result.results))
    backends = list(dict.fromkeys(r.backend for r in result.results))
    series: dict[str, list[float | None]] = {b: [None] * len(groups) for b in backends}
    errors: dict[str, list[float | None]] = {b: [None] * len(groups) for b in backends}
    for row in result.results:
        series[row.backend][groups.index(group(row))] = row.p50
        errors[row.backend][groups.index(group(row))] = row.latency_ms["p90"] - row.p50
    title = f"In-process latency (p50, bar to p90), {result.settings.threads} threads"
    return grouped_bars(path, Bars(groups or ["(no results)"], series, "milliseconds", title, errors))
