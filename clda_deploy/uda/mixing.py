"""ClassMix and the strong augmentation of DAFormer (Hoyer et al. 2022), with explicit generators.

DAFormer (after DACS) pastes half of the source image's classes onto the target image
(``class_mix_masks`` + ``mix``), then colour-jitters and blurs the mixed image
(``strong_transform``). DAFormer draws from the global NumPy/Python RNGs and kornia; here every
random draw comes from an optional ``torch.Generator`` (on the CPU, so drawing never syncs a GPU)
and the image operations are torchvision's, so a seed reproduces a batch exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF  # noqa: N812 (the conventional alias)
from torch import Tensor

from clda_deploy.config import UDAConfig
from clda_deploy.data.labels import IGNORE_INDEX
from clda_deploy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize

__all__ = ["blur_kernel_size", "class_mix_masks", "color_jitter", "gaussian_blur", "mix", "strong_transform"]


def _uniform(generator: torch.Generator | None, count: int) -> list[float]:
    """``count`` floats in [0, 1) from ``generator`` (drawn on its own device, then to Python)."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(count, generator=generator, device=device).tolist()


def class_mix_masks(
    source_labels: Tensor, generator: torch.Generator | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """ClassMix masks: ``source_labels [B,H,W]`` long -> ``masks [B,1,H,W]`` float in {0, 1}.

    Per image, the classes present in its label (``ignore_index`` excluded) are shuffled and the
    first ``(n + n % 2) // 2`` chosen (half, rounded up: DAFormer's ``get_class_masks``); the mask
    is 1 on the pixels of a chosen class. DAFormer's code takes the classes of the whole batch,
    255 included; we use each image's own classes as ClassMix (Olsson et al. 2021) defines it,
    so the mask always covers exactly half of the pasted image's classes.
    """
    if source_labels.dim() == 4 and source_labels.shape[1] == 1:
        source_labels = source_labels[:, 0]
    if source_labels.dim() != 3:
        raise ValueError(f"source_labels must be [B,H,W], got shape {tuple(source_labels.shape)}")
    device = generator.device if generator is not None else torch.device("cpu")
    masks = []
    for label in source_labels:
        classes = torch.unique(label[label != ignore_index])  # sorted, so the draw is reproducible
        count = classes.numel()
        order = torch.randperm(count, generator=generator, device=device)[: (count + count % 2) // 2]
        chosen = classes[order.to(classes.device)]
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks).unsqueeze(1).float()


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """``mask * source + (1 - mask) * target`` (DAFormer's ``one_mix``).

    Args:
        mask: ``[B,1,H,W]`` in {0, 1} (from ``class_mix_masks``).
        source, target: same shape, either ``[B,C,H,W]`` (images; the mask broadcasts over C) or
            ``[B,H,W]`` (labels or pixel weights; the mask's channel dim is dropped).

    Returns:
        The mixed tensor, of the inputs' dtype. Integer inputs (labels) are selected with
        ``torch.where`` (any non-zero mask value picks the source), so ids are never blended.
    """
    if source.shape != target.shape:
        raise ValueError(f"source and target must share a shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B,1,H,W], got shape {tuple(mask.shape)}")
    if source.dim() == 3:
        mask = mask[:, 0]
    if source.dim() != mask.dim() or source.shape[0] != mask.shape[0] or source.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit data of shape {tuple(source.shape)}")
    if not source.is_floating_point():
        return torch.where(mask.bool(), source, target)
    mask = mask.to(source.dtype)
    return mask * source + (1 - mask) * target


def _to_unit_range(image: Tensor) -> Tensor:
    """Normalized ``[3,H,W]`` -> RGB on 0..1 (DAFormer's ``denorm_``), float32."""
    return denormalize(image.float()) / 255.0


def _from_unit_range(image: Tensor) -> Tensor:
    """RGB on 0..1 ``[3,H,W]`` -> normalized (DAFormer's ``renorm_``)."""
    mean = image.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * 255.0 - mean) / std


def _jitter_operations(strength: float, draws: list[float]) -> list[Callable[[Tensor], Tensor]]:
    """The four adjustments with factors drawn in [max(0, 1-s), 1+s] (hue in [-s, s], clipped to
    torchvision's [-0.5, 0.5]), as kornia's ``ColorJitter(s, s, s, s)`` DAFormer uses."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    brightness, contrast, saturation = (low + (high - low) * u for u in draws[:3])
    hue = min(max((2.0 * draws[3] - 1.0) * strength, -0.5), 0.5)
    return [
        lambda x: TF.adjust_brightness(x, brightness),
        lambda x: TF.adjust_contrast(x, contrast),
        lambda x: TF.adjust_saturation(x, saturation),
        lambda x: TF.adjust_hue(x, hue),
    ]


def color_jitter(
    images: Tensor,
    strength: float = 0.2,
    probability: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per image with probability ``probability``: brightness, contrast, saturation and hue jitter
    of ``strength`` in a random order (as kornia and torchvision do), on the denormalized 0..1
    image (values clamped to 0..1 by the adjustments), renormalized after.

    ``images [B,3,H,W]`` normalized -> same shape and dtype. The same number of draws is taken
    per image whatever ``probability`` is, so a seed gives the same factors for any probability.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B,3,H,W], got shape {tuple(images.shape)}")
    device = generator.device if generator is not None else "cpu"
    outputs = []
    for image in images:
        draws = _uniform(generator, 5)
        order = torch.randperm(4, generator=generator, device=device).tolist()
        if draws[0] >= probability:
            outputs.append(image)
            continue
        operations = _jitter_operations(strength, draws[1:])
        unit = _to_unit_range(image)
        for index in order:
            unit = operations[index](unit)
        outputs.append(_from_unit_range(unit).to(images.dtype))
    return torch.stack(outputs)


def blur_kernel_size(length: int) -> int:
    """DAFormer's kernel size for an image side of ``length`` pixels: the odd number at or just
    below ``ceil(0.1 * length)`` (``floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2)``); 51 for 512."""
    tenth = math.ceil(0.1 * length)
    return int(math.floor(tenth - 0.5 + tenth % 2))


def gaussian_blur(
    images: Tensor,
    probability: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, 1.15),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per image with probability ``probability``: isotropic Gaussian blur with sigma uniform in
    ``sigma_range`` and DAFormer's kernel size rule (``blur_kernel_size`` per axis), reflect
    padding (kornia's default, so a constant image stays constant).

    ``images [B,C,H,W]`` -> same shape and dtype. Blurring is linear, so it runs on the normalized
    values directly, as in DAFormer.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B,C,H,W], got shape {tuple(images.shape)}")
    kernel = [blur_kernel_size(images.shape[-1]), blur_kernel_size(images.shape[-2])]  # torchvision: (x, y)
    low, high = sigma_range
    outputs = []
    for image in images:
        apply, draw = _uniform(generator, 2)
        if apply >= probability or kernel == [1, 1]:
            outputs.append(image)
            continue
        sigma = low + (high - low) * draw
        outputs.append(TF.gaussian_blur(image.float(), kernel, [sigma, sigma]).to(images.dtype))
    return torch.stack(outputs)


def strong_transform(
    images: Tensor,
    generator: torch.Generator | None = None,
    jitter: float = 0.2,
    jitter_p: float = 0.8,
    blur: bool = True,
    blur_p: float = 0.5,
) -> Tensor:
    """DAFormer's strong augmentation of the mixed images ``[B,3,H,W]`` (normalized): colour
    jitter (strength ``jitter``, probability ``jitter_p``), then Gaussian blur (``blur_p``)."""
    images = color_jitter(images, strength=jitter, probability=jitter_p, generator=generator)
    if blur:
        images = gaussian_blur(images, probability=blur_p, generator=generator)
    return images


@torch.no_grad()
def mix_with_pseudo_labels(
    source: dict[str, Tensor],
    target_images: Tensor,
    labels: Tensor,
    weight: Tensor,
    cfg: UDAConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """DAFormer's steps 2-3: ClassMix of the source onto the target with the pseudo-labels, then the
    strong transform. Returns (mixed images ``[B,3,H,W]``, mixed labels ``[B,H,W]``, mixed weights
    ``[B,H,W]``: 1 on pasted source pixels, the pseudo-label weight elsewhere)."""
    source_labels = source["label"]
    if cfg.classmix:
        masks = class_mix_masks(source_labels.cpu(), generator).to(source_labels.device)
    else:
        masks = torch.zeros((labels.shape[0], 1, *labels.shape[1:]), device=labels.device)
    images = mix(masks, source["image"], target_images)
    mixed_labels = mix(masks, source_labels, labels)
    mixed_weight = mix(masks, torch.ones_like(weight), weight)
    images = strong_transform(
        images, generator, cfg.color_jitter, cfg.color_jitter_p, blur=cfg.blur_p > 0, blur_p=cfg.blur_p
    )
    return images, mixed_labels, mixed_weight
