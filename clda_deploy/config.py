"""The one configuration system: frozen dataclasses, loaded from YAML, overridden with --set.

A YAML file lists only what differs from the defaults below. Values are validated (unknown keys,
wrong types, invalid choices) before any work starts, and every error names the key and what is
allowed, e.g. ``unknown key 'trian' (did you mean 'train'?); valid keys: data, model, ...``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from clda_deploy.errors import CldaError
from clda_deploy.models.presets import ENCODER_PRESETS, HEAD_NAMES


class ConfigError(CldaError, ValueError):
    """A configuration problem; the message names the key and how to fix it."""


def _choices(*values: Any) -> dict[str, Any]:
    return {"choices": tuple(values)}


DATASET_FORMATS = ("gta5", "synthia", "cityscapes", "folder")
UDA_METHODS = ("daformer", "hrda")


@dataclass(frozen=True)
class DatasetConfig:
    format: str = field(default="gta5", metadata=_choices(*DATASET_FORMATS))
    root: str = "data/synthcity/source"
    # Cityscapes split folder (train/val/test); the other formats have a single split.
    split: str = "train"
    # [height, width] every image is resized to before cropping; null keeps the native size.
    # DAFormer: GTA5 [720, 1280], Synthia [760, 1280], Cityscapes [512, 1024].
    resize: tuple[int, int] | None = None


@dataclass(frozen=True)
class DataConfig:
    source: DatasetConfig = DatasetConfig()
    target: DatasetConfig = DatasetConfig(format="cityscapes", root="data/synthcity/target")
    val: DatasetConfig = DatasetConfig(format="cityscapes", root="data/synthcity/target", split="val")
    crop: tuple[int, int] = (256, 256)  # [height, width]; DAFormer uses 512x512 on real data
    cat_max_ratio: float = 0.75  # DAFormer/mmseg: re-draw crops where one class covers > 75%
    flip: bool = True
    workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = field(default="mit_cpu_teacher", metadata=_choices(*ENCODER_PRESETS))
    head: str = field(default="daformer", metadata=_choices(*HEAD_NAMES))
    num_classes: int = 19
    head_channels: int = 256  # DAFormer's fusion width
    # Local weights file (timm pvt_v2 or SegFormer mit_bX.pth naming) or "timm:<hub name>".
    pretrained: str | None = None
    # A model.safetensors of this project whose weights initialise the whole segmenter (encoder and
    # head), e.g. a source_only run: self-training from a source model instead of from ImageNet
    # weights. Its encoder, head, num_classes and head_channels must equal this config's.
    init: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 40000  # DAFormer
    batch_size: int = 2  # per domain: 2 source + 2 target (DAFormer)
    lr: float = 6e-5  # AdamW, head x10 (DAFormer)
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    eval_every: int = 4000
    checkpoint_every: int = 4000
    log_every: int = 50
    seed: int = 0
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    amp: bool = True  # mixed precision on CUDA only (bf16 where supported, else fp16)
    head_lr_mult: float = 10.0  # DAFormer: decode head lr x10
    warmup_ratio: float = 1e-6  # mmcv linear warmup starts at lr * warmup_ratio
    poly_power: float = 1.0  # DAFormer: poly(1.0) decay after warmup
    grad_clip: float | None = None  # max gradient norm; null = off (DAFormer: off)
    progress: bool = True  # tqdm bar (loss, lr, it/s, ETA)


@dataclass(frozen=True)
class UDAConfig:
    # daformer: self-training with an EMA teacher; source_only / oracle: the baselines of
    # docs/results.md (oracle trains on target-train labels, which UDA never reads).
    mode: str = field(default="daformer", metadata=_choices("daformer", "source_only", "oracle"))
    # The segmentation scheme every mode trains: daformer (one scale) or hrda (context at hrda.context_scale
    # plus a detail crop, fused by a learned scale attention; the model gains the attention head).
    method: str = field(default="daformer", metadata=_choices(*UDA_METHODS))
    # MIC (Hoyer et al. 2023): q-weighted CE of the student on the jittered, blurred target with a block
    # mask (mic_block x mic_block patches, each dropped with probability mic_ratio) against the EMA
    # teacher's pseudo-labels, weight mic_weight; daformer mode, either method. Published: 64, 0.7, 1.
    mic: bool = False
    mic_block: int = 64  # pixels of the training crop (MIC uses 64 on 512 and on HRDA's 1024 crops)
    mic_ratio: float = 0.7
    mic_weight: float = 1.0
    ema_alpha: float = 0.999  # DAFormer: alpha_t = min(1 - 1/(t+1), 0.999)
    pseudo_threshold: float = 0.968  # DAFormer: q = share of pixels with max prob >= 0.968
    ignore_top: int = 15  # DAFormer (512 crops): pseudo-weight 0 in the top 15 rows ...
    ignore_bottom: int = 120  # ... and the bottom 120 rows; scaled to the crop height
    ignore_left: int = 0  # columns of weight 0 at each side (HRDA: 30 of 1024-high crops = 15 here), ...
    ignore_right: int = 0  # ... scaled to the crop height like the rows
    # DAFormer's teacher is a train-mode submodule, so its BatchNorm layers normalise with the
    # target batch's own statistics when it makes pseudo-labels (the default, as DAFormer);
    # false uses the running statistics, which the source dominates (docs/results.md, calibration).
    teacher_batch_stats: bool = True
    classmix: bool = True
    color_jitter: float = 0.2  # DAFormer strong augmentation on mixed images: strength 0.2 ...
    color_jitter_p: float = 0.8  # ... with probability 0.8
    blur_p: float = 0.5  # Gaussian blur, sigma in [0.15, 1.15], probability 0.5
    rcs: bool = True  # rare class sampling on the source
    rcs_temperature: float = 0.01  # DAFormer: P(c) ~ exp((1 - f_c) / 0.01)
    rcs_min_pixels: int = 3000  # images with > 3000 pixels of c (at 1280x720, scaled)
    rcs_min_crop_pixels: int = 1500  # crops with > 1500 pixels of c (at 1280x720, scaled)
    imnet_feature_dist: float = 0.005  # DAFormer lambda; active only with a pretrained encoder


@dataclass(frozen=True)
class HRDAConfig:
    """HRDA's multi-resolution settings (its published config); read when ``uda.method`` is hrda."""

    context_scale: float = 0.5  # the training crop is seen at half scale (HRDA's context) ...
    # ... and a detail crop at full scale inside it: HRDA's 512 of its 1024 crops; null = half the crop
    detail_crop: tuple[int, int] | None = None
    detail_loss_weight: float = 0.1  # (1 - w) CE(fused) + w CE(detail); no separate context loss
    attention_channels: int | None = None  # the scale-attention head's width; null = model.head_channels
    divisible: int = 8  # detail-box coordinates are multiples of this (HRDA: 8)


@dataclass(frozen=True)
class EvalConfig:
    mode: str = field(default="whole", metadata=_choices("whole", "slide"))
    crop: tuple[int, int] = (512, 512)  # sliding-window size [h, w] (mode: slide)
    stride: tuple[int, int] = (341, 341)  # sliding-window stride [h, w]; DAFormer uses 2/3 overlap
    batch_size: int = 1
    num_classes_reported: int = field(default=19, metadata=_choices(19, 16, 13))
    max_images: int | None = None  # evaluate on the first N images only


# The mapping modes that choose i* by a similarity summed from T2 to T3 (Eq. 6/7).
SIMILARITY_MAPPINGS = ("channel", "token", "both")


@dataclass(frozen=True)
class CLDAConfig:
    # Layer mapping: channel (Eq. 6, default), token, both (flattened), random, none (KD only).
    mapping: str = field(default="channel", metadata=_choices(*SIMILARITY_MAPPINGS, "random", "none"))
    t2: float = 0.3  # stage 2 starts at T2 = t2 * train.iters (not given by the paper; ours)
    t3: float = 0.4  # i* is chosen at T3 = t3 * train.iters; S->T updates after it (ours)
    alpha: float = 0.999  # Eq. 8 EMA factor (ours)
    nonsalient_threshold: float = 0.1  # LSR < 0.1 mIoU points: non-salient (paper, segmentation)
    select_ratio: float = 0.3  # 30% of the non-salient teacher blocks are updated (paper)
    update_scope: str = field(default="block", metadata=_choices("block", "attention"))
    # What R of Eq. 2 is measured on (never the images that are scored):
    #   agreement: target-train images, label-free (R = agreement with the full teacher; UDA proper);
    #   heldout: the last saliency_images target-train images *with* their labels (a small labelled
    #     calibration slice: never scored, its labels never trained on; needed by saliency_rule signed);
    #   val: the first target-val images with labels, as the paper's Eq. 2 reads (they are also scored).
    # heldout is the default: with agreement the paper's 0.1-point threshold marks every block of the
    # SynthCity teacher salient (skipping any block moves agreement by 10-22 points; docs/results.md).
    saliency_data: str = field(default="heldout", metadata=_choices("agreement", "heldout", "val"))
    saliency_images: int = 16  # size of the fixed target subset R is measured on
    saliency_source_images: int = 16  # source images (with labels) LSR is also recorded on; 0 = off
    # abs: Eq. 2 (non-salient when |delta| < threshold); signed: non-salient when skipping the block costs
    # less than the threshold, which includes the blocks whose removal *raises* target mIoU (ours).
    saliency_rule: str = field(default="abs", metadata=_choices("abs", "signed"))
    # random: the student starts from its own random init; teacher: patch embeddings, norms and head
    # copied from the teacher, each student block from a same-stage teacher block (as DistilBERT), which
    # gives Eq. 6 and Eq. 8 a shared basis (ours).
    student_init: str = field(default="random", metadata=_choices("random", "teacher"))
    # With student_init teacher: which teacher blocks seed the student's (evenly: every k-th block of the
    # stage, ending with its last; salient: the stage's blocks with the largest target delta).
    student_init_blocks: str = field(default="evenly", metadata=_choices("evenly", "salient"))
    # DAFormer's step for the student (ClassMix, colour jitter, blur, q-weighted) with the fixed
    # teacher's pseudo-labels, instead of plain target images (ours: separates distillation from
    # losing ClassMix).
    student_mixing: bool = False


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    uda: UDAConfig = UDAConfig()
    hrda: HRDAConfig = HRDAConfig()
    clda: CLDAConfig = CLDAConfig()


# ---------------------------------------------------------------------------------------------
# Building a validated config from plain data


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"a list of {len(args)} {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it in canonical form (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {[f.name for f in dataclasses.fields(tp)]}, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            # PyYAML follows YAML 1.1, where 2e-4 (no dot) is a string; YAML 1.2 and users mean a number.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # internal


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + str(name)
        if name not in fields:
            hint = difflib.get_close_matches(str(name), fields, n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(f"unknown key '{key}'{suggestion}; valid keys: {', '.join(fields)}")
        default = fields[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A partial section (e.g. data.target: {root: X}) starts from the parent's default
            # instance (format cityscapes), not from the section class's own defaults.
            value = merge(config_to_dict(default), value)
        converted = _convert(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices is not None and converted not in choices:
            raise ConfigError(f"{key}: {converted!r} is not a valid choice; choose one of {list(choices)}")
        kwargs[name] = converted
    return cls(**kwargs)


def _check_values(cfg: Config) -> None:
    """Cross-field and range checks that types alone cannot express."""
    positive = {
        "data.crop": cfg.data.crop, "eval.crop": cfg.eval.crop, "eval.stride": cfg.eval.stride,
        "train.iters": (cfg.train.iters,), "train.batch_size": (cfg.train.batch_size,),
        "eval.batch_size": (cfg.eval.batch_size,), "model.num_classes": (cfg.model.num_classes,),
        "model.head_channels": (cfg.model.head_channels,),
    }  # fmt: skip
    for key, values in positive.items():
        if any(v <= 0 for v in values):
            raise ConfigError(f"{key}: must be positive, got {list(values)}")
    for name in ("source", "target", "val"):
        resize = getattr(cfg.data, name).resize
        if resize is not None and min(resize) <= 0:
            raise ConfigError(f"data.{name}.resize: must be positive [height, width], got {list(resize)}")
    if not 0.0 < cfg.data.cat_max_ratio <= 1.0:
        raise ConfigError(f"data.cat_max_ratio: must be in (0, 1], got {cfg.data.cat_max_ratio}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {cfg.train.lr}")
    for key in ("warmup_iters", "eval_every", "checkpoint_every", "log_every"):
        if getattr(cfg.train, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(cfg.train, key)}")
    if not 0.0 <= cfg.uda.ema_alpha < 1.0:
        raise ConfigError(f"uda.ema_alpha: must be in [0, 1), got {cfg.uda.ema_alpha}")
    if not 0.0 < cfg.uda.pseudo_threshold <= 1.0:
        raise ConfigError(f"uda.pseudo_threshold: must be in (0, 1], got {cfg.uda.pseudo_threshold}")
    if not 0.0 <= cfg.clda.t2 <= cfg.clda.t3 <= 1.0:
        raise ConfigError(f"clda.t2, clda.t3: need 0 <= t2 <= t3 <= 1, got t2={cfg.clda.t2}, t3={cfg.clda.t3}")
    if cfg.clda.mapping in SIMILARITY_MAPPINGS and cfg.clda.t3 <= cfg.clda.t2:
        raise ConfigError(
            f"clda.t3 ({cfg.clda.t3}) must exceed clda.t2 ({cfg.clda.t2}): similarity (Eq. 7) is summed from T2 to T3"
        )
    if not 0.0 <= cfg.clda.alpha <= 1.0 or not 0.0 <= cfg.clda.select_ratio <= 1.0:
        raise ConfigError("clda.alpha and clda.select_ratio must lie in [0, 1]")
    if cfg.clda.saliency_images <= 0:
        raise ConfigError(f"clda.saliency_images: must be positive, got {cfg.clda.saliency_images}")
    if cfg.clda.saliency_source_images < 0:
        raise ConfigError(f"clda.saliency_source_images: must be >= 0, got {cfg.clda.saliency_source_images}")
    if cfg.clda.saliency_rule == "signed" and cfg.clda.saliency_data == "agreement":
        raise ConfigError(
            "clda.saliency_rule: signed needs labels (agreement with the full model can only drop when a "
            "block is skipped); set clda.saliency_data to heldout (or val)"
        )
    _check_uda_extensions(cfg)
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers: must be >= 0, got {cfg.data.workers}")
    if cfg.eval.max_images is not None and cfg.eval.max_images <= 0:
        raise ConfigError(f"eval.max_images: must be positive or null, got {cfg.eval.max_images}")


def detail_crop(cfg: Config) -> tuple[int, int]:
    """HRDA's detail crop [h, w]: ``hrda.detail_crop``, or half the training crop when null."""
    if cfg.hrda.detail_crop is not None:
        return cfg.hrda.detail_crop
    return cfg.data.crop[0] // 2, cfg.data.crop[1] // 2


def _check_uda_extensions(cfg: Config) -> None:
    """MIC's ranges, and HRDA's geometry: every crop on the multiples its stride-4 grids at two scales need."""
    if cfg.uda.mic and (cfg.uda.mic_block <= 0 or not 0.0 <= cfg.uda.mic_ratio < 1.0 or cfg.uda.mic_weight < 0):
        raise ConfigError(
            f"uda.mic: need mic_block > 0, 0 <= mic_ratio < 1 and mic_weight >= 0, got mic_block={cfg.uda.mic_block}, "
            f"mic_ratio={cfg.uda.mic_ratio}, mic_weight={cfg.uda.mic_weight}"
        )
    if cfg.uda.method != "hrda":
        return
    hrda, multiple = cfg.hrda, cfg.hrda.divisible
    if not 0.0 < hrda.context_scale < 1.0:
        raise ConfigError(f"hrda.context_scale: must be in (0, 1), got {hrda.context_scale}")
    if not 0.0 <= hrda.detail_loss_weight <= 1.0:
        raise ConfigError(f"hrda.detail_loss_weight: must be in [0, 1], got {hrda.detail_loss_weight}")
    if multiple <= 0 or multiple % 8:
        raise ConfigError(f"hrda.divisible: must be a positive multiple of 8, got {multiple}")
    if hrda.attention_channels is not None and hrda.attention_channels <= 0:
        raise ConfigError(f"hrda.attention_channels: must be positive or null, got {hrda.attention_channels}")
    detail = detail_crop(cfg)
    sizes = {"data.crop": cfg.data.crop, "hrda.detail_crop": detail}
    if cfg.eval.mode == "slide":
        sizes.update({"eval.crop": cfg.eval.crop, "eval.stride": cfg.eval.stride})
    for key, size in sizes.items():
        if any(value <= 0 or value % multiple for value in size):
            raise ConfigError(f"{key}: uda.method hrda needs multiples of hrda.divisible={multiple}, got {list(size)}")
    if detail[0] > cfg.data.crop[0] or detail[1] > cfg.data.crop[1]:
        raise ConfigError(f"hrda.detail_crop {list(detail)} must fit inside data.crop {list(cfg.data.crop)}")


def _migrate(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Older model files and configs have ``clda.saliency_labels`` (bool), which ``clda.saliency_data``
    replaced: true meant the first target-val images with labels (``val``), false label-free agreement.
    Applied to each layer (checkpoint, YAML, ``--set``) before they are merged, so a newer layer wins."""
    clda = data.get("clda")
    if not isinstance(clda, dict) or "saliency_labels" not in clda:
        return data
    clda = dict(clda)
    legacy = clda.pop("saliency_labels")
    if not isinstance(legacy, bool):
        raise ConfigError(
            f"clda.saliency_labels{where}: expected true or false (it is now clda.saliency_data), got {legacy!r}"
        )
    migrated = "val" if legacy else "agreement"
    if clda.get("saliency_data", migrated) != migrated:
        raise ConfigError(
            f"clda.saliency_labels={str(legacy).lower()} and clda.saliency_data={clda['saliency_data']}{where} "
            "disagree: drop clda.saliency_labels (replaced by clda.saliency_data)"
        )
    clda["saliency_data"] = migrated
    return {**data, "clda": clda}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a nested mapping (as read from YAML or a checkpoint) into a frozen Config."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, _migrate(data))
    _check_values(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> nested dict; each value is parsed as YAML."""
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value pairs like train.iters=100, got {pair!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML: {exc}") from None
    return nest(values, "--set ")


def nest(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``; ``where`` prefixes the error's key."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *sections, name = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}{key}: '{section}' is set both as a value and as a section")
        node[name] = value
    return nested


def override(cfg: Config, values: Mapping[str, Any]) -> Config:
    """``cfg`` with dotted keys set to Python values (``{"train.seed": 1, "clda.alpha": 0.99}``), validated
    as a YAML layer is (unknown keys, types, choices, ranges). Callers that build configs in Python (the
    studies) use this instead of formatting ``--set key=value`` strings for the YAML parser."""
    return config_from_dict(merge(config_to_dict(cfg), nest(values)))


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def stage_iterations(cfg: Config) -> tuple[int, int]:
    """CLDA's (T2, T3) in steps from the fractions ``clda.t2``, ``clda.t3`` of ``train.iters``."""
    iters = cfg.train.iters
    return int(math.floor(cfg.clda.t2 * iters + 0.5)), int(math.floor(cfg.clda.t3 * iters + 0.5))


def check_student_schedule(cfg: Config) -> None:
    """A similarity mapping needs at least one step in [T2, T3) (Eq. 7 sums over it); a short
    ``train.iters`` can round both to the same step. Checked by the student command only: teacher
    configs carry the ``clda`` defaults without using them."""
    t2, t3 = stage_iterations(cfg)
    if cfg.clda.mapping in SIMILARITY_MAPPINGS and t3 <= t2:
        raise ConfigError(
            f"train.iters={cfg.train.iters} is too short for clda.t2={cfg.clda.t2} and clda.t3={cfg.clda.t3}: "
            f"T2 and T3 both fall on step {t2}, so no similarity (Eq. 7) would be accumulated; "
            "raise train.iters or widen clda.t3 - clda.t2"
        )


def load_config(
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- ``base`` (e.g. a checkpoint's config) <- YAML file <- ``--set`` overrides."""
    data = _migrate(dict(base or {}))
    if yaml_path is not None:
        data = merge(data, _migrate(read_yaml(yaml_path), f" (in {yaml_path})"))
    overridden = _migrate(parse_overrides(overrides), " (from --set)")
    try:
        return config_from_dict(merge(data, overridden))
    except ConfigError as exc:
        message, set_keys = str(exc), _dotted_keys(overridden)
        unknown = re.match(r"unknown key '([^']+)'", message)
        if any(
            message.startswith((f"{key}:", f"{key}[")) or (unknown and (key + ".").startswith(unknown[1] + "."))
            for key in set_keys
        ):
            where = " (from --set)"
        else:
            where = f" (in {yaml_path})" if yaml_path is not None else ""
        raise ConfigError(f"{exc}{where}") from None


def _dotted_keys(nested: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b"]`` (the keys an error message starts with)."""
    keys = []
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
