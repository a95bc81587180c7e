"""``POST /v1/segment`` as a recipe: resolve the model, check headers, take a queue slot, read the
body under the byte limit, decode under the pixel limit, run the micro-batched predictor, encode.

The cheap checks come first so that a request that will be refused costs no body read and no
decode: 404/422 from the query, 415 from the Content-Type, 413 from the Content-Length, 503 when
the model's queue is full. CPU-heavy steps (decode, resize, PNG encode) run in the thread pool,
inference in the model's batcher thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from clda_deploy.data.transforms import resize_image, resize_label
from serving import images
from serving.batching import BatcherClosedError, BatchResult, QueueFullError, Ticket
from serving.errors import ApiError
from serving.registry import ModelRegistry, Served
from serving.settings import Settings

OutputFormat = Literal["png", "json", "overlay"]
RAW_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream", "")


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # uint8 [H,W,3] as uploaded (display orientation)
    model_input: np.ndarray  # uint8 [h,w,3] resized or padded for the model


def check_headers(request: Request, settings: Settings) -> str:
    """The media type, after refusing unsupported types (415) and declared oversize bodies (413)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data" and media not in RAW_TYPES:
        raise ApiError(
            415,
            f"Content-Type {media!r} is not accepted: send multipart/form-data with a 'file' field, "
            "or a raw image/png or image/jpeg body",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_bytes:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {settings.max_bytes} bytes")
    return media


async def limited_stream(request: Request, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks; 413 as soon as more than ``max_bytes`` arrived (chunked bodies have no length)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ApiError(413, f"the body is larger than the limit of {max_bytes} bytes")
        yield chunk


async def read_image_bytes(request: Request, media: str, max_bytes: int) -> bytes:
    """The uploaded file's bytes: the multipart field ``file``, or the whole raw body."""
    if media != "multipart/form-data":
        return b"".join([chunk async for chunk in limited_stream(request, max_bytes)])
    parser = MultiPartParser(
        request.headers, limited_stream(request, max_bytes), max_files=1, max_fields=16, max_part_size=64 * 1024
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


async def read_body_in_time(request: Request, media: str, settings: Settings) -> bytes:
    """``read_image_bytes`` under ``body_timeout_s``: a client that trickles its upload would hold a
    queue slot for ever (a slow-loris), so it gets a 408 instead."""
    try:
        with anyio.fail_after(settings.body_timeout_s):
            return await read_image_bytes(request, media, settings.max_bytes)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within body_timeout_s = {settings.body_timeout_s:g} s") from None


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


def labels_for_image(labels: np.ndarray, decoded: Decoded, settings: Settings) -> np.ndarray:
    """The model's labels back at the uploaded image's size (nearest resize, or crop the padding)."""
    height, width = decoded.image.shape[:2]
    if settings.infer_size is not None:
        return resize_label(labels, (height, width))
    return np.ascontiguousarray(labels[:height, :width])


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
    request: Request, registry: ModelRegistry, settings: Settings, model: str | None, backend: str | None, output: str
) -> Response:
    """The whole endpoint; every refusal is an ``ApiError`` (see the module docstring for the order)."""
    started = time.perf_counter()
    served = registry.resolve(model, backend)
    request.state.metric_labels = (served.spec.name, served.spec.backend)
    media = check_headers(request, settings)
    assert served.batcher is not None
    try:
        ticket = served.batcher.reserve()
    except (QueueFullError, BatcherClosedError) as exc:
        raise ApiError(
            503,
            f"model {served.spec.name!r} ({served.spec.backend}) is busy: {exc} (queue_size {served.batcher.capacity})",
            {"Retry-After": str(settings.retry_after_s)},
        ) from None
    try:
        data = await read_body_in_time(request, media, settings)
        decoded = await run_in_threadpool(decode, data, settings)
        del data
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
