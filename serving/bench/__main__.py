"""``python -m serving.bench {latency,http,accuracy}``: see ``serving/bench/__init__.py``.

A problem the user can fix (missing model file, unknown backend, server not reachable or never
ready, bad config key) is one line on stderr and exit status 2, like a usage error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serving.bench.common import (
    BACKENDS,
    DEFAULT_OUT,
    DEFAULT_RUN,
    BenchError,
    command_line,
    default_threads,
    parse_size,
)


def _common(parser: argparse.ArgumentParser, threads_help: str) -> None:
    parser.add_argument("--threads", type=int, default=default_threads(), help=threads_help)
    parser.add_argument("--device", default="auto", help="auto (GPU when usable) | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--results-doc", default=None, metavar="MD", help="also put the table into this markdown file's own section"
    )


def _model_args(parser: argparse.ArgumentParser, backends: list[str]) -> None:
    parser.add_argument("--models", default=DEFAULT_RUN, help=f"run folder to search (default {DEFAULT_RUN})")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="model file (repeatable)")
    parser.add_argument("--backends", nargs="+", default=backends, metavar="B", help=f"among {', '.join(BACKENDS)}")
    parser.add_argument("--student", default="student", help="name of the student model (default student)")
    parser.add_argument("--teacher", default="teacher", help="name of the teacher model (default teacher)")


SAME_THREADS = "CPU threads for PyTorch and ONNX Runtime alike (default: the usable cores)"


def _latency_parser(commands: Any) -> None:
    latency = commands.add_parser("latency", help="in-process latency per model x backend x size x batch")
    _model_args(latency, list(BACKENDS))
    latency.add_argument("--sizes", nargs="+", type=parse_size, default=[(512, 1024), (256, 512)], metavar="HxW")
    latency.add_argument("--batches", nargs="+", type=int, default=[1], metavar="B")
    latency.add_argument("--warmup", type=int, default=3, help="untimed calls per row (default 3)")
    latency.add_argument("--iters", type=int, default=20, help="timed calls per row (default 20)")
    latency.add_argument("--matmul-size", type=int, default=2048, help="N of the N x N fp32 matmul ceiling")
    latency.add_argument("--logits", action="store_true", help="also fetch logits (default: labels only, as served)")
    _common(latency, SAME_THREADS)


def _http_parser(commands: Any) -> None:
    http = commands.add_parser("http", help="concurrent load on a loopback server")
    target = http.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (loopback only)")
    target.add_argument("--spawn", action="store_true", help="start `python -m serving` on a free loopback port")
    http.add_argument("--models", default="runs/default/export", help="folder the spawned server serves")
    http.add_argument("--names", nargs="+", default=["student", "teacher"], help="models to load")
    http.add_argument("--concurrency", nargs="+", type=int, default=[1, 8], metavar="C")
    http.add_argument("--requests", type=int, default=32, help="requests per (server, model, concurrency) cell")
    http.add_argument("--warmup", type=int, default=2, help="untimed requests per model before its cells")
    http.add_argument("--size", type=parse_size, default=(512, 1024), metavar="HxW", help="request image size")
    http.add_argument("--image", help="send this PNG/JPEG instead of a rendered SynthCity scene")
    http.add_argument("--format", default="png", choices=("png", "json", "overlay"), help="response format")
    http.add_argument("--batching", default="both", choices=("both", "on", "off"), help="--spawn: which servers")
    http.add_argument("--max-batch", type=int, help="--spawn: max_batch of the batching server (default 4)")
    http.add_argument("--max-wait-ms", type=float, help="--spawn: max_wait_ms of the batching server")
    http.add_argument("--queue-size", type=int, help="--spawn: queue_size per model (server default 16)")
    http.add_argument("--deadline", type=float, default=300.0, help="hard limit per cell, seconds (default 300)")
    http.add_argument("--timeout", type=float, default=60.0, help="limit per request, seconds (default 60)")
    http.add_argument("--ready-timeout", type=float, default=300.0, help="wait for /readyz, seconds (default 300)")
    http.add_argument("--inprocess-iters", type=int, default=20, help="timed in-process calls for the overhead")
    http.add_argument("--overload", action="store_true", help="fire 4x the queue capacity at once instead")
    http.add_argument("--overload-waves", type=int, default=3, help="--overload: bursts, one after the other")
    http.add_argument("--pid", type=int, help="--url: the server's process id, to report its RSS")
    _common(http, "server threads (CLDA_THREADS) and the in-process reference's (default: the usable cores)")


def _accuracy_parser(commands: Any) -> None:
    accuracy = commands.add_parser("accuracy", help="student vs teacher mIoU and latency through the runtimes")
    _model_args(accuracy, ["torch", "onnxruntime"])
    accuracy.add_argument("-c", "--config", help="YAML config applied over the checkpoint's")
    accuracy.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    accuracy.add_argument("--max-images", type=int, help="evaluate the first N images only")
    accuracy.add_argument("--warmup", type=int, default=2, help="untimed calls before the latency (default 2)")
    accuracy.add_argument("--iters", type=int, default=10, help="timed calls for the latency (default 10)")
    _common(accuracy, SAME_THREADS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.bench", description="Latency, HTTP, accuracy benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_latency_parser, _http_parser, _accuracy_parser):
        add(commands)
    return parser


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        items = value if isinstance(value, list | tuple) else [value]
        if any(item is not None and item < 1 for item in items):
            raise BenchError(f"--{name.replace('_', '-')} must be positive, got {value}")


def run_latency_command(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    from serving.bench import latency_report
    from serving.bench.common import select_models
    from serving.bench.latency import LatencySettings, run_latency

    _check_positive(iters=args.iters, batches=args.batches, threads=args.threads, matmul_size=args.matmul_size)
    files, missing = select_models(args.models, args.model, args.backends)
    settings = LatencySettings(
        sizes=tuple(args.sizes),
        batches=tuple(args.batches),
        warmup=args.warmup,
        iters=args.iters,
        threads=args.threads,
        device=args.device,
        want_logits=args.logits,
        student=args.student,
        teacher=args.teacher,
        progress=not args.no_progress,
        matmul_size=args.matmul_size,
    )
    return "latency", run_latency(files, missing, settings), latency_report.render_markdown, latency_report.render_plot


def run_http_command(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    from serving.bench import http_report
    from serving.bench.http_bench import HttpSettings, run_http

    _check_positive(
        requests=args.requests,
        concurrency=args.concurrency,
        threads=args.threads,
        queue_size=args.queue_size,
        max_batch=args.max_batch,
        inprocess_iters=args.inprocess_iters,
        overload_waves=args.overload_waves,
    )
    settings = HttpSettings(
        url=args.url,
        models_dir=args.models,
        models=tuple(args.names),
        concurrency=tuple(args.concurrency),
        requests=args.requests,
        warmup=args.warmup,
        size=args.size,
        image=args.image,
        output_format=args.format,
        batching=args.batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        threads=args.threads,
        device=args.device,
        deadline_s=args.deadline,
        timeout_s=args.timeout,
        ready_timeout_s=args.ready_timeout,
        inprocess_iters=args.inprocess_iters,
        overload=args.overload,
        overload_waves=args.overload_waves,
        pid=args.pid,
        progress=not args.no_progress,
    )
    stem = "http_overload" if args.overload else "http"
    return stem, run_http(settings), http_report.render_markdown, http_report.render_plot


def run_accuracy_command(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    from serving.bench import accuracy_report
    from serving.bench.accuracy import AccuracySettings, run_accuracy
    from serving.bench.common import select_models

    _check_positive(iters=args.iters, threads=args.threads, max_images=args.max_images)
    files, missing = select_models(args.models, args.model, args.backends)
    settings = AccuracySettings(
        config=args.config,
        overrides=tuple(args.set),
        max_images=args.max_images,
        warmup=args.warmup,
        iters=args.iters,
        threads=args.threads,
        device=args.device,
        student=args.student,
        teacher=args.teacher,
        progress=not args.no_progress,
    )
    return (
        "accuracy",
        run_accuracy(files, missing, settings),
        accuracy_report.render_markdown,
        accuracy_report.render_plot,
    )


COMMANDS = {"latency": run_latency_command, "http": run_http_command, "accuracy": run_accuracy_command}


def main(argv: list[str] | None = None) -> int:
    """Parse, measure, write ``<out>/<command>.{json,md,png}``; 2 on a user-fixable problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from clda_deploy.checkpoint import CheckpointError
    from clda_deploy.config import ConfigError
    from clda_deploy.runtime import RuntimeLoadError
    from serving.bench.common import load_average, machine_info
    from serving.bench.report import write_outputs

    load_before = load_average()
    try:
        import torch

        _check_positive(threads=args.threads)
        torch.set_num_threads(args.threads)  # process-wide: the same count for every torch model here
        stem, payload, markdown, plot = COMMANDS[args.command](args)
    except (BenchError, ConfigError, CheckpointError, RuntimeLoadError) as exc:
        print(f"python -m serving.bench {args.command}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    payload = {
        "command": command_line(argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.threads, load_before),
        **payload,
    }
    table = markdown(payload)
    write_outputs(Path(args.out), stem, payload, table, lambda path: plot(payload, path))
    if args.results_doc:
        from clda_deploy.results_doc import write_section

        # The table opens with its own "## ..." heading: it becomes the section's heading.
        first, _, rest = table.strip().partition("\n")
        heading = first.lstrip("#").strip() if first.startswith("#") else f"Benchmark: {stem}"
        write_section(args.results_doc, f"bench_{stem}", heading, rest if first.startswith("#") else table)
        print(f"updated the bench_{stem} section of {args.results_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
