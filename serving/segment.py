"""``POST /v1/segment`` as a recipe: resolve the model, check headers, read the body under the
admission bounds, decode under the pixel limit, take a queue slot, run the micro-batched predictor,
encode.

The cheap checks come first so that a request that will be refused costs no body read and no
decode: 404/422 from the query, 415 from the Content-Type, 413 from the Content-Length. The body is
read before any queue slot is taken (``serving.admission`` bounds it: bytes, bytes in flight, rate,
uploads per client), so slow clients hold no slot; the slot is taken once the image is decoded (503
when the queue is full). CPU-heavy steps (decode, resize, PNG encode) run in the thread pool,
inference in the model's batcher thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from clda_deploy.data.transforms import resize_image, resize_label
from serving import images
from serving.admission import Admission, Lease, bounded_body
from serving.batching import BatcherClosedError, BatchResult, QueueFullError, Ticket
from serving.errors import ApiError
from serving.registry import ModelRegistry, Served
from serving.settings import Settings

OutputFormat = Literal["png", "json", "overlay"]
RAW_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream", "")
# Bytes per pixel decoding holds at its peak: PIL's 4-byte RGB(X) image and one converted or
# rotated copy, the 3-byte RGB array (the model's input adds 3 per pixel of its own size).
DECODE_BYTES_PER_PIXEL = 11


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # uint8 [H,W,3] as uploaded (display orientation)
    model_input: np.ndarray  # uint8 [h,w,3] resized or padded for the model


def check_headers(request: Request) -> str:
    """The media type, after refusing unsupported types (415); the declared size is the admission's."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data" and media not in RAW_TYPES:
        raise ApiError(
            415,
            f"Content-Type {media!r} is not accepted: send multipart/form-data with a 'file' field, "
            "or a raw image/png or image/jpeg body",
        )
    return media


async def read_image_bytes(request: Request, media: str, lease: Lease) -> bytes:
    """The uploaded file's bytes: the multipart field ``file``, or the whole raw body."""
    if media != "multipart/form-data":
        return b"".join([chunk async for chunk in bounded_body(request, lease)])
    parser = MultiPartParser(
        request.headers, bounded_body(request, lease), max_files=1, max_fields=16, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except ApiError:
        raise
    except Exception as exc:  # MultiPartException, and python-multipart's own types
        raise ApiError(422, f"the multipart body cannot be parsed ({exc})") from None
    try:
        upload = form.get("file")
        if upload is None:
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise ApiError(422, f"the multipart body has no 'file' field (fields found: {names})")
        if isinstance(upload, str):
            raise ApiError(422, "the multipart field 'file' must be a file upload (with a filename)")
        return await upload.read()
    finally:
        await form.close()


def decode(data: bytes, settings: Settings) -> Decoded:
    """Bytes -> the uploaded RGB image and the model's input (resized, or padded to pad_multiple)."""
    image = images.decode_rgb(data, settings.max_pixels)
    if settings.infer_size is not None:
        return Decoded(image, resize_image(image, settings.infer_size))
    multiple = settings.pad_multiple
    height, width = image.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else image
    return Decoded(image, padded)


def model_pixels(height: int, width: int, settings: Settings) -> int:
    """Pixels of the model's input for a ``height`` x ``width`` image (resized, or padded)."""
    if settings.infer_size is not None:
        return settings.infer_size[0] * settings.infer_size[1]
    multiple = settings.pad_multiple
    return (height + -height % multiple) * (width + -width % multiple)


def decode_cost(data: bytes, settings: Settings) -> int:
    """Bytes decoding ``data`` will hold at its peak, from the header alone, so that a request the
    budget cannot take costs no decode; the same 413/415/422 as ``decode`` for what it refuses."""
    width, height = images.open_checked(data, settings.max_pixels).size
    return DECODE_BYTES_PER_PIXEL * width * height + 3 * model_pixels(height, width, settings)


def memory_bound(settings: Settings, queues: int) -> int:
    """Bytes that requests can hold at once (README "Serve"): ``max_inflight_bytes`` before a queue
    slot, then per queue (model x backend) ``queue_size`` images of up to ``max_pixels`` and their
    model inputs (3 bytes per pixel each; padding to ``pad_multiple`` aside)."""
    model_input = settings.max_pixels if settings.infer_size is None else model_pixels(1, 1, settings)
    return settings.max_inflight_bytes + queues * settings.queue_size * 3 * (settings.max_pixels + model_input)


def labels_for_image(labels: np.ndarray, decoded: Decoded, settings: Settings) -> np.ndarray:
    """The model's labels back at the uploaded image's size (nearest resize, or crop the padding)."""
    height, width = decoded.image.shape[:2]
    if settings.infer_size is not None:
        return resize_label(labels, (height, width))
    return np.ascontiguousarray(labels[:height, :width])


@asynccontextmanager
async def read_upload(request: Request, settings: Settings, admission: Admission) -> AsyncIterator[Decoded]:
    """The request's image, read and decoded under every bound of ``serving.admission``; take the
    queue slot(s) inside the block. Leaving it gives the request's bytes back to the budget, since
    from then on the queue bounds what the request holds::

        async with read_upload(request, settings, admission) as decoded:
            ticket = take_slot(served, settings, admission)

    415/413 from the headers, 429 for a client already sending too many bodies, then 408/413/503
    while the body arrives, 413/415/422 from the image and 503 (or 413) when decoding it does not
    fit the budget.
    """
    media = check_headers(request)
    lease = admission.lease(request)
    try:
        data = await read_image_bytes(request, media, lease)
        lease.end_upload()
        lease.reserve(await run_in_threadpool(decode_cost, data, settings), "decoding the image")
        decoded = await run_in_threadpool(decode, data, settings)
        del data  # the decoded image replaces the bytes (the budget counted both while decoding)
        yield decoded
    finally:
        lease.close()


def take_slot(served: Served, settings: Settings, admission: Admission) -> Ticket:
    """A slot in the model's queue, or 503 + Retry-After when every one is taken."""
    assert served.batcher is not None
    try:
        return served.batcher.reserve()
    except (QueueFullError, BatcherClosedError) as exc:
        raise admission.refuse(
            "queue_size",
            503,
            f"model {served.spec.name!r} ({served.spec.backend}) is busy: {exc} (queue_size {served.batcher.capacity})",
            {"Retry-After": str(settings.retry_after_s)},
        ) from None


async def run_model(served: Served, ticket: Ticket, image: np.ndarray) -> BatchResult:
    """Submit to the model's batcher; shutdown becomes a 503, a predictor failure a JSON 500."""
    assert served.batcher is not None
    try:
        return await served.batcher.run(ticket, image)
    except BatcherClosedError:
        raise ApiError(503, "the service is shutting down; retry on another instance") from None
    except Exception as exc:
        raise ApiError(500, f"inference failed for model {served.spec.name!r} ({served.spec.backend}): {exc}") from exc


def build_response(
    output: OutputFormat, served: Served, decoded: Decoded, labels: np.ndarray, result: BatchResult, settings: Settings
) -> tuple[bytes | dict, str]:
    """Encode the labels (runs in the thread pool): (body, media type)."""
    info = served.predictor.info
    if output == "png":
        return images.encode_png(labels), "image/png"
    if output == "overlay":
        blend = images.overlay(decoded.image, labels, info.palette, settings.overlay_alpha)
        return images.encode_png(blend), "image/png"
    height, width = labels.shape
    body = {
        "model": served.spec.name,
        "backend": served.spec.backend,
        "width": width,
        "height": height,
        "batch_size": result.batch_size,
        "histogram": images.histogram(labels, info.classes),
    }
    return body, "application/json"


def timing_headers(served: Served, result: BatchResult, timing: dict[str, float]) -> dict[str, str]:
    """X-Model, X-Backend and the latency split, so that clients need not parse the body."""
    return {
        "X-Model": served.spec.name,
        "X-Backend": served.spec.backend,
        "X-Inference-Time-Ms": f"{timing['compute']:.2f}",
        "X-Queue-Time-Ms": f"{timing['queue']:.2f}",
        "X-Total-Time-Ms": f"{timing['total']:.2f}",
        "X-Batch-Size": str(result.batch_size),
        "Cache-Control": "no-store",
    }


async def segment(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    model: str | None,
    backend: str | None,
    output: str,
    admission: Admission,
) -> Response:
    """The whole endpoint; every refusal is an ``ApiError`` (see the module docstring for the order)."""
    started = time.perf_counter()
    served = registry.resolve(model, backend)
    request.state.metric_labels = (served.spec.name, served.spec.backend)
    async with read_upload(request, settings, admission) as decoded:
        ticket = take_slot(served, settings, admission)
    try:
        result = await run_model(served, ticket, decoded.model_input)
        labels = await run_in_threadpool(labels_for_image, result.labels, decoded, settings)
        body, media_type = await run_in_threadpool(build_response, output, served, decoded, labels, result, settings)
    finally:
        ticket.release()
    total = time.perf_counter() - started
    registry.metrics.queue_wait.labels(*request.state.metric_labels).observe(result.queue_seconds)
    registry.metrics.request_seconds.labels(*request.state.metric_labels).observe(total)
    timing = {"queue": result.queue_seconds * 1e3, "compute": result.compute_seconds * 1e3, "total": total * 1e3}
    headers = timing_headers(served, result, timing)
    if isinstance(body, dict):
        body["timing_ms"] = {key: round(value, 3) for key, value in timing.items()}
        return JSONResponse(body, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
