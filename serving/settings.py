"""Service settings: defaults here, overridden by ``CLDA_*`` environment variables, overridden by flags.

pydantic-settings reads the environment (``CLDA_QUEUE_SIZE=32``, ``CLDA_BACKENDS=onnxruntime,torch``,
``CLDA_TORCH_CHECKPOINTS=student=runs/default/student/model.safetensors``); ``python -m serving`` passes
its flags as init arguments, which pydantic-settings ranks above the environment. Every limit that
protects the process (bytes, pixels, queue) lives here so that operators see them in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clda_deploy.artifacts import DEFAULT_RUN, MODEL_FILE, artifact_kinds, variants

# Which way of running a model is each model's default: fp32 first (the numbers the model was
# validated with), fastest runtime first; then every reduced-precision variant, which is served only
# when its parity gate passed (serving.registry) and is asked for with ``backend=``.
PREFERENCE = ("tensorrt", "onnxruntime", "openvino", "torch")


def default_backends() -> tuple[str, ...]:
    """Every variant of ``clda_deploy.artifacts``: fp32 ones in ``PREFERENCE`` order, then the rest."""

    def rank(kind: Any) -> tuple[int, int]:
        backend = PREFERENCE.index(kind.backend) if kind.backend in PREFERENCE else len(PREFERENCE)
        return (0 if kind.precision == "fp32" else 1), backend

    return tuple(dict.fromkeys(kind.variant for kind in sorted(artifact_kinds(), key=rank)))


def _split_list(value: Any) -> Any:
    """``"a,b"`` or a JSON list -> list; lists pass through (env vars are flat strings)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _split_pairs(value: Any) -> Any:
    """``"student=a.safetensors,teacher=b.safetensors"``, a JSON object or a list of pairs -> dict."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        value = [item for item in text.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        pairs = {}
        for item in value:
            name, sep, path = str(item).partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(
                    f"expected NAME=PATH, got {item!r} (e.g. student={DEFAULT_RUN / 'student' / MODEL_FILE})"
                )
            pairs[name.strip()] = path.strip()
        return pairs
    return value


class Settings(BaseSettings):
    """Everything ``create_app`` needs; see README "Serving" for the table of variables."""

    model_config = SettingsConfigDict(env_prefix="CLDA_", extra="forbid", frozen=True)

    # Where models come from.
    models: Path = Field(DEFAULT_RUN / "export", description="folder with <name>.onnx / <name>.plan files")
    backends: Annotated[tuple[str, ...], NoDecode] = Field(
        default_factory=default_backends,
        description="backends to load, in order of preference (the first one is each model's default)",
    )
    include_fp16: bool = Field(
        False, description="with an explicit backends list: also its fp16 variants (onnxruntime-fp16, tensorrt-fp16)"
    )
    torch_checkpoints: Annotated[dict[str, Path], NoDecode] = Field(
        default_factory=dict, description="extra torch-backend models: name -> model.safetensors"
    )
    default_model: str = Field("student", description="model used when a request names none (if present)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, description="CPU threads per model (ONNX Runtime intra-op)")

    # Access. Unset api_key_file: no authentication (bind to loopback, or put a proxy in front).
    api_key_file: Path | None = Field(None, description="file with the bearer token every /v1 request must send")
    protect_metrics: bool = Field(False, description="with api_key_file: /metrics needs the token too")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default_factory=tuple, description="origins allowed to call the API from a browser (default none: CORS off)"
    )

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes (each loads every model)")
    log_level: str = "info"

    # Admission, queueing and micro-batching, per (model, backend).
    queue_size: int = Field(16, ge=1, description="requests admitted at once; more get 503 + Retry-After")
    # None = by device: 4 on CUDA, 1 (off) on CPU, where batching measured lower throughput
    # (docs/results.md: ONNX Runtime already uses every core for one image).
    max_batch: int | None = Field(None, ge=1, description="largest micro-batch; 1 disables batching")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests of its size")
    retry_after_s: int = Field(1, ge=0, description="Retry-After value on 503")

    # Input limits (checked before any pixel is decoded).
    max_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest request body")
    max_pixels: int = Field(4096 * 2048, ge=1, description="largest image, width x height")

    # Body reading (serving/admission.py). A request takes a queue slot only once its body has
    # arrived and its image is decoded, so these bound what slow or numerous uploads hold meanwhile.
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="bytes held by requests without a queue slot (bodies arriving, images decoding); more get 503",
    )
    max_uploads_per_client: int = Field(8, ge=1, description="bodies one client address sends at once; more get 429")
    body_timeout_s: float = Field(30.0, gt=0, description="a body that takes longer to arrive gets 408")
    body_idle_timeout_s: float = Field(10.0, gt=0, description="a body that pauses longer between chunks gets 408")
    min_body_rate: int = Field(
        8192, ge=0, description="bytes/s a body must average once body_rate_grace_s passed, or 408 (0: no minimum)"
    )
    body_rate_grace_s: float = Field(5.0, ge=0, description="seconds of a body not held to min_body_rate")

    # Inference geometry. None = the image's own size, padded to a multiple of pad_multiple.
    infer_height: int | None = Field(None, ge=32)
    infer_width: int | None = Field(None, ge=32)
    pad_multiple: int = Field(32, ge=1, description="pad native-size inputs (bottom/right) to a multiple of this")
    warmup_height: int = Field(256, ge=32)
    warmup_width: int = Field(512, ge=32)

    overlay_alpha: float = Field(0.5, ge=0.0, le=1.0, description="colour weight of the overlay")

    @field_validator("backends", mode="before")
    @classmethod
    def _parse_backends(cls, value: Any) -> Any:
        value = _split_list(value)
        known = list(dict.fromkeys(variants()))
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; choose from {known}")
        if not value:
            raise ValueError(f"at least one backend is needed; choose from {known}")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("torch_checkpoints", mode="before")
    @classmethod
    def _parse_checkpoints(cls, value: Any) -> Any:
        return _split_pairs(value)

    @model_validator(mode="after")
    def _check_geometry(self) -> Settings:
        if (self.infer_height is None) != (self.infer_width is None):
            raise ValueError("set both infer_height and infer_width (or neither, for native-size inference)")
        return self

    @model_validator(mode="after")
    def _check_budget(self) -> Settings:
        if self.max_inflight_bytes < self.max_bytes:  # else a body under max_bytes could never be read
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_bytes ({self.max_bytes})"
            )
        return self

    @property
    def served_backends(self) -> tuple[str, ...]:
        """``backends``, then with ``include_fp16`` each one's fp16 variant, in preference order."""
        extra = []
        if self.include_fp16:
            half = {kind.backend: kind.variant for kind in artifact_kinds() if kind.precision == "fp16"}
            fp32_backend = {kind.variant: kind.backend for kind in artifact_kinds()}
            extra = [half[fp32_backend[name]] for name in self.backends if fp32_backend[name] in half]
        return tuple(dict.fromkeys((*self.backends, *extra)))

    @property
    def infer_size(self) -> tuple[int, int] | None:
        """(height, width) every image is resized to, or None for native size."""
        if self.infer_height is None or self.infer_width is None:
            return None
        return self.infer_height, self.infer_width

    @property
    def warmup_size(self) -> tuple[int, int]:
        """Warm up at the size requests will run at when it is fixed, else at the configured one."""
        return self.infer_size or (self.warmup_height, self.warmup_width)

    def to_env(self) -> dict[str, str]:
        """These settings as ``CLDA_*`` variables, so that uvicorn worker processes rebuild them."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if isinstance(value, list):
                text = ",".join(str(item) for item in value)
            elif isinstance(value, dict):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"CLDA_{name.upper()}"] = text
        return env
