"""``python -m serving.bench latency``: in-process latency per model x backend x size x batch.

The speedups that matter are computed inside one run (same machine, same load, same thread count
for PyTorch and ONNX Runtime, so neither wins by using more cores): ONNX Runtime over PyTorch
eager, student over teacher, and the student's achieved GFLOP/s against the measured fp32 matmul
rate. Backends that cannot run here are listed as skipped with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from serving.bench.common import BenchError, ModelFile, describe
from serving.bench.flops import count_flops, matmul_rate
from serving.bench.stats import ratio, summarize
from serving.bench.timing import make_batch, open_predictor, predictor_details, runtime_module, time_predictor

SPEEDUP_TARGET = 2.0  # ORT over PyTorch eager, student at the primary size
EFFICIENCY_TARGET_PCT = 40.0  # student's achieved GFLOP/s over the matmul rate


@dataclass(frozen=True)
class LatencySettings:
    sizes: tuple[tuple[int, int], ...] = ((512, 1024), (256, 512))
    batches: tuple[int, ...] = (1,)
    warmup: int = 3
    iters: int = 20
    threads: int = 1
    device: str = "cpu"
    want_logits: bool = False
    student: str = "student"
    teacher: str = "teacher"
    progress: bool = True
    matmul_size: int = 2048


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


def _measure_file(item: ModelFile, settings: LatencySettings, bar: Any) -> tuple[list[dict], list[dict]]:
    cells = len(settings.sizes) * len(settings.batches) * (settings.warmup + settings.iters)
    try:
        predictor = open_predictor(item, settings.device, settings.threads)
    except Exception as exc:  # a backend that cannot run here is reported, not fatal
        bar.update(cells)
        return [], [{"model": item.name, "backend": item.backend, "path": str(item.path), "reason": describe(exc)}]
    rows, skipped = [], []
    try:
        for height, width in settings.sizes:
            for batch in settings.batches:
                bar.set_postfix_str(f"{item.name} {item.backend} {height}x{width} b{batch}")
                cell = {
                    "model": item.name,
                    "backend": item.backend,
                    "path": str(item.path),
                    "size": [height, width],
                    "batch": batch,
                }
                try:
                    images = make_batch(height, width, batch)
                    times = time_predictor(
                        predictor, images, settings.warmup, settings.iters, settings.want_logits, bar
                    )
                except Exception as exc:  # e.g. a size outside a TensorRT profile
                    skipped.append({**cell, "reason": describe(exc)})
                    continue
                rows.append({**cell, **predictor_details(predictor), "latency_ms": summarize(times), "times_ms": times})
    finally:
        predictor.close()
    return rows, skipped


def add_throughput(rows: list[dict], flops: dict[tuple[str, int, int], int], matmul_gflops: float) -> None:
    """Images/s and, where FLOPs are known, achieved GFLOP/s and efficiency % (from the p50)."""
    for row in rows:
        p50_s = row["latency_ms"]["p50"] / 1000.0
        row["images_per_s"] = row["batch"] / p50_s
        per_image = flops.get((row["model"], *row["size"]))
        row["gflop"] = None if per_image is None else per_image * row["batch"] / 1e9
        row["achieved_gflops"] = None if per_image is None else row["gflop"] / p50_s
        row["efficiency_pct"] = None if per_image is None else 100.0 * row["achieved_gflops"] / matmul_gflops


def _find(rows: list[dict], model: str, backend: str, size: list[int], batch: int) -> dict | None:
    for row in rows:
        if (row["model"], row["backend"], row["size"], row["batch"]) == (model, backend, list(size), batch):
            return row
    return None


def _p50(row: dict | None) -> float | None:
    return None if row is None else row["latency_ms"]["p50"]


def compute_ratios(rows: list[dict], settings: LatencySettings) -> dict[str, Any]:
    """Speedups within this run; ``headline`` holds the two targets at the primary size/batch."""
    cells = [(list(size), batch) for size in settings.sizes for batch in settings.batches]
    models = list(dict.fromkeys(row["model"] for row in rows))
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    ort_vs_torch, student_vs_teacher = [], []
    for size, batch in cells:
        for model in models:
            eager, ort = _find(rows, model, "torch", size, batch), _find(rows, model, "onnxruntime", size, batch)
            if eager and ort:
                ort_vs_torch.append(
                    {
                        "model": model,
                        "size": size,
                        "batch": batch,
                        "torch_p50_ms": _p50(eager),
                        "onnxruntime_p50_ms": _p50(ort),
                        "speedup": ratio(_p50(eager), _p50(ort)),
                    }
                )
        for backend in backends:
            teacher = _find(rows, settings.teacher, backend, size, batch)
            student = _find(rows, settings.student, backend, size, batch)
            if teacher and student:
                student_vs_teacher.append(
                    {
                        "backend": backend,
                        "size": size,
                        "batch": batch,
                        "teacher_p50_ms": _p50(teacher),
                        "student_p50_ms": _p50(student),
                        "speedup": ratio(_p50(teacher), _p50(student)),
                    }
                )
    primary_size, primary_batch = cells[0]
    return {
        "primary": {"size": primary_size, "batch": primary_batch, "model": settings.student},
        "ort_vs_torch": ort_vs_torch,
        "student_vs_teacher": student_vs_teacher,
        "headline": _headline(rows, ort_vs_torch, settings.student, primary_size, primary_batch),
    }


def _headline(rows: list[dict], ort_vs_torch: list[dict], student: str, size: list[int], batch: int) -> dict[str, Any]:
    speedup = next(
        (e["speedup"] for e in ort_vs_torch if (e["model"], e["size"], e["batch"]) == (student, size, batch)), None
    )
    candidates = [
        r
        for r in rows
        if (r["model"], r["size"], r["batch"]) == (student, size, batch) and r["efficiency_pct"] is not None
    ]
    best = max(candidates, key=lambda r: r["efficiency_pct"], default=None)
    efficiency = None
    if best is not None:
        efficiency = {
            "backend": best["backend"],
            "achieved_gflops": best["achieved_gflops"],
            "efficiency_pct": best["efficiency_pct"],
            "target_pct": EFFICIENCY_TARGET_PCT,
            "met": best["efficiency_pct"] >= EFFICIENCY_TARGET_PCT,
        }
    return {
        "ort_vs_torch_speedup": None
        if speedup is None
        else {"speedup": speedup, "target": SPEEDUP_TARGET, "met": speedup >= SPEEDUP_TARGET},
        "student_efficiency": efficiency,
    }


def _compute_device(device: str) -> str:
    """Where the models run, so the matmul ceiling is measured on the same hardware."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} requested but CUDA is not available here; use --device cpu or auto")
    return device


def run_latency(files: list[ModelFile], missing: list[dict], settings: LatencySettings) -> dict[str, Any]:
    """Steps: 1 device; 2 FLOPs per model/size; 3 matmul rate; 4 time every file/size/batch; 5 ratios."""
    device = _compute_device(settings.device)
    flops = model_flops(files, settings)
    matmul = matmul_rate(settings.threads, size=settings.matmul_size, device=device)
    total = len(files) * len(settings.sizes) * len(settings.batches) * (settings.warmup + settings.iters)
    rows: list[dict] = []
    skipped: list[dict] = [dict(entry) for entry in missing]
    with tqdm(total=total, desc="latency", unit="call", disable=not settings.progress, leave=False) as bar:
        for item in files:
            file_rows, file_skipped = _measure_file(item, settings, bar)
            rows += file_rows
            skipped += file_skipped
    add_throughput(rows, flops, matmul["gflops"])
    flop_table = [{"model": m, "size": [h, w], "flops": f, "gflop": f / 1e9} for (m, h, w), f in flops.items()]
    return {
        "settings": {**asdict(settings), "sizes": [list(s) for s in settings.sizes], "batches": list(settings.batches)},
        "backends_available": runtime_module().available_backends(),
        "matmul": matmul,
        "flops": flop_table,
        "results": rows,
        "skipped": skipped,
        "ratios": compute_ratios(rows, settings),
    }
