"""``python -m training baselines``: source-only, DAFormer UDA and oracle over several seeds.

Each (mode, seed) trains through the teacher command's functions (the ``-c`` config with its ``--set``
pairs, plus ``uda.mode`` and ``train.seed`` as typed values) into ``<runs>/<mode>-s<seed>``;
a run that already has ``metrics.json`` is reused, so an interrupted calibration continues where it
stopped. The summary is ``uda_baselines.json`` (DESIGN §3) plus a markdown table.

``--scheme NAME=CONFIG`` adds a UDA row trained from another config (``uda.mode`` daformer, e.g. HRDA or
MIC) into ``<runs>/<NAME>-s<seed>``. ``--only ROW ...`` computes only those rows and carries every other
row of the existing JSON over unchanged (named as carried over in the table), so adding a scheme does
not retrain the baselines whose inputs did not change.
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


ROW_ORDER = ("source_only", "uda", "oracle")


def run_one(base: Config, mode: str, seed: int, runs: Path, name: str | None = None) -> float:
    """Train one baseline from ``base`` (or reuse a finished run) and return its target-val mIoU; the run
    folder is ``<runs>/<name or mode>-s<seed>``."""
    from clda_deploy.config import override
    from training.teacher import run_teacher

    run_dir = runs / f"{name or mode}-s{seed}"
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


def markdown_table(summary: dict[str, Any], command: str, carried: tuple[str, ...] = ()) -> str:
    rows = ["| model | config | target-val mIoU (mean ± std) | per seed |", "|---|---|---|---|"]
    for name, entry in summary.items():
        per_seed = ", ".join(f"{s['miou']:.2f}" for s in entry["seeds"])
        note = " (carried over)" if name in carried else ""
        config = f"`{entry['config']}`" if entry.get("config") else "-c"
        rows.append(f"| {name}{note} | {config} | {entry['miou_mean']:.2f} ± {entry['miou_std']:.2f} | {per_seed} |")
    gap = summary["oracle"]["miou_mean"] - summary["source_only"]["miou_mean"]
    gain = summary["uda"]["miou_mean"] - summary["source_only"]["miou_mean"]
    rows.append("")
    rows.append(f"oracle − source-only = {gap:.2f} points; UDA − source-only = {gain:.2f} points.")
    for name, entry in summary.items():
        if name not in ROW_ORDER:
            difference = entry["miou_mean"] - summary["uda"]["miou_mean"]
            rows.append(f"{name} − UDA (DAFormer) = {difference:+.2f} points (unpaired: another model and init); "
                        f"{welch_text(entry, summary['uda'])}.")  # fmt: skip
    rows.append(
        f"Calibration targets (DESIGN §5): oracle − source-only ≥ {ORACLE_GAP_TARGET:g}: "
        f"{'met' if gap >= ORACLE_GAP_TARGET else 'NOT met'}; UDA − source-only ≥ {UDA_GAIN_TARGET:g}: "
        f"{'met' if gain >= UDA_GAIN_TARGET else 'NOT met'}."
    )
    return "\n".join([f"Command: `{command}`", "", *rows])


def welch_text(first: dict[str, Any], second: dict[str, Any]) -> str:
    """A Welch 95 % interval for the difference of two rows' means (independent samples)."""
    import math

    from clda_deploy.statistics import t_quantile

    a = [s["miou"] for s in first["seeds"]]
    b = [s["miou"] for s in second["seeds"]]
    if len(a) < 2 or len(b) < 2:
        return "too few seeds for an interval"
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return "no spread"
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(max(1, int(dof))) * math.sqrt(va + vb)
    diff = statistics.fmean(a) - statistics.fmean(b)
    return f"Welch 95 % CI [{diff - half:+.2f}, {diff + half:+.2f}]"


def parse_schemes(pairs: list[str]) -> dict[str, str]:
    """``["hrda=training/configs/synthcity_hrda.yaml"]`` -> ``{"hrda": path}``; the names are row names."""
    from training.errors import UsageError

    schemes = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path or name in ROW_ORDER:
            taken = ", ".join(ROW_ORDER)
            raise UsageError(f"--scheme expects NAME=CONFIG with a new row name (not {taken}), got {pair!r}")
        if not Path(path).is_file():
            raise UsageError(f"--scheme {name}: config file not found: {path}")
        schemes[name] = path
    return schemes


def compute_rows(config_path: str, overrides: list[str], seeds: list[int], runs: Path, schemes: dict[str, str],
                 only: list[str] | None) -> dict[str, Any]:  # fmt: skip
    """Train or reuse the runs of every requested row: ``{row: summary}`` (scheme rows name their config)."""
    from clda_deploy.config import load_config

    base = load_config(config_path, overrides)
    wanted = lambda row: only is None or row in only  # noqa: E731
    results = {mode: [run_one(base, mode, seed, runs) for seed in seeds] for mode in MODES if wanted(LABELS[mode])}
    summary = summarize(results, seeds)
    for name, path in schemes.items():
        if wanted(name):
            scheme = load_config(path, overrides)
            values = {name: [run_one(scheme, "daformer", seed, runs, name=name) for seed in seeds]}
            summary[name] = {**summarize_rows(values, seeds)[name], "config": path}
    return summary


def run_baselines(
    config_path: str,
    overrides: list[str],
    seeds: list[int],
    runs: str,
    json_out: str,
    out: str | None = None,
    schemes: list[str] | None = None,
    only: list[str] | None = None,
) -> dict:
    """Train or reuse every requested (row, seed) run; write the JSON and the table: into the
    ``uda_baselines`` section of ``out`` (docs/results.md), or next to the JSON without ``out``."""
    from training.errors import UsageError

    named = parse_schemes(schemes or [])
    computed = compute_rows(config_path, overrides, seeds, Path(runs), named, only)
    previous = json.loads(Path(json_out).read_text()) if only is not None and Path(json_out).is_file() else {}
    carried = tuple(row for row in previous if row not in computed)
    merged = {**previous, **computed}
    if missing := [row for row in ROW_ORDER if row not in merged]:
        raise UsageError(f"rows {', '.join(missing)} are neither computed (--only) nor in {json_out}")
    order = [*ROW_ORDER[:2], *[row for row in merged if row not in ROW_ORDER], ROW_ORDER[2]]
    summary = {row: merged[row] for row in order}
    atomic_write(Path(json_out), lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    seeds_text = " ".join(str(s) for s in seeds)
    sets = f" --set {' '.join(overrides)}" if overrides else ""
    extra = "".join(f" --scheme {name}={path}" for name, path in named.items())
    extra += f" --only {' '.join(only)}" if only is not None else ""
    command = f"python -m training baselines -c {config_path} --seeds {seeds_text} --runs {runs}{extra}{sets}"
    table = markdown_table(summary, command, carried)
    print(table)
    if out is None:
        atomic_write(Path(json_out).with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))
    else:
        from clda_deploy.reporting import write_section

        write_section(Path(out), "uda_baselines", "UDA baselines on SynthCity", table)
    return summary
