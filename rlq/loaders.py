"""Torch datasets and data loaders for training (P x K batches, optional recolouring) and evaluation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rlq.data import Sample
from rlq.recolour import Recolouring
from rlq.sampler import PKSampler
from rlq.transforms import EvalTransform, TrainTransform, load_image, worker_rng


class TrainImages(Dataset):
    """Training images: item i -> (images [n, 3, H, W], pids [n], clothes [n]).

    n = 1 (the augmented original), or 2 with recolouring (original, then its
    recoloured copy with its colour clothes label). Augmentation draws come from
    one generator per (seed, epoch, rank, loader worker), created on the first
    item of the epoch in each worker: call `set_epoch` before every epoch and
    use non-persistent workers, so the workers pick up the new epoch.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: TrainTransform,
        seed: int,
        rank: int,
        recolouring: Recolouring | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.recolouring = recolouring
        self.epoch = 0
        self._rng: np.random.Generator | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._rng = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._rng is None:
            self._rng = worker_rng(self.seed, self.epoch, self.rank)
        sample = self.samples[index]
        img = load_image(sample.path)
        images, clothes = [self.transform(img, self._rng)], [sample.clothes_id]
        if self.recolouring is not None:
            recoloured, label = self.recolouring(img, sample, self._rng)
            images.append(self.transform(recoloured, self._rng))
            clothes.append(label)
        pids = torch.full((len(images),), sample.pid, dtype=torch.long)
        return torch.stack(images), pids, torch.tensor(clothes, dtype=torch.long)


def train_loader(dataset: TrainImages, sampler: PKSampler, batch_size: int, num_workers: int) -> DataLoader:
    """P x K batches of this process's shard (the sampler shards by rank itself: do not `accelerator.prepare` this)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # new workers each epoch see the dataset's new epoch
    )


class EvalImages(Dataset):
    """Evaluation images: item i -> (image [3, H, W], i); the index puts gathered features back in order."""

    def __init__(self, samples: list[Sample], transform: EvalTransform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.samples[index].path)), index


def eval_loader(samples: list[Sample], height: int, width: int, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        EvalImages(samples, EvalTransform(height, width)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
