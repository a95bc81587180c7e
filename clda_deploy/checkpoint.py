"""Model files: safetensors weights with the resolved config inside, written atomically.

``model.safetensors`` carries metadata ``clda_config`` (the resolved config as JSON) and
``clda_role`` (teacher/student/...), so ``load_segmenter(path)`` rebuilds the model from the file
alone. Every write goes to a temporary file in the same folder, is fsynced, then renamed, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clda_deploy.config import Config, ConfigError, config_from_dict, config_to_dict
from clda_deploy.errors import CldaError

if TYPE_CHECKING:
    from clda_deploy.models.segmenter import Segmenter

CONFIG_KEY = "clda_config"
ROLE_KEY = "clda_role"
FORMAT_KEY = "clda_format"
FORMAT_VERSION = "1"


class CheckpointError(CldaError, RuntimeError):
    """A checkpoint cannot be read or written; the message names the file and the problem."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``; the temp file never survives.

    mkstemp creates 0600 files; the result gets ``0666 & ~umask`` like any file ``open`` creates,
    because models and reports are read by other users (a server container, Triton, CI).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: the provenance every student run and ablation records of its
    teacher (two runs compare only when their teachers' digests agree)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def tensors_sha256(path: str | Path) -> str:
    """Hex sha256 over a model file's tensors alone (name, dtype, shape and bytes, in name order), not its
    metadata: two files with bit-identical weights but other embedded config text share this digest."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(load_state_dict(path).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(
    path: str | Path, model: torch.nn.Module, config: Config, role: str, extra: dict[str, str] | None = None
) -> Path:
    """Write ``model``'s weights with ``config`` and ``role`` in the safetensors metadata."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    metadata = {
        CONFIG_KEY: json.dumps(config_to_dict(config)),
        ROLE_KEY: role,
        FORMAT_KEY: FORMAT_VERSION,
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata, with clear errors for missing or corrupt files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def read_config(path: str | Path) -> Config:
    """The resolved config stored in a model file."""
    metadata = read_metadata(path)
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path} has no '{CONFIG_KEY}' metadata: it was not written by clda-deploy, so the model "
            "cannot be rebuilt from it (train with `python -m training ...` or re-save with save_model)"
        )
    try:
        return config_from_dict(json.loads(metadata[CONFIG_KEY]))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: the embedded config is invalid: {exc}") from None


def read_role(path: str | Path) -> str:
    """The role written with the weights (``teacher``, ``student``, ...), ``model`` if absent."""
    return read_metadata(path).get(ROLE_KEY, "model")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc}); the file may be truncated") from None


def load_weights_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message listing missing/unexpected/mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:5])})")
        raise CheckpointError(f"{source} does not match the model its config describes: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def check_init(path: str | Path, config: Config) -> None:
    """Fail fast when ``model.init`` is missing, foreign, or describes another architecture.

    The embedded architecture must equal ``config.model``'s; a mismatch names the field, so a
    teacher's weights are never loaded into a student by mistake.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"model.init: model file not found: {path}")
    stored_cfg = read_config(path)
    stored = stored_cfg.model
    for key in ("encoder", "head", "num_classes", "head_channels"):
        if getattr(stored, key) != getattr(config.model, key):
            raise CheckpointError(
                f"model.init: {path} holds model.{key}={getattr(stored, key)!r} "
                f"but this config has model.{key}={getattr(config.model, key)!r}"
            )
    if stored_cfg.uda.method != config.uda.method:
        raise CheckpointError(
            f"model.init: {path} is a uda.method={stored_cfg.uda.method} model "
            f"but this config has uda.method={config.uda.method}"
        )


def initialise_from(model: torch.nn.Module, path: str | Path, config: Config) -> None:
    """Load ``model.init``'s weights into a freshly built segmenter (encoder and head)."""
    check_init(path, config)
    load_weights_strict(model, load_state_dict(path), str(path))


def segmenter_from_config(config: Config, pretrained: str | None = None) -> Segmenter:
    """The architecture ``config`` describes: ``config.model``'s encoder and head, wrapped with HRDA's
    scale-attention head when ``uda.method`` is hrda (randomly initialised unless ``pretrained``)."""
    from clda_deploy.models.segmenter import build_segmenter

    model_cfg = config.model
    model = build_segmenter(
        model_cfg.encoder,
        head=model_cfg.head,
        num_classes=model_cfg.num_classes,
        head_channels=model_cfg.head_channels,
        pretrained=pretrained,
    )
    if config.uda.method != "hrda":
        return model
    from clda_deploy.config import detail_crop
    from clda_deploy.models.hrda import build_hrda

    detail = detail_crop(config)
    spec = {**model.spec, "method": "hrda", "context_scale": config.hrda.context_scale, "detail_crop": detail,
            "slide_stride": (detail[0] // 2, detail[1] // 2)}  # fmt: skip
    channels = config.hrda.attention_channels or model_cfg.head_channels
    return build_hrda(model.encoder, model.head, spec, channels)


def build_for_training(config: Config, resume: bool) -> Segmenter:
    """The segmenter a training command starts from: ``model.pretrained`` encoder weights (else
    random), then ``model.init``'s weights unless resuming (the checkpoint holds them then)."""
    model = segmenter_from_config(config, pretrained=config.model.pretrained)
    if config.model.init is not None and not resume:
        initialise_from(model, config.model.init, config)
    return model


def build_from_config(config: Config) -> Segmenter:
    """A randomly initialised segmenter as ``config`` describes (no pretrained download)."""
    return segmenter_from_config(config)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """Rebuild the segmenter of a ``model.safetensors`` file alone, in eval mode on ``device``."""
    config = read_config(path)
    model = build_from_config(config)
    load_weights_strict(model, load_state_dict(path), str(path))
    return model.to(device).eval()


def save_torch(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` a resume state (optimizer, RNG, ...)."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
