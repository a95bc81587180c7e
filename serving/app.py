"""The FastAPI application (DESIGN §9): ``create_app(settings)`` builds it; ``python -m serving`` runs it.

Models are found when the app is built (so an empty folder fails before the server binds a port)
and loaded by the lifespan in a background thread, so ``/healthz`` answers at once and ``/readyz``
turns 200 only after every model is loaded and warmed up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clda_deploy.artifacts import variants
from serving.admission import Admission
from serving.auth import BearerAuthMiddleware, read_api_key
from serving.compare import STUDENT, TEACHER, PairQuery, compare
from serving.errors import ApiError, install_error_handlers
from serving.images import allow_pixels
from serving.metrics import ServiceMetrics
from serving.openapi import (
    METRICS_RESPONSES,
    READYZ_ERRORS,
    SEGMENT_HEADERS,
    SEGMENT_OK,
    UPLOAD_BODY,
    UPLOAD_ERRORS,
    document_bearer_auth,
)
from serving.registry import Loader, ModelRegistry, discover, effective_max_batch, runtime_loader
from serving.schemas import CompareJson, ModelEntry, ModelsResponse, Status
from serving.segment import OutputFormat, segment
from serving.settings import Settings

STATIC = Path(__file__).parent / "static"


class RequestMetricsMiddleware:
    """Counts every response of the model endpoints (``/v1/segment``, ``/v1/compare``: the paths of
    ``metrics.REQUEST_COUNTERS``) by their models and status, whichever layer answered (our errors,
    FastAPI's 422 validation, the endpoint)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in self.metrics.endpoint_requests:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.count_request(path, state.get("metric_labels"), status)


def _model_entry(registry: ModelRegistry, key: tuple[str, str]) -> ModelEntry:
    served = registry.entries[key]
    predictor, batcher = served.predictor, served.batcher
    info = getattr(predictor, "info", None)
    default_backend = next(b for b in registry.backends if (key[0], b) in registry.entries)
    return ModelEntry(
        name=key[0],
        backend=key[1],
        precision=served.spec.precision,
        precision_used=getattr(predictor, "precision_used", None),
        default=key[1] == default_backend,
        state=served.state,
        error=served.error,
        path=str(served.spec.path),
        device=getattr(predictor, "device", None),
        providers=list(getattr(predictor, "providers", ()) or ()),
        classes=list(info.classes) if info else [],
        palette=[list(colour) for colour in info.palette] if info else [],
        queue_capacity=registry.settings.queue_size,
        queue_depth=batcher.depth if batcher else 0,
        max_batch=batcher.max_batch if batcher else effective_max_batch(registry.settings.max_batch, None),
    )


def _add_routes(app: FastAPI, registry: ModelRegistry, settings: Settings, admission: Admission) -> None:
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Status, summary="Liveness: the process answers")
    async def healthz() -> Status:
        return Status(status="ok")

    @app.get("/readyz", response_model=Status, responses=READYZ_ERRORS, summary="Readiness")
    async def readyz() -> Any:
        ready, detail = registry.readiness()
        if not ready:
            raise ApiError(503, f"not ready: {detail}", {"Retry-After": str(settings.retry_after_s)})
        return Status(status="ready", detail=detail)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses=METRICS_RESPONSES)
    async def metrics() -> Response:
        return Response(registry.metrics.render(), media_type=registry.metrics.content_type)

    @app.get("/v1/models", response_model=ModelsResponse, summary="Served models and backends")
    async def models() -> ModelsResponse:
        entries = [_model_entry(registry, key) for key in registry.entries]
        return ModelsResponse(default_model=registry.default_model, models=entries)

    @app.post(
        "/v1/segment",
        summary="Segment one PNG/JPEG image",
        responses={200: SEGMENT_OK, **UPLOAD_ERRORS},
        openapi_extra={"requestBody": UPLOAD_BODY},
    )
    async def segment_endpoint(
        request: Request,
        model: Annotated[str | None, Query(max_length=128, description="model name (default: student)")] = None,
        backend: Annotated[str | None, Query(max_length=32, description=" | ".join(dict.fromkeys(variants())))] = None,
        format: Annotated[
            OutputFormat, Query(description="png: trainIds (mode L); overlay: colour blend; json")
        ] = "png",
    ) -> Response:
        return await segment(request, registry, settings, model, backend, format, admission)


def _add_compare_route(app: FastAPI, registry: ModelRegistry, settings: Settings, admission: Admission) -> None:
    """``POST /v1/compare`` (serving/compare.py), with the body forms and error table of ``/v1/segment``."""

    @app.post(
        "/v1/compare",
        summary="Segment one PNG/JPEG image with two models (student and teacher) and compare them",
        description="Both label maps and overlays, both latencies, teacher/student compute ratio, pixel "
        "agreement. 422 when both sides are one model on one backend; one model on two backends is allowed.",
        response_model=CompareJson,
        responses=UPLOAD_ERRORS,
        openapi_extra={"requestBody": UPLOAD_BODY},
    )
    async def compare_endpoint(
        request: Request,
        # min_length: an empty name would fall back to default_model (the student) on either side
        student: Annotated[str, Query(min_length=1, max_length=128, description="the first model")] = STUDENT,
        teacher: Annotated[str, Query(min_length=1, max_length=128, description="the second model")] = TEACHER,
        backend: Annotated[str | None, Query(max_length=32, description="both sides' backend")] = None,
        student_backend: Annotated[str | None, Query(max_length=32, description="wins over backend")] = None,
        teacher_backend: Annotated[str | None, Query(max_length=32, description="wins over backend")] = None,
    ) -> Response:
        query = PairQuery(student, teacher, backend, student_backend, teacher_backend)
        return await compare(request, registry, settings, query, admission)


def create_app(settings: Settings | None = None, loader: Loader | None = None) -> FastAPI:
    """The service for ``settings``; ``loader`` (path, backend, device, threads) -> Predictor replaces
    ``clda_deploy.runtime.load_predictor`` in tests. Raises ``NoModelsError`` for an empty folder and
    ``AuthConfigError`` for an unusable ``api_key_file``."""
    settings = settings or Settings()
    token = None if settings.api_key_file is None else read_api_key(settings.api_key_file)
    allow_pixels(settings.max_pixels)
    metrics = ServiceMetrics(settings.max_batch or 4)
    registry = ModelRegistry(discover(settings), settings, metrics, loader or runtime_loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start()
        try:
            yield
        finally:
            await run_in_threadpool(registry.close)

    app = FastAPI(
        title="clda-deploy segmentation",
        version="0.1.0",
        description="Semantic segmentation (19 Cityscapes trainIds) with a CLDA student or its UDA teacher.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.admission = admission = Admission(settings, metrics)  # one byte budget per process
    install_error_handlers(app)
    if token is not None:  # inside the metrics middleware, so 401s are counted
        app.add_middleware(BearerAuthMiddleware, token=token, protect_metrics=settings.protect_metrics)
        document_bearer_auth(app, settings.protect_metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=list(SEGMENT_HEADERS))  # every X-* timing header  # fmt: skip
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    _add_routes(app, registry, settings, admission)
    _add_compare_route(app, registry, settings, admission)
    return app


def configure_logging(level: str) -> None:
    """Timestamped ``serving`` logs (model loading, failures) next to uvicorn's own."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_env`` (settings from ``CLDA_*``); the
    worker processes of ``python -m serving --workers N`` start here."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
