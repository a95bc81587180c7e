"""Endless, resumable, rank-sharded training batches for the source and target domains.

Iteration-based training needs a stream, not epochs. Position p of the global stream maps to
sample ``perm_epoch[p % n]`` with ``perm_epoch`` seeded by (seed, epoch), so a resumed run (start
position = iteration x batch) and every rank (positions ``p * world + rank``) see the stream a
single uninterrupted process would. Rare class sampling replaces the permutation by DAFormer's
(class, image) draws, seeded by the position.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from clda_deploy.data.base import SegmentationDataset
from clda_deploy.data.sampling import RareClassSampler


class StreamSampler(torch.utils.data.Sampler[int]):
    """Yields this rank's global positions from ``start`` on, forever."""

    def __init__(self, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            yield position * self.world_size + self.rank
            position += 1


class ShuffledStream(torch.utils.data.Dataset):
    """Position -> sample of a per-epoch seeded permutation of ``dataset``."""

    def __init__(self, dataset: SegmentationDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self._epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, position: int) -> dict[str, Any]:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return self.dataset[int(self._order[offset])]


class RareClassStream(torch.utils.data.Dataset):
    """Position -> DAFormer rare-class sample: draw (class c, image with c), crop holding c."""

    def __init__(self, dataset: SegmentationDataset, sampler: RareClassSampler, seed: int) -> None:
        self.dataset, self.sampler, self.seed = dataset, sampler, seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, position: int) -> dict[str, Any]:
        self.sampler.rng = np.random.default_rng([self.seed, position])
        return self.sampler.sample_crop(self.dataset)


def collate_train(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and labels; keep names for logging."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
        "name": [s["name"] for s in samples],
    }


def endless_batches(
    stream: torch.utils.data.Dataset, batch_size: int, workers: int, start: int, rank: int, world_size: int
) -> Iterator[dict[str, Any]]:
    """Batches of ``stream`` from global batch ``start`` on (``start`` = the resumed iteration)."""
    sampler = StreamSampler(start * batch_size, rank, world_size)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_train,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)
