"""Encoder weights from a local file (timm pvt_v2 or SegFormer ``mit_bX.pth`` naming) or the timm hub.

Both namings describe the same tensors; SegFormer's is mapped onto timm's::

    patch_embed1.*                 -> patch_embed.*
    patch_embed{s}.* (s = 2..4)    -> stages.{s-1}.downsample.*
    block{s}.{i}.*                 -> stages.{s-1}.blocks.{i}.*
    *.mlp.dwconv.dwconv.*          -> *.mlp.dwconv.*
    norm{s}.* (top level)          -> stages.{s-1}.norm.*

Loading is strict: every encoder tensor must be present with its shape, and nothing else may be.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from clda_deploy.errors import CldaError

if TYPE_CHECKING:
    from clda_deploy.models.encoders import MiTEncoder

__all__ = ["load_pretrained", "read_state_dict", "to_timm_names", "check_state_dict"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
TIMM_SCHEME = "timm:"
# Wrappers a training framework may put around the weights (mmcv/mmseg: state_dict; others: model).
WRAPPER_KEYS = ("state_dict", "model", "module")
# Prefixes of an encoder inside a whole segmenter (mmseg: backbone., ours: encoder.) or DDP (module.).
ENCODER_PREFIXES = ("backbone.", "encoder.")
DDP_PREFIX = "module."
CLASSIFIER_PREFIX = "head."
LISTED_KEYS = 10


class PretrainedWeightsError(CldaError, ValueError):
    """``model.pretrained`` names weights that cannot be used; the message names the source and why."""


class PretrainedWeightsNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """``model.pretrained`` names a local file that does not exist."""


class HubUnavailableError(CldaError, RuntimeError):
    """A ``timm:<name>`` download failed (no network); the message says to give a local file."""


def load_pretrained(encoder: MiTEncoder, source: str) -> None:
    """Load ``source`` into ``encoder`` (in place), strictly.

    ``source``: a local ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``) or
    ``.safetensors`` file, or ``"timm:<hub model name>"`` (downloads; needs the network).
    Raises PretrainedWeightsNotFoundError (a FileNotFoundError), PretrainedWeightsError (a
    ValueError) naming the source and the missing/unexpected/mismatched keys, or
    HubUnavailableError (a RuntimeError) when the timm hub cannot be reached.
    """
    if source.startswith(TIMM_SCHEME):
        state_dict = _timm_hub_state_dict(source[len(TIMM_SCHEME) :])
    else:
        state_dict = read_state_dict(source)
    mapped = to_timm_names(state_dict)
    check_state_dict(encoder, mapped, source)
    encoder.load_state_dict(mapped, strict=True)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a local weights file, unwrapped from ``state_dict``/``model`` containers."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(
            f"pretrained weights {str(path)!r} not found; give a local file or 'timm:<name>'"
        )
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if suffix not in TORCH_SUFFIXES:
        valid = ", ".join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))
        raise PretrainedWeightsError(f"{path}: unsupported weights format {suffix!r}; use one of {valid}")
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    return _unwrap(loaded, str(path))


def _unwrap(loaded: object, source: str) -> dict[str, Tensor]:
    # Checkpoints nest the weights one or two levels deep ({"state_dict": {...}, "meta": ...}).
    while isinstance(loaded, Mapping):
        inner = next((loaded[key] for key in WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise PretrainedWeightsError(f"{source}: expected a dict of tensors, found {type(loaded).__name__}")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, Tensor)}
    if not tensors:
        raise PretrainedWeightsError(
            f"{source}: no tensors found (top-level keys: {sorted(map(str, loaded))[:LISTED_KEYS]})"
        )
    return tensors


def _strip_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = {key.removeprefix(DDP_PREFIX): value for key, value in state_dict.items()}
    for prefix in ENCODER_PREFIXES:
        # A whole segmenter: keep only its encoder (the decode head is not the encoder's business).
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def _segformer_to_timm(key: str) -> str:
    key = re.sub(r"^patch_embed1\.", "patch_embed.", key)
    key = re.sub(r"^patch_embed([2-9])\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.", key)
    key = re.sub(r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.", key)
    key = re.sub(r"^norm(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm.", key)
    return key.replace(".dwconv.dwconv.", ".dwconv.")


def to_timm_names(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Encoder tensors in timm pvt_v2 naming, from timm or SegFormer naming.

    Strips ``module.``, keeps only ``backbone.*``/``encoder.*`` when present (a whole segmenter's
    checkpoint), drops an ImageNet classifier (``head.*``) and renames SegFormer keys.
    """
    state = _strip_prefixes(state_dict)
    is_segformer = any(key.startswith(("patch_embed1.", "block1.")) for key in state)
    mapped = {}
    for key, value in state.items():
        if key.startswith(CLASSIFIER_PREFIX):
            continue
        mapped[_segformer_to_timm(key) if is_segformer else key] = value
    return mapped


def _listing(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    more = f", ... ({len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else ""
    return f"{len(keys)} {label} keys: {shown}{more}"


def check_state_dict(encoder: MiTEncoder, state_dict: Mapping[str, Tensor], source: str) -> None:
    """ValueError naming ``source`` and the missing / unexpected / shape-mismatched keys, if any."""
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{key} (file {tuple(state_dict[key].shape)}, model {tuple(own[key].shape)})"
        for key in set(own) & set(state_dict)
        if own[key].shape != state_dict[key].shape
    )
    problems = [
        _listing(label, keys)
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
        if keys
    ]
    if problems:
        raise PretrainedWeightsError(
            f"pretrained weights {source!r} do not fit encoder {encoder.name!r}: {'; '.join(problems)}. "
            "Check that the file is for this MiT variant (timm's pvt_v2_b0..b4 use MLP ratios 8,8,4,4, "
            "MiT uses 4 everywhere; pvt_v2_b5 matches mit_b5)."
        )


def _timm_hub_state_dict(model_name: str) -> dict[str, Tensor]:
    import timm

    if not timm.is_model(model_name):
        raise PretrainedWeightsError(f"'timm:{model_name}': timm has no model {model_name!r} (e.g. 'timm:pvt_v2_b5')")
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as exc:  # network failures surface as many exception types (OSError, HTTP, hub)
        raise HubUnavailableError(
            f"could not fetch 'timm:{model_name}' weights: the timm/Hugging Face hub is unreachable or "
            f"refused the download ({type(exc).__name__}: {exc}). Download the weights where there is "
            "network access and pass the local file path instead (e.g. model.pretrained=weights/mit_b5.pth)."
        ) from exc
    return model.state_dict()
