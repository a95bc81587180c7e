"""The file contract between the stages (DESIGN §3), spelled once: what each model file is, and
where a run folder keeps what.

Stages pass work only as files. ``ARTIFACT_KINDS`` says, per file suffix, which runtime backend
loads the file and in which precision it computes; ``identify(path)`` turns any model file into
one ``Artifact`` (model name, backend, precision), so training, export, the service and the bench
give a file the same model name. ``RunLayout`` names the folders and files of ``runs/<name>/``.

Torch-free on purpose: the service and the bench read this on hosts that only have a runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clda_deploy.errors import CldaError

DEFAULT_RUN = Path("runs/default")
ROLES = ("teacher", "student")  # the two trained models of a run, in report order
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# A model name is one file-name token: the dot separates it from the precision (``student.fp16``).
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

# Files inside one training run folder (``runs/<name>/{teacher,student}/``).
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
METRICS_LOG = "metrics.jsonl"
SALIENCY_FILE = "saliency.json"
MAPPING_FILE = "mapping.json"
TEACHER_AFTER_MODEL = "teacher_updated.safetensors"  # the student run's S->T-updated teacher
TEACHER_AFTER_METRICS = "teacher_metrics.json"
PARITY_INDEX = "parity.json"  # export folder: model name -> that model's parity record


class ArtifactError(CldaError, ValueError):
    """A path is not a model file this project knows; the message lists the known suffixes."""


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of model file: its suffix, the runtime backend that loads it and its precision."""

    suffix: str  # e.g. ".fp16.onnx"; matched against the end of the file name, longest first
    backend: str  # the runtime backend that loads it: torch | onnxruntime | tensorrt
    precision: str  # what it computes in: one of PRECISIONS
    predictor: str  # "module:Class" of the predictor that loads it (imported only when used)
    tag: str = ""  # tells apart two kinds of one backend and precision (the TensorRT form of INT8)

    @property
    def variant(self) -> str:
        """The backend, the precision when not fp32 and the tag (``onnxruntime-fp16``,
        ``onnxruntime-int8-trt``): what the bench's rows, the parity records and the service's
        ``backend`` parameter call one way of running a model."""
        parts = (self.backend, "" if self.precision == "fp32" else self.precision, self.tag)
        return "-".join(part for part in parts if part)


# Every way the stages run a model file. One row per (file suffix, backend, precision): adding a
# backend or a quantized variant is one row here and one predictor class in clda_deploy.runtime.
# Several rows may share a suffix (OpenVINO runs the ONNX files ONNX Runtime runs); the first row
# of a suffix is the file's own kind, the one ``identify`` returns.
#   .int8.onnx      Q/DQ INT8 in the form fastest on CPUs (NNCF: uint8 asymmetric activations,
#                   per-channel int8 weights): ONNX Runtime and OpenVINO run it.
#   .int8-trt.onnx  Q/DQ INT8 in the form TensorRT's explicit quantization accepts (symmetric int8
#                   activations and weights, float bias): what .int8.plan is built from.
#   OpenVINO int8 runs the layers left in float in bf16 where the CPU has AMX/AVX512-BF16.
_TORCH = "clda_deploy.runtime.torch_backend:TorchPredictor"
_ORT = "clda_deploy.runtime.onnxruntime_backend:OnnxRuntimePredictor"
_OPENVINO = "clda_deploy.runtime.openvino_backend:OpenVinoPredictor"
_TENSORRT = "clda_deploy.runtime.tensorrt_backend:TensorRTPredictor"
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = (
    ArtifactKind(".safetensors", "torch", "fp32", _TORCH),
    ArtifactKind(".safetensors", "torch", "bf16", _TORCH),
    ArtifactKind(".onnx", "onnxruntime", "fp32", _ORT),
    ArtifactKind(".onnx", "openvino", "fp32", _OPENVINO),
    ArtifactKind(".onnx", "openvino", "bf16", _OPENVINO),
    ArtifactKind(".fp16.onnx", "onnxruntime", "fp16", _ORT),
    ArtifactKind(".int8.onnx", "onnxruntime", "int8", _ORT),
    ArtifactKind(".int8.onnx", "openvino", "int8", _OPENVINO, tag="qdq"),
    ArtifactKind(".int8.xml", "openvino", "int8", _OPENVINO),
    ArtifactKind(".int8-trt.onnx", "onnxruntime", "int8", _ORT, tag="trt"),
    ArtifactKind(".plan", "tensorrt", "fp32", _TENSORRT),
    ArtifactKind(".fp16.plan", "tensorrt", "fp16", _TENSORRT),
    ArtifactKind(".int8.plan", "tensorrt", "int8", _TENSORRT),
)


def artifact_kinds() -> tuple[ArtifactKind, ...]:
    """The table, read at call time (so a test that adds a row is seen by every consumer)."""
    return ARTIFACT_KINDS


def backends() -> tuple[str, ...]:
    """Runtime backends, in table order."""
    return tuple(dict.fromkeys(kind.backend for kind in artifact_kinds()))


def variants() -> tuple[str, ...]:
    """Every ``variant`` label, in table order."""
    return tuple(kind.variant for kind in artifact_kinds())


def kind_of(path: str | Path) -> ArtifactKind | None:
    """The file's own kind: the first row whose suffix ends ``path``'s file name (the longest
    suffix wins), or None."""
    name = Path(path).name.lower()
    matches = [kind for kind in artifact_kinds() if name.endswith(kind.suffix) and len(name) > len(kind.suffix)]
    return max(matches, key=lambda kind: len(kind.suffix), default=None)


def kinds_of(path: str | Path) -> tuple[ArtifactKind, ...]:
    """Every way to run ``path``: the rows sharing its kind's suffix, its own kind first."""
    own = kind_of(path)
    return () if own is None else tuple(kind for kind in artifact_kinds() if kind.suffix == own.suffix)


def kind_for(backend: str, precision: str = "fp32") -> ArtifactKind:
    """The kind a backend writes in ``precision`` (its first row in the table)."""
    for kind in artifact_kinds():
        if kind.backend == backend and kind.precision == precision:
            return kind
    known = ", ".join(f"{kind.backend}/{kind.precision}" for kind in artifact_kinds())
    raise ArtifactError(f"no model file kind for backend {backend!r} in {precision!r}; known: {known}")


def kind_of_variant(variant: str) -> ArtifactKind:
    """The kind a ``variant`` label names (``onnxruntime-fp16`` -> ``.fp16.onnx``)."""
    for kind in artifact_kinds():
        if kind.variant == variant:
            return kind
    raise ArtifactError(f"unknown backend {variant!r}; choose from {', '.join(dict.fromkeys(variants()))}")


@dataclass(frozen=True)
class Artifact:
    """A model file and what it is: ``student.fp16.onnx`` is model ``student`` run by onnxruntime in fp16."""

    model: str
    kind: ArtifactKind
    path: Path

    @property
    def backend(self) -> str:
        return self.kind.backend

    @property
    def precision(self) -> str:
        return self.kind.precision

    @property
    def variant(self) -> str:
        return self.kind.variant


def check_model_name(name: str) -> str:
    """``name`` when it is a valid model name, else an ``ArtifactError`` saying why."""
    if not MODEL_NAME_PATTERN.match(name):
        raise ArtifactError(
            f"model name must be letters, digits, '_' or '-' and start with a letter or digit (no dots: "
            f"'.fp16' marks the precision), got {name!r}"
        )
    return name


def identify(path: str | Path, model: str | None = None, variant: str | None = None) -> Artifact:
    """What ``path`` is. The model name is the file name without the kind's suffix, except for a
    run folder's ``model.safetensors``, which is named after its folder (``runs/x/student`` ->
    ``student``); ``model`` names it explicitly (``--model student=PATH``). ``variant`` picks one
    of ``kinds_of(path)`` (``openvino-bf16`` of a ``.onnx``) instead of the file's own kind."""
    path = Path(path)
    kind = kind_of(path)
    if kind is None:
        suffixes = ", ".join(dict.fromkeys(kind.suffix for kind in artifact_kinds()))
        raise ArtifactError(f"{path}: unknown model file type; expected a file ending in one of {suffixes}")
    if model is None:
        model = path.parent.name if path.name == MODEL_FILE else path.name[: -len(kind.suffix)]
        if "." in model:  # e.g. student.int8.onnx while no .int8.onnx kind exists
            tag = model.rsplit(".", 1)[1]
            raise ArtifactError(
                f"{path}: no model file kind has the precision tag {tag!r}; known suffixes: "
                + ", ".join(dict.fromkeys(kind.suffix for kind in artifact_kinds()))
            )
    if variant is not None:
        chosen = [row for row in kinds_of(path) if row.variant == variant]
        if not chosen:
            offered = ", ".join(row.variant for row in kinds_of(path))
            raise ArtifactError(f"{path}: a {kind.suffix} file cannot run as {variant!r}; it runs as {offered}")
        kind = chosen[0]
    return Artifact(model, kind, path)


def identify_all(path: str | Path, model: str | None = None) -> list[Artifact]:
    """``path`` once per way to run it (``kinds_of``), its own kind first."""
    own = identify(path, model)
    return [Artifact(own.model, kind, own.path) for kind in kinds_of(path)]


def model_file_name(model: str, kind: ArtifactKind) -> str:
    """``("student", .fp16.onnx kind)`` -> ``student.fp16.onnx``."""
    return check_model_name(model) + kind.suffix


def parity_record_name(model: str) -> str:
    """The per-model parity record in an export folder (``student.parity.json``)."""
    return f"{model}.parity.json"


@dataclass(frozen=True)
class RunLayout:
    """Where ``runs/<name>/`` keeps what: one folder per training stage, ``export/`` for deployable
    files and ``bench/`` for benchmark reports (DESIGN §3)."""

    root: Path = DEFAULT_RUN

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def run_dir(self, role: str) -> Path:
        """A training stage's run folder (``teacher`` or ``student``)."""
        return self.root / role

    def model(self, role: str) -> Path:
        return self.run_dir(role) / MODEL_FILE

    def checkpoint(self, role: str) -> Path:
        return self.run_dir(role) / CHECKPOINT_FILE

    def metrics(self, role: str) -> Path:
        return self.run_dir(role) / METRICS_FILE

    @property
    def teacher_after(self) -> Path:
        """The teacher as the student stage's S->T updates left it."""
        return self.run_dir("student") / TEACHER_AFTER_MODEL

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def cost(self) -> Path:
        return self.root / "cost"

    def exported(self, model: str, kind: ArtifactKind) -> Path:
        """``export/<model><suffix>``."""
        return self.export / model_file_name(model, kind)

    def trained_models(self) -> list[Artifact]:
        """The ``model.safetensors`` of each role that exists (every way to run it), in ``ROLES`` order."""
        return [found for role in ROLES if self.model(role).is_file() for found in identify_all(self.model(role))]

    def exported_models(self, folder: Path | None = None) -> list[Artifact]:
        """Every known model file in ``folder`` (default ``export/``), by name, each in every way to run it."""
        folder = self.export if folder is None else folder
        if not folder.is_dir():
            return []
        found = [path for path in sorted(folder.iterdir()) if path.is_file() and kind_of(path) is not None]
        return [artifact for path in found for artifact in identify_all(path)]


def discover_artifacts(folder: str | Path) -> list[Artifact]:
    """The model files of ``folder``: a run folder (``teacher/``, ``student/`` and ``export/``) or an
    export folder itself; each (file, variant) once."""
    layout = RunLayout(Path(folder))
    found = layout.trained_models() + layout.exported_models() + layout.exported_models(layout.root)
    return list({(artifact.path.resolve(), artifact.variant): artifact for artifact in found}.values())


def order_key(artifact: Artifact) -> tuple[int, str, int]:
    """Report order: teacher, student, then other names; within a model, table order."""
    role = ROLES.index(artifact.model) if artifact.model in ROLES else len(ROLES)
    return role, artifact.model, artifact_kinds().index(artifact.kind)
