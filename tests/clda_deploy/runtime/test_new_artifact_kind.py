"""Adding a backend is one row in clda_deploy.artifacts and one predictor class: this test adds a
made-up ``.fake`` kind run by a made-up ``fake`` backend and checks that the runtime, the service's
model discovery and the bench's discovery all see it, with nothing else changed."""

from pathlib import Path

import numpy as np
import pytest

from clda_deploy import artifacts
from clda_deploy.artifacts import ArtifactKind
from clda_deploy.runtime import ModelInfo, Prediction, available_backends, load_predictor


class FakeBackendPredictor:
    """Labels = the channel-0 sign of the image, so the test can check real work was done."""

    backend = "fake"
    requires = ("numpy",)

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"
    ) -> None:
        self.device, self.providers, self.precision_used = "cpu", ("fake-cpu",), precision
        self.info = ModelInfo(artifacts.identify(path).model, ("a", "b"), ((0, 0, 0), (255, 255, 255)), str(path))

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        labels = (images[:, 0] > 0).astype(np.uint8)
        logits = np.stack([1.0 - labels, labels], axis=1).astype(np.float32)
        return Prediction(logits if want_logits else None, labels)

    def close(self) -> None:
        pass


FAKE = ArtifactKind(".fake", "fake", "fp32", f"{__name__}:FakeBackendPredictor")


@pytest.fixture
def fake_kind(monkeypatch, tmp_path):
    monkeypatch.setattr(artifacts, "ARTIFACT_KINDS", (*artifacts.ARTIFACT_KINDS, FAKE))
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "student.fake").write_bytes(b"weights")
    (export / "student.onnx").write_bytes(b"not read by this test")
    return tmp_path / "run"


def test_load_predictor_runs_the_new_kind(fake_kind):
    predictor = load_predictor(fake_kind / "export" / "student.fake", device="cpu")
    assert isinstance(predictor, FakeBackendPredictor) and predictor.info.name == "student"
    images = np.stack([np.ones((3, 4, 4)), -np.ones((3, 4, 4))]).astype(np.float32)
    assert predictor.predict(images).labels[:, 0, 0].tolist() == [1, 0]
    assert available_backends()["fake"] is None


def test_service_discovery_serves_the_new_kind(fake_kind):
    from serving.registry import discover
    from serving.settings import Settings

    specs = discover(Settings(models=fake_kind / "export"))
    assert ("student", "fake") in [(spec.name, spec.backend) for spec in specs]
    with pytest.raises(ValueError, match="unknown backend"):
        Settings(backends="nonesuch")


def test_bench_discovery_lists_the_new_kind(fake_kind):
    from serving.bench.models import discover_models, select_models

    files, missing = discover_models(fake_kind)
    assert ("student", "fake") in [(item.name, item.backend) for item in files]
    assert ("student", "fake") not in [(entry["model"], entry["backend"]) for entry in missing]
    selected, _ = select_models(str(fake_kind), [], ["fake"])
    assert [(item.name, item.runtime_backend) for item in selected] == [("student", "fake")]
