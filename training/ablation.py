"""``python -m training ablation``: the CLDA ablation (paper Tab. 3) over paired seeds.

Rows, each a student of ``-c``'s config trained from the same teacher file:
- ``independent_student``: the student architecture trained alone with DAFormer's recipe (no teacher);
- ``kd_only`` (``clda.mapping: none``, Tab. 3 row 1), ``clda_random``, ``clda_channel`` (Eq. 6):
  these four over ``--seeds`` seeds with ``clda.student_init`` random *and* teacher;
- ``clda_token``, ``clda_both`` and ``clda_placebo`` (channel mapping with ``--placebo-alpha``, so close
  to 1 that the teacher barely moves) over ``--extra-seeds`` seeds with the config's own init;
- ``teacher_before`` (the given teacher) and ``teacher_after`` (after each ``clda_channel`` run's S->T).

Cost: per (seed, init) one prefix run (the ``clda_channel`` config up to T3) keeps snapshots at T2 and
T3, and every student row forks from them (training/fork.py): the student trains identically in every
mode up to T3, so the rows share that prefix exactly and differ only in what they change. ``--shard K/N`` runs the
K-th of N interleaved shares of the (seed, init) groups, so N processes with one thread each use N cores;
the last command without ``--shard`` reuses every finished run and writes the results. Every run must
come from the same teacher file (sha256), or the ablation refuses to mix them.

Results: ``clda_ablation.json`` = ``{"teacher", "student_config", "schedule", "rows": {row: {init:
{"n", "mean", "std", "ci95", "seeds": [{"seed", "miou", "run", "model_sha256"}]}}}, "differences": {name:
{init: paired difference}}}`` and a markdown table in ``--out`` between the ``clda_ablation`` markers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clda_deploy.checkpoint import atomic_write

INITS = ("random", "teacher")
MAIN_ROWS = ("independent_student", "kd_only", "clda_random", "clda_channel")
EXTRA_ROWS = ("clda_token", "clda_both", "clda_placebo")
TEACHER_ROWS = ("teacher_before", "teacher_after")
ROWS = (*MAIN_ROWS, *EXTRA_ROWS, *TEACHER_ROWS)
MAPPINGS = {"kd_only": "none", "clda_random": "random", "clda_channel": "channel", "clda_token": "token",
            "clda_both": "both", "clda_placebo": "channel"}  # fmt: skip
FORK_POINT = {"clda_channel": "t3", "kd_only": "t3", "clda_random": "t3", "clda_placebo": "t3", "clda_token": "t2",
              "clda_both": "t2"}  # fmt: skip
DEFAULT_PLACEBO_ALPHA = 0.99999  # 1 - alpha^steps stays below 0.01 for a few hundred S->T steps


@dataclass(frozen=True)
class Plan:
    """What one ablation trains: the inputs every run shares."""

    config: str
    teacher: str
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    extra_seeds: tuple[int, ...]
    runs: Path
    config_init: str  # the config's own clda.student_init: the init of the extra rows
    placebo_alpha: float = DEFAULT_PLACEBO_ALPHA

    def run_dir(self, row: str, init: str, seed: int) -> Path:
        return self.runs / f"{row}-{init}-s{seed}"

    def groups(self) -> list[tuple[int, str]]:
        """(seed, init) pairs in run order: seed-major, so an interrupted ablation has whole seeds."""
        return [(seed, init) for seed in self.seeds for init in INITS]

    def rows_of(self, seed: int, init: str) -> list[str]:
        extras = list(EXTRA_ROWS) if init == self.config_init and seed in self.extra_seeds else []
        return [*MAIN_ROWS, *extras]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def row_overrides(plan: Plan, row: str, init: str, seed: int) -> list[str]:
    sets = [*plan.overrides, f"train.seed={seed}", f"clda.student_init={init}"]
    if row in MAPPINGS:
        sets.append(f"clda.mapping={MAPPINGS[row]}")
    if row == "clda_placebo":
        sets.append(f"clda.alpha={plan.placebo_alpha}")
    return sets


def teacher_initialised_file(plan: Plan) -> Path:
    """The teacher-initialised student as a model file, so the independent row (which trains through
    the teacher command, DAFormer's recipe) starts from the very weights the CLDA rows start from."""
    from clda_deploy.checkpoint import build_from_config, file_sha256, load_segmenter, save_model
    from clda_deploy.config import load_config
    from clda_deploy.data import build_dataset
    from training.student import initialise_student, saliency_batches

    path = plan.runs / "teacher_initialised_student.safetensors"
    if path.is_file():
        return path
    cfg = load_config(plan.config, [*plan.overrides, "clda.student_init=teacher"])
    teacher, student = load_segmenter(plan.teacher), build_from_config(cfg)
    batches = saliency_batches(cfg, {"val": build_dataset(cfg.data.val, train=False)})
    initialise_student(cfg, teacher, student, batches, plan.runs)
    save_model(path, student, cfg, role="student", extra={"clda_teacher_sha256": file_sha256(plan.teacher)})
    return path


def train_independent(plan: Plan, init: str, seed: int) -> Path:
    from training.teacher import run_teacher

    run = plan.run_dir("independent_student", init, seed)
    if not (run / "metrics.json").is_file():
        sets = [*plan.overrides, "uda.mode=daformer", f"train.seed={seed}", "clda.student_init=random"]
        if init == "teacher":
            sets.append(f"model.init={teacher_initialised_file(plan)}")
        run_teacher(plan.config, sets, str(run), (run / "checkpoint.pt").is_file())
    return run


def train_prefix(plan: Plan, init: str, seed: int) -> Path:
    """The steps every student row of (seed, init) shares: the ``clda_channel`` config trained to T3,
    keeping snapshots at T2 (before LSR) and T3 (LSR pick and channel mapping made, teacher unchanged)."""
    from clda_deploy.config import load_config, stage_iterations
    from training.loop import CHECKPOINT, Trainer, snapshot_name
    from training.student import check_student_config, prepare_student

    run = plan.run_dir("prefix", init, seed)
    cfg = load_config(plan.config, row_overrides(plan, "clda_channel", init, seed))
    t2, t3 = stage_iterations(cfg)
    if (run / snapshot_name(t3)).is_file():
        return run
    check_student_config(cfg, plan.teacher)
    resume = (run / CHECKPOINT).is_file()
    inputs, _ = prepare_student(cfg, plan.teacher, run, resume)
    inputs.snapshots, inputs.stop_at = (t2, t3), t3
    if Trainer(inputs).run(resume=resume).interrupted:
        raise KeyboardInterrupt
    return run


def train_student_row(plan: Plan, row: str, init: str, seed: int) -> Path:
    """One student row, forked from the shared prefix at T2 (similarity modes other than channel) or T3.
    Forking every row (``clda_channel`` too) from one snapshot also gives all rows of a seed the same
    data stream after the fork, so their paired differences hold only what the rows change."""
    from clda_deploy.config import load_config, stage_iterations
    from training.fork import fork_student
    from training.loop import CHECKPOINT, snapshot_name
    from training.student import train_student

    run = plan.run_dir(row, init, seed)
    if (run / "metrics.json").is_file():
        return run
    cfg = load_config(plan.config, row_overrides(plan, row, init, seed))
    t2, t3 = stage_iterations(cfg)
    if not (run / CHECKPOINT).is_file():
        prefix = train_prefix(plan, init, seed)
        fork_student(prefix / snapshot_name(t2 if FORK_POINT[row] == "t2" else t3), cfg, run)
    train_student(cfg, plan.teacher, run, resume=True, evaluate_teacher=row == "clda_channel")
    return run


def run_group(plan: Plan, seed: int, init: str) -> None:
    for row in plan.rows_of(seed, init):
        print(f"== ablation {row} (init {init}, seed {seed}) -> {plan.run_dir(row, init, seed)}", flush=True)
        if row == "independent_student":
            train_independent(plan, init, seed)
        else:
            train_student_row(plan, row, init, seed)


def teacher_digest(run: Path, row: str) -> str | None:
    """The sha256 of the teacher a run learnt from (None: a random-init independent student, no teacher)."""
    import yaml

    from clda_deploy.checkpoint import read_metadata

    if row == "independent_student":
        init = (yaml.safe_load((run / "config.yaml").read_text()).get("model") or {}).get("init")
        return read_metadata(init).get("clda_teacher_sha256", "unknown") if init else None
    return read_json(run / "metrics.json").get("clda", {}).get("teacher_sha256")


def check_teacher(run: Path, row: str, expected: str) -> None:
    """Refuse a run trained from another teacher file than the ablation's."""
    digest = teacher_digest(run, row)
    if row == "independent_student" and digest is None:
        return
    if digest != expected:
        raise ValueError(
            f"{run} was trained from teacher sha256 {digest}, this ablation's teacher is {expected}: "
            "an ablation compares runs of one teacher; use another --runs folder for another teacher"
        )


def teacher_before(plan: Plan) -> float:
    """The given teacher's target-val mIoU (evaluated once, cached beside the runs with its digest)."""
    from clda_deploy.checkpoint import file_sha256
    from training.evaluate import run_eval

    path = plan.runs / "teacher_before.json"
    digest = file_sha256(plan.teacher)
    if path.is_file() and read_json(path).get("teacher_sha256") == digest:
        return float(read_json(path)["miou"])
    payload = run_eval(plan.teacher, None, [], str(path), None, progress=False)
    payload = {**payload, "teacher_sha256": digest}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return float(payload["miou"])


def seed_record(run: Path, seed: int, metrics: str = "metrics.json") -> dict[str, Any]:
    from clda_deploy.checkpoint import file_sha256

    payload = read_json(run / metrics)
    model = Path(payload["checkpoint"])
    return {"seed": seed, "miou": float(payload["miou"]), "run": str(run), "model_sha256": file_sha256(model)}


def collect(plan: Plan) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{row: {init: [seed records]}}`` from the finished runs; refuses runs of another teacher."""
    from clda_deploy.checkpoint import file_sha256

    expected = file_sha256(plan.teacher)
    before = teacher_before(plan)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for seed, init in plan.groups():
        for row in plan.rows_of(seed, init):
            run = plan.run_dir(row, init, seed)
            if not (run / "metrics.json").is_file():
                raise ValueError(f"{run} has not finished: run the ablation (or its shards) to the end first")
            check_teacher(run, row, expected)
            rows.setdefault(row, {}).setdefault(init, []).append(seed_record(run, seed))
            if row == "clda_channel":
                rows.setdefault("teacher_before", {}).setdefault(init, []).append(
                    {"seed": seed, "miou": before, "run": plan.teacher, "model_sha256": expected})  # fmt: skip
                rows.setdefault("teacher_after", {}).setdefault(init, []).append(
                    seed_record(run, seed, "teacher_metrics.json"))  # fmt: skip
    return rows


def by_seed(records: list[dict[str, Any]]) -> dict[int, float]:
    return {record["seed"]: record["miou"] for record in records}


def differences(rows: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Paired differences with 95 % t-intervals: every student row minus ``kd_only`` and minus
    ``independent_student`` (same init), ``teacher_after - teacher_before``, and per main row the
    teacher init minus the random init."""
    from clda_deploy.statistics import paired_difference

    out: dict[str, dict[str, Any]] = {}
    for row, inits in rows.items():
        if row in TEACHER_ROWS:
            continue
        for baseline in ("kd_only", "independent_student"):
            if row in (baseline, "independent_student"):
                continue
            for init, records in inits.items():
                if init in rows.get(baseline, {}):
                    out.setdefault(f"{row} - {baseline}", {})[init] = paired_difference(
                        by_seed(records), by_seed(rows[baseline][init]))  # fmt: skip
        if all(init in inits for init in INITS):
            out.setdefault(f"{row}: teacher init - random init", {})["paired"] = paired_difference(
                by_seed(inits["teacher"]), by_seed(inits["random"]))  # fmt: skip
    for init, records in rows.get("teacher_after", {}).items():
        out.setdefault("teacher_after - teacher_before", {})[init] = paired_difference(
            by_seed(records), by_seed(rows["teacher_before"][init]))  # fmt: skip
    return out


def schedule_of(plan: Plan) -> dict[str, Any]:
    """The S->T dose and provenance a ``clda_channel`` run recorded (the same for every seed)."""
    seed, init = plan.groups()[0]
    record = read_json(plan.run_dir("clda_channel", init, seed) / "metrics.json")["clda"]
    keys = ("t2", "t3", "alpha", "update_steps", "blend_fraction", "lr_share_after_t3", "saliency_rule",
            "saliency_data")  # fmt: skip
    return {key: record.get(key) for key in keys}


def summarize_ablation(plan: Plan, command: str) -> dict[str, Any]:
    from clda_deploy.checkpoint import file_sha256
    from clda_deploy.statistics import summarize

    rows = collect(plan)
    summary_rows = {row: {init: {**summarize([r["miou"] for r in records]), "seeds": records}
                          for init, records in inits.items()}
                    for row, inits in sorted(rows.items(), key=lambda item: ROWS.index(item[0]))}  # fmt: skip
    return {
        "command": command,
        "teacher": {"path": plan.teacher, "sha256": file_sha256(plan.teacher), "miou": teacher_before(plan)},
        "student_config": plan.config,
        "overrides": list(plan.overrides),
        "schedule": schedule_of(plan),
        "rows": summary_rows,
        "differences": differences(rows),
    }


def _ci(entry: dict[str, Any], signed: bool = False) -> str:
    low_high = entry.get("ci95")
    if low_high is None:
        return "–"
    form = "{:+.2f}" if signed else "{:.2f}"
    return f"[{form.format(low_high[0])}, {form.format(low_high[1])}]"


def _preamble(summary: dict[str, Any]) -> list[str]:
    teacher, schedule = summary["teacher"], summary["schedule"]
    return [
        f"Command: `{summary['command']}`",
        "",
        f"Teacher `{teacher['path']}` (sha256 `{teacher['sha256'][:16]}…`, target-val mIoU {teacher['miou']:.2f}). "
        f"S->T from T3 = {schedule['t3']} with alpha {schedule['alpha']}: the mapped blocks reach a blend of "
        f"{schedule['blend_fraction']:.2f}, and {schedule['lr_share_after_t3']:.0%} of the lr-weighted student "
        f"training sees the changed teacher. LSR: rule {schedule['saliency_rule']}, data {schedule['saliency_data']}.",
    ]


def markdown(summary: dict[str, Any]) -> str:
    lines = [*_preamble(summary), "", "| row | init | n | target-val mIoU (mean ± std) | 95 % CI | per seed |"]
    lines.append("|---|---|---|---|---|---|")
    for row, inits in summary["rows"].items():
        for init, entry in inits.items():
            per_seed = ", ".join(f"{s['miou']:.2f}" for s in entry["seeds"])
            stats = f"{entry['mean']:.2f} ± {entry['std']:.2f}"
            lines.append(f"| {row} | {init} | {entry['n']} | {stats} | {_ci(entry)} | {per_seed} |")
    lines += ["", "Paired differences (same seed: same init and data order), mIoU points:", ""]
    lines += ["| difference | init | n | mean ± std | 95 % CI (t) | per seed |", "|---|---|---|---|---|---|"]
    for name, inits in summary["differences"].items():
        for init, entry in inits.items():
            per_seed = ", ".join(f"{v:+.2f}" for v in entry["per_seed"])
            stats = f"{entry['mean']:+.2f} ± {entry['std']:.2f}"
            lines.append(f"| {name} | {init} | {entry['n']} | {stats} | {_ci(entry, signed=True)} | {per_seed} |")
    return "\n".join(lines)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard expects K/N with 0 <= K < N (e.g. 0/2), got {text!r}")
    return shard


def run_ablation(
    config: str,
    teacher: str,
    overrides: list[str],
    seeds: list[int],
    runs: str,
    out: str,
    json_out: str,
    extra_seeds: list[int] | None = None,
    shard: str | None = None,
    placebo_alpha: float = DEFAULT_PLACEBO_ALPHA,
) -> dict[str, Any] | None:
    """Train (or reuse) every run of the plan, or one shard of it; without ``shard`` also write the
    JSON and the markdown section. Returns the summary (None for a shard)."""
    from clda_deploy.checkpoint import read_config
    from clda_deploy.config import load_config

    read_config(teacher)  # a missing or foreign teacher fails before any training
    cfg = load_config(config, overrides)
    extra = seeds[: min(3, len(seeds))] if extra_seeds is None else extra_seeds
    plan = Plan(config, teacher, tuple(overrides), tuple(seeds), tuple(extra), Path(runs), cfg.clda.student_init,
                placebo_alpha)  # fmt: skip
    part = parse_shard(shard)
    for seed, init in plan.groups():
        # Alternating the init across seeds balances the shards (the extra rows use one init).
        if part is None or (seed + INITS.index(init)) % part[1] == part[0]:
            run_group(plan, seed, init)
    if part is not None:
        return None
    sets = f" --set {' '.join(overrides)}" if overrides else ""
    command = (f"python -m training ablation -c {config} --teacher {teacher} --seeds {len(seeds)} "
               f"--extra-seeds {len(extra)} --runs {runs}{sets}")  # fmt: skip
    summary = summarize_ablation(plan, command)
    atomic_write(Path(json_out), lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    from clda_deploy.results_doc import write_section

    table = markdown(summary)
    write_section(Path(out), "clda_ablation", "CLDA ablation (Tab. 3)", table)
    print(table)
    return summary
