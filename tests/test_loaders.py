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


def test_augmenting_on_the_device_gives_the_workers_batches(synthetic_root):
    """--augment-on device: the same batches (labels exact, pixels within one level of the 1.125x upscale)."""
    from rlq.loaders import DeviceAugmented
    from rlq.transforms import IMAGENET_STD, DeferredTrainTransform

    dataset = load_dataset("synthetic", synthetic_root)
    train, external = dataset.train[:64], load_dataset("synthetic-external", synthetic_root).train[:32]
    level = 1 / 255 / min(IMAGENET_STD)
    for transform_class in (TrainTransform, DeferredTrainTransform):
        sampler = PKSampler([s.pid for s in train], batch_size=8, num_instances=4, seed=1)
        loader = train_loader(TrainImages(train, transform_class(64, 32), seed=1, rank=0), sampler, 8, 2, torch.device("cpu"))
        pairs, tad_sampler = tad_loader(TADPairs(external, transform_class(64, 32), "ltcc", 1, 0), 8, 0, 1, 0, 1, torch.device("cpu"))
        sampler.set_epoch(2)
        tad_sampler.set_epoch(2)
        batches = [list(loader), list(pairs)]
        if transform_class is TrainTransform:
            expected = batches
            continue
        assert isinstance(loader, DeviceAugmented) and isinstance(pairs, DeviceAugmented)
        for got_batches, want_batches in zip(batches, expected):
            for got, want in zip(got_batches, want_batches, strict=True):
                assert len(got) == len(want)
                for g, w in zip(got, want):
                    assert g.shape == w.shape and g.dtype == w.dtype
                    if g.is_floating_point():
                        torch.testing.assert_close(g, w, atol=1.01 * level, rtol=0)
                    else:
                        assert torch.equal(g, w)
