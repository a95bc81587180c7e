"""``python -m serving [--models DIR] [--host 127.0.0.1] [--port 8000] ...``: run the service with uvicorn.

Flags override ``CLDA_*`` environment variables, which override the defaults in ``settings.py``.
A configuration problem (no models, a bad value) is one line on stderr and exit status 2, before
any port is bound, so ``make serve`` fails loudly and scripts can tell it from a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from clda_deploy.artifacts import RunLayout
from serving.settings import Settings

# flag -> (settings field, type, help); each flag defaults to "not given" so the env var stays in force.
FLAGS: dict[str, tuple[str, Any, str]] = {
    "--models": ("models", str, f"folder with <name>.onnx / .plan files (default {RunLayout().export})"),
    "--host": ("host", str, "address to bind (default 127.0.0.1)"),
    "--port": ("port", int, "port (default 8000)"),
    "--workers": ("workers", int, "uvicorn worker processes, each with its own models (default 1)"),
    "--backends": ("backends", str, "comma-separated backends to load, preferred first"),
    "--device": ("device", str, "auto | cpu | cuda | cuda:N"),
    "--threads": ("threads", int, "CPU threads per model"),
    "--queue-size": ("queue_size", int, "requests admitted per model before 503 (default 16)"),
    "--max-batch": ("max_batch", int, "largest micro-batch; 1 disables batching (default 4 on CUDA, 1 on CPU)"),
    "--max-wait-ms": ("max_wait_ms", float, "how long a batch waits for more requests (default 5)"),
    "--max-bytes": ("max_bytes", int, "largest request body in bytes"),
    "--max-pixels": ("max_pixels", int, "largest image in pixels (width x height)"),
    "--max-inflight-bytes": ("max_inflight_bytes", int, "bytes bodies and decodes may hold, then 503 (256 MiB)"),
    "--max-uploads-per-client": ("max_uploads_per_client", int, "bodies one client address sends at once (default 8)"),
    "--body-timeout": ("body_timeout_s", float, "seconds a whole body may take before 408 (default 30)"),
    "--body-idle-timeout": ("body_idle_timeout_s", float, "longest pause between body chunks before 408 (default 10)"),
    "--min-body-rate": ("min_body_rate", int, "bytes/s a body must average after the grace, or 408; 0: off (8192)"),
    "--body-rate-grace": ("body_rate_grace_s", float, "seconds before --min-body-rate applies (default 5)"),
    "--infer-height": ("infer_height", int, "resize every image to this height for inference"),
    "--infer-width": ("infer_width", int, "resize every image to this width for inference"),
    "--log-level": ("log_level", str, "uvicorn/serving log level (default info)"),
    "--api-key-file": ("api_key_file", str, "file with the bearer token /v1 requests must send (default: no auth)"),
    "--cors-origins": ("cors_origins", str, "comma-separated browser origins allowed (default: CORS off)"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve the exported models over HTTP (settings also from CLDA_* environment variables).",
    )
    for flag, (name, kind, text) in FLAGS.items():
        parser.add_argument(flag, dest=name, type=kind, default=None, help=text)
    parser.add_argument(
        "--fp16", action="store_true", default=None, help="also serve <name>.fp16.onnx as backend onnxruntime-fp16"
    )
    parser.add_argument(
        "--protect-metrics", action="store_true", default=None, help="with --api-key-file, /metrics needs it too"
    )
    parser.add_argument(
        "--torch",
        action="append",
        metavar="NAME=PATH",
        help=f"also serve a model.safetensors with PyTorch (repeatable), e.g. student={RunLayout().model('student')}",
    )
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from env + the flags that were given (pydantic-settings ranks init args above env)."""
    given = {FLAGS[flag][0]: getattr(args, FLAGS[flag][0]) for flag in FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if args.fp16:
        given["include_fp16"] = True
    if args.protect_metrics:
        given["protect_metrics"] = True
    if args.torch:
        given["torch_checkpoints"] = args.torch
    return Settings(**given)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (a usage/configuration error, as argparse does)."""
    print(f"python -m serving: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from clda_deploy.errors import CldaError
    from serving.app import configure_logging, create_app
    from serving.auth import read_api_key
    from serving.registry import discover

    args = parse_args(argv)
    try:
        settings = build_settings(args)
        if settings.api_key_file is not None:
            read_api_key(settings.api_key_file)  # an unusable key fails here, before a port is bound
        specs = discover(settings)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()))
    except CldaError as exc:  # no models, an unreadable file name, ...: anything else keeps its traceback
        fail(str(exc))
    configure_logging(settings.log_level)
    logging.getLogger("serving").info("models: %s", ", ".join(f"{s.name}/{s.backend}" for s in specs))
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level}
    if settings.workers > 1:
        os.environ.update(settings.to_env())  # worker processes rebuild the same settings from the env
        uvicorn.run("serving.app:app_from_env", factory=True, workers=settings.workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


if __name__ == "__main__":
    main()
