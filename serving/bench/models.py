"""What every benchmark shares: the one-line error type, size parsing, model-file discovery and the
machine description written into every JSON (numbers mean nothing without the machine)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clda_deploy.errors import CldaError

# Bench backend labels (a fp16 ONNX file is its own row: same runtime, other numbers) and the
# ``load_predictor`` backend each one runs on.
BACKENDS = ("torch", "onnxruntime", "onnxruntime-fp16", "tensorrt")
RUNTIME_BACKEND = {
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "onnxruntime-fp16": "onnxruntime",
    "tensorrt": "tensorrt",
}
ROLES = ("teacher", "student")
DEFAULT_RUN = "runs/default"
# Environment variables that change CPU numbers (recorded with every report).
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES")
DEFAULT_OUT = "runs/default/bench"


class BenchError(CldaError, RuntimeError):
    """A problem the user can fix (missing file, unknown backend, server not ready); printed as
    one line and the command exits with status 2."""


@dataclass(frozen=True)
class ModelFile:
    """One model file to benchmark: ``name`` (teacher, student, ...), bench ``backend`` label, path."""

    name: str
    backend: str
    path: Path

    @property
    def runtime_backend(self) -> str:
        return RUNTIME_BACKEND[self.backend]


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> (height, width); an argparse type, so a bad value is a usage error."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"size must be HEIGHTxWIDTH with positive integers, e.g. 512x1024; got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def size_label(size: tuple[int, int] | list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def backend_of(path: Path) -> str:
    """The bench backend a file runs on, from its suffix."""
    name = path.name
    if name.endswith(".safetensors"):
        return "torch"
    if name.endswith(".fp16.onnx"):
        return "onnxruntime-fp16"
    if name.endswith(".onnx"):
        return "onnxruntime"
    if name.endswith(".plan"):
        return "tensorrt"
    raise BenchError(f"{path}: unknown model file type; expected .safetensors, .onnx, .fp16.onnx or .plan")


def _export_name(path: Path) -> str:
    name = path.name
    for suffix in (".fp16.onnx", ".onnx", ".plan"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _model_order(item: ModelFile) -> tuple[int, str, int]:
    role = ROLES.index(item.name) if item.name in ROLES else len(ROLES)
    return role, item.name, BACKENDS.index(item.backend)


def discover_models(run_dir: str | Path) -> tuple[list[ModelFile], list[dict[str, str]]]:
    """Model files of a run folder: ``{teacher,student}/model.safetensors`` (torch) and the export
    files in ``export/`` (or the folder itself): ``<name>.onnx``, ``<name>.fp16.onnx``, ``<name>.plan``.

    Returns the files and one ``{"model", "backend", "reason"}`` entry per backend a model lacks,
    so a report says why a row is missing instead of silently leaving it out.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise BenchError(f"models folder not found: {root} (train and export first: make train export)")
    files = [ModelFile(role, "torch", root / role / "model.safetensors") for role in ROLES]
    files = [item for item in files if item.path.is_file()]
    for folder in (root / "export", root):
        for path in sorted(folder.glob("*.onnx")) + sorted(folder.glob("*.plan")):
            files.append(ModelFile(_export_name(path), backend_of(path), path))
    if not files:
        raise BenchError(
            f"no model files under {root}: expected teacher/model.safetensors, student/model.safetensors or "
            "export/<name>.onnx (run `make train export`, or pass --model NAME=PATH)"
        )
    files = sorted(set(files), key=_model_order)
    missing = []
    for name in dict.fromkeys(item.name for item in files):
        present = {item.backend for item in files if item.name == name}
        for backend in BACKENDS:
            if backend not in present:
                missing.append({"model": name, "backend": backend, "reason": _missing_reason(root, name, backend)})
    return files, missing


def _missing_reason(root: Path, name: str, backend: str) -> str:
    expected = {
        "torch": f"{root / name / 'model.safetensors'}",
        "onnxruntime": f"{root / 'export' / (name + '.onnx')}",
        "onnxruntime-fp16": f"{root / 'export' / (name + '.fp16.onnx')} (export with --fp16)",
        "tensorrt": f"{root / 'export' / (name + '.plan')} (export with --tensorrt on a TensorRT machine)",
    }
    return f"no file {expected[backend]}"


def parse_model_specs(specs: list[str]) -> list[ModelFile]:
    """``--model NAME=PATH`` repeats -> model files (the backend comes from the suffix)."""
    files = []
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        if not sep or not name or not path_text:
            raise BenchError(f"--model expects NAME=PATH (e.g. student=runs/default/export/student.onnx), got {spec!r}")
        path = Path(path_text)
        if not path.is_file():
            raise BenchError(f"model file not found: {path} (given as --model {spec})")
        files.append(ModelFile(name, backend_of(path), path))
    return sorted(dict.fromkeys(files), key=_model_order)


def select_models(
    models_dir: str | None, specs: list[str] | None, backends: list[str] | None
) -> tuple[list[ModelFile], list[dict[str, str]]]:
    """Explicit ``--model`` specs, else discovery in ``models_dir``; filtered to ``backends``."""
    wanted = list(backends or BACKENDS)
    unknown = [backend for backend in wanted if backend not in BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if specs:
        files, missing = parse_model_specs(specs), []
    else:
        files, missing = discover_models(models_dir or DEFAULT_RUN)
    files = [item for item in files if item.backend in wanted]
    missing = [entry for entry in missing if entry["backend"] in wanted]
    if not files:
        raise BenchError(f"no model file for the backends {', '.join(wanted)} (found none among the given models)")
    return files, missing


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``: why a backend or file was skipped, in one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


def default_threads() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "serving.bench", *argv])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(threads: int | None = None, load_before: float | None = None) -> dict[str, Any]:
    """CPU model, core counts, memory, library versions, GPU name and the load average before and
    after the run, for the JSON reports: on a shared machine other processes' load changes every
    CPU number (oversubscribed OpenMP threads in particular), and the reader must be able to see it."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "threads": threads,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": {"before": load_before, "after": load_average()},
        "thread_env": {key: os.environ[key] for key in THREAD_ENV if key in os.environ},
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def repo_root() -> Path:
    """The folder ``python -m serving`` runs from (serving/bench/ sits two levels below it)."""
    return Path(__file__).resolve().parents[2]
