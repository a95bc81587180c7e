"""Optional bearer-token authentication (``--api-key-file`` / ``CLDA_API_KEY_FILE``).

The token is read once from a file, not from a flag or an environment variable, so it shows up in
neither ``ps`` nor ``/proc/<pid>/environ``. Every ``/v1/...`` request (and ``/metrics`` with
``--protect-metrics``) must carry ``Authorization: Bearer <token>``; the comparison runs in
constant time (``hmac.compare_digest``), so response timing does not leak how much of a guess was
right. A missing or wrong token is a 401 with ``WWW-Authenticate`` and the service's JSON error
body. The probes (``/healthz``, ``/readyz``), the upload page and the API docs stay open: an
orchestrator must probe without secrets, and the page and docs reveal nothing the token protects.
TLS is not this process's job: run it behind a reverse proxy that terminates TLS (README).
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from clda_deploy.errors import CldaError
from serving.errors import error_response

REALM = "clda-deploy"
PROTECTED_PREFIX = "/v1/"
METRICS_PATH = "/metrics"
MIN_TOKEN_CHARS = 16


class AuthConfigError(CldaError, ValueError):
    """The API key file cannot be used; the message names the file and the problem."""


def read_api_key(path: str | Path) -> bytes:
    """The token in ``path`` (surrounding whitespace stripped): at least ``MIN_TOKEN_CHARS``
    printable characters without spaces, or an ``AuthConfigError`` saying what is wrong."""
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthConfigError(f"api_key_file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"api_key_file {path} cannot be read: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthConfigError(
            f"api_key_file {path} holds {len(token)} characters; use a random token of at least "
            f"{MIN_TOKEN_CHARS} (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if any(char.isspace() or not char.isprintable() for char in token):
        raise AuthConfigError(f"api_key_file {path}: the token must be one line without spaces")
    return token.encode("utf-8")


def is_protected(path: str, protect_metrics: bool) -> bool:
    """Whether a request to ``path`` needs the token."""
    return path.startswith(PROTECTED_PREFIX) or (protect_metrics and path == METRICS_PATH)


class BearerAuthMiddleware:
    """Answers 401 before the endpoint (and before any body is read) unless the request carries
    the token."""

    def __init__(self, app: ASGIApp, token: bytes, protect_metrics: bool = False) -> None:
        self.app, self.token, self.protect_metrics = app, token, protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"], self.protect_metrics):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            await self.app(scope, receive, send)
            return
        if header:
            message, challenge = "the bearer token is wrong", f'Bearer realm="{REALM}", error="invalid_token"'
        else:
            message, challenge = "this endpoint needs 'Authorization: Bearer <token>'", f'Bearer realm="{REALM}"'
        response = error_response(401, message, {"WWW-Authenticate": challenge})
        await response(scope, receive, send)
