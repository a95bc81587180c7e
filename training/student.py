"""``python -m training student``: the CLDA student from a trained teacher (paper §5).

Recipe: 1 config + teacher file (compatibility checked before any work); 2 datasets; 3 the fixed
saliency subsets (target, and source); 4 student model (random or teacher-initialised) and CLDA
task; 5 the one loop; 6 ``model.safetensors`` (student), ``teacher_updated.safetensors`` (the
teacher after S->T) and both models' target-val metrics. The student's ``metrics.json`` also
records the teacher it learnt from (sha256, target-val mIoU) and the S->T dose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import METRICS_FILE, TEACHER_AFTER_METRICS, TEACHER_AFTER_MODEL
from clda_deploy.config import Config, ConfigError, check_student_schedule
from training.run import (
    build_datasets,
    check_resumable,
    run_loop,
    save_run_config,
    start_devices,
    stream_factories,
    write_outputs,
)

INIT_FILE = "student_init.json"  # {student block: teacher block} of a teacher-initialised student


def _batches(samples: list[Any], labels: bool) -> list[dict[str, Any]]:
    from clda_deploy.evaluation import collate_eval

    batches = [collate_eval(samples[i : i + 4]) for i in range(0, len(samples), 4)]
    return batches if labels else [{"image": batch["image"]} for batch in batches]


def saliency_batches(cfg: Config, datasets: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixed target subset R (Eq. 2) is measured on (``clda.saliency_data``), never scored images
    unless ``val`` asks for the paper's literal protocol: ``agreement``: the first target-train images,
    label-free; ``heldout``: the last target-train images with their labels; ``val``: the first
    target-val images with labels."""
    from clda_deploy.data import build_dataset
    from clda_deploy.data.labels import IGNORE_INDEX

    count, mode = cfg.clda.saliency_images, cfg.clda.saliency_data
    if mode == "val":
        dataset = datasets["val"]
        return _batches([dataset[i] for i in range(min(count, len(dataset)))], labels=True)
    dataset = build_dataset(cfg.data.target, train=False, labels=mode == "heldout")
    indices = (
        range(min(count, len(dataset))) if mode == "agreement" else range(max(len(dataset) - count, 0), len(dataset))
    )
    batches = _batches([dataset[i] for i in indices], labels=mode == "heldout")
    if mode == "heldout" and all(bool((label == IGNORE_INDEX).all()) for b in batches for label in b["label"]):
        raise ConfigError(
            f"clda.saliency_data=heldout: the last {count} images of data.target ({cfg.data.target.root}) have no "
            "labels; give labelled target images or set clda.saliency_data=agreement (label-free)"
        )
    return batches


def source_saliency_batches(cfg: Config) -> list[dict[str, Any]] | None:
    """The first ``clda.saliency_source_images`` source images with labels (None when 0)."""
    from clda_deploy.data import build_dataset

    count = cfg.clda.saliency_source_images
    if count == 0:
        return None
    dataset = build_dataset(cfg.data.source, train=False)
    return _batches([dataset[i] for i in range(min(count, len(dataset)))], labels=True)


def teacher_provenance(teacher_path: str, sha256: str) -> dict[str, Any]:
    """``{"teacher": path, "teacher_sha256", "teacher_miou"}`` for the teacher a run trained with (its
    digest as the run recorded it at the start); the mIoU comes from the teacher run's ``metrics.json``
    beside the file when that file scored this very checkpoint and the file is still that teacher."""
    from clda_deploy.checkpoint import file_sha256

    path = Path(teacher_path)
    miou = None
    metrics = path.parent / METRICS_FILE
    if metrics.is_file() and path.is_file() and file_sha256(path) == sha256:
        payload = json.loads(metrics.read_text())
        if Path(str(payload.get("checkpoint", ""))).resolve() == path.resolve():
            miou = payload.get("miou")
    return {"teacher": str(path), "teacher_sha256": sha256, "teacher_miou": miou}


def update_dose(cfg: Config, mapped_blocks: int | None = None) -> dict[str, Any]:
    """How much S->T can do in this schedule: the blend the mapped teacher blocks reach,
    1 - alpha^(T - T3) (Eq. 8 with a fixed student), and the lr-weighted share of the student's
    training that sees the changed teacher (iterations >= T3). A run that mapped no block
    (``mapped_blocks == 0``) has no dose at all."""
    from clda_deploy.config import stage_iterations
    from clda_deploy.uda.ema import blend_fraction
    from training.optim import lr_share_after

    t2, t3 = stage_iterations(cfg)
    active = cfg.clda.mapping != "none" and mapped_blocks != 0
    steps = max(cfg.train.iters - t3, 0) if active else 0
    return {"t2": t2, "t3": t3, "alpha": cfg.clda.alpha, "update_steps": steps,
            "blend_fraction": blend_fraction(cfg.clda.alpha, steps),
            "lr_share_after_t3": lr_share_after(t3, cfg.train) if active else 0.0}  # fmt: skip


def initialise_student(cfg: Config, teacher: Any, student: Any, batches: list[Any], run_dir: Path | None) -> dict:
    """``clda.student_init: teacher``: copy the teacher into the student (``student_init.json`` records
    which teacher block seeded each student block); returns that map (empty for random init)."""
    from clda_deploy.uda.student_init import initialise_from_teacher, student_block_sources

    if cfg.clda.student_init != "teacher":
        return {}
    saliency = None
    if cfg.clda.student_init_blocks == "salient":
        from clda_deploy.uda.saliency import reference_for, teacher_saliency

        reference = reference_for(cfg.clda.saliency_data)
        saliency = teacher_saliency(teacher, batches, reference=reference, threshold=cfg.clda.nonsalient_threshold)
    sources = student_block_sources(teacher, student, cfg.clda.student_init_blocks, saliency)
    initialise_from_teacher(student, teacher, sources)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / INIT_FILE).write_text(json.dumps(sources, indent=2) + "\n")
    return sources


def prepare_student(cfg: Config, teacher_path: str, run_dir: Path, resume: bool) -> tuple[Any, Any]:
    """Steps 1-4: validated inputs for the loop and the distributed context."""
    from clda_deploy.checkpoint import build_for_training, file_sha256, load_segmenter
    from clda_deploy.models.encoders import check_compatible
    from clda_deploy.uda.clda import CLDATask
    from training.loop import LoopInputs
    from training.state import seed_everything

    if resume:
        check_resumable(cfg, run_dir)
    device, dist = start_devices(cfg)
    teacher = load_segmenter(teacher_path, device=device)
    seed_everything(cfg.train.seed)
    student = build_for_training(cfg, resume)
    check_compatible(teacher, student)
    datasets = build_datasets(cfg, needs_target=True, target_labels=False)
    student = student.to(device)
    batches = saliency_batches(cfg, datasets)
    if not resume:
        initialise_student(cfg, teacher, student, batches, run_dir if dist.is_main else None)
    task = CLDATask(cfg, teacher, batches, run_dir, is_main=dist.is_main, source_batches=source_saliency_batches(cfg),
                    teacher_sha256=file_sha256(teacher_path), rank=dist.rank)  # fmt: skip
    save_run_config(cfg, run_dir, dist)
    streams = stream_factories(cfg, datasets, task.domains, dist)
    return LoopInputs(cfg, student, task, streams, datasets["val"], run_dir, device, dist), datasets["val"]


def write_teacher(cfg_path_teacher: str, run_dir: Path, task: Any, val: Any, device: Any, progress: bool) -> dict:
    """``teacher_updated.safetensors`` (the input teacher's config) and its target-val metrics."""
    from clda_deploy.checkpoint import atomic_write, read_config, save_model
    from clda_deploy.evaluation import evaluate
    from training.evaluate import metrics_payload

    teacher_cfg = read_config(cfg_path_teacher)
    path = save_model(run_dir / TEACHER_AFTER_MODEL, task.teacher, teacher_cfg, role="teacher",
                      extra={"clda_source_teacher": str(cfg_path_teacher)})  # fmt: skip
    outcome = evaluate(task.teacher.eval(), val, teacher_cfg.model.num_classes, teacher_cfg.eval, device=device,
                       progress=progress)  # fmt: skip
    payload = metrics_payload(outcome.matrix, list(val.class_names), teacher_cfg, outcome.num_images, str(path))
    atomic_write(run_dir / TEACHER_AFTER_METRICS, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return payload


def student_record(cfg: Config, teacher_path: str, task: Any) -> dict[str, Any]:
    """The ``clda`` section of the student's ``metrics.json``: provenance, dose, mapping, mean q."""
    summary = task.summary()
    sha256 = summary.pop("teacher_sha256")
    return {"clda": {**teacher_provenance(teacher_path, sha256), "mapping_mode": cfg.clda.mapping,
                     "student_init": cfg.clda.student_init, "saliency_rule": cfg.clda.saliency_rule,
                     "saliency_data": cfg.clda.saliency_data, "mapped_blocks": len(summary["mapping"]),
                     **update_dose(cfg, len(summary["mapping"])), **summary}}  # fmt: skip


def train_student(
    cfg: Config,
    teacher_path: str,
    run_dir: Path,
    resume: bool = False,
    evaluate_teacher: bool = True,
    snapshots: tuple[int, ...] = (),
) -> tuple[Any, dict, dict]:
    """Train; on rank 0 write the student, the updated teacher and both metrics files
    (``evaluate_teacher=False`` skips the updated teacher's evaluation, for ablation rows that only
    score the student; ``snapshots``: iterations whose resume state is kept for forks)."""
    from training.distributed import shutdown

    inputs, val = prepare_student(cfg, teacher_path, run_dir, resume)
    inputs.snapshots = tuple(snapshots)
    try:
        result = run_loop(inputs, resume)
        student_metrics: dict[str, Any] = {}
        teacher_metrics: dict[str, Any] = {}
        if inputs.dist.is_main:
            record = student_record(cfg, teacher_path, inputs.task)
            student_metrics = write_outputs(cfg, run_dir, result, val, "student", inputs.device, extra=record)
            if evaluate_teacher:
                teacher_metrics = write_teacher(teacher_path, run_dir, inputs.task, val, inputs.device,
                                                cfg.train.progress)  # fmt: skip
        return result, student_metrics, teacher_metrics
    finally:
        shutdown(inputs.dist)


def check_student_config(cfg: Config, teacher: str) -> None:
    """Everything a student run can get wrong before training, in seconds."""
    from clda_deploy.checkpoint import check_init, read_config
    from clda_deploy.data import check_roots

    check_student_schedule(cfg)
    read_config(teacher)  # a missing or foreign teacher file fails here
    check_roots({"data.source": cfg.data.source, "data.target": cfg.data.target, "data.val": cfg.data.val})
    if cfg.model.init is not None:
        if cfg.clda.student_init == "teacher":
            raise ConfigError("model.init and clda.student_init=teacher both set the student's start: choose one")
        check_init(cfg.model.init, cfg)


def run_student(cfg: Config, teacher: str, run_dir: Path, resume: bool = False, evaluate_teacher: bool = True) -> dict:
    """The ``student`` command: validates config, data folders and the teacher before training."""
    check_student_config(cfg, teacher)
    _, student, updated = train_student(cfg, teacher, run_dir, resume, evaluate_teacher)
    if student:
        dose = student["clda"]
        print(f"student (CLDA, mapping={cfg.clda.mapping}, init={cfg.clda.student_init}) target-val mIoU: "
              f"{student['miou']:.2f}; S->T blend reached {dose['blend_fraction']:.2f} over {dose['update_steps']} "
              f"steps ({dose['lr_share_after_t3']:.0%} of the lr-weighted training after T3)")  # fmt: skip
    if updated:
        print(f"teacher after S->T updates target-val mIoU: {updated['miou']:.2f} -> {run_dir}")
    return {"student": student, "teacher_updated": updated}
