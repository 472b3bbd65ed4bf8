"""Clothes recolouring with masks made from the synthetic dataset's parsing maps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_RUN

import preprocess_masks
from rlq.checkpoint import load_checkpoint
from rlq.data import load_dataset
from rlq.loaders import TrainImages
from rlq.masks import faulty_keys, read_masks
from rlq.recolour import ALPHA, PALETTE, Recolouring, num_colours, widen_pid2clothes
from rlq.transforms import TrainTransform, load_image
from train_base import Config, clothes_classes, main

COLOURS = 9


@pytest.fixture(scope="module")
def dataset(synthetic_root):
    return load_dataset("synthetic", synthetic_root)


@pytest.fixture(scope="module")
def masks_dir(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    preprocess_masks.main(preprocess_masks.Args(dataset="synthetic", root=synthetic_root,
                                                parsing=synthetic_root / "target" / "parsing", output=out, workers=2))
    return out


def _colours_of(label: int, pid: int, num_original_clothes: int) -> tuple[int, int]:
    """(pant, top) colour indices of a recolour label."""
    index = label - num_original_clothes - pid * COLOURS**2
    assert 0 <= index < COLOURS**2
    return divmod(index, COLOURS)


def _blended(original: np.ndarray, colour: int) -> np.ndarray:
    return np.rint(ALPHA * np.asarray(PALETTE[colour], dtype=np.float32) + (1 - ALPHA) * original.astype(np.float32))


@pytest.mark.parametrize("faulty", [False, True])
def test_recolouring_touches_only_the_clothes(dataset, masks_dir, faulty):
    recolouring = Recolouring(masks_dir, dataset.num_train_clothes)
    bad = faulty_keys(masks_dir)
    samples = [s for s in dataset.train if (s.key in bad) == faulty][:5]
    assert samples, "the synthetic set should have both well-parsed and faulty-listed images"
    rng = np.random.default_rng(0)
    for sample in samples:
        img = load_image(sample.path)
        recoloured, label = recolouring(img, sample, rng)
        before, after = np.asarray(img), np.asarray(recoloured)
        changed = np.any(before != after, axis=2)
        masks = read_masks(masks_dir, sample, size=img.size)
        pant, top = _colours_of(label, sample.pid, dataset.num_train_clothes)
        if faulty:  # one colour over the whole clothes
            assert pant == top
            assert not changed[~masks["clothes"]].any()
            assert np.array_equal(after[masks["clothes"]], _blended(before[masks["clothes"]], top))
        else:
            assert not changed[~(masks["tops"] | masks["pants"])].any()
            assert np.array_equal(after[masks["tops"]], _blended(before[masks["tops"]], top))
            assert np.array_equal(after[masks["pants"]], _blended(before[masks["pants"]], pant))
        assert changed.sum() > 0


def test_widened_pid2clothes_gives_each_identity_its_colour_classes(dataset):
    original = dataset.pid2clothes
    widened = widen_pid2clothes(original, COLOURS)
    num_pids, num_clothes = original.shape
    assert widened.shape == (num_pids, num_clothes + num_pids * COLOURS**2)
    assert np.array_equal(widened[:, :num_clothes], original)
    for pid in range(num_pids):
        owned = np.flatnonzero(widened[pid, num_clothes:]) + num_clothes
        assert owned.tolist() == list(range(num_clothes + pid * COLOURS**2, num_clothes + (pid + 1) * COLOURS**2))
    assert num_colours("last") == 6 and num_colours("ltcc") == COLOURS


def test_training_items_hold_the_original_and_its_recoloured_copy(dataset, masks_dir):
    recolouring, pid2clothes = clothes_classes(dataset, masks_dir)
    items = TrainImages(dataset.train, TrainTransform(64, 32), seed=0, rank=0, recolouring=recolouring)
    for index in (0, 100, 500):
        images, pids, clothes = items[index]
        sample = dataset.train[index]
        assert images.shape == (2, 3, 64, 32)
        assert pids.tolist() == [sample.pid, sample.pid]
        assert clothes[0] == sample.clothes_id and clothes[1] >= dataset.num_train_clothes
        assert pid2clothes[sample.pid, clothes].all()  # both outfits belong to the identity


def test_training_with_masks_widens_the_clothes_classifier(synthetic_root, masks_dir, tmp_path):
    main(Config(root=synthetic_root, output=tmp_path, masks=masks_dir, **(TINY_RUN | {"epochs": 1, "max_steps_per_epoch": 2, "cal_start_epoch": 0})))
    classes = load_checkpoint(tmp_path / "last.pt")["classes"]
    assert classes["num_clothes"] == classes["num_original_clothes"] + classes["num_pids"] * COLOURS**2
