"""``python -m training ablation``: the CLDA ablation (paper Tab. 3) over seeds.

Rows (DESIGN §3): ``independent_student`` (the student trained alone with DAFormer's recipe),
``kd_only`` (``clda.mapping: none``), ``clda_random``, ``clda_token``, ``clda_channel``,
``clda_both``, ``teacher_before`` (the given teacher) and ``teacher_after`` (the teacher after the
``clda_channel`` run's S->T updates). Each (row, seed) trains into ``<runs>/<row>-s<seed>``; a
finished run is reused, so an interrupted ablation continues. Results: a JSON twin
(``{row: {"miou_mean", "miou_std", "seeds": [...]}}``) and a markdown table placed in ``--out``
between markers (replacing the previous table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.checkpoint import atomic_write
from clda_deploy.results_doc import write_section

STUDENT_ROWS = {"kd_only": "none", "clda_random": "random", "clda_token": "token", "clda_channel": "channel",
                "clda_both": "both"}  # fmt: skip
ROWS = ("independent_student", *STUDENT_ROWS, "teacher_before", "teacher_after")


def read_miou(path: Path) -> float:
    return float(json.loads(path.read_text())["miou"])


def student_row(config: str, teacher: str, overrides: list[str], mapping: str, seed: int, run: Path) -> Path:
    from training.student import run_student

    if not (run / "metrics.json").is_file():
        resume = (run / "checkpoint.pt").is_file()
        run_student(config, teacher, [*overrides, f"clda.mapping={mapping}", f"train.seed={seed}"], str(run), resume)
    return run


def independent_row(config: str, overrides: list[str], seed: int, run: Path) -> Path:
    """The student architecture trained alone with the teacher's recipe (DAFormer UDA)."""
    from training.teacher import run_teacher

    if not (run / "metrics.json").is_file():
        resume = (run / "checkpoint.pt").is_file()
        run_teacher(config, [*overrides, "uda.mode=daformer", f"train.seed={seed}"], str(run), resume)
    return run


def teacher_before(teacher: str, runs: Path) -> float:
    """The given teacher's target-val mIoU (evaluated once, cached in ``<runs>/teacher_before.json``)."""
    from training.evaluate import run_eval

    path = runs / "teacher_before.json"
    if not path.is_file():
        run_eval(teacher, None, [], str(path), None, progress=False)
    return read_miou(path)


def run_ablation(config: str, teacher: str, overrides: list[str], seeds: list[int], runs: str, out: str,
                 json_out: str) -> dict[str, Any]:  # fmt: skip
    from training.baselines import summarize_rows

    runs_dir = Path(runs)
    values: dict[str, list[float]] = {row: [] for row in ROWS}
    before = teacher_before(teacher, runs_dir)
    for seed in seeds:
        values["independent_student"].append(
            read_miou(
                independent_row(config, overrides, seed, runs_dir / f"independent_student-s{seed}") / "metrics.json"
            )
        )
        for row, mapping in STUDENT_ROWS.items():
            run = student_row(config, teacher, overrides, mapping, seed, runs_dir / f"{row}-s{seed}")
            values[row].append(read_miou(run / "metrics.json"))
            if row == "clda_channel":
                values["teacher_after"].append(read_miou(run / "teacher_metrics.json"))
        values["teacher_before"].append(before)
    summary = summarize_rows(values, seeds)
    atomic_write(Path(json_out), lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    command = (f"python -m training ablation -c {config} --teacher {teacher} --seeds {len(seeds)} --runs {runs}"
               + (f" --set {' '.join(overrides)}" if overrides else ""))  # fmt: skip
    table = markdown(summary, command)
    write_section(Path(out), "clda_ablation", "CLDA ablation (Tab. 3)", table)
    print(table)
    return summary


def markdown(summary: dict[str, Any], command: str) -> str:
    rows = ["| row | target-val mIoU (mean ± std) | per seed |", "|---|---|---|"]
    for name, entry in summary.items():
        per_seed = ", ".join(f"{s['miou']:.2f}" for s in entry["seeds"])
        rows.append(f"| {name} | {entry['miou_mean']:.2f} ± {entry['miou_std']:.2f} | {per_seed} |")
    return "\n".join([f"Command: `{command}`", "", *rows])
