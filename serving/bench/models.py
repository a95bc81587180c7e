"""Which model files a benchmark runs: ``ModelFile`` (name, bench backend, path), the files found
under a run folder or given as ``--model NAME=PATH``, and opening one as a predictor.

What a file is comes from ``clda_deploy.artifacts``: the model name, and as the bench's backend
the artifact kind's ``variant`` (a fp16 ONNX file is its own row, ``onnxruntime-fp16``: same
runtime, other numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import (
    ArtifactError,
    ArtifactKind,
    RunLayout,
    artifact_kinds,
    discover_artifacts,
    identify_all,
    kinds_of,
    order_key,
    variants,
)
from serving.bench.common import BenchError, CommonSettings, option
from serving.model_files import ModelFile, model_file

DEFAULT_RUN = str(RunLayout().root)


@dataclass(frozen=True)
class ModelSettings(CommonSettings):
    """The flags that choose the model files (latency, accuracy) and name the two roles."""

    run_dir: str = option("--models", help=f"run folder to search (default {DEFAULT_RUN})", default=DEFAULT_RUN,
                          metavar="DIR", recorded=False)  # fmt: skip
    model_specs: tuple[str, ...] = option("--model", help="model file (repeatable)", default=[], action="append",
                                          metavar="NAME=PATH", recorded=False)  # fmt: skip
    backends: tuple[str, ...] | None = option("--backends", help=f"among {', '.join(dict.fromkeys(variants()))} "
                                              "(default: all)", default=None, nargs="+", metavar="B",
                                              recorded=False)  # fmt: skip
    student: str = option("--student", help="name of the student model (default student)", default="student")
    teacher: str = option("--teacher", help="name of the teacher model (default teacher)", default="teacher")


def bench_file(path: str | Path, name: str | None = None) -> ModelFile:
    """The bench's view of one file (``name`` overrides the file's own model name)."""
    try:
        return model_file(path, name)
    except ArtifactError as exc:
        raise BenchError(str(exc)) from None


def _order(item: ModelFile) -> tuple[int, str, int]:
    return order_key(item.artifact)


def discover_models(run_dir: str | Path) -> tuple[list[ModelFile], list[dict[str, str]]]:
    """Model files of a run folder: ``{teacher,student}/model.safetensors`` (torch) and every known
    model file in ``export/`` (or the folder itself), as ``clda_deploy.artifacts`` finds them.

    Returns the files and one ``{"model", "backend", "reason"}`` entry per backend a model lacks,
    so a report says why a row is missing instead of silently leaving it out.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise BenchError(f"models folder not found: {root} (train and export first: make train export)")
    try:
        files = sorted((ModelFile(artifact) for artifact in discover_artifacts(root)), key=_order)
    except ArtifactError as exc:
        raise BenchError(str(exc)) from None
    if not files:
        raise BenchError(
            f"no model files under {root}: expected teacher/model.safetensors, student/model.safetensors or "
            "export/<name>.onnx (run `make train export`, or pass --model NAME=PATH)"
        )
    missing = []
    for name in dict.fromkeys(item.name for item in files):
        present = {item.backend for item in files if item.name == name}
        for kind in artifact_kinds():
            if kind.variant not in present:
                missing.append({"model": name, "backend": kind.variant, "reason": _missing_reason(root, name, kind)})
    return files, missing


def _missing_reason(root: Path, name: str, kind: ArtifactKind) -> str:
    layout = RunLayout(root)
    if kind.backend == "torch":
        return f"no file {layout.model(name)}"
    precision = kinds_of(layout.exported(name, kind))[0].precision  # the file's own kind: .int8.xml -> int8
    flags = [f"--{precision}"] if precision != "fp32" else []
    flags += ["--tensorrt"] if kind.backend == "tensorrt" else []
    how = f" (export with {' '.join(flags)}{' on a TensorRT machine' if kind.backend == 'tensorrt' else ''})"
    return f"no file {layout.exported(name, kind)}{how if flags else ''}"


def parse_model_specs(specs: list[str]) -> list[ModelFile]:
    """``--model NAME=PATH`` repeats -> model files (the backend comes from the file's kind)."""
    files = []
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        if not sep or not name or not path_text:
            example = RunLayout().exported("student", artifact_kinds()[1])
            raise BenchError(f"--model expects NAME=PATH (e.g. student={example}), got {spec!r}")
        path = Path(path_text)
        if not path.is_file():
            raise BenchError(f"model file not found: {path} (given as --model {spec})")
        files += [ModelFile(artifact) for artifact in identify_all(bench_file(path, name).path, name)]
    return sorted(dict.fromkeys(files), key=_order)


def select_models(
    models_dir: str | None, specs: list[str] | None, backends: list[str] | None
) -> tuple[list[ModelFile], list[dict[str, str]]]:
    """Explicit ``--model`` specs, else discovery in ``models_dir``; filtered to ``backends``."""
    known = list(dict.fromkeys(variants()))
    wanted = list(backends or known)
    unknown = [backend for backend in wanted if backend not in known]
    if unknown:
        raise BenchError(f"unknown backend {unknown[0]!r}; choose from {', '.join(known)}")
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
    return runtime.load_predictor(str(model.path), backend=model.backend, device=device, threads=threads)
