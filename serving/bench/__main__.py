"""``python -m serving.bench {latency,http,accuracy,frontier}``: see ``serving/bench/__init__.py``.

Each command is a settings dataclass (its flags, declared once with ``common.option``) and a
function from those settings to a typed result record (``to_json``, ``markdown``, ``plot``,
``targets``). A problem the user can fix (missing model file, unknown backend, server not
reachable or never ready, bad config key) is one line on stderr and exit status 2, like a usage
error; a failed gate target would exit 3 (the benchmarks' targets are informational: they describe
the machine that ran them as much as the models).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from serving.bench.accuracy import AccuracySettings, run_accuracy
from serving.bench.common import BenchRun, add_options, command_line, settings_from_args
from serving.bench.frontier import FrontierSettings, run_frontier
from serving.bench.http_bench import HttpSettings, run_http
from serving.bench.latency import LatencySettings, run_latency


class Command(NamedTuple):
    help: str
    settings: type
    run: Callable[[Any], Any]


COMMANDS = {
    "latency": Command("in-process latency per model x backend x size x batch", LatencySettings, run_latency),
    "http": Command("concurrent load on a loopback server", HttpSettings, run_http),
    "accuracy": Command("student vs teacher mIoU and latency through the runtimes", AccuracySettings, run_accuracy),
    "frontier": Command(
        "accuracy-latency table and Pareto plot from latency.json + parity.json", FrontierSettings, run_frontier
    ),  # fmt: skip
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.bench", description="Latency, HTTP, accuracy benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        add_options(commands.add_parser(name, help=command.help), command.settings)
    return parser


def write_results(result: Any, run: BenchRun, settings: Any) -> None:
    """``<out>/<stem>.{json,md,png}`` (the markdown also printed) and, with ``--results-doc``, the
    command's own section of that markdown file."""
    from clda_deploy.reporting import write_outputs, write_table_section

    table = result.markdown(run)
    out = Path(getattr(result, "out_dir", None) or settings.out)  # a result may have its own default folder
    write_outputs(out, result.stem, {**run.to_json(), **result.to_json()}, table, result.plot)
    if settings.results_doc:
        key = f"bench_{result.stem}"
        write_table_section(settings.results_doc, key, table, f"Benchmark: {result.stem}")
        print(f"updated the {key} section of {settings.results_doc}")


def main(argv: list[str] | None = None) -> int:
    """Parse, measure, write the results; 2 on a user-fixable problem, 3 when a gate target fails."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from clda_deploy.errors import CldaError
    from clda_deploy.profiling import load_average, machine_info
    from clda_deploy.reporting import gate_status

    command = COMMANDS[args.command]
    load_before = load_average()
    try:
        import torch

        settings = settings_from_args(command.settings, args)
        torch.set_num_threads(settings.threads)  # process-wide: the same count for every torch model here
        result = command.run(settings)
    except CldaError as exc:  # a problem the user can fix; anything else keeps its traceback
        print(f"python -m serving.bench {args.command}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_results(result, BenchRun(command_line(argv), created, machine_info(settings.threads, load_before)), settings)
    return gate_status(result.targets())


if __name__ == "__main__":
    sys.exit(main())
