"""The contract between a training task and the one training loop (training/loop.py).

A task turns a batch into losses; it never steps the optimizer. The loop owns the optimizer,
scheduler, mixed precision, DDP, checkpoints and logging, so every method (DAFormer, the
baselines, CLDA) shares them and they are tested once.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

Batch = dict[str, dict[str, Any]]  # {"source": {"image", "label", ...}, "target": {...}}


class Task(Protocol):
    #: which domains the loop must stream: "source", "target" or both
    domains: tuple[str, ...]
    #: whether the target stream carries labels (only the oracle baseline)
    target_labels: bool

    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        """Forward ``model`` (possibly DDP-wrapped) and return losses; ``"loss"`` is the total."""
        ...

    def after_step(self, model: nn.Module, iteration: int) -> None:
        """Called after each optimizer step with the unwrapped model (e.g. EMA updates)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything the task needs to resume (EMA weights, generators, accumulators)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
