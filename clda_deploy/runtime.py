"""One ``Predictor`` interface over PyTorch, ONNX Runtime and TensorRT (DESIGN §1, §8, §9).

``load_predictor(path)`` picks the implementation by file type: ``.safetensors`` -> torch,
``.onnx`` -> ONNX Runtime, ``.plan``/``.engine`` -> TensorRT. Every predictor maps a preprocessed
float32 batch ``[B,3,H,W]`` (``clda_deploy.data.transforms.preprocess_numpy``) to a ``Prediction``:
float32 logits ``[B,K,H,W]`` and uint8 trainIds ``[B,H,W]`` (K <= 255, so one byte per pixel is
enough and costs 1/8 of int64 to move). torch, onnxruntime and tensorrt are imported lazily, so
``import clda_deploy.runtime`` stays light and a serving host needs only the backend it uses.

Model metadata (class names, palette, ...) travels inside the ONNX file as ``metadata_props`` and
next to a TensorRT engine as the ``<engine>.json`` sidecar; the keys are the ``META_*`` constants.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from clda_deploy.errors import CldaError

log = logging.getLogger(__name__)

META_NAME, META_ROLE, META_CLASSES, META_PALETTE = "clda_name", "clda_role", "clda_classes", "clda_palette"
META_PREPROCESSING, META_CONFIG, META_PRECISION = "clda_preprocessing", "clda_config", "clda_precision"
META_SOURCE, META_SOURCE_SHA256, META_LABELS_DTYPE = "clda_source", "clda_source_sha256", "clda_labels_dtype"
BACKEND_BY_SUFFIX = {".safetensors": "torch", ".onnx": "onnxruntime", ".plan": "tensorrt", ".engine": "tensorrt"}
ORT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class RuntimeLoadError(CldaError, RuntimeError):
    """A model file cannot be loaded; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # model name, e.g. "student" (file stem without .fp16)
    classes: tuple[str, ...]  # class names, index = trainId
    palette: tuple[tuple[int, int, int], ...]  # RGB colour per class
    source: str  # file path the predictor was loaded from


@dataclass(frozen=True)
class Prediction:
    logits: np.ndarray | None  # float32 [B,K,H,W]; None when only labels were requested
    labels: np.ndarray  # uint8 [B,H,W] trainIds


@runtime_checkable
class Predictor(Protocol):
    backend: str  # "torch" | "onnxruntime" | "tensorrt"
    device: str  # "cpu" or "cuda:0"
    providers: tuple[str, ...]  # what actually runs (ORT: session.get_providers())
    info: ModelInfo

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction: ...

    def close(self) -> None: ...


def model_name(path: str | Path) -> str:
    """``runs/x/student.fp16.onnx`` -> ``student``."""
    stem = Path(path).name.split(".")[0]
    return stem or Path(path).stem


def class_table(num_classes: int) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette for ``num_classes`` trainIds (Cityscapes' 19, else generic)."""
    from clda_deploy.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    if num_classes == len(CITYSCAPES_CLASSES):
        return CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    names = tuple(f"class{index}" for index in range(num_classes))
    palette = tuple(CITYSCAPES_PALETTE[index % len(CITYSCAPES_PALETTE)] for index in range(num_classes))
    return names, palette


def info_from_metadata(metadata: dict[str, str], path: str | Path) -> ModelInfo:
    """ModelInfo from the ``clda_*`` string metadata written by ``python -m export``."""
    missing = [key for key in (META_CLASSES, META_PALETTE) if key not in metadata]
    if missing:
        raise RuntimeLoadError(
            f"{path} has no {', '.join(missing)} metadata: it was not written by `python -m export`, "
            "so class names and colours are unknown; re-export it from the model.safetensors"
        )
    try:
        classes = tuple(str(name) for name in json.loads(metadata[META_CLASSES]))
        palette = tuple((int(r), int(g), int(b)) for r, g, b in json.loads(metadata[META_PALETTE]))
    except (ValueError, TypeError) as exc:
        raise RuntimeLoadError(f"{path}: invalid class/palette metadata ({exc})") from None
    if len(classes) != len(palette):
        raise RuntimeLoadError(f"{path}: {len(classes)} class names but {len(palette)} palette colours")
    return ModelInfo(model_name(path), classes, palette, str(path))


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a preprocessed batch: float ``[B,3,H,W]`` -> C-contiguous float32."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected preprocessed images float32 [B,3,H,W], got shape {getattr(images, 'shape', None)}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"expected float32 preprocessed images, got dtype {images.dtype} (use preprocess_numpy)")
    return np.ascontiguousarray(images, dtype=np.float32)


def _cuda_device(device: str) -> str:
    return "cuda:0" if device in ("cuda", "auto") else device


class TorchPredictor:
    """A ``model.safetensors`` run by PyTorch. ``threads`` calls ``torch.set_num_threads``, which is
    process-wide (it also changes every other torch model in this process)."""

    backend = "torch"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        import torch

        from clda_deploy.checkpoint import CheckpointError, load_segmenter, read_config

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeLoadError(f"{path}: device {device!r} requested but CUDA is not available")
        self.device = "cpu" if device == "cpu" else _cuda_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            self.model = load_segmenter(path, device=self.device)
            names, palette = class_table(read_config(path).model.num_classes)
        except CheckpointError as exc:
            raise RuntimeLoadError(str(exc)) from None
        self.providers = (f"torch-{self.device.split(':')[0]}",)
        self.info = ModelInfo(model_name(path), names, palette, str(path))

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        import torch

        batch = torch.from_numpy(check_images(images)).to(self.device)
        with torch.inference_mode():
            logits = self.model(batch).float()
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return Prediction(logits.cpu().numpy() if want_logits else None, labels)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def ort_providers(device: str, available: list[str]) -> list[Any]:
    """Execution providers to request, best first: TensorRT -> CUDA -> CPU among ``available``."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":")[1]) if ":" in device else 0
    gpu = [p for p in ORT_PROVIDER_ORDER[:2] if p in available]
    if device.startswith("cuda") and not gpu:
        raise RuntimeLoadError(f"device {device!r} requested but onnxruntime offers only {available}")
    return [(p, {"device_id": device_id}) for p in gpu] + ["CPUExecutionProvider"]


class OnnxRuntimePredictor:
    """An exported ``<name>.onnx`` (or ``.fp16.onnx``) run by ONNX Runtime; ``threads`` sets
    ``intra_op_num_threads`` for this session only. With the TensorRT provider, ORT builds an engine
    on the first call of each new input shape (slow once); a ``.plan`` avoids that."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeLoadError(f"{path}: onnxruntime is not installed ({exc}); pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        requested = ort_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise RuntimeLoadError(f"{path} is not a loadable ONNX model ({exc})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = info_from_metadata(self.metadata, path)
        self.providers = tuple(self.session.get_providers())
        self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else _cuda_device(device)
        # ORT silently falls back to the CPU when a GPU provider fails to initialise: say what runs.
        log.info("%s: onnxruntime providers in use: %s", path, ", ".join(self.providers))
        outputs = {output.name for output in self.session.get_outputs()}
        if not {"logits", "labels"} <= outputs:
            raise RuntimeLoadError(f"{path}: expected outputs 'logits' and 'labels', found {sorted(outputs)}")

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        names = ["logits", "labels"] if want_logits else ["labels"]
        results = self.session.run(names, {"image": check_images(images)})
        labels = results[-1].astype(np.uint8, copy=False)
        return Prediction(results[0] if want_logits else None, labels)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def _tensorrt_predictor(path: str | Path, device: str = "auto", threads: int | None = None) -> Predictor:
    from clda_deploy.tensorrt_runtime import TensorRTPredictor  # the TensorRT runner lives apart

    return TensorRTPredictor(path, device=device, threads=threads)


_PREDICTORS = {"torch": TorchPredictor, "onnxruntime": OnnxRuntimePredictor, "tensorrt": _tensorrt_predictor}


def load_predictor(
    path: str | Path, backend: str | None = None, device: str = "auto", threads: int | None = None
) -> Predictor:
    """A predictor for ``path`` chosen by its suffix (``backend`` may name it explicitly).

    ``device``: ``auto`` (GPU when usable), ``cpu``, ``cuda`` or ``cuda:N``. ``threads``: CPU
    threads (ORT: per session; torch: process-wide ``torch.set_num_threads``).
    """
    path, problem = Path(path), None
    suffix = path.suffix.lower()
    natural = BACKEND_BY_SUFFIX.get(suffix)
    if natural is None:
        problem = f"unknown model file type {suffix!r}; expected one of {sorted(BACKEND_BY_SUFFIX)}"
    elif backend is not None and backend not in _PREDICTORS:
        problem = f"unknown backend {backend!r}; choose one of {sorted(_PREDICTORS)}"
    elif backend is not None and backend != natural:
        problem = f"backend {backend!r} cannot run a {suffix} file (it runs {natural})"
    elif device not in ("auto", "cpu") and not device.startswith("cuda"):
        problem = f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
    if problem is not None:
        raise RuntimeLoadError(f"{path}: {problem}")
    if not path.is_file():
        raise RuntimeLoadError(f"model file not found: {path}")
    return _PREDICTORS[natural](path, device=device, threads=threads)


def available_backends() -> dict[str, str | None]:
    """backend -> None when usable here, else the reason it is not (imports each lazily)."""
    reasons: dict[str, str | None] = {}
    for backend, module in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("tensorrt", "tensorrt")):
        try:
            __import__(module)
            reasons[backend] = None
        except Exception as exc:  # a broken install raises more than ImportError (missing .so)
            missing = isinstance(exc, ModuleNotFoundError)
            reasons[backend] = f"{backend}: module '{module}' not installed" if missing else f"{backend}: {exc}"
    if reasons["tensorrt"] is None:
        import torch

        if not torch.cuda.is_available():
            reasons["tensorrt"] = "tensorrt: no CUDA GPU available"
    return reasons
