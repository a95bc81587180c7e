"""Helpers for the benchmark tests, in a uniquely named module (``from conftest import`` is
ambiguous across test folders)."""

from __future__ import annotations


def run_bench(argv: list[str]) -> int:
    """``python -m serving.bench ARGV`` in-process, without progress bars; the exit status."""
    from serving.bench.__main__ import main

    return main([*argv, "--no-progress"])
