"""--val-ids: a clothes-changing validation split held out of LTCC-layout training data."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_RUN

from rlq.checkpoint import load_checkpoint
from rlq.data import DatasetLayoutError, hold_out_identities, load_dataset


@pytest.fixture(scope="module")
def dataset(synthetic_root):
    return load_dataset("synthetic", synthetic_root)


def test_held_out_identities_leave_training_and_form_a_cc_split(dataset):
    held = hold_out_identities(dataset, 6, seed=0)
    query, gallery = held.val_splits["query"], held.val_splits["gallery"]
    val_ids = {s.pid_key for s in query + gallery}
    train_ids = {s.pid_key for s in held.train}
    assert len(val_ids) == 6 and not val_ids & train_ids
    assert train_ids | val_ids == {s.pid_key for s in dataset.train}
    # Every image of a held-out identity is in the split, but for queries with nothing to find.
    held_images = [s for s in dataset.train if s.pid_key in val_ids]
    assert {s.path for s in gallery} | {s.path for s in query} <= {s.path for s in held_images}
    assert len(query) + len(gallery) <= len(held_images) and query
    # Each identity: queries in one outfit, the gallery in its other outfits; every query has a valid CC match.
    for pid in {s.pid for s in query}:
        query_outfits = {s.clothes_id for s in query if s.pid == pid}
        assert len(query_outfits) == 1
        assert not query_outfits & {s.clothes_id for s in gallery if s.pid == pid}
    for q in query:
        assert any(g.pid == q.pid and g.clothes_id != q.clothes_id and g.camid != q.camid for g in gallery)
    # The rest is relabelled 0..n-1, and the class counts follow.
    assert sorted({s.pid for s in held.train}) == list(range(held.num_train_pids)) == list(range(dataset.num_train_pids - 6))
    assert sorted({s.clothes_id for s in held.train}) == list(range(held.num_train_clothes))
    assert held.pid2clothes.shape == (held.num_train_pids, held.num_train_clothes)
    assert [e.name for e in held.val_evaluations] == ["cc"] and held.splits["query"] == dataset.splits["query"]


def test_the_split_is_deterministic_for_a_seed(dataset):
    def ids(seed):
        return sorted({s.pid_key for s in hold_out_identities(dataset, 5, seed).val_splits["gallery"]})

    assert ids(3) == ids(3)
    assert any(ids(3) != ids(seed) for seed in (4, 5, 6))
    assert hold_out_identities(dataset, 0, seed=1) is dataset


@pytest.mark.parametrize("num_ids", [-1, 10_000])
def test_impossible_sizes_are_refused(dataset, num_ids):
    with pytest.raises(DatasetLayoutError, match="--val-ids"):
        hold_out_identities(dataset, num_ids, seed=0)


def test_training_selects_on_the_held_out_split(synthetic_root, tmp_path):
    from train_base import Config, main

    options = TINY_RUN | {"epochs": 1, "max_steps_per_epoch": 2, "val_ids": 5, "select_on": "val"}
    main(Config(root=synthetic_root, output=tmp_path, **options))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["split"] for e in metrics["evaluations"]] == ["val"]
    assert set(metrics["evaluations"][0]["results"]) == {"cc"}
    assert load_checkpoint(tmp_path / "last.pt")["classes"]["num_pids"] == 30 - 5
