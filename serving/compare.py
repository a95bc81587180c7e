"""``POST /v1/compare``: one upload, two models (by default the student and its teacher), one JSON
answer with both label maps and overlays, both latencies, their ratio and how far the maps agree.

The recipe reuses ``serving.segment``'s steps and keeps its rule of cheap checks first: resolve
both models (404; 503 while loading), refuse one model on one backend twice (422: it would only
measure itself), then read and decode the body through ``serving.segment.read_upload``, under the
same admission bounds as ``/v1/segment`` (415 from the Content-Type; 413 from the Content-Length;
429 per client; 408/413/503 while the body arrives; 413/415/422 from the image; 503 or 413 when
decoding does not fit ``max_inflight_bytes``), and only then, inside that block, take a slot in each
model's queue (503 + Retry-After when either is full, releasing the other). Holding no slot while
the body arrives means a slow upload never blocks a model (DESIGN §9).

The two models run one after the other, not at once: on a CPU each already uses every core, so
running them together would slow both and make the latency ratio, the number this view exists
for, measure contention rather than the models. Each slot is released as soon as its model's
share is encoded, so a slow teacher does not hold the student's queue.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving import images
from serving.admission import Admission
from serving.batching import BatchResult, Ticket
from serving.errors import ApiError
from serving.registry import ModelRegistry, Served
from serving.schemas import CompareJson, CompareModel, CompareTiming
from serving.segment import Decoded, labels_for_image, read_upload, run_model, take_slot
from serving.settings import Settings

STUDENT, TEACHER = "student", "teacher"  # the names `make export` gives the two models


@dataclass(frozen=True)
class PairQuery:
    """The query of ``/v1/compare``; a side's own backend wins over the shared ``backend``."""

    student: str = STUDENT
    teacher: str = TEACHER
    backend: str | None = None
    student_backend: str | None = None
    teacher_backend: str | None = None


@dataclass(frozen=True)
class Side:
    """One model's finished share: its labels at the uploaded size and its part of the answer."""

    labels: np.ndarray  # uint8 [H,W] trainIds
    body: CompareModel


def _resolve(registry: ModelRegistry, role: str, name: str, backend: str | None) -> Served:
    """``registry.resolve``, its 404 prefixed with the role, so the client knows which parameter is wrong."""
    try:
        return registry.resolve(name, backend)
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise ApiError(404, f"{role}: {exc.message}", exc.headers) from None


def resolve_pair(registry: ModelRegistry, query: PairQuery) -> tuple[Served, Served]:
    """(student, teacher), loaded and ready; 422 for one (model, backend) twice or different class lists."""
    student = _resolve(registry, "student", query.student, query.student_backend or query.backend)
    teacher = _resolve(registry, "teacher", query.teacher, query.teacher_backend or query.backend)
    if student is teacher:
        raise ApiError(
            422,
            f"student and teacher are both model {student.spec.name!r} on {student.spec.backend!r}: name two "
            "models (student=, teacher=), or one model on two backends (student_backend=, teacher_backend=)",
        )
    if tuple(student.predictor.info.classes) != tuple(teacher.predictor.info.classes):
        raise ApiError(
            422,
            f"models {student.spec.name!r} and {teacher.spec.name!r} label different class lists, "
            "so their label maps cannot be compared",
        )
    return student, teacher


def reserve_both(pair: tuple[Served, Served], settings: Settings, admission: Admission) -> list[Ticket]:
    """A slot in each model's queue (``serving.segment.take_slot``: 503 + Retry-After, counted as
    ``clda_refusals_total{reason="queue_size"}``); when either is full, the 503 comes after releasing
    what was taken."""
    tickets: list[Ticket] = []
    try:
        for served in pair:
            tickets.append(take_slot(served, settings, admission))
    except ApiError:
        for ticket in tickets:
            ticket.release()
        raise
    return tickets


def _base64_png(array: np.ndarray) -> str:
    return base64.b64encode(images.encode_png(array)).decode("ascii")


def render_side(served: Served, result: BatchResult, decoded: Decoded, settings: Settings) -> tuple[np.ndarray, dict]:
    """(labels at the uploaded size, the CPU-heavy fields of its answer); runs in the thread pool."""
    info = served.predictor.info
    labels = labels_for_image(result.labels, decoded, settings)
    blend = images.overlay(decoded.image, labels, info.palette, settings.overlay_alpha)
    fields = {
        "labels_png": _base64_png(labels),
        "overlay_png": _base64_png(blend),
        "histogram": images.histogram(labels, info.classes),
    }
    return labels, fields


async def run_side(served: Served, ticket: Ticket, decoded: Decoded, settings: Settings) -> Side:
    """Run one model on the decoded upload and encode its share; its slot is released on the way out."""
    started = time.perf_counter()
    try:
        result = await run_model(served, ticket, decoded.model_input)
        labels, fields = await run_in_threadpool(render_side, served, result, decoded, settings)
    finally:
        ticket.release()
    timing = CompareTiming(
        queue=round(result.queue_seconds * 1e3, 3),
        compute=round(result.compute_seconds * 1e3, 3),
        total=round((time.perf_counter() - started) * 1e3, 3),
    )
    body = CompareModel(
        model=served.spec.name, backend=served.spec.backend, batch_size=result.batch_size, timing_ms=timing, **fields
    )
    return Side(labels, body)


def agreement(first: np.ndarray, second: np.ndarray, classes: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """(% of pixels with the same label, per-class IoU in % of the two maps' regions) for two uint8
    label maps ``[H,W]`` of one shape. One confusion matrix gives both; classes neither map has are
    left out (their IoU is 0/0)."""
    size = max(len(classes), int(max(first.max(), second.max())) + 1)
    pairs = first.ravel().astype(np.int64) * size + second.ravel()
    confusion = np.bincount(pairs, minlength=size * size).reshape(size, size)
    same = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - same
    per_class = {name: round(100.0 * same[i] / union[i], 3) for i, name in enumerate(classes) if union[i] > 0}
    return round(100.0 * same.sum() / first.size, 3), per_class


def summarise(student: Side, teacher: Side, classes: tuple[str, ...], total_ms: float) -> CompareJson:
    """The answer: both sides, the teacher/student compute ratio, the agreement between the maps."""
    pixels, per_class = agreement(student.labels, teacher.labels, classes)
    student_ms, teacher_ms = student.body.timing_ms.compute, teacher.body.timing_ms.compute
    height, width = student.labels.shape
    return CompareJson(
        width=width,
        height=height,
        student=student.body,
        teacher=teacher.body,
        latency_ratio=round(teacher_ms / student_ms, 3) if student_ms > 0 else None,
        pixel_agreement_pct=pixels,
        class_agreement_pct=per_class,
        total_ms=round(total_ms, 3),
    )


async def compare(
    request: Request, registry: ModelRegistry, settings: Settings, query: PairQuery, admission: Admission
) -> JSONResponse:
    """The whole endpoint; every refusal is an ``ApiError`` (see the module docstring for the order)."""
    started = time.perf_counter()
    pair = resolve_pair(registry, query)
    names = [(served.spec.name, served.spec.backend) for served in pair]
    request.state.metric_labels = (*names[0], *names[1])
    async with read_upload(request, settings, admission) as decoded:
        tickets = reserve_both(pair, settings, admission)  # leaving the block gives the bytes back
    try:
        sides = [
            await run_side(served, ticket, decoded, settings) for served, ticket in zip(pair, tickets, strict=True)
        ]
    finally:
        for ticket in tickets:  # no-ops for the sides that ran; frees the teacher's slot if the student failed
            ticket.release()
    classes = tuple(pair[0].predictor.info.classes)
    body = await run_in_threadpool(summarise, *sides, classes, (time.perf_counter() - started) * 1e3)
    for name, side in zip(names, sides, strict=True):
        registry.metrics.queue_wait.labels(*name).observe(side.body.timing_ms.queue / 1e3)
    registry.metrics.compare_seconds.labels(*request.state.metric_labels).observe(time.perf_counter() - started)
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
