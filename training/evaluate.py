"""``python -m training eval``: score a model file on the config's target-val set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import METRICS_FILE
from clda_deploy.checkpoint import atomic_write, load_segmenter, read_config
from clda_deploy.config import Config, DatasetConfig, config_to_dict, load_config
from clda_deploy.data.labels import EVAL_SUBSETS, NUM_CLASSES, trainid_to_labelid_lut


def dataset_tag(cfg: DatasetConfig) -> str:
    return f"{cfg.format}:{cfg.root}:{cfg.split}"


def metrics_payload(matrix: Any, class_names: list[str], cfg: Config, num_images: int, checkpoint: str) -> dict:
    """The metrics.json contract of DESIGN §3 (+ ``miou_13`` for Synthia's 16-class reporting)."""
    from clda_deploy.metrics import mean_iou, summarize

    reported = cfg.eval.num_classes_reported
    subset = EVAL_SUBSETS[reported] if len(class_names) == NUM_CLASSES else None
    summary = summarize(matrix, class_names, subset)
    payload = {**summary, "num_images": num_images, "dataset": dataset_tag(cfg.data.val), "checkpoint": checkpoint}
    if subset is not None and reported == 16:
        payload["miou_13"] = mean_iou(matrix, EVAL_SUBSETS[13])
    return payload


def run_eval(
    checkpoint: str,
    config_path: str | None,
    overrides: list[str],
    out: str | None,
    save_predictions: str | None,
    progress: bool = True,
) -> dict:
    """Steps: 1 config (checkpoint's, then -c, then --set); 2 dataset; 3 model; 4 evaluate; 5 write."""
    from clda_deploy.data import build_dataset
    from clda_deploy.evaluation import evaluate
    from clda_deploy.inference import resolve_device
    from clda_deploy.metrics import format_table

    cfg = load_config(config_path, overrides, base=config_to_dict(read_config(checkpoint)))
    dataset = build_dataset(cfg.data.val, train=False)
    device = resolve_device(cfg.train.device)
    model = load_segmenter(checkpoint, device=device)
    lut = trainid_to_labelid_lut() if cfg.data.val.format in ("cityscapes", "gta5") else None
    result = evaluate(
        model,
        dataset,
        cfg.model.num_classes,
        cfg.eval,
        device=device,
        workers=cfg.data.workers,
        progress=progress,
        save_dir=save_predictions,
        label_id_lut=lut,
    )
    payload = metrics_payload(result.matrix, list(dataset.class_names), cfg, result.num_images, checkpoint)
    out_path = Path(out) if out else Path(checkpoint).parent / METRICS_FILE
    atomic_write(out_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    print(format_table(payload["per_class_iou"], payload["miou"]))
    print(f"{result.num_images} images of {payload['dataset']}; metrics written to {out_path}")
    if save_predictions:
        print(f"predictions written to {save_predictions}")
    return payload
