"""The CLDA ablation's results: collect the finished runs (refusing runs of another teacher), the rows'
mean ± std with 95 % t-intervals, the paired differences, and the markdown table (training/studies/ablation.py
trains the runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import CONFIG_FILE, METRICS_FILE, TEACHER_AFTER_METRICS
from clda_deploy.checkpoint import atomic_write
from training.errors import UsageError
from training.studies.ablation import INITS, ROWS, TEACHER_ROWS, Plan, read_json


def teacher_digest(run: Path, row: str) -> str | None:
    """The sha256 of the teacher a run learnt from (None: a random-init independent student, no teacher)."""
    import yaml

    from clda_deploy.checkpoint import read_metadata

    if row == "independent_student":
        init = (yaml.safe_load((run / CONFIG_FILE).read_text()).get("model") or {}).get("init")
        return read_metadata(init).get("clda_teacher_sha256", "unknown") if init else None
    return read_json(run / METRICS_FILE).get("clda", {}).get("teacher_sha256")


def check_teacher(run: Path, row: str, expected: str) -> None:
    """Refuse a run trained from another teacher file than the ablation's."""
    digest = teacher_digest(run, row)
    if row == "independent_student" and digest is None:
        return
    if digest != expected:
        raise UsageError(
            f"{run} was trained from teacher sha256 {digest}, this ablation's teacher is {expected}: "
            "an ablation compares runs of one teacher; use another --runs folder for another teacher"
        )


def teacher_before(plan: Plan) -> float:
    """The given teacher's target-val mIoU, scored exactly as each run's ``teacher_after`` is (the student
    config's val set, the teacher's own eval settings); cached beside the runs, keyed by what it depends on."""
    from clda_deploy.checkpoint import file_sha256, load_segmenter, read_config
    from clda_deploy.data import build_dataset
    from clda_deploy.evaluation import evaluate
    from clda_deploy.inference import resolve_device
    from training.evaluate import metrics_payload

    cfg, teacher_cfg = plan.base, read_config(plan.teacher)
    val = build_dataset(cfg.data.val, train=False)
    key = {"teacher_sha256": file_sha256(plan.teacher), "val_root": str(cfg.data.val.root), "val_images": len(val),
           "max_images": teacher_cfg.eval.max_images}  # fmt: skip
    path = plan.runs / "teacher_before.json"
    if path.is_file() and read_json(path).get("key") == key:
        return float(read_json(path)["miou"])
    device = resolve_device(cfg.train.device)
    outcome = evaluate(load_segmenter(plan.teacher, device=device), val, teacher_cfg.model.num_classes,
                       teacher_cfg.eval, device=device, progress=False)  # fmt: skip
    payload = metrics_payload(outcome.matrix, list(val.class_names), teacher_cfg, outcome.num_images, plan.teacher)
    payload = {**payload, "key": key}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return float(payload["miou"])


def seed_record(run: Path, seed: int, metrics: str = METRICS_FILE) -> dict[str, Any]:
    from clda_deploy.checkpoint import file_sha256

    payload = read_json(run / metrics)
    model = Path(payload["checkpoint"])
    record = {"seed": seed, "miou": float(payload["miou"]), "run": str(run), "model_sha256": file_sha256(model)}
    if "clda" in payload:  # which teacher blocks S->T updated (none: the row trained as KD only)
        record["mapping"] = payload["clda"].get("mapping", {})
    return record


def collect(plan: Plan) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{row: {init: [seed records]}}`` from the finished runs; refuses runs of another teacher."""
    from clda_deploy.checkpoint import file_sha256

    expected = file_sha256(plan.teacher)
    before = teacher_before(plan)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for seed, init in plan.groups():
        for row in plan.rows_of(seed, init):
            run = plan.run_dir(row, init, seed)
            if not (run / METRICS_FILE).is_file():
                raise UsageError(f"{run} has not finished: run the ablation (or its shards) to the end first")
            check_teacher(run, row, expected)
            rows.setdefault(row, {}).setdefault(init, []).append(seed_record(run, seed))
            if row == "clda_channel":
                rows.setdefault("teacher_before", {}).setdefault(init, []).append(
                    {"seed": seed, "miou": before, "run": plan.teacher, "model_sha256": expected})  # fmt: skip
                rows.setdefault("teacher_after", {}).setdefault(init, []).append(
                    seed_record(run, seed, TEACHER_AFTER_METRICS))  # fmt: skip
    return rows


def by_seed(records: list[dict[str, Any]]) -> dict[int, float]:
    return {record["seed"]: record["miou"] for record in records}


def differences(rows: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Paired differences with 95 % t-intervals: every student row minus ``kd_only`` and minus
    ``independent_student`` (same init), ``teacher_after - teacher_before``, the teacher's headroom
    ``teacher_before - independent_student``, and per main row the teacher init minus the random init."""
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
    for init, records in rows.get("teacher_before", {}).items():  # the headroom compression starts from
        if init in rows.get("independent_student", {}):
            out.setdefault("teacher_before - independent_student", {})[init] = paired_difference(
                by_seed(records), by_seed(rows["independent_student"][init]))  # fmt: skip
    for init, records in rows.get("teacher_after", {}).items():
        out.setdefault("teacher_after - teacher_before", {})[init] = paired_difference(
            by_seed(records), by_seed(rows["teacher_before"][init]))  # fmt: skip
    return out


def schedule_of(plan: Plan) -> dict[str, Any]:
    """The S->T dose and provenance a ``clda_channel`` run recorded (the same for every seed)."""
    seed, init = plan.groups()[0]
    record = read_json(plan.run_dir("clda_channel", init, seed) / METRICS_FILE)["clda"]
    keys = ("t2", "t3", "alpha", "update_steps", "blend_fraction", "lr_share_after_t3", "saliency_rule",
            "saliency_data", "mapped_blocks")  # fmt: skip
    return {key: record.get(key) for key in keys}


def summarize_ablation(plan: Plan, command: str) -> dict[str, Any]:
    from clda_deploy.checkpoint import file_sha256, tensors_sha256
    from clda_deploy.statistics import summarize

    rows = collect(plan)
    summary_rows = {row: {init: {**summarize([r["miou"] for r in records]), "seeds": records}
                          for init, records in inits.items()}
                    for row, inits in sorted(rows.items(), key=lambda item: ROWS.index(item[0]))}  # fmt: skip
    return {
        "command": command,
        "teacher": {
            "path": plan.teacher,
            "sha256": file_sha256(plan.teacher),
            "tensors_sha256": tensors_sha256(plan.teacher),
            "miou": teacher_before(plan),
        },  # fmt: skip
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
            stats = f"{entry['mean']:.2f} ± {entry['std']:.2f}" if entry["n"] > 1 else f"{entry['mean']:.2f}"
            lines.append(f"| {row} | {init} | {entry['n']} | {stats} | {_ci(entry)} | {per_seed} |")
    lines += ["", "Paired differences (same seed: same init and data order), mIoU points:", ""]
    lines += ["| difference | init | n | mean ± std | 95 % CI (t) | per seed |", "|---|---|---|---|---|---|"]
    for name, inits in summary["differences"].items():
        for init, entry in inits.items():
            per_seed = ", ".join(f"{v:+.2f}" for v in entry["per_seed"])
            stats = f"{entry['mean']:+.2f} ± {entry['std']:.2f}" if entry["n"] > 1 else f"{entry['mean']:+.2f}"
            lines.append(f"| {name} | {init} | {entry['n']} | {stats} | {_ci(entry, signed=True)} | {per_seed} |")
    return "\n".join(lines)
