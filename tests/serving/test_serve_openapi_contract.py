"""The OpenAPI document tells the truth (issue #16, item 2), checked with schemathesis in-process.

schemathesis reads ``/openapi.json`` of ``create_app`` (FakeLoader: no models, no network),
generates requests from it, valid and deliberately invalid ones, sends them through ASGI and
checks every answer: no 5xx, a documented status with its documented content type, body schema
and headers, schema-valid requests accepted and invalid ones refused. It runs every phase its
CLI runs (explicit examples, boundary "coverage" cases including undeclared methods and missing
or mistyped bodies, then Hypothesis fuzzing), derandomized and bounded per operation, so CI
sees the same cases every time. The other direction, a documented status that the server can
actually answer, is checked by provoking each one by hand and validating the answer the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi
from serving_testkit import FakeLoader, image_bytes, jpeg_declaring, make_settings

from serving.app import create_app
from serving.auth import is_protected
from serving.compare import PairQuery, resolve_pair
from serving.errors import ApiError

TOKEN = "contract-token-0123456789abcdef"
MAX_PIXELS = 64 * 64
FUZZ_EXAMPLES = int(os.environ.get("OPENAPI_CONTRACT_EXAMPLES", 300))  # fuzzed cases per operation, at most
AUTH_EXAMPLES = 25
# The checks this file exists for; the run must have applied each at least once.
CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "unsupported_method",
}
UPLOAD_STATUSES = {"200", "400", "404", "408", "413", "415", "422", "429", "503"}


@st.composite
def images(draw, fmt: str) -> bytes:
    """A small real PNG or JPEG (under MAX_PIXELS, in a mode the decoder converts): what the
    document's ``format: binary`` stands for, since the server sniffs and decodes the bytes."""
    height, width = draw(st.integers(1, 32)), draw(st.integers(1, 32))
    array = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"] if fmt == "PNG" else ["RGB", "L"]))
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


# Process-wide, as schemathesis intends: bodies of these media types (and multipart parts whose
# encoding names them) are drawn from these strategies instead of arbitrary bytes.
schemathesis.openapi.media_type("image/png", images("PNG"))
schemathesis.openapi.media_type("image/jpeg", images("JPEG"))
schemathesis.openapi.media_type("application/octet-stream", st.one_of(images("PNG"), images("JPEG")))


@dataclass
class Outcome:
    cases: Counter = field(default_factory=Counter)  # operation label -> generated cases
    statuses: Counter = field(default_factory=Counter)  # (operation label, status) -> responses
    checks: set = field(default_factory=set)  # names of the checks that ran
    failures: list = field(default_factory=list)  # one readable line (and a curl) per failure


def config(max_examples: int, auth: bool) -> schemathesis.Config:
    """Every phase and check (schemathesis' defaults), derandomized, at most ``max_examples``
    fuzzed cases per operation and valid plus invalid data."""
    settings = {
        "seed": 16,
        "generation": {"mode": "all", "max-examples": max_examples, "deterministic": True, "database": "none"},
    }
    if auth:
        settings["auth"] = {"openapi": {"bearer": {"bearer": TOKEN}}}
    return schemathesis.Config.from_dict(settings)


@contextlib.contextmanager
def served(tmp_path, max_examples: int, auth: bool = False, loader: FakeLoader | None = None, **overrides):
    """(app, schema) for an app built with small limits: models ready, lifespan stopped on exit."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if auth:
        key = tmp_path / "api.key"
        key.write_text(TOKEN)
        overrides.update(api_key_file=key, protect_metrics=True)
    settings = make_settings(tmp_path, max_bytes=64 * 1024, max_pixels=MAX_PIXELS, body_timeout_s=5, **overrides)
    app = create_app(settings, loader=loader or FakeLoader())
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config(max_examples, auth))
        skip_one_model_twice(schema, app)
        yield app, schema
    finally:
        asgi.shutdown_lifespans()


def skip_one_model_twice(schema, app) -> None:
    """/v1/compare refuses (422) a student and teacher that resolve to one model on one backend:
    a rule across parameters that OpenAPI cannot state (the operation's description does). Such
    queries are left out of generation, judged by the server's own rule, ``resolve_pair``."""

    @schema.hook
    def filter_query(context, query) -> bool:
        if context.operation is None or context.operation.path != "/v1/compare" or not isinstance(query, dict):
            return True
        values = {name: query.get(name) for name in PairQuery.__dataclass_fields__}
        if not all(value is None or isinstance(value, str) for value in values.values()):
            return True
        given = {name: value for name, value in values.items() if value is not None}  # absent: the default
        try:
            resolve_pair(app.state.registry, PairQuery(**given))
        except ApiError as exc:
            return exc.status != 422
        return True


def wait_ready(app, timeout: float = 10.0) -> None:
    with asgi.get_client(app) as client:  # starts the lifespan, which schemathesis' calls then share
        deadline = time.monotonic() + timeout
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the fake models never became ready"
            time.sleep(0.01)


def run(schema) -> Outcome:
    """Run schemathesis' engine (what ``st run`` runs) on ``schema`` and collect what it saw. Not its
    pytest plugin: ``schemathesis.pytest.from_fixture`` (an app built per test) reads pytest's
    private ``Function._nodeid``, which pytest 9.2 no longer has."""
    outcome = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            record(outcome, event.recorder)
        elif isinstance(event, events.NonFatalError):
            outcome.failures.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            outcome.failures += [f"{failure.title}: {failure.message}" for failure in event.failures]
    return outcome


def record(outcome: Outcome, recorder) -> None:
    outcome.cases[recorder.label] += len(recorder.cases)
    for interaction in recorder.interactions.values():
        if interaction.response is not None:
            outcome.statuses[recorder.label, interaction.response.status_code] += 1
    for checks in recorder.checks.values():
        for check in checks:
            outcome.checks.add(check.name)
            if check.failure_info is not None:
                failure = check.failure_info.failure
                line = f"{recorder.label} {check.name}: {failure.title}: {failure.message}"
                outcome.failures.append(f"{line}\n    {check.failure_info.code_sample}")


def report(outcome: Outcome) -> str:
    unique = list(dict.fromkeys(outcome.failures))
    return f"{len(unique)} schemathesis failures:\n" + "\n".join(unique[:20])


def test_the_server_keeps_every_promise_of_its_document(tmp_path):
    with served(tmp_path, max_examples=FUZZ_EXAMPLES) as (app, schema):
        wait_ready(app)
        outcome = run(schema)
    assert not outcome.failures, report(outcome)
    assert CHECKS <= outcome.checks, f"checks that never ran: {CHECKS - outcome.checks}"
    for label in ("POST /v1/segment", "POST /v1/compare"):
        seen = {status for (operation, status), _ in outcome.statuses.items() if operation == label}
        assert {200, 404, 405, 422} <= seen, (label, seen)  # valid, unknown model, undeclared method, invalid
    assert sum(outcome.cases.values()) >= 400, outcome.cases


def test_with_a_token_the_document_and_the_401s_agree(tmp_path):
    with served(tmp_path, max_examples=AUTH_EXAMPLES, auth=True) as (app, schema):
        wait_ready(app)
        outcome = run(schema)
    assert not outcome.failures, report(outcome)
    assert "ignored_auth" in outcome.checks  # the token was sent, and requests without it were refused
    refused = {operation for (operation, status), _ in outcome.statuses.items() if status == 401}
    assert refused == {"GET /metrics", "GET /v1/models", "POST /v1/segment", "POST /v1/compare"}


def documented(app) -> dict[str, set[str]]:
    """'METHOD /path' -> the statuses its operation documents."""
    paths = app.openapi()["paths"]
    return {
        f"{method.upper()} {path}": set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()
    }


@pytest.mark.parametrize("auth, protect_metrics", [(False, False), (True, False), (True, True)])
def test_each_operation_lists_exactly_the_statuses_it_can_answer(tmp_path, auth, protect_metrics):
    overrides = {}
    if auth:
        (tmp_path / "api.key").write_text(TOKEN)
        overrides = {"api_key_file": tmp_path / "api.key", "protect_metrics": protect_metrics}
    app = create_app(make_settings(tmp_path, **overrides), loader=FakeLoader())
    document = app.openapi()
    expected = {
        "GET /healthz": {"200"},
        "GET /readyz": {"200", "503"},
        "GET /metrics": {"200"},
        "GET /v1/models": {"200"},
        "POST /v1/segment": UPLOAD_STATUSES,
        "POST /v1/compare": UPLOAD_STATUSES,
    }
    for operation in expected:
        if auth and is_protected(operation.split()[1], protect_metrics):
            expected[operation] = expected[operation] | {"401"}
    assert documented(app) == expected
    secured = {
        f"{method.upper()} {path}"
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    }
    assert secured == {operation for operation, statuses in expected.items() if "401" in statuses}
    assert ("securitySchemes" in document.get("components", {})) == auth
    for operation in document["paths"]["/v1/segment"]["post"], document["paths"]["/v1/compare"]["post"]:
        for status in UPLOAD_STATUSES - {"200"}:
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status


def provoked(schema, operation: str, expected: int, **request):
    """Send one hand-made request through schemathesis and validate the answer against the document."""
    method, path = operation.split()
    case = schema[path][method].Case(**request)
    # A 503 is a documented answer here, not the bug `not_a_server_error` looks for.
    excluded = [schemathesis.checks.not_a_server_error] if expected == 503 else []
    response = case.call_and_validate(excluded_checks=excluded)
    assert response.status_code == expected, (operation, response.status_code, response.text)
    return response


def test_the_documented_refusals_happen_and_match_the_document(tmp_path):
    """408 (a stalling body), 429 (concurrent uploads) and 400 (a client leaving mid-body) need a
    real socket: tests/serving/test_serve_admission.py provokes them."""
    png = image_bytes(np.zeros((8, 8, 3), dtype=np.uint8))
    with served(tmp_path / "open", max_examples=1) as (app, schema):
        wait_ready(app)
        for operation in ("POST /v1/segment", "POST /v1/compare"):
            provoked(schema, operation, 200, body=png, media_type="image/png")
            provoked(schema, operation, 404, query={"backend": "nope"}, body=png, media_type="image/png")
            provoked(schema, operation, 413, body=b"\x89PNG" + bytes(70_000), media_type="image/png")
            provoked(schema, operation, 413, body=jpeg_declaring(100, 100), media_type="image/jpeg")
            provoked(schema, operation, 415, body=b"GIF89a" + bytes(16), media_type="application/octet-stream")
            provoked(schema, operation, 422, body=png[:40], media_type="image/png")
        for query in {"teacher": "student"}, {"teacher": ""}:  # "" used to mean default_model: the student
            provoked(schema, "POST /v1/compare", 422, query=query, body=png, media_type="image/png")
    gate = threading.Event()  # models stay loading until it opens
    with served(tmp_path / "loading", max_examples=1, loader=FakeLoader(gate=gate)) as (app, schema):
        try:
            provoked(schema, "GET /healthz", 200)
            assert provoked(schema, "GET /readyz", 503).headers["retry-after"] == ["1"]
            for operation in ("POST /v1/segment", "POST /v1/compare"):
                provoked(schema, operation, 503, body=png, media_type="image/png")
        finally:
            gate.set()
    with served(tmp_path / "auth", max_examples=1, auth=True) as (app, schema):
        wrong = {"Authorization": "Bearer not-the-token-at-all"}
        for operation in ("GET /metrics", "GET /v1/models", "POST /v1/segment", "POST /v1/compare"):
            challenge = provoked(schema, operation, 401, headers=wrong).headers["www-authenticate"]
            assert challenge == ['Bearer realm="clda-deploy", error="invalid_token"']
