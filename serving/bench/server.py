"""The server under test: a ``python -m serving`` subprocess on a free loopback port (``--spawn``),
or a running one given by ``--url``. Load is only ever sent to loopback addresses: a benchmark
must not be able to hammer another machine by a typo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from serving.bench.common import BenchError, repo_root

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_loopback(url: str) -> str:
    """``url`` without a trailing slash; a BenchError unless it is http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchError(f"--url must look like http://127.0.0.1:PORT, got {url!r}")
    if parts.hostname not in LOOPBACK_HOSTS:
        raise BenchError(f"--url must be a loopback address (127.0.0.1, localhost, ::1), got host {parts.hostname!r}")
    return url.rstrip("/")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A server to load: its base URL and, when known, the process id (for RSS)."""

    url: str
    pid: int | None = None
    label: str = "server"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    ready_s: float | None = None

    def last_log_line(self) -> str:
        """The server's last non-empty output line (its error message, when it failed to start)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""


def wait_ready(server: Server, timeout_s: float) -> float:
    """Poll ``/readyz`` until it answers 200; seconds waited. A BenchError when the process exits
    or ``timeout_s`` passes, naming the last answer (or connection error) or the server's last log line."""
    start = time.monotonic()
    last = "no answer"
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while time.monotonic() - start < timeout_s:
            if server.process is not None and server.process.poll() is not None:
                raise BenchError(
                    f"the server exited with status {server.process.returncode} before it was ready "
                    f"(last log line: {server.last_log_line() or 'none'})"
                )
            try:
                answer = client.get(f"{server.url}/readyz")
                if answer.status_code == 200:
                    return time.monotonic() - start
                last = f"HTTP {answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    raise BenchError(f"server {server.url} not ready within {timeout_s:g} s (last: {last})")


def spawn_server(models_dir: Path, env: dict[str, str], label: str, ready_timeout_s: float) -> Server:
    """Start ``python -m serving --models DIR`` on a free loopback port with ``env`` (``CLDA_*``
    settings) and wait until it is ready. Its output goes to a temporary log, shown on failure."""
    if not Path(models_dir).is_dir():
        raise BenchError(f"models folder not found: {models_dir} (run `make export`, or pass --models DIR)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "serving",
        "--models",
        str(Path(models_dir).resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    handle, log_name = tempfile.mkstemp(prefix=f"clda-bench-{label.replace('=', '')}-", suffix=".log")
    with os.fdopen(handle, "w") as log_file:
        # CLDA_* variables of the caller's shell are dropped: the server runs exactly the settings
        # the report records, not whatever a terminal happened to export.
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("CLDA_")}
        process = subprocess.Popen(
            command, cwd=repo_root(), env={**inherited, **env}, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Server(url, process.pid, label, dict(env), process, Path(log_name))
    try:
        server.ready_s = wait_ready(server, ready_timeout_s)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server, grace_s: float = 15.0) -> None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL after ``grace_s``; the log file is removed."""
    process = server.process
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)
    if server.log_path is not None:
        server.log_path.unlink(missing_ok=True)


def served_models(url: str) -> list[dict[str, Any]]:
    """``GET /v1/models`` entries (name, backend, default, queue_capacity, max_batch, ...)."""
    try:
        answer = httpx.get(f"{url}/v1/models", timeout=10.0, trust_env=False)
        answer.raise_for_status()
        return list(answer.json()["models"])
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise BenchError(f"cannot list the models of {url} ({type(exc).__name__}: {exc})") from None


def check_reachable(url: str) -> None:
    """A BenchError naming the URL when nothing answers there."""
    try:
        httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False)
    except httpx.HTTPError as exc:
        raise BenchError(
            f"server not reachable at {url} ({type(exc).__name__}: {exc}); start it with "
            "`python -m serving` or use --spawn"
        ) from None
