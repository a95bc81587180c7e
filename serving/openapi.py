"""What the OpenAPI document says beyond what FastAPI derives from the routes (issue #16, item 2).

The upload endpoints read their body themselves (``serving.segment.read_upload``), so FastAPI knows
neither the body forms nor the refusals; they are declared here, endpoint by endpoint, and only
where the server can answer them: 401 only when ``api_key_file`` is set and only on the paths the
bearer middleware guards (``serving.auth.is_protected``), 503 on ``/readyz`` and the model
endpoints. tests/serving/test_serve_openapi_contract.py holds the server to the document with
schemathesis.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from serving.auth import REALM, is_protected
from serving.schemas import ErrorBody, SegmentJson

BEARER = "bearer"  # the name of the security scheme in components.securitySchemes
_ERROR_BODY_REF = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}}}
_RETRY_AFTER = {"description": "seconds to wait before retrying (retry_after_s)", "schema": {"type": "integer"}}
_ERROR_TEXT = {
    400: "the client closed the connection before its body was complete (counted in /metrics; nobody reads it)",
    404: "unknown model or backend",
    408: "the body stalled: not complete within body_timeout_s, a pause over body_idle_timeout_s, or "
    "slower than min_body_rate after body_rate_grace_s",
    413: "body over max_bytes, image over max_pixels (decompression bombs included), or an image whose "
    "decoding alone needs more than max_inflight_bytes",
    415: "not a PNG or JPEG (by content type or by magic bytes)",
    422: "undecodable image or bad parameter",
    429: "the client address already sends max_uploads_per_client bodies (see Retry-After)",
    503: "a model still loading, its queue full, or request bodies in flight holding max_inflight_bytes (these "
    "with Retry-After); a model that failed to load, or the service shutting down",
}
# Headers every answer with that status carries (Retry-After on a 503 only when retrying can help).
_ERROR_HEADERS = {429: {"Retry-After": {**_RETRY_AFTER, "required": True}}, 503: {"Retry-After": _RETRY_AFTER}}


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries: each status with its description, ``ErrorBody`` and headers."""
    return {
        code: {"model": ErrorBody, "description": _ERROR_TEXT[code], "headers": _ERROR_HEADERS.get(code, {})}
        for code in codes
    }


# The model endpoints' refusals (serving.segment.read_upload and registry.resolve).
UPLOAD_ERRORS = _error_responses(400, 404, 408, 413, 415, 422, 429, 503)
READYZ_ERRORS = {
    503: {
        "model": ErrorBody,
        "description": "not every model is loaded and warmed up yet, or one failed",
        "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
    }
}

_TEXT = {"type": "string"}
_IMAGE_FILE = {"type": "string", "format": "binary"}
# serving.segment.check_headers accepts these raw types (and none at all); the magic bytes decide.
UPLOAD_BODY = {
    "required": True,
    "description": "the image (PNG or JPEG, at most max_bytes and max_pixels): the 'file' part of a "
    "multipart form, or the whole body",
    "content": {
        "multipart/form-data": {  # the server answers 422 without ``file``: the schema says so
            "schema": {"type": "object", "properties": {"file": _IMAGE_FILE}, "required": ["file"]},
            "encoding": {"file": {"contentType": "image/png, image/jpeg"}},
        },
        "image/png": {"schema": _IMAGE_FILE},
        "image/jpeg": {"schema": _IMAGE_FILE},
        "application/octet-stream": {"schema": _IMAGE_FILE},
    },
}


def _header(description: str, kind: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": kind}}


# serving.segment.timing_headers, on every 200 of /v1/segment.
SEGMENT_HEADERS = {
    "X-Model": _header("the model that answered", "string"),
    "X-Backend": _header("the backend that answered", "string"),
    "X-Inference-Time-Ms": _header("ms of the batch's predictor call", "number"),
    "X-Queue-Time-Ms": _header("ms from submission to the start of the batch", "number"),
    "X-Total-Time-Ms": _header("ms inside the server", "number"),
    "X-Batch-Size": _header("images computed together with this one", "integer"),
}
SEGMENT_OK = {"model": SegmentJson, "content": {"image/png": {"schema": _IMAGE_FILE}}, "headers": SEGMENT_HEADERS}
METRICS_RESPONSES = {200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": _TEXT}}}}
_CHALLENGE = f'Bearer realm="{REALM}", with error="invalid_token" when a token was sent'
_UNAUTHORIZED = {
    "description": "no or a wrong 'Authorization: Bearer' token (api_key_file)",
    "headers": {"WWW-Authenticate": _header(_CHALLENGE, "string")},
    "content": _ERROR_BODY_REF,
}


def document_bearer_auth(app: FastAPI, protect_metrics: bool) -> None:
    """Declare the bearer scheme in ``app``'s OpenAPI document, with its 401, on exactly the paths
    ``serving.auth.BearerAuthMiddleware`` guards (call it only when a token is configured)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()  # FastAPI caches it in app.openapi_schema: edited once, in place
            schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[BEARER] = {"type": "http", "scheme": "bearer", "description": "the token in api_key_file"}
            for path, operations in document["paths"].items():
                if not is_protected(path, protect_metrics):
                    continue
                for operation in operations.values():
                    operation["security"] = [{BEARER: []}]
                    responses = {**operation["responses"], "401": _UNAUTHORIZED}
                    operation["responses"] = dict(sorted(responses.items()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
