"""What every benchmark shares: the one-line error type, size parsing, the settings every command
has, and how a command's settings are declared once and become both its flags and its record.

A settings dataclass is the one place a flag is spelled: each field declared with ``option(...)``
carries its flags and argparse options in its metadata; ``add_options`` turns the fields into
argparse arguments (``dest`` = the field name) and ``settings_from_args`` builds the dataclass from
the parsed namespace, checking the fields marked ``positive``. ``to_json`` writes the fields marked
``recorded`` (the default) into the result JSON.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from clda_deploy.errors import CldaError
from clda_deploy.profiling import default_threads

DEFAULT_OUT = "runs/default/bench"
SAME_THREADS = "CPU threads for PyTorch and ONNX Runtime alike (default: the usable cores)"


class BenchError(CldaError, RuntimeError):
    """A problem the user can fix (missing file, unknown backend, server not ready); printed as
    one line and the command exits with status 2."""


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> (height, width); an argparse type, so a bad value is a usage error."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"size must be HEIGHTxWIDTH with positive integers, e.g. 512x1024; got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def size_label(size: tuple[int, int] | list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``: why a backend or file was skipped, in one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "serving.bench", *argv])


def repo_root() -> Path:
    """The folder ``python -m serving`` runs from (serving/bench/ sits two levels below it)."""
    return Path(__file__).resolve().parents[2]


def option(
    *flags: str, help: str, default: Any = MISSING, positive: bool = False, recorded: bool = True, **arguments: Any
) -> Any:
    """A settings field and its command-line flag(s): ``arguments`` are ``add_argument`` options
    (type, nargs, action, choices, metavar; ``group`` names a required mutually exclusive group);
    ``positive`` values (each item of a list) must be >= 1; ``recorded=False`` keeps it out of the
    JSON (where output goes, which files were chosen: the command line records those)."""
    metadata = {"flags": flags, "help": help, "positive": positive, "recorded": recorded, "arguments": arguments}
    if isinstance(default, list):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _default(item: Any) -> Any:
    return item.default_factory() if item.default is MISSING else item.default


def add_options(parser: argparse.ArgumentParser, settings_type: type) -> None:
    """One argparse argument per ``option`` field of ``settings_type``."""
    groups: dict[str, Any] = {}
    for item in fields(settings_type):
        extra = dict(item.metadata["arguments"])
        target: Any = parser
        if "group" in extra:
            name = extra.pop("group")
            if name not in groups:
                groups[name] = parser.add_mutually_exclusive_group(required=True)
            target = groups[name]
        default = _default(item)
        target.add_argument(
            *item.metadata["flags"],
            dest=item.name,
            help=item.metadata["help"],
            default=list(default) if isinstance(default, tuple) else default,  # argparse appends to lists
            **extra,
        )


Settings = TypeVar("Settings")


def settings_from_args(settings_type: type[Settings], args: argparse.Namespace) -> Settings:
    """``settings_type`` from a namespace ``add_options`` parsed (lists become tuples: frozen
    settings hold no mutable values); a BenchError naming the flag of a non-positive value."""
    values = {}
    for item in fields(settings_type):
        value = getattr(args, item.name)
        value = tuple(value) if isinstance(value, list) else value
        items = value if isinstance(value, tuple) else (value,)
        if item.metadata["positive"] and any(v is not None and v < 1 for v in items):
            raise BenchError(f"{item.metadata['flags'][0]} must be positive, got {getattr(args, item.name)}")
        values[item.name] = value
    return settings_type(**values)


def recorded_settings(settings: Any) -> dict[str, Any]:
    """The ``settings`` entry of a result JSON: every recorded field (tuples as lists)."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    return {item.name: plain(getattr(settings, item.name)) for item in fields(settings) if item.metadata["recorded"]}


@dataclass(frozen=True)
class CommonSettings:
    """What every command has: threads, device, where the outputs go, progress bars."""

    threads: int = option("--threads", help=SAME_THREADS, default=default_threads, type=int, positive=True)
    device: str = option("--device", help="auto (GPU when usable) | cpu | cuda | cuda:N (default auto)", default="auto")
    out: str = option("--out", help=f"output folder (default {DEFAULT_OUT})", default=DEFAULT_OUT, recorded=False)
    progress: bool = option("--no-progress", help="no progress bars", default=True, action="store_false")
    results_doc: str | None = option(
        "--results-doc",
        help="also put the table into this markdown file's own section",
        default=None,
        metavar="MD",
        recorded=False,
    )


@dataclass(frozen=True)
class Skipped:
    """A model file, backend or cell that did not run here, and why (a report lists it instead of
    silently leaving the row out)."""

    model: str
    backend: str
    reason: str
    path: str | None = None
    size: tuple[int, int] | None = None
    batch: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Today's keys in today's order, the unknown ones left out."""
        entry = {"model": self.model, "backend": self.backend, "path": self.path}
        entry.update({"size": None if self.size is None else list(self.size), "batch": self.batch})
        return {**{key: value for key, value in entry.items() if value is not None}, "reason": self.reason}


@dataclass(frozen=True)
class BenchRun:
    """What every result file opens with: the exact command line, when, and the machine."""

    command: str
    created: str
    machine: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "created": self.created, "machine": self.machine}
