"""One ``Predictor`` interface over every runtime backend (DESIGN §1, §8, §9).

``load_predictor(path)`` picks the implementation from the file's kind in
``clda_deploy.artifacts.ARTIFACT_KINDS`` (``.safetensors`` -> torch, ``.onnx`` -> ONNX Runtime,
``.plan`` -> TensorRT, ...), and ``load_predictor(path, "openvino-bf16")`` one of the other ways
the table lists for that file; each backend lives in its own module here and is imported only when a
file needs it, so ``import clda_deploy.runtime`` stays light and a serving host needs only the
backend it uses. Every predictor maps a preprocessed float32 batch ``[B,3,H,W]``
(``clda_deploy.data.transforms.preprocess_numpy``) to a ``Prediction``: float32 logits
``[B,K,H,W]`` and uint8 trainIds ``[B,H,W]`` (K <= 255, so one byte per pixel is enough and costs
1/8 of int64 to move). ``as_logits_fn`` adapts a predictor to the torch ``LogitsFn`` that
``clda_deploy.inference`` and ``clda_deploy.evaluation`` run.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from clda_deploy.artifacts import ArtifactError, ArtifactKind, artifact_kinds, backends, identify, kinds_of
from clda_deploy.errors import CldaError
from clda_deploy.runtime.metadata import classes_from_metadata

if TYPE_CHECKING:
    from clda_deploy.inference import LogitsFn


class RuntimeLoadError(CldaError, RuntimeError):
    """A model file cannot be loaded; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the model name ``clda_deploy.artifacts.identify`` gives the file, e.g. "student"
    classes: tuple[str, ...]  # class names, index = trainId
    palette: tuple[tuple[int, int, int], ...]  # RGB colour per class
    source: str  # file path the predictor was loaded from
    precision: str = "fp32"  # what the file computes in (its artifact kind)


@dataclass(frozen=True)
class Prediction:
    logits: np.ndarray | None  # float32 [B,K,H,W]; None when only labels were requested
    labels: np.ndarray  # uint8 [B,H,W] trainIds


@runtime_checkable
class Predictor(Protocol):
    backend: str  # a runtime backend of clda_deploy.artifacts: "torch" | "onnxruntime" | "openvino" | "tensorrt"
    device: str  # "cpu" or "cuda:0"
    providers: tuple[str, ...]  # what actually runs (ORT: session.get_providers())
    info: ModelInfo  # info.precision: what the artifact kind says it computes in
    precision_used: str  # what the runtime reports it actually computes in ("int8 + bf16"), or the kind's

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction: ...

    def close(self) -> None: ...


def model_info(
    path: str | Path,
    classes: tuple[str, ...],
    palette: tuple[tuple[int, int, int], ...],
    precision: str | None = None,
) -> ModelInfo:
    """A ``ModelInfo`` named by the file's artifact kind, in ``precision`` (default: the file's own)."""
    artifact = identify(path)
    return ModelInfo(artifact.model, classes, palette, str(path), precision or artifact.precision)


def info_from_metadata(metadata: dict[str, str], path: str | Path, precision: str | None = None) -> ModelInfo:
    """ModelInfo from the ``clda_*`` string metadata written by ``python -m export``."""
    try:
        classes, palette = classes_from_metadata(metadata, path)
    except ValueError as exc:
        raise RuntimeLoadError(str(exc)) from None
    return model_info(path, classes, palette, precision)


def check_precision(path: str | Path, precision: str, offered: tuple[str, ...]) -> str:
    """``precision`` when the predictor offers it, else a ``RuntimeLoadError`` naming the choices."""
    if precision not in offered:
        raise RuntimeLoadError(f"{path}: this backend runs {', '.join(offered)}, not {precision!r}")
    return precision


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a preprocessed batch: float ``[B,3,H,W]`` -> C-contiguous float32."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected preprocessed images float32 [B,3,H,W], got shape {getattr(images, 'shape', None)}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"expected float32 preprocessed images, got dtype {images.dtype} (use preprocess_numpy)")
    return np.ascontiguousarray(images, dtype=np.float32)


def cuda_device(device: str) -> str:
    """``cuda`` / ``auto`` -> ``cuda:0``; an explicit ``cuda:N`` as it is."""
    return "cuda:0" if device in ("cuda", "auto") else device


def predictor_class(import_path: str) -> type:
    """``"module:Class"`` (an artifact kind's ``predictor``) -> the class, imported now."""
    module, _, name = import_path.partition(":")
    return getattr(importlib.import_module(module), name)


def missing_module(kind: ArtifactKind) -> str | None:
    """Why ``kind``'s predictor cannot run here for want of a module, or None; looked up, not
    imported (cheap: the service asks this for every file it finds)."""
    for module in getattr(predictor_class(kind.predictor), "requires", ()):
        if importlib.util.find_spec(module) is None:
            return f"{kind.backend} needs the module '{module}', which is not installed"
    return None


def runnable_kind(path: str | Path, backend: str | None = None) -> ArtifactKind:
    """The row of ``ARTIFACT_KINDS`` that runs ``path``: its own kind, or the one ``backend`` names,
    either as a variant (``openvino-bf16``) or as a runtime backend (``openvino``: its first row)."""
    try:
        own = identify(path).kind
    except ArtifactError as exc:
        raise RuntimeLoadError(str(exc)) from None
    if backend is None:
        return own
    rows = kinds_of(path)
    chosen = [row for row in rows if row.variant == backend] or [row for row in rows if row.backend == backend]
    if chosen:
        return chosen[0]
    if backend not in backends() and backend not in {row.variant for row in artifact_kinds()}:
        problem = f"unknown backend {backend!r}; choose one of {sorted(backends())}"
    else:
        problem = f"backend {backend!r} cannot run a {own.suffix} file (it runs {', '.join(r.variant for r in rows)})"
    raise RuntimeLoadError(f"{path}: {problem}")


def load_predictor(
    path: str | Path, backend: str | None = None, device: str = "auto", threads: int | None = None
) -> Predictor:
    """A predictor for ``path`` chosen by its artifact kind; ``backend`` may name another way to run
    the file, as a runtime backend (``openvino``) or a variant (``openvino-bf16``, ``torch-bf16``).

    ``device``: ``auto`` (GPU when usable), ``cpu``, ``cuda`` or ``cuda:N``. ``threads``: CPU
    threads (ORT, OpenVINO: per model; torch: process-wide ``torch.set_num_threads``).
    """
    path = Path(path)
    kind = runnable_kind(path, backend)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise RuntimeLoadError(f"{path}: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not path.is_file():
        raise RuntimeLoadError(f"model file not found: {path}")
    return predictor_class(kind.predictor)(path, device=device, threads=threads, precision=kind.precision)


def available_backends() -> dict[str, str | None]:
    """backend -> None when usable here, else the reason it is not.

    Each predictor class names the modules it needs (``requires``) and whether it needs a CUDA GPU
    (``needs_cuda``); the modules are imported here, because a broken install fails at import
    (a missing shared library) rather than at lookup.
    """
    reasons: dict[str, str | None] = {}
    for backend in backends():
        kind = next(kind for kind in artifact_kinds() if kind.backend == backend)
        cls = predictor_class(kind.predictor)
        reasons[backend] = None
        for module in getattr(cls, "requires", ()):
            try:
                importlib.import_module(module)
            except Exception as exc:  # a broken install raises more than ImportError (missing .so)
                missing = isinstance(exc, ModuleNotFoundError)
                reasons[backend] = f"{backend}: module '{module}' not installed" if missing else f"{backend}: {exc}"
                break
        if reasons[backend] is None and getattr(cls, "needs_cuda", False):
            import torch

            if not torch.cuda.is_available():
                reasons[backend] = f"{backend}: no CUDA GPU available"
    return reasons


def as_logits_fn(predictor: Predictor) -> LogitsFn:
    """A torch ``LogitsFn`` over ``predictor``: what ``clda_deploy.inference.predict_logits``
    (whole or sliding window) and ``clda_deploy.evaluation.evaluate`` run, so an exported file is
    scored by exactly the code that scores the PyTorch model."""
    import torch

    def logits(images: torch.Tensor) -> torch.Tensor:
        prediction = predictor.predict(images.detach().cpu().numpy(), want_logits=True)
        assert prediction.logits is not None
        return torch.from_numpy(np.asarray(prediction.logits, dtype=np.float32)).to(images.device)

    return logits
