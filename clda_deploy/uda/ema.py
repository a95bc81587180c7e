"""Exponential moving averages between models, paired by tensor name and shape.

- ``ema_alpha`` / ``ema_update``: DAFormer's (Hoyer et al. 2022) mean teacher,
  ``teacher <- alpha * teacher + (1 - alpha) * student`` with ``alpha_t = min(1 - 1/(t+1), 0.999)``.
- ``ema_update_pairs``: CLDA's S->T update (Eq. 8), ``phi_T,gamma <- alpha * phi_T,gamma +
  (1 - alpha) * phi_S,i*`` for each mapped (teacher block gamma, student block i*) pair, addressed
  by block name (``stage3.block05``) through the encoders' block contract (``models.blocks``).

DAFormer pairs ``parameters()`` by zip order, which silently mixes tensors up when the two models
differ; here every tensor is paired by name and shape and a mismatch raises naming the tensor.

Buffers (BatchNorm running statistics): DAFormer averages parameters only and leaves the EMA
model's buffers at their initial values (its teacher runs BatchNorm on batch statistics). Our
teacher is evaluated in eval mode, where stale running statistics would not match the averaged
weights, so by default floating buffers are *copied* from the source (``buffers="copy"``);
``"ema"`` averages them like parameters and ``"keep"`` leaves them alone. Integer buffers
(``num_batches_tracked``) cannot be averaged and are copied unless ``"keep"``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from clda_deploy.models.blocks import BlockName

if TYPE_CHECKING:
    from clda_deploy.models.segmenter import Segmenter

__all__ = ["SCOPES", "blend_fraction", "copy_model", "ema_alpha", "ema_update", "ema_update_pairs"]

BufferMode = Literal["copy", "ema", "keep"]
_BUFFER_MODES = ("copy", "ema", "keep")
SCOPES = ("block", "attention")  # what of a mapped block Eq. 8 averages (clda.update_scope)


def ema_alpha(iteration: int, max_alpha: float = 0.999) -> float:
    """DAFormer's schedule ``min(1 - 1/(iteration + 1), max_alpha)``: 0 at iteration 0 (the teacher
    becomes a copy of the student), 0.5 at 1, then rising to ``max_alpha``."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    return min(1.0 - 1.0 / (iteration + 1), max_alpha)


def blend_fraction(alpha: float, steps: int) -> float:
    """How far ``steps`` EMA updates with a constant ``alpha`` move a tensor toward a fixed source:
    after them ``t = alpha**steps * t0 + (1 - alpha**steps) * s``, so the weight of the source is
    ``1 - alpha**steps`` (CLDA's S->T dose: 0.30 for alpha 0.999 over 360 steps, 0.97 for 0.99)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return 1.0 - alpha**steps


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with gradients disabled (the EMA teacher never gets gradients)."""
    return copy.deepcopy(model).requires_grad_(False)


def _selected(name: str, prefixes: tuple[str, ...] | None) -> bool:
    # Prefixes match on dot boundaries: "head.layers.1" selects "head.layers.1.x", never
    # "head.layers.10.x".
    return prefixes is None or any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _paired_tensors(
    target: dict[str, Tensor], source: dict[str, Tensor], kind: str, where: str
) -> list[tuple[str, Tensor, Tensor]]:
    """Pair ``target`` and ``source`` tensors by name; raise on a missing name or a shape mismatch."""
    for name in target:
        if name not in source:
            raise ValueError(f"{where}: {kind} {name!r} exists in the target but not in the source")
    for name in source:
        if name not in target:
            raise ValueError(f"{where}: {kind} {name!r} exists in the source but not in the target")
    pairs = []
    for name, tensor in target.items():
        if tensor.shape != source[name].shape:
            raise ValueError(
                f"{where}: {kind} {name!r} has shape {tuple(tensor.shape)} in the target "
                f"but {tuple(source[name].shape)} in the source"
            )
        pairs.append((name, tensor, source[name]))
    return pairs


def _average_(pairs: list[tuple[str, Tensor, Tensor]], alpha: float) -> None:
    """In place, ``t <- alpha * t + (1 - alpha) * s`` for every pair (one fused call per list)."""
    if not pairs:
        return
    targets = [t for _, t, _ in pairs]
    sources = [s.to(device=t.device, dtype=t.dtype) for _, t, s in pairs]
    torch._foreach_mul_(targets, alpha)
    torch._foreach_add_(targets, sources, alpha=1.0 - alpha)


@torch.no_grad()
def _update(
    target: nn.Module,
    source: nn.Module,
    alpha: float,
    prefixes: tuple[str, ...] | None,
    buffers: BufferMode,
    where: str,
) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if buffers not in _BUFFER_MODES:
        raise ValueError(f"buffers must be one of {_BUFFER_MODES}, got {buffers!r}")
    params = _paired_tensors(
        {n: p for n, p in target.named_parameters() if _selected(n, prefixes)},
        {n: p for n, p in source.named_parameters() if _selected(n, prefixes)},
        "parameter",
        where,
    )
    bufs = _paired_tensors(
        {n: b for n, b in target.named_buffers() if _selected(n, prefixes)},
        {n: b for n, b in source.named_buffers() if _selected(n, prefixes)},
        "buffer",
        where,
    )
    if prefixes is not None:
        for prefix in prefixes:
            if not any(_selected(name, (prefix,)) for name, _, _ in params + bufs):
                raise ValueError(f"{where}: no parameter or buffer name starts with {prefix!r}")
    _average_(params, alpha)
    if buffers == "keep":
        return
    floating = [pair for pair in bufs if pair[1].is_floating_point()]
    if buffers == "ema":
        _average_(floating, alpha)
    for _, target_buffer, source_buffer in bufs:
        if buffers == "copy" or not target_buffer.is_floating_point():
            target_buffer.copy_(source_buffer)


def ema_update(
    target: nn.Module,
    source: nn.Module,
    alpha: float,
    names: Iterable[str] | None = None,
    buffers: BufferMode = "copy",
) -> None:
    """In place, ``target <- alpha * target + (1 - alpha) * source`` for every parameter.

    Args:
        target: the EMA model (DAFormer's teacher), updated in place without autograd.
        source: the trained model (same architecture); left unchanged.
        alpha: the EMA momentum in [0, 1], e.g. ``ema_alpha(iteration)``.
        names: optional name prefixes (``"encoder"``, ``"head.classifier"``): only parameters and
            buffers whose dotted name equals a prefix or starts with ``prefix + "."`` are touched.
            A prefix matching nothing raises.
        buffers: ``"copy"`` (default), ``"ema"`` or ``"keep"``; see the module docstring.

    Raises:
        ValueError: naming the tensor, when a name exists on only one side or shapes differ.
    """
    prefixes = None if names is None else tuple([names] if isinstance(names, str) else names)
    _update(target, source, alpha, prefixes, buffers, where="ema_update")


def _part(model: Segmenter, name: BlockName, scope: str) -> nn.Module:
    """The block ``name`` of ``model`` (``scope="block"``) or its attention branch (``"attention"``)."""
    return model.encoder.attention(name) if scope == "attention" else model.encoder.block(name)


def ema_update_pairs(
    target: Segmenter,
    source: Segmenter,
    pairs: Mapping[str, str],
    alpha: float,
    buffers: BufferMode = "copy",
    scope: str = "block",
) -> None:
    """CLDA's S->T update (Eq. 8): for each ``(t, s)`` in ``pairs``,
    ``target.t <- alpha * target.t + (1 - alpha) * source.s``.

    Args:
        target: the teacher; only the listed blocks (or their attention branches) change.
        source: the student; unchanged.
        pairs: ``{teacher block: student block}`` by block name (``{"stage3.block05": "stage3.block02"}``,
            as mapping.json lists them).
        alpha: the EMA momentum in [0, 1] (CLDA's alpha, 0.999 by default in our configs).
        buffers: as in ``ema_update``.
        scope: ``"block"`` (the whole block) or ``"attention"`` (its attention branch only).

    Parameter names are matched relative to each block, so teacher block ``stage3.block05``
    can take student block ``stage3.block02`` as long as the two blocks have the same structure.

    Raises:
        BlockNameError: a malformed name, or one that model lacks (before any block changes).
        ValueError: naming both blocks and the first mismatching tensor.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    named = [(BlockName.parse(t), BlockName.parse(s)) for t, s in pairs.items()]
    resolved = [(str(t), str(s), _part(target, t, scope), _part(source, s, scope)) for t, s in named]
    # Validate every pair before changing any block, so a bad mapping leaves the teacher intact.
    for t, s, target_block, source_block in resolved:
        where = f"ema_update_pairs(target {t!r} <- source {s!r})"
        for kind, t_named, s_named in (
            ("parameter", target_block.named_parameters(), source_block.named_parameters()),
            ("buffer", target_block.named_buffers(), source_block.named_buffers()),
        ):
            _paired_tensors(dict(t_named), dict(s_named), kind, where)
    for t, s, target_block, source_block in resolved:
        where = f"ema_update_pairs(target {t!r} <- source {s!r})"
        _update(target_block, source_block, alpha, None, buffers, where)
