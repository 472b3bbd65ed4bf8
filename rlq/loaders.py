"""Torch datasets and data loaders for training (P x K batches, optional recolouring, attribute labels),
TAD (external HQ / LQ pairs) and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rlq.data import Sample
from rlq.recolour import Recolouring
from rlq.sampler import PKSampler
from rlq.transforms import DeferredTrainTransform, EvalTransform, TrainTransform, finish_batch, load_image, tad_pair, worker_rng


class EpochSeededImages(Dataset):
    """Images of `samples` whose augmentation draws come from one generator per (seed, epoch, rank, loader worker).

    Items are indexed by (epoch, index) pairs, as `EpochTagged` yields them, so that
    persistent loader workers learn the epoch from the sampler: each worker starts a new
    generator on its first item of a new epoch. A plain index means epoch 0.
    """

    def __init__(self, samples: list[Sample], transform: TrainTransform, seed: int, rank: int) -> None:
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self._rng: tuple[int, np.random.Generator] | None = None  # (epoch, this worker's generator)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_and_rng(self, item: int | tuple[int, int]) -> tuple[Sample, np.random.Generator]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        if self._rng is None or self._rng[0] != epoch:
            self._rng = (epoch, worker_rng(self.seed, epoch, self.rank))
        return self.samples[index], self._rng[1]


class EpochTagged(Sampler):
    """Yields (epoch, index) for every index of a sampler with an `epoch` attribute (set by its `set_epoch`)."""

    def __init__(self, sampler: PKSampler | DistributedSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, int(index)) for index in self.sampler)


class TrainImages(EpochSeededImages):
    """Training images: item i -> (images [n, 3, H, W], pids [n], clothes [n]).

    n = 1 (the augmented original), or 2 with recolouring (original, then its
    recoloured copy with its colour clothes label). With a `DeferredTrainTransform`
    the images are uint8 and the item ends with their augmentation draws [n, NUM_DRAWS]
    (`DeviceAugmented` finishes them).
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: TrainTransform,
        seed: int,
        rank: int,
        recolouring: Recolouring | None = None,
    ) -> None:
        super().__init__(samples, transform, seed, rank)
        self.recolouring = recolouring

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        sample, rng = self.sample_and_rng(item)
        img = load_image(sample.path)
        views, clothes = [self.transform(img, rng)], [sample.clothes_id]
        if self.recolouring is not None:
            recoloured, label = self.recolouring(img, sample, rng)
            views.append(self.transform(recoloured, rng))
            clothes.append(label)
        pids = torch.full((len(views),), sample.pid, dtype=torch.long)
        clothes = torch.tensor(clothes, dtype=torch.long)
        if isinstance(self.transform, DeferredTrainTransform):  # uint8 images, their draws last
            return torch.stack([v[0] for v in views]), pids, clothes, torch.stack([v[1] for v in views])
        return torch.stack(views), pids, clothes


def train_loader(dataset: TrainImages, sampler: PKSampler, batch_size: int, num_workers: int,
                 device: torch.device | None = None) -> DataLoader | DeviceAugmented:
    """P x K batches of this process's shard (the sampler shards by rank itself: do not `accelerator.prepare` this).

    With a `DeferredTrainTransform` the batches come on `device`, augmented there (`DeviceAugmented`).
    """
    return _epoch_loader(dataset, sampler, batch_size, num_workers, device)


class DeviceAugmented:
    """Batches of a loader whose items end with augmentation draws: moved to `device`, augmentation finished there.

    Every uint8 element of a batch is a set of images ([B, 3, H, W] or [B, n, 3, H, W]); they take
    the draws [B, m, NUM_DRAWS] in order, one row per image of an item. The draws are dropped.
    """

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for *batch, draws in self.loader:
            draws = draws.to(self.device, non_blocking=True)
            finished, used = [], 0
            for tensor in batch:
                tensor = tensor.to(self.device, non_blocking=True)
                if tensor.dtype == torch.uint8:
                    per_item = tensor[0].numel() // tensor.shape[-3:].numel()
                    images = finish_batch(tensor.reshape(-1, *tensor.shape[-3:]), draws[:, used : used + per_item].flatten(0, 1))
                    tensor, used = images.reshape(tensor.shape), used + per_item
                finished.append(tensor)
            yield tuple(finished)


def _epoch_loader(dataset: EpochSeededImages, sampler: PKSampler | DistributedSampler, batch_size: int, num_workers: int,
                  device: torch.device | None) -> DataLoader | DeviceAugmented:
    """Full batches in the order of a rank-aware sampler; call `sampler.set_epoch` before every epoch.

    The workers live for the whole run (no start-up cost per epoch): they learn the epoch
    from the (epoch, index) items of `EpochTagged`.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochTagged(sampler),
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    if isinstance(dataset.transform, DeferredTrainTransform):
        if device is None:
            raise ValueError("a DeferredTrainTransform needs the device that finishes the augmentation")
        return DeviceAugmented(loader, device)
    return loader


class EvalImages(Dataset):
    """Evaluation images: item i -> (image [3, H, W], i); the index puts gathered features back in order.

    `degrade(image, i)`, if given, replaces each image by a low-quality copy first (`rlq.lowquality.Degrade`).
    """

    def __init__(self, samples: list[Sample], transform: EvalTransform,
                 degrade: Callable[[Image.Image, int], Image.Image] | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.degrade = degrade

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.samples[index].path)
        if self.degrade is not None:
            img = self.degrade(img, index)
        return self.transform(img), index


def eval_loader(samples: list[Sample], height: int, width: int, batch_size: int, num_workers: int,
                degrade: Callable[[Image.Image, int], Image.Image] | None = None) -> DataLoader:
    return DataLoader(
        EvalImages(samples, EvalTransform(height, width), degrade),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


class AttributedTrainImages(TrainImages):
    """`TrainImages` whose items also hold the (gender, pose) labels of each image: [n, 2].

    The recoloured copy shows the same person in the same pose, so it shares both labels.
    Fill the samples with `rlq.attributes.attach_attributes` first.
    """

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        images, pids, clothes, *draws = super().__getitem__(item)
        sample = self.samples[item[1] if isinstance(item, tuple) else item]
        return images, pids, clothes, torch.tensor([[sample.gender, sample.pose]]).expand(len(images), 2), *draws


class TADPairs(EpochSeededImages):
    """External images for task-agnostic distillation: item i -> (x_hq [3, H, W], x_lq [3, H, W]).

    x_lq is a synthetic low-quality copy drawn with the TARGET dataset's degradation mix;
    each view then goes through the training augmentation independently (`tad_pair`).
    Randomness: one generator per (seed, epoch, rank, loader worker) (`EpochSeededImages`).
    """

    def __init__(self, samples: list[Sample], transform: TrainTransform, mix: str, seed: int, rank: int) -> None:
        super().__init__(samples, transform, seed, rank)
        self.mix = mix

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        sample, rng = self.sample_and_rng(item)
        hq, lq = tad_pair(load_image(sample.path), self.mix, self.transform, rng)
        if isinstance(self.transform, DeferredTrainTransform):  # uint8 views, their draws last
            return hq[0], lq[0], torch.stack([hq[1], lq[1]])
        return hq, lq


def tad_loader(dataset: TADPairs, batch_size: int, num_workers: int, seed: int, rank: int, world_size: int,
               device: torch.device | None = None) -> tuple[DataLoader | DeviceAugmented, DistributedSampler]:
    """Shuffled batches of this process's shard of the external set; call `sampler.set_epoch` every epoch.

    The shuffle depends on (seed, epoch) only, so every rank sees a disjoint shard (do not
    `accelerator.prepare` this loader).
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return _epoch_loader(dataset, sampler, batch_size, num_workers, device), sampler
