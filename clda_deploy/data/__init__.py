"""Datasets, label tables and the shared preprocessing.

Importing this package is light (no torch): ``build_dataset`` imports the format modules lazily,
so configs can be validated and the torch-free ONNX serving path can import ``transforms``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from clda_deploy.config import DATASET_FORMATS, ConfigError, DatasetConfig

if TYPE_CHECKING:
    from clda_deploy.data.base import SegmentationDataset

__all__ = ["DATASET_FORMATS", "build_dataset"]


# format -> (module, builder function)
_BUILDERS = {
    "gta5": ("clda_deploy.data.gta5", "build_gta5"),
    "synthia": ("clda_deploy.data.synthia", "build_synthia"),
    "cityscapes": ("clda_deploy.data.cityscapes", "build_cityscapes"),
    "folder": ("clda_deploy.data.folder", "build_folder"),
}
assert set(_BUILDERS) == set(DATASET_FORMATS), "every config format needs a builder"


def build_dataset(
    cfg: DatasetConfig,
    *,
    train: bool = False,
    crop: tuple[int, int] | None = None,
    cat_max_ratio: float = 0.75,
    flip: bool = False,
    seed: int = 0,
    labels: bool = True,
) -> SegmentationDataset:
    """The dataset ``cfg`` describes (format, root, split, resize).

    ``train=True`` gives augmented crops (resize -> random crop with ``cat_max_ratio`` -> flip);
    ``train=False`` resizes only the image and keeps labels at native size for evaluation.
    ``labels=False`` reads images only (labels all 255): UDA target-train data.
    """
    if cfg.format not in _BUILDERS:
        raise ValueError(f"unknown dataset format {cfg.format!r}; choose one of {list(DATASET_FORMATS)}")
    module_name, function_name = _BUILDERS[cfg.format]
    builder = getattr(import_module(module_name), function_name)
    return builder(cfg, labels=labels, train=train, crop=crop, cat_max_ratio=cat_max_ratio, flip=flip, seed=seed)


def check_roots(datasets: dict[str, DatasetConfig]) -> None:
    """Fail in milliseconds (before torch is imported) when a dataset folder does not exist.

    ``datasets`` maps the config key (``data.source``) to its config; the format builders check
    the full layout later.
    """
    from pathlib import Path

    for key, cfg in datasets.items():
        if not Path(cfg.root).is_dir():
            raise ConfigError(
                f"{key}.root: dataset folder not found: {cfg.root} (format {cfg.format}); "
                "for the embedded benchmark run `make data` or `python -m training data`"
            )
