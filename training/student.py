"""``python -m training student``: the CLDA student from a trained teacher (paper §5).

Recipe: 1 config + teacher file (compatibility checked before any work); 2 datasets; 3 the fixed
saliency subset; 4 student model and CLDA task; 5 the one loop; 6 ``model.safetensors`` (student),
``teacher_updated.safetensors`` (the teacher after S->T) and both models' target-val metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.config import Config, check_student_schedule, load_config, save_config

DEFAULT_OUT = "runs/default/student"


def saliency_batches(cfg: Config, datasets: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixed target subset R (Eq. 2) is measured on: target-val with labels, or target-train
    images alone (label-free agreement) when ``clda.saliency_labels`` is false."""
    from clda_deploy.evaluation import collate_eval

    count = cfg.clda.saliency_images
    if cfg.clda.saliency_labels:
        dataset = datasets["val"]
        samples = [dataset[i] for i in range(min(count, len(dataset)))]
        return [collate_eval(samples[i : i + 4]) for i in range(0, len(samples), 4)]
    from clda_deploy.data import build_dataset

    dataset = build_dataset(cfg.data.target, train=False, labels=False)
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    return [{"image": collate_eval(samples[i : i + 4])["image"]} for i in range(0, len(samples), 4)]


def prepare_student(cfg: Config, teacher_path: str, run_dir: Path, resume: bool) -> tuple[Any, Any]:
    from clda_deploy.checkpoint import build_for_training, load_segmenter
    from clda_deploy.inference import resolve_device
    from clda_deploy.uda.clda import CLDATask
    from clda_deploy.uda.mapping import check_compatible
    from training.distributed import device_for, init_distributed
    from training.loop import CHECKPOINT, LoopInputs
    from training.state import load_checkpoint, seed_everything
    from training.teacher import build_datasets, check_resumable, stream_factories

    if resume:
        check_resumable(load_checkpoint(run_dir / CHECKPOINT)["config"], cfg, run_dir / CHECKPOINT)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    device = device_for(device, dist)
    teacher = load_segmenter(teacher_path, device=device)
    seed_everything(cfg.train.seed)
    student = build_for_training(cfg, resume)
    check_compatible(teacher, student)
    datasets = build_datasets(cfg, needs_target=True, target_labels=False)
    student = student.to(device)
    batches = saliency_batches(cfg, datasets)
    task = CLDATask(cfg, teacher, batches, run_dir, is_main=dist.is_main)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    streams = stream_factories(cfg, datasets, task.domains, dist)
    return LoopInputs(cfg, student, task, streams, datasets["val"], run_dir, device, dist), datasets["val"]


def write_teacher(cfg_path_teacher: str, run_dir: Path, task: Any, val: Any, device: Any, progress: bool) -> dict:
    """``teacher_updated.safetensors`` (the input teacher's config) and its target-val metrics."""
    from clda_deploy.checkpoint import atomic_write, read_config, save_model
    from clda_deploy.evaluation import evaluate
    from training.evaluate import metrics_payload

    teacher_cfg = read_config(cfg_path_teacher)
    path = save_model(run_dir / "teacher_updated.safetensors", task.teacher, teacher_cfg, role="teacher",
                      extra={"clda_source_teacher": str(cfg_path_teacher)})  # fmt: skip
    outcome = evaluate(task.teacher.eval(), val, teacher_cfg.model.num_classes, teacher_cfg.eval, device=device,
                       progress=progress)  # fmt: skip
    payload = metrics_payload(outcome.matrix, list(val.class_names), teacher_cfg, outcome.num_images, str(path))
    atomic_write(run_dir / "teacher_metrics.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return payload


def train_student(cfg: Config, teacher_path: str, run_dir: Path, resume: bool = False) -> tuple[Any, dict, dict]:
    """Train; on rank 0 write the student, the updated teacher and both metrics files."""
    from training.distributed import shutdown
    from training.loop import Trainer
    from training.teacher import write_outputs

    inputs, val = prepare_student(cfg, teacher_path, run_dir, resume)
    try:
        result = Trainer(inputs).run(resume=resume)
        if result.interrupted:
            raise KeyboardInterrupt
        student_metrics: dict[str, Any] = {}
        teacher_metrics: dict[str, Any] = {}
        if inputs.dist.is_main:
            student_metrics = write_outputs(cfg, run_dir, result, val, "student", inputs.device)
            teacher_metrics = write_teacher(teacher_path, run_dir, inputs.task, val, inputs.device,
                                            cfg.train.progress)  # fmt: skip
        return result, student_metrics, teacher_metrics
    finally:
        shutdown(inputs.dist)


def run_student(config_path: str, teacher: str, overrides: list[str], out: str | None, resume: bool) -> dict:
    """The ``student`` command: validates config, data folders and the teacher before training."""
    from clda_deploy.checkpoint import check_init, read_config
    from clda_deploy.data import check_roots

    cfg = load_config(config_path, overrides)
    check_student_schedule(cfg)
    read_config(teacher)  # a missing or foreign teacher file fails here, in seconds
    check_roots({"data.source": cfg.data.source, "data.target": cfg.data.target, "data.val": cfg.data.val})
    if cfg.model.init is not None:
        check_init(cfg.model.init, cfg)
    run_dir = Path(out or DEFAULT_OUT)
    _, student, updated = train_student(cfg, teacher, run_dir, resume)
    if student:
        print(f"student (CLDA, mapping={cfg.clda.mapping}) target-val mIoU: {student['miou']:.2f}")
        print(f"teacher after S->T updates target-val mIoU: {updated['miou']:.2f} -> {run_dir}")
    return {"student": student, "teacher_updated": updated}
