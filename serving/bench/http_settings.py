"""The flags of ``python -m serving.bench http``, declared once (``common.option``): which server,
the load cells, ``--overload`` and ``--soak`` (a module of its own so that ``http_bench`` holds the
measuring and stays short)."""

from __future__ import annotations

from dataclasses import dataclass

from clda_deploy.profiling import default_threads
from serving.bench.common import CommonSettings, option, parse_size


@dataclass(frozen=True)
class HttpSettings(CommonSettings):
    threads: int = option(
        "--threads",
        default=default_threads,
        type=int,
        positive=True,
        help="server threads (CLDA_THREADS) and the in-process reference's (default: the usable cores)",
    )
    url: str | None = option(
        "--url", help="a running server, e.g. http://127.0.0.1:8000 (loopback only)", default=None, group="target"
    )
    spawn: bool = option(
        "--spawn",
        help="start `python -m serving` on a free loopback port",
        default=False,
        action="store_true",
        group="target",
        recorded=False,
    )
    models_dir: str | None = option("--models", help="folder the spawned server serves", default="runs/default/export")
    models: tuple[str, ...] = option("--names", help="models to load", default=["student", "teacher"], nargs="+")
    concurrency: tuple[int, ...] = option(
        "--concurrency", help="requests in flight", default=[1, 8], nargs="+", type=int, metavar="C", positive=True
    )
    requests: int = option(
        "--requests", help="requests per (server, model, concurrency) cell", default=32, type=int, positive=True
    )
    warmup: int = option("--warmup", help="untimed requests per model before its cells", default=2, type=int)
    size: tuple[int, int] = option(
        "--size", help="request image size", default=(512, 1024), type=parse_size, metavar="HxW"
    )
    image: str | None = option("--image", help="send this PNG/JPEG instead of a rendered SynthCity scene", default=None)
    output_format: str = option("--format", help="response format", default="png", choices=("png", "json", "overlay"))
    batching: str = option("--batching", help="--spawn: which servers", default="both", choices=("both", "on", "off"))
    max_batch: int | None = option(
        "--max-batch",
        help="--spawn: max_batch of the batching server (default 4)",
        default=None,
        type=int,
        positive=True,
    )
    max_wait_ms: float | None = option(
        "--max-wait-ms", help="--spawn: max_wait_ms of the batching server", default=None, type=float
    )
    queue_size: int | None = option(
        "--queue-size", help="--spawn: queue_size per model (server default 16)", default=None, type=int, positive=True
    )
    deadline_s: float = option(
        "--deadline", help="hard limit per cell, seconds (default 300)", default=300.0, type=float
    )
    timeout_s: float = option("--timeout", help="limit per request, seconds (default 60)", default=60.0, type=float)
    ready_timeout_s: float = option(
        "--ready-timeout", help="wait for /readyz, seconds (default 300)", default=300.0, type=float
    )
    inprocess_iters: int = option(
        "--inprocess-iters", help="timed in-process calls for the overhead", default=20, type=int, positive=True
    )
    overload: bool = option(
        "--overload", help="fire 4x the queue capacity at once instead", default=False, action="store_true"
    )
    overload_waves: int = option(
        "--overload-waves", help="--overload: bursts, one after the other", default=3, type=int, positive=True
    )
    pid: int | None = option("--pid", help="--url: the server's process id, to report its RSS", default=None, type=int)
    soak_minutes: float | None = option(
        "--soak",
        help="instead: MINUTES of valid, malformed, slow-body and oversize requests at --soak-rate, with the "
        "server's RSS over time; exit status 3 on any 5xx (default output folder docs/results)",
        default=None,
        type=float,
        metavar="MINUTES",
    )
    soak_rate: float = option("--soak-rate", help="--soak: requests per second (default 10)", default=10.0, type=float)
    soak_sample_s: float = option(
        "--soak-sample", help="--soak: seconds between RSS samples (default 10)", default=10.0, type=float
    )
    soak_slow: int = option(
        "--soak-slow",
        help="--soak: slow-body connections open at most (default 16)",
        default=16,
        type=int,
        positive=True,
    )
