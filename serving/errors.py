"""One error shape for every failure: ``{"error": {"code": int, "message": str}}``.

Handlers turn our ``ApiError``, FastAPI's validation errors, Starlette's HTTP errors (404 route,
405 method) and, as a last resort, unexpected exceptions into that shape, so clients parse one
format and a bad request can never surface as an HTML page or a bare 500 traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("serving")


class ApiError(Exception):
    """A failure with its HTTP status; ``message`` names what is wrong and the limit or the fix."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every endpoint uses."""
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's error list -> one sentence: ``query parameter 'format': Input should be ...``."""
    parts = []
    for error in exc.errors():
        location = [str(item) for item in error.get("loc", ())]
        where = f"{location[0]} parameter '{'.'.join(location[1:])}'" if len(location) > 1 else "request"
        parts.append(f"{where}: {error.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, describe_validation(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"no endpoint {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}; see /docs for the API"
    return error_response(exc.status_code, message, dict(exc.headers or {}))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
