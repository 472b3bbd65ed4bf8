from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from rlq.sampler import PKSampler

K, BATCH = 4, 16  # P = 4 identities per batch


def make_pids(seed: int = 0, num_ids: int = 30) -> list[int]:
    """Identity of each dataset index: 1 to 15 images per identity, shuffled, sparse ids."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(num_ids) * 7 + 3, rng.integers(1, 16, num_ids))
    return rng.permutation(pids).tolist()


def batches_of(sampler: PKSampler) -> list[list[int]]:
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % BATCH == 0
    return [indices[i : i + BATCH] for i in range(0, len(indices), BATCH)]


def test_batches_have_p_distinct_identities_with_k_images_each():
    pids = make_pids()
    for epoch in range(3):
        sampler = PKSampler(pids, batch_size=BATCH, num_instances=K, seed=1)
        sampler.set_epoch(epoch)
        batches = batches_of(sampler)
        assert batches
        for batch in batches:
            counts = Counter(pids[i] for i in batch)
            assert len(counts) == BATCH // K and set(counts.values()) == {K}


def test_small_identities_drawn_with_replacement_and_large_ones_without():
    pids = make_pids()
    images_per_id = Counter(pids)
    sampler = PKSampler(pids, batch_size=BATCH, num_instances=K)
    used = Counter(list(sampler))
    large = [times for index, times in used.items() if images_per_id[pids[index]] >= K]
    small = [times for index, times in used.items() if images_per_id[pids[index]] < K]
    assert set(large) == {1}  # shuffled and cut into groups: every index at most once
    assert max(small) > 1  # identities with < K images need duplicates
    # An identity with a single image fills its whole group with that image.
    single = [i for i, p in enumerate(pids) if images_per_id[p] == 1]
    assert all(used[i] in (0, K) for i in single) and any(used[i] == K for i in single)


def test_drops_only_incomplete_groups():
    # With ids of 5 images each and P = 1, every id gives exactly one group of 4.
    pids = [pid for pid in range(6) for _ in range(5)]
    sampler = PKSampler(pids, batch_size=K, num_instances=K)
    assert len(sampler) == 6 * K


def test_stops_when_fewer_than_p_identities_have_groups_left():
    # id 0 has 10 groups, ids 1 and 2 one each; P = 2. Picking (1, 2) first leaves
    # only id 0, so the epoch ends after 1 batch; otherwise id 0 pairs with each: 2.
    pids = [0] * 40 + [1] * 4 + [2] * 4
    sampler = PKSampler(pids, batch_size=2 * K, num_instances=K)
    counts = Counter()
    for epoch in range(40):
        sampler.set_epoch(epoch)
        counts[len(sampler) // (2 * K)] += 1
    assert set(counts) == {1, 2}


def test_deterministic_per_seed_and_epoch():
    pids = make_pids()
    a = PKSampler(pids, batch_size=BATCH, seed=3)
    b = PKSampler(pids, batch_size=BATCH, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    epoch0 = list(PKSampler(pids, batch_size=BATCH, seed=3))
    assert list(a) != epoch0
    assert list(PKSampler(pids, batch_size=BATCH, seed=4)) != epoch0


def test_len_matches_iteration_and_follows_the_epoch():
    pids = make_pids(num_ids=40)
    sampler = PKSampler(pids, batch_size=BATCH)
    lengths = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        length = len(sampler)
        assert length == len(list(sampler)) == len(sampler)
        lengths.add(length)
    assert len(lengths) > 1  # the batch count depends on the epoch's draws


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_equal_disjoint_shares_of_the_single_process_plan(world_size):
    pids = make_pids(num_ids=60)
    for epoch in range(3):
        single = PKSampler(pids, batch_size=BATCH, seed=5)
        single.set_epoch(epoch)
        plan = batches_of(single)
        per_rank = []
        for rank in range(world_size):
            sampler = PKSampler(pids, batch_size=BATCH, seed=5, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            per_rank.append(batches_of(sampler))
        num = len(per_rank[0])
        assert num > 0 and all(len(r) == num for r in per_rank)
        assert num == len(plan) // world_size
        # Batch i of the plan is batch i // world_size of rank i % world_size.
        assert [per_rank[i % world_size][i // world_size] for i in range(num * world_size)] == plan[
            : num * world_size
        ]
        seen = [{i for batch in r for i in batch} for r in per_rank]
        for r in range(world_size):
            for s in range(r + 1, world_size):
                assert not seen[r] & seen[s]


def test_works_with_a_dataloader():
    pids = make_pids()
    sampler = PKSampler(pids, batch_size=BATCH)
    loader = DataLoader(range(len(pids)), batch_size=BATCH, sampler=sampler, drop_last=True)
    batches = [b.tolist() for b in loader]
    assert batches == batches_of(sampler) and len(loader) == len(batches)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 18}, "multiple of num_instances"),
        ({"batch_size": 0}, "multiple of num_instances"),
        ({"batch_size": 16, "num_instances": 0}, "num_instances"),
        ({"batch_size": 16, "rank": 2, "world_size": 2}, "rank < world_size"),
        ({"batch_size": 4 * 31}, "30 identities cannot fill one batch"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(make_pids(num_ids=30), **kwargs)


def test_error_when_epoch_has_fewer_batches_than_ranks():
    pids = list(range(4))  # 4 ids x 1 image: exactly one batch of P = 4
    sampler = PKSampler(pids, batch_size=16, rank=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than the 2 processes"):
        len(sampler)
