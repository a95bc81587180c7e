"""``python -m training gap``: which part of SynthCity's domain gap does a model fail on?

Renders the same target-val scenes in a series of styles: the source style, the benchmark's
target style, the full-strength street style, the street style with one group of knobs
(``STYLE_GROUPS``: colour, materials, light, optics_sensor, geometry) put back to the source's, and
the source style with only one group taken from the street. Every model is scored (mIoU) on every
series. A source-only model's drop from "source style" to "source with street X only" is what
group X alone costs it; comparing a UDA model with it shows which groups self-training bridges.
This is how generator version 3's split of the gap was chosen (docs/results.md, calibration).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clda_deploy.checkpoint import atomic_write
from clda_deploy.data.synthcity.style import (
    SOURCE_STYLE,
    STREET_STYLE,
    STYLE_GROUPS,
    TARGET_STYLE,
    DomainStyle,
    with_groups,
)
from training.errors import MissingInputError, UsageError

BATCH = 4  # images rendered and predicted at once


def gap_variants() -> dict[str, DomainStyle]:
    """The styles of the study, in table order (names are the table's row labels)."""
    variants = {
        "source style": SOURCE_STYLE,
        "target (generator default)": TARGET_STYLE,
        "street, every group at full strength": STREET_STYLE,
    }
    for group in STYLE_GROUPS:
        variants[f"street without {group}"] = with_groups(STREET_STYLE, SOURCE_STYLE, (group,), f"street-{group}")
    for group in STYLE_GROUPS:
        variants[f"source with street {group} only"] = with_groups(
            SOURCE_STYLE, STREET_STYLE, (group,), f"source+{group}"
        )
    return variants


def parse_models(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` pairs -> {name: path}, with an error naming the bad spec or missing file."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--model expects NAME=PATH (e.g. so=runs/so/model.safetensors), got {spec!r}")
        if name in models:
            raise UsageError(f"--model name {name!r} given twice")
        if not Path(path).is_file():
            raise MissingInputError(f"--model {name}: no such file: {path}")
        models[name] = path
    if not models:
        raise UsageError("give at least one --model NAME=PATH")
    return models


@torch.no_grad()
def score_style(
    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    style: DomainStyle,
    images: int,
    seed: int,
    size: tuple[int, int],
    num_classes: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """mIoU of each predictor on target-val scenes ``0 .. images-1`` rendered in ``style``."""
    from clda_deploy.data.synthcity import render_styled
    from clda_deploy.data.transforms import preprocess
    from clda_deploy.inference import resize_logits
    from clda_deploy.metrics import ConfusionMeter, mean_iou

    meters = {name: ConfusionMeter(num_classes) for name in predictors}
    for start in range(0, images, BATCH):
        indices = range(start, min(start + BATCH, images))
        rendered = [render_styled(seed, index, "val", style, *size) for index in indices]
        batch = preprocess([image for image, _ in rendered])
        labels = [torch.from_numpy(label.astype(np.int64)) for _, label in rendered]
        for name, predict in predictors.items():
            predictions = resize_logits(predict(batch).float(), size).argmax(dim=1)
            for prediction, label in zip(predictions, labels, strict=True):
                meters[name].update(prediction, label)
        if on_batch is not None:
            on_batch(len(rendered))
    return {name: mean_iou(meter.matrix) for name, meter in meters.items()}


def markdown_table(results: dict[str, dict[str, float]], models: list[str], command: str) -> str:
    header = "| style | " + " | ".join(models) + " |"
    rule = "|---|" + "---|" * len(models)
    rows = [
        f"| {style} | " + " | ".join(f"{scores[name]:.2f}" for name in models) + " |"
        for style, scores in results.items()
    ]
    return "\n".join([f"Command: `{command}`", "", header, rule, *rows]) + "\n"


def run_gap_study(
    model_specs: list[str],
    images: int = 100,
    seed: int = 0,
    size: tuple[int, int] = (256, 512),
    json_out: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str = "python -m training gap ...",
) -> dict[str, Any]:
    """Score every model on every style of ``gap_variants``; print the table, optionally write JSON."""
    from tqdm import tqdm

    from clda_deploy.checkpoint import load_segmenter
    from clda_deploy.inference import resolve_device

    if images < 1:
        raise UsageError(f"--images must be at least 1, got {images}")
    if min(size) < 32:
        raise UsageError(f"--height and --width must be at least 32 pixels, got {size}")
    models = parse_models(model_specs)
    torch_device = resolve_device(device)
    loaded = {name: load_segmenter(path, device=torch_device) for name, path in models.items()}
    classes = {int(model.spec["num_classes"]) for model in loaded.values()}
    if len(classes) != 1:
        raise UsageError(f"the models predict different numbers of classes: {sorted(classes)}")
    num_classes = classes.pop()
    predictors = {name: (lambda x, m=model: m(x.to(torch_device))) for name, model in loaded.items()}
    variants = gap_variants()
    bar = tqdm(total=images * len(variants), desc="gap study", unit="img", disable=not progress)
    results = {}
    for label, style in variants.items():
        results[label] = score_style(predictors, style, images, seed, size, num_classes, bar.update)
    bar.close()
    table = markdown_table(results, list(models), command)
    print(table)
    payload = {
        "command": command,
        "images": images,
        "seed": seed,
        "size": list(size),
        "models": models,
        "miou": {label: {name: round(value, 2) for name, value in scores.items()} for label, scores in results.items()},
    }
    if json_out:
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
    return payload
