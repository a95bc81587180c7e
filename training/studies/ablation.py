"""``python -m training ablation``: the CLDA ablation (paper Tab. 3) over paired seeds.

Rows, each a student of ``-c``'s config trained from the same teacher file:
- ``independent_student``: the student architecture trained alone with DAFormer's recipe (no teacher);
- ``kd_only`` (``clda.mapping: none``, Tab. 3 row 1), ``clda_random``, ``clda_channel`` (Eq. 6):
  these four over ``--seeds`` seeds with ``clda.student_init`` random *and* teacher;
- ``clda_token``, ``clda_both`` and ``clda_placebo`` (channel mapping with ``--placebo-alpha``, so close
  to 1 that the teacher barely moves) over ``--extra-seeds`` seeds with the config's own init, and with
  ``--signed`` ``clda_signed`` (channel mapping, ``clda.saliency_rule: signed``);
- ``teacher_before`` (the given teacher) and ``teacher_after`` (after each ``clda_channel`` run's S->T).

Each row's config is the ``-c`` config (with its ``--set`` pairs) plus the row's typed values
(``row_values``, applied with ``clda_deploy.config.override``); the student rows train through the student
command's functions, the independent row through the teacher command's.

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

from clda_deploy.artifacts import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SALIENCY_FILE
from clda_deploy.checkpoint import atomic_write
from clda_deploy.config import Config, override
from training.errors import UsageError

INITS = ("random", "teacher")
MAIN_ROWS = ("independent_student", "kd_only", "clda_random", "clda_channel")
EXTRA_ROWS = ("clda_token", "clda_both", "clda_placebo")
OPTIONAL_ROWS = ("clda_signed",)  # --signed: the signed saliency rule (ours) over the extra seeds
TEACHER_ROWS = ("teacher_before", "teacher_after")
ROWS = (*MAIN_ROWS, *EXTRA_ROWS, *OPTIONAL_ROWS, *TEACHER_ROWS)
MAPPINGS = {"kd_only": "none", "clda_random": "random", "clda_channel": "channel", "clda_token": "token",
            "clda_both": "both", "clda_signed": "channel", "clda_placebo": "channel"}  # fmt: skip
FORK_POINT = {"clda_channel": "t3", "kd_only": "t3", "clda_random": "t3", "clda_placebo": "t3", "clda_token": "t2",
              "clda_both": "t2", "clda_signed": "t2"}  # fmt: skip
DEFAULT_PLACEBO_ALPHA = 0.99999  # 1 - alpha^steps stays below 0.01 for a few hundred S->T steps


@dataclass(frozen=True)
class Plan:
    """What one ablation trains: the inputs every run shares."""

    config: str  # the -c file and its --set pairs, as the results record them
    overrides: tuple[str, ...]
    base: Config  # load_config(config, overrides): what every row's config starts from
    teacher: str
    seeds: tuple[int, ...]
    extra_seeds: tuple[int, ...]
    runs: Path
    placebo_alpha: float = DEFAULT_PLACEBO_ALPHA
    optional_rows: tuple[str, ...] = ()
    main_rows: tuple[str, ...] = MAIN_ROWS  # --rows: a subset (e.g. the three rows a new teacher needs)
    inits: tuple[str, ...] = INITS  # --inits: a subset of the student inits

    @property
    def config_init(self) -> str:
        """The config's own ``clda.student_init``: the init of the extra rows."""
        return self.base.clda.student_init

    def run_dir(self, row: str, init: str, seed: int) -> Path:
        return self.runs / f"{row}-{init}-s{seed}"

    def groups(self) -> list[tuple[int, str]]:
        """(seed, init) pairs in run order: seed-major, so an interrupted ablation has whole seeds."""
        return [(seed, init) for seed in self.seeds for init in self.inits]

    def rows_of(self, seed: int, init: str) -> list[str]:
        extras = [*EXTRA_ROWS, *self.optional_rows] if init == self.config_init and seed in self.extra_seeds else []
        return [*self.main_rows, *extras]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def row_values(plan: Plan, row: str, init: str, seed: int) -> dict[str, Any]:
    """The dotted keys a row sets over ``plan.base`` (what separates the rows and seeds)."""
    values: dict[str, Any] = {"train.seed": seed, "clda.student_init": init}
    if row in MAPPINGS:
        values["clda.mapping"] = MAPPINGS[row]
    if row == "clda_placebo":
        values["clda.alpha"] = plan.placebo_alpha
    if row == "clda_signed":  # non-salient also where skipping a block raises target mIoU
        values["clda.saliency_rule"] = "signed"
    return values


def row_config(plan: Plan, row: str, init: str, seed: int) -> Config:
    """The validated config a (row, init, seed) run trains with."""
    return override(plan.base, row_values(plan, row, init, seed))


def teacher_initialised_file(plan: Plan) -> Path:
    """The teacher-initialised student as a model file, so the independent row (which trains through
    the teacher command, DAFormer's recipe) starts from the very weights the CLDA rows start from."""
    from clda_deploy.checkpoint import build_from_config, file_sha256, load_segmenter, read_metadata, save_model
    from clda_deploy.data import build_dataset
    from training.student import initialise_student, saliency_batches

    path = plan.runs / "teacher_initialised_student.safetensors"
    if path.is_file():
        if read_metadata(path).get("clda_teacher_sha256") != file_sha256(plan.teacher):
            raise UsageError(f"{path} was made from another teacher than {plan.teacher}; use another --runs folder")
        return path
    cfg = override(plan.base, {"clda.student_init": "teacher"})
    teacher, student = load_segmenter(plan.teacher), build_from_config(cfg)
    batches = saliency_batches(cfg, {"val": build_dataset(cfg.data.val, train=False)})
    initialise_student(cfg, teacher, student, batches, plan.runs)
    save_model(path, student, cfg, role="student", extra={"clda_teacher_sha256": file_sha256(plan.teacher)})
    return path


def train_independent(plan: Plan, init: str, seed: int) -> Path:
    from training.teacher import run_teacher

    run = plan.run_dir("independent_student", init, seed)
    if not (run / METRICS_FILE).is_file():
        values: dict[str, Any] = {"uda.mode": "daformer", "train.seed": seed, "clda.student_init": "random"}
        if init == "teacher":
            values["model.init"] = str(teacher_initialised_file(plan))
        run_teacher(override(plan.base, values), run, (run / CHECKPOINT_FILE).is_file())
    return run


def train_prefix(plan: Plan, init: str, seed: int) -> Path:
    """The steps every student row of (seed, init) shares: the ``clda_channel`` config trained to T3,
    keeping snapshots at T2 (before LSR) and T3 (LSR pick and channel mapping made, teacher unchanged)."""
    from clda_deploy.config import stage_iterations
    from training.loop import snapshot_name
    from training.run import run_loop
    from training.student import check_student_config, prepare_student

    run = plan.run_dir("prefix", init, seed)
    cfg = row_config(plan, "clda_channel", init, seed)
    t2, t3 = stage_iterations(cfg)
    if (run / snapshot_name(t3)).is_file():
        return run
    check_student_config(cfg, plan.teacher)
    resume = (run / CHECKPOINT_FILE).is_file()
    inputs, _ = prepare_student(cfg, plan.teacher, run, resume)
    inputs.snapshots, inputs.stop_at = (t2, t3), t3
    if not resume:
        inputs.task.measured_saliency = measured_lsr(plan)
    run_loop(inputs, resume)
    return run


def measured_lsr(plan: Plan) -> list[dict[str, Any]] | None:
    """LSR rows another prefix of this plan already measured. LSR (Eq. 2) reads only the teacher, which
    is unchanged before T3, and the fixed saliency images, so it is the same for every seed and init;
    measuring it once saves a dozen forward passes per image and prefix. Only the seeded pick differs."""
    for seed, init in plan.groups():
        saliency = plan.run_dir("prefix", init, seed) / SALIENCY_FILE
        if saliency.is_file():
            return json.loads(saliency.read_text())
    return None


def train_student_row(plan: Plan, row: str, init: str, seed: int) -> Path:
    """One student row, forked from the shared prefix at T2 (similarity modes other than channel) or T3.
    Forking every row (``clda_channel`` too) from one snapshot also gives all rows of a seed the same
    data stream after the fork, so their paired differences hold only what the rows change."""
    from clda_deploy.config import stage_iterations
    from training.fork import fork_student
    from training.loop import snapshot_name
    from training.student import train_student

    run = plan.run_dir(row, init, seed)
    if (run / METRICS_FILE).is_file():
        return run
    cfg = row_config(plan, row, init, seed)
    t2, t3 = stage_iterations(cfg)
    if not (run / CHECKPOINT_FILE).is_file():
        prefix = train_prefix(plan, init, seed)
        if FORK_POINT[row] == "t2":  # reuse the prefix's LSR deltas (same teacher and images)
            fork_student(prefix / snapshot_name(t2), cfg, run, saliency_from=prefix / snapshot_name(t3))
        else:
            fork_student(prefix / snapshot_name(t3), cfg, run)
    train_student(cfg, plan.teacher, run, resume=True, evaluate_teacher=row == "clda_channel")
    return run


def run_group(plan: Plan, seed: int, init: str) -> None:
    for row in plan.rows_of(seed, init):
        print(f"== ablation {row} (init {init}, seed {seed}) -> {plan.run_dir(row, init, seed)}", flush=True)
        if row == "independent_student":
            train_independent(plan, init, seed)
        else:
            train_student_row(plan, row, init, seed)


def check_plan(plan: Plan) -> None:
    """Every row's config, validated before hours of training (a bad combination fails in seconds), and
    every finished or started run checked against the config it would be trained with now."""
    from training.student import check_student_config

    for seed, init in plan.groups():
        for row in plan.rows_of(seed, init):
            cfg = row_config(plan, row, init, seed)
            if row != "independent_student":
                check_student_config(cfg, plan.teacher)
            for run in (plan.run_dir(row, init, seed), plan.run_dir("prefix", init, seed)):
                if run.name.startswith("prefix") and row != "clda_channel":
                    continue
                check_run_config(run, cfg, row)


def check_run_config(run: Path, cfg: Any, row: str) -> None:
    """Refuse to reuse or resume ``run`` when it was trained with another config than ``cfg`` (keys that
    change nothing trained are exempt; an independent student ignores the ``clda`` section)."""
    from clda_deploy.config import ConfigError, config_to_dict, load_config
    from training.run import config_differences

    saved = run / CONFIG_FILE
    if not saved.is_file():
        return
    exempt = ("train.progress", "train.device", "data.workers", "train.log_every", "eval.")
    if row == "independent_student":
        exempt = (*exempt, "clda.", "uda.mode", "model.init")
    details = config_differences(config_to_dict(load_config(saved)), cfg, exempt)
    if details:
        raise ConfigError(f"{run} was trained with another config ({details}); use another --runs folder")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise UsageError(f"--shard expects K/N with 0 <= K < N (e.g. 0/2), got {text!r}")
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
    signed: bool = False,
    rows: list[str] | None = None,
    inits: list[str] | None = None,
    section: str = "clda_ablation",
) -> dict[str, Any] | None:
    """Train (or reuse) every run of the plan, or one shard of it; without ``shard`` also write the
    JSON and the markdown section. Returns the summary (None for a shard)."""
    from clda_deploy.checkpoint import read_config
    from clda_deploy.config import load_config

    read_config(teacher)  # a missing or foreign teacher fails before any training
    extra = seeds[: min(3, len(seeds))] if extra_seeds is None else extra_seeds
    main_rows, chosen_inits = tuple(rows or MAIN_ROWS), tuple(inits or INITS)
    for name, values, allowed in (("--rows", main_rows, MAIN_ROWS), ("--inits", chosen_inits, INITS)):
        if unknown := [value for value in values if value not in allowed]:
            raise UsageError(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    if "clda_channel" not in main_rows:
        raise UsageError("--rows must include clda_channel: every row forks from its prefix run")
    plan = Plan(config, tuple(overrides), load_config(config, overrides), teacher, tuple(seeds), tuple(extra),
                Path(runs), placebo_alpha, OPTIONAL_ROWS if signed else (), main_rows, chosen_inits)  # fmt: skip
    part = parse_shard(shard)
    check_plan(plan)
    for seed, init in plan.groups():
        # Alternating the init across seeds balances the shards (the extra rows use one init).
        if part is None or (seed + INITS.index(init)) % part[1] == part[0]:
            run_group(plan, seed, init)
    if part is not None:
        return None
    sets = f" --set {' '.join(overrides)}" if overrides else ""
    subset = "" if main_rows == MAIN_ROWS else f" --rows {' '.join(main_rows)}"
    subset += "" if chosen_inits == INITS else f" --inits {' '.join(chosen_inits)}"
    subset += "" if section == "clda_ablation" else f" --section {section}"
    command = (f"python -m training ablation -c {config} --teacher {teacher} --seeds {len(seeds)} "
               f"--extra-seeds {len(extra)}{' --signed' if signed else ''}{subset} --runs {runs}{sets}")  # fmt: skip
    from training.studies.ablation_report import markdown, summarize_ablation

    summary = summarize_ablation(plan, command)
    atomic_write(Path(json_out), lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    from clda_deploy.reporting import write_section

    table = markdown(summary)
    write_section(Path(out), section, "CLDA ablation (Tab. 3)", table)
    print(table)
    return summary
