"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017) in bounded memory.

The published algorithm builds dense N x N matrices over the N = Q + G query and gallery
images (73 GB each in float32 at LaST's test size). Everything it reads, though, is local:

- the ranking of each image enters only through its k1 + 1 nearest neighbours (and the first
  k2 of them for the local query expansion), so we keep a top-(k1 + 1) neighbour table,
  computed in row chunks;
- each image's k-reciprocal encoding V_i is non-zero only on its expanded k-reciprocal set
  (at most (k1 + 1) * (round(k1 / 2) + 2) images), so V and its query expansion are sparse;
- the Jaccard distance of a query to every gallery image needs, for each image c in the
  query's encoding, the images whose encodings contain c: the columns of the sparse V;
- the original distances are recomputed from the features when needed, chunk by chunk.

So memory grows with N * k1^2 * k2, not N^2; the final Q x G distances are produced a block
of query rows at a time for the evaluator (`Reranking.similarities`). The distances are the
published code's: squared Euclidean distances between L2-normalised features (2 - 2 cos),
each row divided by its largest entry; final = (1 - lambda) * Jaccard + lambda * original.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

K1, K2, LAMBDA = 20, 6, 0.3


class RerankMemoryError(RuntimeError):
    """Re-ranking this problem would need more memory than the device has; raised before allocating it."""


class CSR(NamedTuple):
    """A sparse N x N matrix by rows: row i holds columns col[crow[i]:crow[i + 1]] (ascending) with values val[...]."""

    crow: Tensor
    col: Tensor
    val: Tensor

    @staticmethod
    def from_entries(row: Tensor, col: Tensor, val: Tensor, n: int) -> CSR:
        """Entries in any order; repeated (row, col) entries are summed."""
        key, inverse = torch.unique(row * n + col, return_inverse=True)
        val = torch.zeros(len(key), dtype=val.dtype, device=val.device).index_add_(0, inverse, val)
        counts = torch.bincount(key // n, minlength=n)
        return CSR(torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]), key % n, val)

    def transposed(self) -> CSR:
        n = len(self.crow) - 1
        return CSR.from_entries(self.col, _row_of_entries(self.crow), self.val, n)


@dataclass
class Reranking:
    """The k-reciprocal encodings of a query/gallery problem; `similarities(rows)` gives re-ranked query rows."""

    features: Tensor  # [N, D] unit rows: queries, then gallery
    num_query: int
    row_max: Tensor  # [N] largest original distance of each row
    rows: CSR  # the (query-expanded) encodings V, by row
    columns: CSR  # V transposed: for each image c, the images whose encodings hold c
    lambda_value: float
    pairs: Tensor  # [Q] (query, image) pairs the Jaccard overlap of each query visits
    max_pairs: int  # pairs visited at once (bounds the memory of `similarities`)

    def similarities(self, rows: slice) -> Tensor:
        """Minus the re-ranked distances [c, G] of query rows `rows` (higher = closer), for `rlq.metrics.evaluate`."""
        q = self.num_query
        original = (2 - 2 * self.features[rows] @ self.features[q:].T).clamp_(min=0) / self.row_max[rows, None]
        overlap = torch.cat([self._overlap(part) for part in self._parts(rows)])
        jaccard = 1 - overlap / (2 - overlap)
        return -((1 - self.lambda_value) * jaccard + self.lambda_value * original)

    def _parts(self, rows: slice) -> list[slice]:
        """`rows` cut into runs of queries that visit at most `max_pairs` pairs (a single query may exceed it)."""
        parts, start = [], rows.start
        total = torch.cumsum(self.pairs[rows], 0).tolist()
        done = 0
        for offset, cumulative in enumerate(total):
            if cumulative - done > self.max_pairs and rows.start + offset > start:
                parts.append(slice(start, rows.start + offset))
                start, done = rows.start + offset, total[offset - 1]
        parts.append(slice(start, rows.stop))
        return parts

    def _overlap(self, rows: slice) -> Tensor:
        """sum_c min(V[i, c], V[g, c]) for the query rows i and every gallery image g: [c, G]."""
        q, n = self.num_query, self.features.shape[0]
        device = self.features.device
        crow, col, val = self.rows
        start, stop = int(crow[rows.start]), int(crow[rows.stop])
        entry_row = _row_of_entries(crow[rows.start : rows.stop + 1] - start)  # local query row of each entry
        entry_col, entry_val = col[start:stop], val[start:stop]
        # Every image g whose encoding holds column c, for every entry (i, c): the pairs (i, g).
        t_crow, t_col, t_val = self.columns
        lengths = t_crow[entry_col + 1] - t_crow[entry_col]
        pair_entry = torch.repeat_interleave(torch.arange(len(entry_col), device=device), lengths)
        offsets = torch.arange(len(pair_entry), device=device) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        position = t_crow[entry_col][pair_entry] + offsets
        image, contribution = t_col[position], torch.minimum(entry_val[pair_entry], t_val[position])
        keep = image >= q  # only the gallery columns are asked for
        overlap = torch.zeros(rows.stop - rows.start, n - q, device=device)
        overlap.index_put_((entry_row[pair_entry][keep], image[keep] - q), contribution[keep], accumulate=True)
        return overlap


def _row_of_entries(crow: Tensor) -> Tensor:
    """Row index of every entry of a CSR matrix, from its row pointers."""
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow[1:] - crow[:-1])


def available_memory(device: torch.device) -> int:
    """Bytes free on the device (GPU) or in RAM (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _neighbours(x: Tensor, k: int, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """The k nearest rows of every row (itself first, by squared distance 2 - 2 cos) and each row's largest distance."""
    n = x.shape[0]
    chunk = max(1, chunk_elements // n)
    ranks, row_max = [], []
    for start in range(0, n, chunk):
        distance = (2 - 2 * x[start : start + chunk] @ x.T).clamp_(min=0)
        row_max.append(distance.amax(1))
        ranks.append(torch.topk(distance, k, dim=1, largest=False, sorted=True).indices)
    return torch.cat(ranks), torch.cat(row_max)


def _reciprocal(rank: Tensor, k: int, chunk: int) -> Tensor:
    """[N, k] bool: whether row i is among the first k neighbours of its j-th neighbour."""
    n = rank.shape[0]
    return torch.cat([(rank[rank[start : start + chunk, :k]][:, :, :k]
                       == torch.arange(start, min(start + chunk, n), device=rank.device)[:, None, None]).any(-1)
                      for start in range(0, n, chunk)])


def _expanded_sets(rank: Tensor, k1: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Each row's expanded k-reciprocal set, padded: (indices [N, W], valid [N, W]), duplicates removed.

    R(i) = the first k1 + 1 neighbours j of i that have i among their first k1 + 1. Each j in R(i)
    adds R_half(j) (the same with round(k1 / 2) + 1 neighbours) when more than 2/3 of R_half(j) lie in R(i).
    """
    n = rank.shape[0]
    k, half = k1 + 1, int(round(k1 / 2)) + 1
    in_r = _reciprocal(rank, k, chunk)
    in_half = _reciprocal(rank, half, chunk)
    sets, valid = [], []
    for start in range(0, n, chunk):
        forward, member = rank[start : start + chunk, :k], in_r[start : start + chunk]  # [b, k]
        candidate_half, candidate_member = rank[forward][:, :, :half], in_half[forward]  # [b, k, half]
        in_own = (candidate_half[..., None] == forward[:, None, None, :]) & member[:, None, None, :]
        shared = (in_own.any(-1) & candidate_member).sum(-1)  # [b, k]
        qualifies = member & (shared > 2 / 3 * candidate_member.sum(-1))
        indices = torch.cat([forward, candidate_half.flatten(1)], 1)
        mask = torch.cat([member, (candidate_member & qualifies[..., None]).flatten(1)], 1)
        # Unique per row: sort with invalid entries last, drop repeats.
        indices = torch.where(mask, indices, n)
        indices, _ = indices.sort(1)
        mask = indices < n
        mask[:, 1:] &= indices[:, 1:] != indices[:, :-1]
        sets.append(indices.clamp(max=n - 1))
        valid.append(mask)
    return torch.cat(sets), torch.cat(valid)


def _encodings(x: Tensor, row_max: Tensor, sets: Tensor, valid: Tensor, chunk: int) -> CSR:
    """V by rows: on each row's expanded set, exp(-distance) normalised to sum 1."""
    n = x.shape[0]
    weights = []
    for start in range(0, n, chunk):
        block, ok = sets[start : start + chunk], valid[start : start + chunk]
        dots = torch.einsum("bd,bwd->bw", x[start : start + chunk], x[block])
        distance = (2 - 2 * dots).clamp_(min=0) / row_max[start : start + chunk, None]
        w = torch.exp(-distance) * ok
        weights.append(w / w.sum(1, keepdim=True))
    weights = torch.cat(weights)
    counts = valid.sum(1)
    return CSR(torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]), sets[valid], weights[valid])


def _expanded_queries(v: CSR, rank: Tensor, k2: int, chunk_entries: int) -> CSR:
    """Local query expansion: row i becomes the mean of the rows of its first k2 neighbours."""
    n = len(v.crow) - 1
    crow, col, val = v
    lengths = crow[1:] - crow[:-1]
    pieces, start = [], 0
    per_row = lengths[rank[:, :k2]].sum(1)
    while start < n:
        # As many rows as keep the gathered entries under chunk_entries.
        stop = start + max(1, int(torch.searchsorted(torch.cumsum(per_row[start:], 0), chunk_entries, right=True)))
        neighbours = rank[start:stop, :k2].flatten()
        counts = lengths[neighbours]
        source = torch.repeat_interleave(neighbours, counts)
        offsets = torch.arange(int(counts.sum()), device=col.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        position = crow[source] + offsets
        row = torch.repeat_interleave(torch.arange(start, stop, device=col.device), lengths[rank[start:stop, :k2]].sum(1))
        pieces.append(CSR.from_entries(row, col[position], val[position] / k2, n))
        start = stop
    # The pieces hold disjoint row ranges, in order: their entries concatenate into one matrix.
    counts = sum(piece.crow[1:] - piece.crow[:-1] for piece in pieces)
    return CSR(torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]), torch.cat([p.col for p in pieces]),
               torch.cat([p.val for p in pieces]))


def rerank(query_features: Tensor, gallery_features: Tensor, *, k1: int = K1, k2: int = K2, lambda_value: float = LAMBDA,
           memory_budget: int | None = None, chunk_elements: int = 1 << 26) -> Reranking:
    """Build the re-ranking of a query/gallery problem on the features' device.

    `memory_budget` (bytes; default 80% of what the device has free) bounds the sparse encodings:
    a problem that would need more raises `RerankMemoryError` saying how much, before allocating it.
    """
    x = F.normalize(torch.cat([query_features, gallery_features]).float(), dim=1)
    n = x.shape[0]
    if n <= k1:
        raise ValueError(f"re-ranking needs more than k1 = {k1} images, got {n}")
    rank, row_max = _neighbours(x, max(k1 + 1, k2), chunk_elements)
    rows_per_chunk = max(1, chunk_elements // ((k1 + 1) ** 2 * (k1 // 2 + 2) * 2))
    sets, valid = _expanded_sets(rank, k1, rows_per_chunk)
    budget = int(0.8 * available_memory(x.device)) if memory_budget is None else memory_budget
    nnz = int(valid.sum())
    # V and its expansion, as CSR by row and by column (index 8 + value 4 bytes each), plus the COO pieces.
    needed = nnz * 12 * (1 + 3 * (k2 if k2 != 1 else 1))
    if needed > budget:
        raise RerankMemoryError(f"re-ranking {query_features.shape[0]} queries x {gallery_features.shape[0]} gallery images "
                                f"(k1={k1}, k2={k2}) needs about {needed / 2**30:.1f} GiB for its sparse encodings, and "
                                f"{budget / 2**30:.1f} GiB are available on {x.device}")
    v = _encodings(x, row_max, sets, valid, max(1, chunk_elements // (sets.shape[1] * x.shape[1])))
    del sets, valid
    if k2 != 1:
        v = _expanded_queries(v, rank, k2, chunk_elements)
    columns = v.transposed()
    q = query_features.shape[0]
    crow, col = v.crow, v.col
    column_lengths = columns.crow[1:] - columns.crow[:-1]
    entry_pairs = column_lengths[col[: int(crow[q])]]
    pairs = torch.zeros(q, dtype=torch.int64, device=x.device).index_add_(0, _row_of_entries(crow[: q + 1]), entry_pairs)
    return Reranking(x, q, row_max, v, columns, lambda_value, pairs, max(1, chunk_elements // 4))
