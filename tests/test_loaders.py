"""Training loaders: persistent workers must draw each epoch's augmentation exactly as fresh workers would."""

from __future__ import annotations

import torch

from rlq.data import load_dataset
from rlq.loaders import TADPairs, TrainImages, tad_loader, train_loader
from rlq.sampler import PKSampler
from rlq.transforms import TrainTransform


def _epoch_batches(loader, sampler, epoch: int, steps: int | None = None) -> list[torch.Tensor]:
    sampler.set_epoch(epoch)
    batches = []
    for step, batch in enumerate(loader):
        if step == steps:
            break  # as the training scripts do with --max-steps-per-epoch
        batches.append(batch[0])
    return batches


def _pk_loader(train):
    sampler = PKSampler([s.pid for s in train], batch_size=8, num_instances=4, seed=3)
    return train_loader(TrainImages(train, TrainTransform(64, 32), seed=3, rank=0), sampler, 8, num_workers=2), sampler


def test_persistent_workers_follow_the_epoch(synthetic_root):
    train = load_dataset("synthetic", synthetic_root).train[:96]
    loader, sampler = _pk_loader(train)
    assert loader.persistent_workers
    epoch0 = _epoch_batches(loader, sampler, 0, steps=3)  # an epoch cut short leaves prefetched batches behind
    epoch1 = _epoch_batches(loader, sampler, 1)
    fresh_loader, fresh_sampler = _pk_loader(train)  # new workers, which start at epoch 1
    fresh1 = _epoch_batches(fresh_loader, fresh_sampler, 1)
    assert len(epoch1) == len(fresh1) > 3
    for a, b in zip(epoch1, fresh1):
        assert torch.equal(a, b)
    assert not torch.equal(epoch0[0], epoch1[0])


def test_tad_pairs_follow_the_epoch_too(synthetic_root):
    external = load_dataset("synthetic-external", synthetic_root).train[:64]

    def loader():
        return tad_loader(TADPairs(external, TrainTransform(64, 32), "ltcc", seed=5, rank=0), 8, 2, seed=5, rank=0, world_size=1)

    persistent, sampler = loader()
    _epoch_batches(persistent, sampler, 0)
    again = _epoch_batches(persistent, sampler, 2)
    fresh, fresh_sampler = loader()
    for a, b in zip(again, _epoch_batches(fresh, fresh_sampler, 2), strict=True):
        assert torch.equal(a, b)
