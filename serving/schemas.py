"""Response bodies as pydantic models: they document the API in /docs and fix the JSON shapes."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: int = Field(description="the HTTP status again, for clients that only keep the body")
    message: str = Field(description="what is wrong, and the limit or the fix")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Timing(BaseModel):
    queue: float = Field(description="ms from submission to the start of this request's batch")
    compute: float = Field(description="ms of the batch's predictor call (preprocessing + inference)")
    total: float = Field(description="ms inside the server: read, decode, queue, compute, encode")


class SegmentJson(BaseModel):
    model: str
    backend: str
    width: int
    height: int
    batch_size: int = Field(description="images computed together with this one")
    histogram: dict[str, int] = Field(description="pixels per class name, every class listed")
    timing_ms: Timing


class CompareTiming(Timing):
    queue: float = Field(description="ms from submission to the start of this model's batch")
    total: float = Field(description="ms of this model's share: queue, compute, crop and PNG encoding")


class CompareModel(BaseModel):
    model: str
    backend: str
    batch_size: int = Field(description="images computed together with this one")
    labels_png: str = Field(description="base64 PNG, mode L: the trainId map at the uploaded size")
    overlay_png: str = Field(description="base64 PNG, RGB: the palette blend, as format=overlay of /v1/segment")
    histogram: dict[str, int] = Field(description="pixels per class name, every class listed")
    timing_ms: CompareTiming


class CompareJson(BaseModel):
    width: int
    height: int
    student: CompareModel
    teacher: CompareModel
    latency_ratio: float | None = Field(
        description="teacher compute / student compute (how much faster the student is); null if unmeasurable"
    )
    pixel_agreement_pct: float = Field(description="share of pixels both label maps give the same class, in %")
    class_agreement_pct: dict[str, float] = Field(
        description="per class either model predicts: IoU of the two models' regions of that class, in %"
    )
    total_ms: float = Field(description="ms inside the server: read, decode, both models one after the other")


class ModelEntry(BaseModel):
    name: str
    backend: str = Field(description="the variant: runtime plus precision (onnxruntime, openvino-int8, ...)")
    precision: str = Field(description="what the file computes in: fp32 | fp16 | bf16 | int8")
    precision_used: str | None = Field(
        None, description="what the runtime reports it computes in (OpenVINO INT8: 'int8 + bf16 + fp32')"
    )
    default: bool = Field(description="used when a request names this model but no backend")
    state: str = Field(description="loading | ready | failed")
    error: str | None = None
    path: str
    device: str | None = None
    providers: list[str] = Field(default_factory=list, description="what actually runs (ORT may fall back to CPU)")
    classes: list[str] = Field(default_factory=list)
    palette: list[list[int]] = Field(default_factory=list, description="RGB per class, as in the overlay")
    queue_capacity: int
    queue_depth: int
    max_batch: int


class ModelsResponse(BaseModel):
    default_model: str
    models: list[ModelEntry]


class Status(BaseModel):
    status: str
    detail: str | None = None
