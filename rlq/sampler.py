"""P x K identity sampler for ReID training (P identities, K images each per batch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from rlq.options import OptionError


class PKSampler(Sampler[int]):
    """Yields this process's dataset indices for one epoch of P x K batches, flattened.

    Use it with ``DataLoader(batch_size=batch_size, drop_last=True)``. Each epoch,
    shared by all ranks (so pass the same ``seed`` on every rank, not seed + rank):

    1. every identity's indices are shuffled; identities with fewer than K images
       are drawn with replacement up to K; each list is cut into groups of K and
       the incomplete last group is dropped (as the authors do);
    2. batches take one group from each of P = batch_size // K distinct identities,
       picked at random among those with groups left, until fewer than P remain;
    3. the batch count is truncated to a multiple of ``world_size`` and batch i
       goes to rank i % world_size, so ranks get equally many, disjoint batches.

    The plan depends only on (seed, epoch); call `set_epoch` before each epoch.
    """

    def __init__(
        self,
        pids: Sequence[int],
        *,
        batch_size: int,
        num_instances: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        if batch_size < 1 or batch_size % num_instances:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"num_instances ({num_instances})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        pids = np.asarray(pids)
        identities, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
        self.num_pids_per_batch = batch_size // num_instances
        if len(identities) < self.num_pids_per_batch:
            raise OptionError(
                f"--batch-size {batch_size}: {len(identities)} identities cannot fill one batch of "
                f"{self.num_pids_per_batch} identities x {num_instances} images (--num-instances)"
            )
        # Dataset indices of each identity, in dataset order.
        order = np.argsort(inverse, kind="stable")
        self._indices_by_pid = np.split(order, np.cumsum(counts)[:-1])
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None  # (epoch, this rank's indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[np.ndarray]:
        """All ranks' batches of one epoch, in dealing order (before truncation)."""
        rng = np.random.default_rng([self.seed, epoch])
        k, p = self.num_instances, self.num_pids_per_batch
        groups = []  # per identity: [num_groups, K] array
        for indices in self._indices_by_pid:
            if len(indices) < k:
                indices = rng.choice(indices, size=k, replace=True)
            else:
                indices = rng.permutation(indices)
            num_groups = len(indices) // k
            groups.append(indices[: num_groups * k].reshape(num_groups, k))
        left = np.array([len(g) for g in groups])
        batches = []
        while True:
            available = np.flatnonzero(left)
            if len(available) < p:
                return batches
            chosen = rng.choice(available, size=p, replace=False)
            left[chosen] -= 1
            batches.append(np.concatenate([groups[i][left[i]] for i in chosen]))

    def _rank_indices(self) -> np.ndarray:
        """This rank's flattened indices for the current epoch (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._batches(self.epoch)
            usable = len(batches) - len(batches) % self.world_size
            if usable == 0:
                raise OptionError(
                    f"--batch-size: epoch {self.epoch} has {len(batches)} P x K batches, fewer than "
                    f"the {self.world_size} processes: too few identities/images for this batch size"
                )
            mine = batches[self.rank : usable : self.world_size]
            self._cache = (self.epoch, np.concatenate(mine))
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_indices().tolist())

    def __len__(self) -> int:
        return len(self._rank_indices())
