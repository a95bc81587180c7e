"""Which models the service has, loading them once in the background, and resolving a request's
``model`` / ``backend`` to a loaded, warmed-up predictor with its batcher.

Files are found by kind (``clda_deploy.artifacts``, DESIGN §3): ``<name>.onnx`` -> ONNX Runtime and
OpenVINO, ``<name>.int8.onnx`` / ``.int8.xml`` -> INT8, ``<name>.plan`` -> TensorRT (each only where
its module is installed), ``<name>.safetensors`` and the ``torch_checkpoints`` setting -> PyTorch.
A file is served as model ``<name>`` once per way to run it, with the backend its kind's
``variant`` names (``student.fp16.onnx`` is backend ``onnxruntime-fp16`` of model ``student``).

**The gate decides what is served.** The folder's ``parity.json`` (``python -m export``) records
each variant's verdict: a variant that failed is never served, and one other than a file's own fp32
kind (fp16, bf16, INT8, or OpenVINO running an ONNX file) is served only with a passing record.
A file's own fp32 kind without a record is served as before (a folder exported with ``--no-check``).
Loading runs in a thread, so ``/healthz`` answers at once while ``/readyz`` says 503 until every model
has at least one backend loaded and warmed up (a failed backend is reported, not fatal, when another
backend of the same model works).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.artifacts import PARITY_INDEX, ArtifactError, identify_all, kind_of, variants
from clda_deploy.data.transforms import preprocess_numpy
from clda_deploy.errors import CldaError
from serving.batching import MicroBatcher
from serving.errors import ApiError
from serving.metrics import ServiceMetrics
from serving.model_files import ModelFile, model_file
from serving.settings import Settings

log = logging.getLogger("serving")

# (path, runtime backend, device, threads) -> a clda_deploy.runtime.Predictor
Loader = Callable[[Path, str, str, int | None], Any]


class NoModelsError(CldaError, ValueError):
    """The models folder holds nothing to serve; the message says what was expected."""


@dataclass
class Served:
    """One (model, backend): its state, and once ``ready`` its predictor and batcher."""

    spec: ModelFile
    state: str = "loading"  # loading | ready | failed
    error: str | None = None
    predictor: Any = None
    batcher: MicroBatcher | None = None
    load_seconds: float | None = None


def _spec_for(path: Path) -> ModelFile | None:
    """The spec of a model file in the models folder; None for other files (parity.json, sidecars)."""
    if kind_of(path) is None or not path.is_file():
        return None
    try:
        return model_file(path)
    except ArtifactError as exc:
        log.warning("skipping %s", exc)
        return None


def _usable(spec: ModelFile) -> bool:
    """False (with a warning) when the backend's runtime module is not installed here."""
    from clda_deploy.runtime import missing_module

    missing = missing_module(spec.artifact.kind)
    if missing is not None:
        log.warning("skipping %s: %s", spec.path, missing)
    return missing is None


def gate_verdicts(folder: Path) -> dict[tuple[str, str], bool]:
    """``(model, variant) -> passed`` from the folder's ``parity.json`` (empty when absent or unreadable)."""
    path = folder / PARITY_INDEX
    try:
        index = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): serving only the files' own fp32 kinds", path, exc)
        return {}
    verdicts = {}
    for model, record in index.items() if isinstance(index, dict) else ():
        for variant, entry in (record.get("backends", {}) if isinstance(record, dict) else {}).items():
            verdicts[(model, variant)] = bool(isinstance(entry, dict) and entry.get("passed"))
    return verdicts


def gate_refusal(spec: ModelFile, verdicts: dict[tuple[str, str], bool]) -> str | None:
    """Why ``spec`` must not be served by the gate's record, or None when it may."""
    kind = spec.artifact.kind
    verdict = verdicts.get((spec.name, spec.backend))
    if verdict is False:
        return "it failed its parity gate (see parity.json)"
    own_fp32 = kind.precision == "fp32" and kind_of(spec.path) == kind
    if verdict is None and not own_fp32:
        return f"{kind.precision} {kind.backend} has no passing parity record (run python -m export on its model)"
    return None


def discover(settings: Settings) -> list[ModelFile]:
    """Every (model, backend) to serve, default model first; ``NoModelsError`` when there is none."""
    folder, backends = settings.models, settings.served_backends
    found = [_spec_for(path) for path in sorted(folder.iterdir())] if folder.is_dir() else []
    specs = [ModelFile(artifact) for spec in found if spec is not None for artifact in identify_all(spec.path)]
    specs += [ModelFile(a) for name, path in settings.torch_checkpoints.items() for a in identify_all(path, name)]
    specs = [spec for spec in specs if spec.backend in backends]
    verdicts = gate_verdicts(folder) if folder.is_dir() else {}
    for spec in list(specs):
        refusal = gate_refusal(spec, verdicts)
        if refusal is not None:
            if verdicts or spec.artifact.kind.precision != "fp32":
                log.warning("not serving %s as %s: %s", spec.path.name, spec.backend, refusal)
            specs.remove(spec)
    specs = [spec for spec in specs if _usable(spec)]
    if not specs:
        where = f"{folder} does not exist" if not folder.is_dir() else f"{folder} holds no model file"
        raise NoModelsError(
            f"no models to serve: {where} (expected <name>.onnx, <name>.plan or <name>.safetensors for backends "
            f"{', '.join(backends)}); run `make export` or pass --models DIR"
        )
    rank = {backend: index for index, backend in enumerate(backends)}
    return sorted(specs, key=lambda spec: (spec.name != settings.default_model, spec.name, rank[spec.backend]))


def runtime_loader(path: Path, backend: str, device: str, threads: int | None) -> Any:
    """The production loader: ``clda_deploy.runtime.load_predictor`` (imported only when used);
    ``backend`` is the variant (``openvino-int8``), which picks the runtime and its precision."""
    from clda_deploy.runtime import load_predictor

    return load_predictor(path, backend=backend, device=device, threads=threads)


def batch_predict(predictor: Any) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Same-size uint8 RGB images -> uint8 labels ``[B,H,W]`` through the shared preprocessing."""

    def predict(images: list[np.ndarray]) -> np.ndarray:
        labels = predictor.predict(preprocess_numpy(images), want_logits=False).labels
        expected = (len(images), *images[0].shape[:2])
        if tuple(labels.shape) != expected:
            raise RuntimeError(f"predictor returned labels of shape {tuple(labels.shape)}, expected {expected}")
        return labels.astype(np.uint8, copy=False)

    return predict


@dataclass
class ModelRegistry:
    """All served (model, backend) pairs; ``start`` loads them in a background thread."""

    specs: list[ModelFile]
    settings: Settings
    metrics: ServiceMetrics
    loader: Loader = runtime_loader
    entries: dict[tuple[str, str], Served] = field(init=False)
    backends: tuple[str, ...] = field(init=False)  # settings.served_backends, resolved once
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.entries = {(spec.name, spec.backend): Served(spec) for spec in self.specs}
        self.backends = self.settings.served_backends

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(spec.name for spec in self.specs))

    @property
    def default_model(self) -> str:
        return self.settings.default_model if self.settings.default_model in self.names else self.names[0]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._thread.start()

    def _load_all(self) -> None:
        for served in self.entries.values():
            if self._stop.is_set():
                return
            self._load(served)
        ready, detail = self.readiness()
        self.metrics.ready.set(1 if ready else 0)
        (log.info if ready else log.error)("%s: %s", "ready" if ready else "NOT ready", detail)

    def _load(self, served: Served) -> None:
        spec, settings = served.spec, self.settings
        started = time.perf_counter()
        try:
            predictor = self.loader(spec.path, spec.backend, settings.device, settings.threads)
            predict = batch_predict(predictor)
            height, width = settings.warmup_size
            predict([np.full((height, width, 3), 128, dtype=np.uint8)])  # first run: allocations, autotuning
        except Exception as exc:
            served.state, served.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("cannot serve %s with %s from %s: %s", spec.name, spec.backend, spec.path, served.error)
            return
        labels = (spec.name, spec.backend)
        served.predictor = predictor
        served.batcher = MicroBatcher(
            predict,
            capacity=settings.queue_size,
            max_batch=effective_max_batch(settings.max_batch, getattr(predictor, "device", "cpu")),
            max_wait_s=settings.max_wait_ms / 1000.0,
            name=f"{spec.name}-{spec.backend}",
            on_batch=lambda size, seconds: self.metrics.observe_batch(*labels, size, seconds),
        )
        batcher = served.batcher
        self.metrics.queue_depth.labels(*labels).set_function(lambda: batcher.depth)
        served.load_seconds = time.perf_counter() - started
        served.state = "ready"  # last: a request only sees a fully built entry
        providers = ",".join(getattr(predictor, "providers", ()) or ())
        log.info("loaded %s (%s, %s) in %.1fs", spec.name, spec.backend, providers, served.load_seconds)

    def is_ready(self) -> bool:
        return self.readiness()[0]

    def readiness(self) -> tuple[bool, str]:
        """(ready, a sentence saying what is loaded, loading or failed)."""
        states = {name: [s for (n, _), s in self.entries.items() if n == name] for name in self.names}
        loading = [f"{s.spec.name}/{s.spec.backend}" for s in self.entries.values() if s.state == "loading"]
        failed = [f"{s.spec.name}/{s.spec.backend} ({s.error})" for s in self.entries.values() if s.state == "failed"]
        unusable = [name for name, group in states.items() if not any(s.state == "ready" for s in group)]
        ready = not loading and not unusable
        parts = [f"{sum(s.state == 'ready' for s in self.entries.values())} of {len(self.entries)} loaded"]
        if loading:
            parts.append(f"loading {', '.join(loading)}")
        if failed:
            parts.append(f"failed {'; '.join(failed)}")
        return ready, "; ".join(parts)

    def resolve(self, model: str | None, backend: str | None) -> Served:
        """The entry a request asks for: 404 for unknown names, 503 while loading or after a failure."""
        name = model or self.default_model
        if name not in self.names:
            raise ApiError(404, f"unknown model {name!r}; available models: {', '.join(self.names)}")
        backends = self.backends
        group = [self.entries[(name, b)] for b in backends if (name, b) in self.entries]
        if backend is not None:
            group = [served for served in group if served.spec.backend == backend]
            if not group:
                offered = ", ".join(b for b in backends if (name, b) in self.entries)
                names = list(dict.fromkeys(variants()))
                known = "" if backend in names else f" (backends are {', '.join(names)})"
                raise ApiError(404, f"model {name!r} has no backend {backend!r}{known}; it is served with: {offered}")
        ready = [served for served in group if served.state == "ready"]
        if ready:
            return ready[0]
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if any(served.state == "loading" for served in group):
            raise ApiError(503, f"model {name!r} is still loading; retry shortly", retry)
        errors = "; ".join(f"{s.spec.backend}: {s.error}" for s in group)
        raise ApiError(503, f"model {name!r} failed to load ({errors}); see the server log")

    def close(self) -> None:
        """Stop loading, drain every batcher and release the predictors."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for served in self.entries.values():
            if served.batcher is not None:
                served.batcher.close()
            if served.predictor is not None:
                served.predictor.close()


def effective_max_batch(configured: int | None, device: str | None) -> int:
    """The micro-batch limit: as configured, else 4 on a GPU and 1 on a CPU (batching off).

    On a CPU one image already keeps every core busy, so batching only adds waiting (measured in
    docs/results.md); on a GPU, batches fill the device.
    """
    if configured is not None:
        return configured
    return 4 if str(device or "cpu").startswith("cuda") else 1
