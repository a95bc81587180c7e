"""``python -m training baselines``: source-only, DAFormer UDA and oracle over several seeds.

Each (mode, seed) trains through the teacher command's functions (the ``-c`` config with its ``--set``
pairs, plus ``uda.mode`` and ``train.seed`` as typed values) into ``<runs>/<mode>-s<seed>``;
a run that already has ``metrics.json`` is reused, so an interrupted calibration continues where it
stopped. The summary is ``uda_baselines.json`` (DESIGN §3) plus a markdown table.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import CHECKPOINT_FILE, METRICS_FILE
from clda_deploy.checkpoint import atomic_write
from clda_deploy.config import Config

MODES = ("source_only", "daformer", "oracle")
LABELS = {"source_only": "source_only", "daformer": "uda", "oracle": "oracle"}
ORACLE_GAP_TARGET = 15.0  # mIoU points the oracle must be above source-only (DESIGN §5)
UDA_GAIN_TARGET = 5.0  # mIoU points DAFormer UDA must recover over source-only (DESIGN §5)


def run_one(base: Config, mode: str, seed: int, runs: Path) -> float:
    """Train one baseline from ``base`` (or reuse a finished run) and return its target-val mIoU."""
    from clda_deploy.config import override
    from training.teacher import run_teacher

    run_dir = runs / f"{mode}-s{seed}"
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        print(f"== {mode}, seed {seed} -> {run_dir}")
        resume = (run_dir / CHECKPOINT_FILE).is_file()
        run_teacher(override(base, {"uda.mode": mode, "train.seed": seed}), run_dir, resume)
    return float(json.loads(metrics_path.read_text())["miou"])


def summarize_rows(values: dict[str, list[float]], seeds: list[int]) -> dict[str, Any]:
    """``{row: {"miou_mean", "miou_std", "seeds": [{"seed", "miou"}, ...]}}`` (DESIGN §3 result rows)."""
    summary = {}
    for row, row_values in values.items():
        summary[row] = {
            "miou_mean": statistics.fmean(row_values),
            "miou_std": statistics.stdev(row_values) if len(row_values) > 1 else 0.0,
            "seeds": [{"seed": s, "miou": v} for s, v in zip(seeds, row_values, strict=True)],
        }
    return summary


def summarize(results: dict[str, list[float]], seeds: list[int]) -> dict[str, Any]:
    """``{"source_only"|"uda"|"oracle": {...}}`` from the per-mode results."""
    return summarize_rows({LABELS[mode]: values for mode, values in results.items()}, seeds)


def markdown_table(summary: dict[str, Any], command: str) -> str:
    rows = ["| model | target-val mIoU (mean ± std) | per seed |", "|---|---|---|"]
    for name, entry in summary.items():
        per_seed = ", ".join(f"{s['miou']:.2f}" for s in entry["seeds"])
        rows.append(f"| {name} | {entry['miou_mean']:.2f} ± {entry['miou_std']:.2f} | {per_seed} |")
    gap = summary["oracle"]["miou_mean"] - summary["source_only"]["miou_mean"]
    gain = summary["uda"]["miou_mean"] - summary["source_only"]["miou_mean"]
    rows.append("")
    rows.append(f"oracle − source-only = {gap:.2f} points; UDA − source-only = {gain:.2f} points.")
    rows.append(
        f"Calibration targets (DESIGN §5): oracle − source-only ≥ {ORACLE_GAP_TARGET:g}: "
        f"{'met' if gap >= ORACLE_GAP_TARGET else 'NOT met'}; UDA − source-only ≥ {UDA_GAIN_TARGET:g}: "
        f"{'met' if gain >= UDA_GAIN_TARGET else 'NOT met'}."
    )
    return "\n".join([f"Command: `{command}`", "", *rows])


def run_baselines(
    config_path: str, overrides: list[str], seeds: list[int], runs: str, json_out: str, out: str | None = None
) -> dict:
    """Train or reuse every (mode, seed) run; write the JSON and the table: into the
    ``uda_baselines`` section of ``out`` (docs/results.md), or next to the JSON without ``out``."""
    from clda_deploy.config import load_config

    runs_dir = Path(runs)
    base = load_config(config_path, overrides)
    results = {mode: [run_one(base, mode, seed, runs_dir) for seed in seeds] for mode in MODES}
    summary = summarize(results, seeds)
    atomic_write(Path(json_out), lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    seeds_text = " ".join(str(s) for s in seeds)
    sets = f" --set {' '.join(overrides)}" if overrides else ""
    command = f"python -m training baselines -c {config_path} --seeds {seeds_text} --runs {runs}{sets}"
    table = markdown_table(summary, command)
    print(table)
    if out is None:
        atomic_write(Path(json_out).with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))
    else:
        from clda_deploy.reporting import write_section

        write_section(Path(out), "uda_baselines", "UDA baselines on SynthCity", table)
    return summary
