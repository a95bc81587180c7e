"""Evaluate any predictor on a labelled dataset: accumulate a confusion matrix, optionally save
one prediction PNG per image (the Cityscapes submission format when given the labelId table).

Logits are rescaled to each label's native resolution before the argmax, as mmseg/DAFormer do, so
numbers are comparable with published Cityscapes results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clda_deploy.config import EvalConfig
from clda_deploy.inference import LogitsFn, predict_logits, resize_logits
from clda_deploy.metrics import ConfusionMeter


@dataclass
class EvalResult:
    matrix: np.ndarray  # [K, K] confusion matrix, rows = ground truth
    num_images: int


def collate_eval(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (same resized size) and keep labels as a list (native sizes may differ)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": [s["label"] for s in samples],
        "name": [s["name"] for s in samples],
    }


def iterate_batches(dataset: Any, batch_size: int, workers: int, limit: int | None) -> Iterator[dict[str, Any]]:
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_eval
    )
    yield from loader


def save_prediction(labels: np.ndarray, name: str, out_dir: Path, label_id_lut: np.ndarray | None) -> Path:
    """Write a uint8 PNG named after the image (``<stem>.png``), trainIds or mapped labelIds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    values = labels.astype(np.uint8) if label_id_lut is None else label_id_lut[labels]
    path = out_dir / (Path(name).stem + ".png")
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


@torch.no_grad()
def evaluate(
    predict: LogitsFn,
    dataset: Any,
    num_classes: int,
    eval_config: EvalConfig,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
    save_dir: str | Path | None = None,
    label_id_lut: np.ndarray | None = None,
) -> EvalResult:
    """Run ``predict`` over ``dataset`` (eval mode samples) and accumulate the confusion matrix."""
    meter = ConfusionMeter(num_classes)
    total = len(dataset) if eval_config.max_images is None else min(eval_config.max_images, len(dataset))
    bar = tqdm(total=total, desc="eval", unit="img", disable=not progress, leave=False)
    count = 0
    for batch in iterate_batches(dataset, eval_config.batch_size, workers, eval_config.max_images):
        images = batch["image"].to(device)
        logits = predict_logits(predict, images, eval_config.mode, eval_config.crop, eval_config.stride)
        for index, label in enumerate(batch["label"]):
            full = resize_logits(logits[index : index + 1], tuple(label.shape[-2:]))
            prediction = full.argmax(dim=1)[0].cpu()
            meter.update(prediction, label)
            if save_dir is not None:
                save_prediction(prediction.numpy(), batch["name"][index], Path(save_dir), label_id_lut)
        count += len(batch["label"])
        bar.update(len(batch["label"]))
    bar.close()
    return EvalResult(matrix=meter.matrix, num_images=count)
