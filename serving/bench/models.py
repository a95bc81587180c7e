"""Which model files a benchmark runs: ``ModelFile`` (name, bench backend label, path), the files
found under a run folder or given as ``--model NAME=PATH``, and opening one as a predictor.

The bench backend label is the file's suffix (a fp16 ONNX file is its own row: same runtime,
other numbers); ``RUNTIME_BACKEND`` maps it to the ``load_predictor`` backend it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.bench.common import BenchError, CommonSettings, option

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


@dataclass(frozen=True)
class ModelSettings(CommonSettings):
    """The flags that choose the model files (latency, accuracy) and name the two roles."""

    run_dir: str = option("--models", help=f"run folder to search (default {DEFAULT_RUN})", default=DEFAULT_RUN,
                          metavar="DIR", recorded=False)  # fmt: skip
    model_specs: tuple[str, ...] = option("--model", help="model file (repeatable)", default=[], action="append",
                                          metavar="NAME=PATH", recorded=False)  # fmt: skip
    backends: tuple[str, ...] = option("--backends", help=f"among {', '.join(BACKENDS)}", default=list(BACKENDS),
                                       nargs="+", metavar="B", recorded=False)  # fmt: skip
    student: str = option("--student", help="name of the student model (default student)", default="student")
    teacher: str = option("--teacher", help="name of the teacher model (default teacher)", default="teacher")


@dataclass(frozen=True)
class ModelFile:
    """One model file to benchmark: ``name`` (teacher, student, ...), bench ``backend`` label, path."""

    name: str
    backend: str
    path: Path

    @property
    def runtime_backend(self) -> str:
        return RUNTIME_BACKEND[self.backend]


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


def open_predictor(model: ModelFile, device: str, threads: int | None) -> Any:
    """``load_predictor`` for one model file (errors propagate: callers decide skip or fail)."""
    try:
        from clda_deploy import runtime
    except ImportError as exc:
        raise BenchError(
            f"clda_deploy.runtime cannot be imported ({exc}); install the project with `make setup`"
        ) from None
    return runtime.load_predictor(str(model.path), backend=model.runtime_backend, device=device, threads=threads)
