"""One served or benchmarked model file as the service and the bench see it: model ``name`` run
by ``backend``, where the backend is the artifact kind's variant label (``onnxruntime-fp16``), not
only the runtime that loads it; ``clda_deploy.artifacts`` decides both from the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clda_deploy.artifacts import Artifact, identify


@dataclass(frozen=True)
class ModelFile:
    artifact: Artifact

    @property
    def name(self) -> str:
        return self.artifact.model

    @property
    def backend(self) -> str:
        return self.artifact.variant

    @property
    def runtime_backend(self) -> str:
        """The runtime that loads it (``openvino`` for ``openvino-int8``)."""
        return self.artifact.backend

    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def path(self) -> Path:
        return self.artifact.path


def model_file(path: str | Path, name: str | None = None) -> ModelFile:
    """The file at ``path`` (``name`` overrides its own model name); ``ArtifactError`` for an unknown kind."""
    return ModelFile(identify(path, model=name))
