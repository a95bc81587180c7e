"""The model metadata keys ``python -m export`` writes and every predictor reads (DESIGN §3).

They travel inside an ONNX file as ``metadata_props`` and next to a TensorRT engine in its
``<engine>.json`` sidecar, so a served file carries its class names, palette and provenance.
"""

from __future__ import annotations

import json
from pathlib import Path

META_NAME, META_ROLE, META_CLASSES, META_PALETTE = "clda_name", "clda_role", "clda_classes", "clda_palette"
META_PREPROCESSING, META_CONFIG, META_PRECISION = "clda_preprocessing", "clda_config", "clda_precision"
META_SOURCE, META_SOURCE_SHA256, META_LABELS_DTYPE = "clda_source", "clda_source_sha256", "clda_labels_dtype"


def class_table(num_classes: int) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette for ``num_classes`` trainIds (Cityscapes' 19, else generic)."""
    from clda_deploy.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    if num_classes == len(CITYSCAPES_CLASSES):
        return CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    names = tuple(f"class{index}" for index in range(num_classes))
    palette = tuple(CITYSCAPES_PALETTE[index % len(CITYSCAPES_PALETTE)] for index in range(num_classes))
    return names, palette


def classes_from_metadata(
    metadata: dict[str, str], path: str | Path
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette from the ``clda_*`` metadata; ``ValueError`` naming what is wrong."""
    missing = [key for key in (META_CLASSES, META_PALETTE) if key not in metadata]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(missing)} metadata: it was not written by `python -m export`, "
            "so class names and colours are unknown; re-export it from the model.safetensors"
        )
    try:
        classes = tuple(str(name) for name in json.loads(metadata[META_CLASSES]))
        palette = tuple((int(r), int(g), int(b)) for r, g, b in json.loads(metadata[META_PALETTE]))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: invalid class/palette metadata ({exc})") from None
    if len(classes) != len(palette):
        raise ValueError(f"{path}: {len(classes)} class names but {len(palette)} palette colours")
    return classes, palette


def engine_sidecar(path: str | Path) -> Path:
    """``student.plan`` -> ``student.plan.json``: a TensorRT engine's build settings and metadata."""
    return Path(f"{path}.json")
