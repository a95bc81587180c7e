"""Evaluate one or more predictors on a labelled dataset: accumulate a confusion matrix each,
optionally the pixel agreement and max |logit difference| with a reference predictor (the export
parity gate), optionally save one prediction PNG per image (the Cityscapes submission format when
given the labelId table). ``training eval``, the export parity gate and ``serving.bench accuracy``
all score through ``evaluate_predictors``, so their numbers are comparable.

Logits are rescaled to each label's native resolution before the argmax, as mmseg/DAFormer do, so
numbers are comparable with published Cityscapes results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clda_deploy.config import Config, EvalConfig, config_to_dict, load_config
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


@dataclass
class Tally:
    """Running totals of one predictor over the evaluation set; ``agree``/``pixels`` count label
    pixels equal to the reference's, ``max_logit_diff`` is at model resolution."""

    meter: ConfusionMeter
    agree: int = 0
    pixels: int = 0
    max_logit_diff: float = 0.0
    images: int = 0

    @property
    def agreement(self) -> float:
        """Percent of label pixels (ignore pixels included) equal to the reference's."""
        return 100.0 * self.agree / max(self.pixels, 1)


@torch.no_grad()
def evaluate_predictors(
    predictors: Mapping[str, LogitsFn],
    dataset: Any,
    num_classes: int,
    eval_config: EvalConfig,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
    reference: str | None = None,
    on_prediction: Callable[[str, np.ndarray, str], None] | None = None,
) -> dict[str, Tally]:
    """Run every predictor over the same batches of ``dataset`` (eval mode samples) and tally each.

    ``reference`` (one of the names): the others also count pixel agreement with its labels and
    their max |logit difference| from its logits. ``on_prediction(name, labels [H,W], image name)``
    sees every native-size prediction (e.g. to save it).
    """
    names = sorted(predictors, key=lambda name: name != reference)  # the reference scores first
    tallies = {name: Tally(ConfusionMeter(num_classes)) for name in names}
    total = len(dataset) if eval_config.max_images is None else min(eval_config.max_images, len(dataset))
    mode = (eval_config.mode, eval_config.crop, eval_config.stride)
    bar = tqdm(total=total, desc="eval", unit="img", disable=not progress, leave=False)
    for batch in iterate_batches(dataset, eval_config.batch_size, workers, eval_config.max_images):
        images = batch["image"].to(device)
        reference_logits, reference_labels = None, []
        for name in names:
            logits = predict_logits(predictors[name], images, *mode)
            tally = tallies[name]
            if reference_logits is not None:
                tally.max_logit_diff = max(tally.max_logit_diff, float((logits.cpu() - reference_logits).abs().max()))
            for index, label in enumerate(batch["label"]):
                prediction = resize_logits(logits[index : index + 1], tuple(label.shape[-2:])).argmax(dim=1)[0].cpu()
                tally.meter.update(prediction, label)
                if reference_logits is not None:
                    tally.agree += int((prediction == reference_labels[index]).sum())
                    tally.pixels += prediction.numel()
                elif name == reference:
                    reference_labels.append(prediction)
                if on_prediction is not None:
                    on_prediction(name, prediction.numpy(), batch["name"][index])
            tally.images += len(batch["label"])
            if name == reference:
                reference_logits = logits.cpu()
        bar.update(len(batch["label"]))
    bar.close()
    return tallies


def evaluate(
    predict: LogitsFn,
    dataset: Any,
    num_classes: int,
    eval_config: EvalConfig,
    save_dir: str | Path | None = None,
    label_id_lut: np.ndarray | None = None,
    **options: Any,
) -> EvalResult:
    """``evaluate_predictors`` of one predictor (``options``: its device, workers, progress): the
    confusion matrix, and the predictions saved to ``save_dir`` when given. In ``slide`` mode an HRDA
    model's windows run its ``slide_forward`` (HRDA's test protocol); the export parity gate calls
    ``evaluate_predictors`` directly and so compares whole-window inference on both sides."""

    def save(_name: str, labels: np.ndarray, image_name: str) -> None:
        save_prediction(labels, image_name, Path(save_dir), label_id_lut)  # type: ignore[arg-type]

    on_prediction = None if save_dir is None else save
    if eval_config.mode == "slide":  # HRDA's test mode: each window through its sliding multi-resolution inference
        predict = getattr(predict, "slide_forward", predict)
    predictors = {"model": predict}
    (tally,) = evaluate_predictors(predictors, dataset, num_classes, eval_config, on_prediction=on_prediction,
                                   **options).values()  # fmt: skip
    return EvalResult(matrix=tally.meter.matrix, num_images=tally.images)


def eval_config_for(
    checkpoint: str | Path | None, config_path: str | None, overrides: Sequence[str], max_images: int | None
) -> Config:
    """The checkpoint's own config (it names the target-val set), then ``-c``, then ``--set``, then
    ``max_images``: what ``export`` parity and ``serving.bench accuracy`` evaluate with."""
    from clda_deploy.checkpoint import read_config

    base = None if checkpoint is None else config_to_dict(read_config(checkpoint))
    cfg = load_config(config_path, list(overrides), base=base)
    if max_images is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_images=max_images))
    return cfg


def val_dataset(cfg: Config) -> Any:
    """``cfg.data.val`` in eval mode; FileNotFoundError (the config key and how to fix it) when the
    folder is missing, checked before the format builder imports anything heavy."""
    from clda_deploy.data import build_dataset, check_roots

    check_roots({"data.val": cfg.data.val})
    return build_dataset(cfg.data.val, train=False)


def reported_classes(cfg: Config, class_names: Sequence[str]) -> list[int] | None:
    """The classes mIoU is reported over (Synthia's 16/13-class protocols), None for all."""
    from clda_deploy.data.labels import EVAL_SUBSETS, NUM_CLASSES

    return list(EVAL_SUBSETS[cfg.eval.num_classes_reported]) if len(class_names) == NUM_CLASSES else None
