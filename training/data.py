"""Photos → training batches: decode, crop, resize, augment, normalise; and the batch order.

Preprocessing is app.preprocess's EmbedTransform (resize, then normalize) with the
augmentations in between, so serving cannot drift from training. The batch order is one
permutation per (seed, epoch), cut into global batches; under DDP each process takes its share
of every global batch, so N processes see exactly the batches one process would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from app.preprocess import EmbedTransform
from training.augment import augment_flipped
from training.catalogue import Photo, read_photo
from training.config import AugmentConfig

__all__ = ["GlobalBatchSampler", "PhotoDataset"]


class PhotoDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """(image tensor, class code, species code) per photo; augmented when `augment` is set.
    A flipped photo takes its flip label (`flip_labels`, default: its own class)."""

    def __init__(
        self,
        photos: Sequence[Photo],
        labels: Sequence[int],
        species: Sequence[int],
        transform: EmbedTransform,
        *,
        padding: float,
        augment: AugmentConfig | None = None,
        flip_labels: Sequence[int | None] | None = None,
        seed: int = 0,
    ) -> None:
        self.photos = list(photos)
        self.labels = list(labels)
        # The class of each photo once flipped, None: never flip it (training.viewpoints).
        self.flip_labels = list(flip_labels) if flip_labels is not None else list(labels)
        self.species = list(species)
        self.transform = transform
        self.padding = padding
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        img = self.transform.resize(read_photo(self.photos[index], self.padding))
        label = self.labels[index]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            mirrored = self.flip_labels[index]
            img, flipped = augment_flipped(img, self.augment, rng, may_flip=mirrored is not None)
            if flipped and mirrored is not None:
                label = mirrored
        pixels = torch.from_numpy(self.transform.normalize(img))
        return pixels, label, self.species[index]


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of this process's share of each global batch (last partial batch dropped).

    Process r of w takes positions r·b .. (r+1)·b of every global batch of w·b photos, so the
    mean of the per-process mean losses is the mean loss over the global batch.
    """

    def __init__(
        self, size: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"batch size {global_batch} is not divisible by {world_size} processes"
            )
        if size < global_batch:
            raise ValueError(f"{size} training photos are fewer than one batch of {global_batch}")
        self.size = size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        start = self.rank * self.local_batch
        for b in range(len(self)):
            first = b * self.global_batch + start
            yield order[first : first + self.local_batch].tolist()
