"""Retrieval metrics for (clothes-changing) person re-identification.

`evaluate` ranks the gallery for every query by cosine similarity and reports
CMC top-k, mAP and mINP under the standard, clothes-changing ("cc") or
same-clothes ("sc") protocol (spec: data.md, section 5).

Definitions, per query, with Q / C / K the gallery items that share its
identity / camera / clothes id:

* standard: good = Q minus C,           junk = Q and C
* cc:       good = Q minus C minus K,   junk = (Q and C) or (Q and K)
* sc:       good = (Q minus C) and K,   junk = (Q and C) or (Q minus K)

Junk is removed from the ranking. The ranking is the gallery sorted by
similarity descending, ties broken by the lower gallery index (a stable
descending sort). With rank_j the 1-based rank of good item j among the
remaining items and hits_j the number of good items at or before it:
CMC@k = [min_j rank_j <= k], AP = mean_j hits_j / rank_j and
mINP = #good / max_j rank_j. Queries without a good item are skipped.

Algorithm: no per-query loop, and no sort of the similarity rows (sorting
them costs many times the matrix product itself).

1. Only gallery items of the query's identity can be good or junk, and under
   every protocol each of them is one or the other. Removing junk therefore
   leaves the good items plus the items of *other* identities ("foreign"
   items): rank_j = hits_j + F_j, with F_j the foreign items ranked before j.
2. The gallery is grouped by identity once, so a query's same-identity items
   form a small padded [chunk, M] matrix. A stable sort of that matrix gives
   hits_j exactly.
3. F_j is a counting problem over the whole row. Each row of similarities is
   mapped by a monotone per-row function onto integer bins spanning the
   similarities of the query's good items (hundreds to a few thousand, sized
   to the number of items in that span); one `bincount` per chunk then gives
   the foreign items in bins above each good item. Because the map is
   monotone, this count is exact whatever its float rounding: only the
   foreign items in a good item's own bin are left.
4. Those few are found with a table lookup and a sparse nonzero, and counted
   after an exact ordering by (similarity desc, gallery index asc).

Everything runs on the features' device (CPU or CUDA, same code) in float32,
in chunks of queries with buffers allocated once per worker; on CPU, worker
threads process chunks concurrently. (On CUDA the similarity product follows
torch's global TF32 setting, which is off by default.)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PROTOCOLS", "evaluate"]

PROTOCOLS = ("standard", "cc", "sc")
_TOPK = (1, 5, 10, 20)

# Similarity matrix elements per chunk of queries (CUDA: about 0.6 GB of
# buffers, enough to keep the device busy; CPU: per worker thread, measured
# best on 2 cores).
_CHUNK_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 23}
# The counting after the product walks a chunk in this many row parts: on
# CPU a larger product is faster (the gallery is packed once per product) and
# smaller bin buffers stay in cache (measured: about 6% in all).
_PARTS = {"cuda": 1, "cpu": 2}
# Most CPU worker threads (each holds a workspace of about 50 MB at the
# default chunk size).
_MAX_WORKERS = 8
_OTHER_DEVICE_ELEMENTS = 1 << 24
# Bins per row between a row's lowest and highest good item: enough that few
# foreign items share a good item's bin, few enough that the histograms stay
# small (cache-resident). Chosen per chunk: one per _CANDIDATES_PER_BIN items
# at or above the lowest good item (on average over the rows of the worker's
# previous chunk), at most one per _ITEMS_PER_BIN gallery items (measured on
# CPU).
_CANDIDATES_PER_BIN = 2
_ITEMS_PER_BIN = 8
_MIN_BINS, _MAX_BINS = 64, 1 << 16
# Bins below a row's lowest good item (see _bin_rows).
_LOW_BINS = 64
# Cap of the per-row bin scale: keeps |sim * scale| far below 2**24, so the
# float32 map has sub-bin resolution even when all good items of a query
# have (nearly) the same similarity.
_MAX_SCALE = float(1 << 20)


def evaluate(
    query_features,
    gallery_features,
    query_pids,
    gallery_pids,
    query_camids,
    gallery_camids,
    query_clothes=None,
    gallery_clothes=None,
    protocol: str = "standard",
    chunk_size: int | None = None,
    similarity: Callable[[slice], torch.Tensor] | None = None,
) -> dict[str, float | int]:
    """Rank the gallery for every query and compute CMC, mAP and mINP.

    Args:
        query_features, gallery_features: [Q, D] and [G, D] torch tensors or
            numpy arrays (any float dtype); L2-normalised here and ranked by
            cosine similarity in float32 on the query features' device.
        query_pids, gallery_pids, query_camids, gallery_camids: 1-D integer
            labels.
        query_clothes, gallery_clothes: 1-D integer clothes ids; required by
            the "cc" and "sc" protocols, ignored by "standard".
        protocol: "standard", "cc" or "sc" (see the module docstring).
        chunk_size: queries per chunk (bounds memory); by default derived
            from the gallery size. Results do not depend on it.
        similarity: rows -> [len(rows), G] similarities of those query rows
            to the gallery (higher = closer), on the features' device, e.g.
            `rlq.rerank.Reranking.similarities`; by default the cosine of
            the features. It may be called from several threads at once.

    Returns:
        Fractions in [0, 1] averaged over the valid queries: "top1", "top5",
        "top10", "top20", "mAP", "mINP"; and the ints "num_valid_queries"
        and "num_skipped_queries" (queries without any good gallery item).

    Raises:
        ValueError: unknown protocol, missing clothes ids, inconsistent
            sizes, non-finite features, or no valid query at all.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if protocol != "standard" and (query_clothes is None or gallery_clothes is None):
        raise ValueError(f"protocol {protocol!r} needs query_clothes and gallery_clothes")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    qf = _as_unit_rows(query_features, "query_features")
    device = qf.device
    gf = _as_unit_rows(gallery_features, "gallery_features").to(device)
    num_query, num_gallery = qf.shape[0], gf.shape[0]
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"feature dims differ: query_features {tuple(qf.shape)}, "
                         f"gallery_features {tuple(gf.shape)}")
    clothes = protocol != "standard"
    query = _Labels.build("query", num_query, device, query_pids, query_camids,
                          query_clothes if clothes else None)
    gallery = _Labels.build("gallery", num_gallery, device, gallery_pids, gallery_camids,
                            gallery_clothes if clothes else None)
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"need at least one query and one gallery item, "
                         f"got {num_query} and {num_gallery}")

    groups = _IdentityGroups.build(gallery.pids, query.pids)
    if groups.width == 0:
        raise _no_valid_query(num_query)
    max_bins = _max_bins(num_gallery)
    workers = _num_workers(device)
    chunk = _chunk_rows(chunk_size, num_query, num_gallery, max_bins, device, workers)

    # Per query: rank of the first good item (inf when there is none), AP and
    # mINP. Averaged once at the end, so results do not depend on the chunking.
    per_query = torch.empty(num_query, 3, dtype=torch.float64, device=device)

    def run(rows: slice, ws: _Workspace) -> None:
        sims = ws.sims[: rows.stop - rows.start]
        if similarity is None:
            torch.mm(qf[rows], gf.T, out=sims)
        else:
            sims.copy_(similarity(rows))
        per_query[rows] = _chunk_metrics(sims, query.slice(rows), gallery, groups.slice(rows), protocol, ws)

    chunks = [slice(start, min(start + chunk, num_query)) for start in range(0, num_query, chunk)]
    _for_each_chunk(run, chunks, lambda: _Workspace.allocate(chunk, num_gallery, max_bins, device),
                    workers)
    return _summarise(per_query)


# --------------------------------------------------------------------------
# Inputs


def _as_unit_rows(x, name: str) -> torch.Tensor:
    """Features as an L2-normalised float32 [N, D] tensor."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
    t = F.normalize(t.to(torch.float32), dim=1)
    # Normalised entries lie in [-1, 1] unless the input held NaN or inf, so
    # one sum checks them all (cheaper than isfinite on every entry).
    if not bool(torch.isfinite(t.sum())):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _as_labels(x, name: str, n: int, side: str, device: torch.device) -> torch.Tensor:
    """1-D int64 label tensor on `device`, checked against the feature count."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got {t.dtype}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} {side} features")
    return t.to(device=device, dtype=torch.int64)


@dataclass(frozen=True)
class _Labels:
    """Identity, camera and (optional) clothes ids of one side."""

    pids: torch.Tensor
    camids: torch.Tensor
    clothes: torch.Tensor | None

    @staticmethod
    def build(side: str, n: int, device: torch.device, pids, camids, clothes) -> _Labels:
        return _Labels(
            _as_labels(pids, f"{side}_pids", n, side, device),
            _as_labels(camids, f"{side}_camids", n, side, device),
            None if clothes is None else _as_labels(clothes, f"{side}_clothes", n, side, device),
        )

    def slice(self, rows: slice) -> _Labels:
        return _Labels(self.pids[rows], self.camids[rows],
                       None if self.clothes is None else self.clothes[rows])


@dataclass(frozen=True)
class _IdentityGroups:
    """Gallery grouped by identity, and the group of each query.

    `order` lists gallery indices sorted stably by pid, so each identity is a
    contiguous run of increasing indices: a stable similarity sort of a run
    then breaks ties by gallery index, as the ranking requires.
    """

    order: torch.Tensor  # [G] gallery indices grouped by pid
    start: torch.Tensor  # [Q] first position of the query's pid in `order`
    count: torch.Tensor  # [Q] gallery items with the query's pid
    width: int  # largest count: columns of the padded same-pid matrices

    @staticmethod
    def build(gallery_pids: torch.Tensor, query_pids: torch.Tensor) -> _IdentityGroups:
        sorted_pids, order = torch.sort(gallery_pids, stable=True)
        pids, counts = torch.unique_consecutive(sorted_pids, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.searchsorted(pids, query_pids).clamp(max=pids.numel() - 1)
        count = torch.where(pids[pos] == query_pids, counts[pos], 0)
        return _IdentityGroups(order, starts[pos], count, int(count.max()))

    def slice(self, rows: slice) -> _IdentityGroups:
        return _IdentityGroups(self.order, self.start[rows], self.count[rows], self.width)


# --------------------------------------------------------------------------
# Sizes and buffers


def _max_bins(num_gallery: int) -> int:
    """Most histogram bins per row: the low bins, the good items' range, the top bin."""
    return _LOW_BINS + min(max(num_gallery // _ITEMS_PER_BIN, _MIN_BINS), _MAX_BINS) + 1


def _elements(table: dict[str, int], device: torch.device) -> int:
    return table.get(device.type, _OTHER_DEVICE_ELEMENTS)


def _chunk_rows(chunk_size: int | None, num_query: int, num_gallery: int, max_bins: int,
                device: torch.device, workers: int) -> int:
    """Queries per chunk: requested, or derived from the gallery size and the
    number of workers; capped so that flat bin ids (row * bins + bin) stay
    exact in float32."""
    if chunk_size is None:
        most = max(1, _elements(_CHUNK_ELEMENTS, device) // num_gallery)
        # A multiple of `workers` chunks of (nearly) equal size.
        num_chunks = workers * -(-num_query // (workers * most))
        chunk_size = -(-num_query // num_chunks)
    return max(1, min(chunk_size, num_query, (1 << 24) // max_bins))


@functools.cache
def _per_thread_intraop_threads() -> bool:
    """Whether torch.set_num_threads affects only the calling thread's own
    parallel regions (true of the OpenMP backend, not of the native one)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _num_workers(device: torch.device) -> int:
    """Worker threads that process chunks concurrently (see _for_each_chunk)."""
    if device.type != "cpu" or not _per_thread_intraop_threads():
        return 1
    return max(1, min(torch.get_num_threads(), _MAX_WORKERS))


def _for_each_chunk(run: Callable[[slice, _Workspace], None], chunks: list[slice],
                    allocate: Callable[[], _Workspace], workers: int) -> None:
    """Call run(rows, workspace) for every chunk of query rows.

    With several workers, chunks run concurrently in threads that each use
    torch.get_num_threads() // workers intra-op threads (a single one on a
    small machine), each with its own workspace. Several of the heavy ops
    (bincount, 1-D index_select, sort) use one core whatever the thread
    setting; concurrent chunks keep the other cores busy meanwhile, and a
    single-threaded op skips the cost of starting a parallel region.
    """
    workers = min(workers, len(chunks))
    if workers == 1:
        ws = allocate()
        for rows in chunks:
            run(rows, ws)
        return
    total = torch.get_num_threads()
    local = threading.local()

    def task(rows: slice) -> None:
        if not hasattr(local, "ws"):
            torch.set_num_threads(max(1, total // workers))  # this thread's regions
            local.ws = allocate()
        run(rows, local.ws)

    pool = ThreadPoolExecutor(workers)
    try:
        for future in [pool.submit(task, rows) for rows in chunks]:
            future.result()
    finally:
        pool.shutdown(cancel_futures=True)  # after an error: skip the chunks left
        # Also the default that threads started from now on take.
        torch.set_num_threads(total)


@dataclass
class _Workspace:
    """Buffers shared by a worker's chunks (fresh large allocations are slow on
    CPU), and what its last chunk tells about the next one."""

    sims: torch.Tensor  # [chunk, G] float32 similarities
    bins: torch.Tensor  # [part, G] int32 flat bin ids (row offset included), see _PARTS
    mask: torch.Tensor  # [part * G rounded up to 8] bool, items needing exact comparison
    row: torch.Tensor  # [chunk] float32 row numbers 0, 1, ...
    low_bins: torch.Tensor  # [G] float32 column % _LOW_BINS (see _bin_rows)
    max_bins: int  # most bins per row
    candidates_per_row: float | None = None  # see _chunk_bins

    @staticmethod
    def allocate(chunk: int, num_gallery: int, max_bins: int, device: torch.device) -> _Workspace:
        part = -(-chunk // _PARTS.get(device.type, 1))
        return _Workspace(
            sims=torch.empty(chunk, num_gallery, device=device),
            bins=torch.empty(part, num_gallery, dtype=torch.int32, device=device),
            mask=torch.zeros(-(-part * num_gallery // 8) * 8, dtype=torch.bool, device=device),
            row=torch.arange(chunk, device=device).float(),
            low_bins=torch.arange(num_gallery, device=device).remainder(_LOW_BINS).float(),
            max_bins=max_bins,
        )


# --------------------------------------------------------------------------
# One chunk of queries


def _chunk_metrics(
    sims: torch.Tensor,
    query: _Labels,
    gallery: _Labels,
    groups: _IdentityGroups,
    protocol: str,
    ws: _Workspace,
) -> torch.Tensor:
    """[c, 3] float64: first good rank (inf if none), AP and mINP (0 if none)."""
    m = groups.width

    # Same-identity items: padded [c, m] matrix of gallery columns.
    slot = torch.arange(m, device=sims.device)
    present = slot < groups.count[:, None]
    cols = groups.order[(groups.start[:, None] + slot).clamp(max=groups.order.numel() - 1)]
    good = present & _good_mask(protocol, query, gallery, cols)
    pid_sims = sims.gather(1, cols).masked_fill_(~present, -torch.inf)

    # hits_j: good items at or before j in the stable (sim desc, index asc) order.
    perm = torch.sort(pid_sims, dim=1, descending=True, stable=True).indices
    good_sorted = good.gather(1, perm)
    hits = torch.cumsum(good_sorted, dim=1)
    foreign = _foreign_above(sims, cols, pid_sims, present, good, query.pids, gallery.pids, ws)
    ranks = (hits + foreign.gather(1, perm)).double()

    num_good = good_sorted.sum(1)
    first = torch.where(good_sorted, ranks, torch.inf).amin(1)
    last = torch.where(good_sorted, ranks, 0.0).amax(1)
    ap = torch.where(good_sorted, hits / ranks, 0.0).sum(1) / num_good.clamp(min=1)
    minp = num_good / last.clamp(min=1)
    return torch.stack([first, ap, minp], 1)


def _good_mask(protocol: str, query: _Labels, gallery: _Labels, cols: torch.Tensor) -> torch.Tensor:
    """Which same-identity gallery items are good; all the others are junk."""
    other_cam = gallery.camids[cols] != query.camids[:, None]
    if protocol == "standard":
        return other_cam
    same_clothes = gallery.clothes[cols] == query.clothes[:, None]
    return other_cam & (same_clothes if protocol == "sc" else ~same_clothes)


def _foreign_above(
    sims: torch.Tensor,
    cols: torch.Tensor,
    pid_sims: torch.Tensor,
    present: torch.Tensor,
    good: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ws: _Workspace,
) -> torch.Tensor:
    """For each good same-pid item, the number of foreign items ranked before it.

    Returns an int64 [c, m] tensor (values at non-good slots are meaningless).
    """
    c = sims.shape[0]
    part = ws.bins.shape[0]
    if c > part:  # rows in parts that fit the bin buffers
        return torch.cat([
            _foreign_above(sims[s], cols[s], pid_sims[s], present[s], good[s], query_pids[s],
                           gallery_pids, ws)
            for s in (slice(i, i + part) for i in range(0, c, part))])
    num_bins = _chunk_bins(ws)
    row_base = ws.row[:c] * num_bins
    bins = _bin_rows(sims, *_bin_map(pid_sims, good, num_bins), row_base, num_bins, ws)
    hist = torch.bincount(bins.view(-1), minlength=c * num_bins).view(c, num_bins)
    # Items outside the low bins: about those at or above the lowest good item.
    ws.candidates_per_row = (sims.numel() - int(hist[:, :_LOW_BINS].sum())) / c

    # Remove the same-pid items from the histogram: what is left is foreign.
    item_bins = bins.gather(1, cols).long()
    local_bins = item_bins - row_base[:, None].long()
    foreign_hist = hist.scatter_add_(1, local_bins, -present.long())
    shared = good & (foreign_hist.gather(1, local_bins) > 0)
    # Foreign items in bins strictly above an item's bin: the row total minus
    # the inclusive cumulative sum up to its bin.
    at_or_below = foreign_hist.cumsum_(1)
    result = at_or_below[:, -1:] - at_or_below.gather(1, local_bins)
    if bool(shared.any()):
        result += _foreign_in_shared_bins(sims, bins, num_bins, item_bins, cols, shared,
                                          query_pids, gallery_pids, ws)
    return result


def _chunk_bins(ws: _Workspace) -> int:
    """Histogram bins per row for the next chunk (see _CANDIDATES_PER_BIN)."""
    if ws.candidates_per_row is None:  # first chunk
        return ws.max_bins
    span = int(ws.candidates_per_row / _CANDIDATES_PER_BIN)
    return _LOW_BINS + min(max(span, _MIN_BINS), ws.max_bins - _LOW_BINS - 1) + 1


def _bin_map(pid_sims: torch.Tensor, good: torch.Tensor,
             num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and offset of the bin map (see _bin_rows).

    The row's good items, from its lowest to its highest similarity, map to
    [_LOW_BINS + 1.5, num_bins - 1.5]: a margin of more than a bin on both
    sides, far above the float32 rounding of the map. Rows without good items
    map everything to -inf, which the low bins spread out.
    """
    has_good = good.any(1)
    lo = torch.where(good, pid_sims, torch.inf).amin(1).where(has_good, 0.0)
    hi = torch.where(good, pid_sims, -torch.inf).amax(1).where(has_good, 0.0)
    span = num_bins - 3 - _LOW_BINS
    scale = (span / (hi - lo)).clamp(max=_MAX_SCALE)  # hi == lo gives inf: capped
    offset = (_LOW_BINS + 1.5 - lo * scale).where(has_good, -torch.inf)
    return scale, offset


def _bin_rows(sims: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
              row_base: torch.Tensor, num_bins: int, ws: _Workspace) -> torch.Tensor:
    """Flat histogram bin of every similarity: row * num_bins + local bin.

    The local bin is trunc(min(sim * scale + offset, num_bins - 1)): monotone
    non-decreasing in sim within a row whatever the float rounding, so an
    item in a higher bin is strictly more similar, which is all that the
    counting relies on. Items far below the row's good items would all land
    in bin 0; instead they are spread over bins 0.._LOW_BINS - 1 by column
    (all still below every good item), because bincount is several times
    slower when consecutive items hit the same counter.
    """
    bins = ws.bins[: sims.shape[0]]
    # Coordinates are computed in the bins buffer itself, then converted in
    # place (an elementwise copy between same-sized types): no scratch
    # buffer, and about 10% faster on CPU.
    coords = bins.view(torch.float32)
    torch.mul(sims, scale[:, None], out=coords)
    coords.add_(offset[:, None])
    torch.maximum(coords, ws.low_bins, out=coords).clamp_(max=num_bins - 1)
    # Row offsets are added in float (exact: flat bin ids are < 2**24),
    # which is faster than adding them to the ints.
    coords.add_(row_base[:, None])
    return bins.copy_(coords)


def _foreign_in_shared_bins(
    sims: torch.Tensor,
    bins: torch.Tensor,
    num_bins: int,
    item_bins: torch.Tensor,
    cols: torch.Tensor,
    shared: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ws: _Workspace,
) -> torch.Tensor:
    """Foreign items ranked before each `shared` good item within its own bin.

    Collects every item of the bins holding such a good item, orders them
    exactly by (row, similarity desc, gallery index asc) and counts, for each
    item, the foreign items before it in the same bin. Index ops use
    index_select rather than [] indexing: several times faster on CPU.
    """
    c, num_gallery = sims.shape
    device = sims.device
    flag = torch.zeros(c * num_bins, dtype=torch.bool, device=device)
    flag[item_bins[shared]] = True
    n = c * num_gallery
    mask = ws.mask[: -(-n // 8) * 8]
    mask[n:] = False  # padding tail: may hold flags of a larger previous chunk
    torch.index_select(flag, 0, bins.view(-1), out=mask[:n])
    pos = _sparse_nonzero(mask)

    row = _floor_div(pos, num_gallery)
    is_foreign = (gallery_pids.index_select(0, pos - row * num_gallery)
                  != query_pids.index_select(0, row))
    key = row * (1 << 32) + _descending_key(sims.view(-1).index_select(0, pos))
    # `pos` is ascending, so the stable sort breaks similarity ties by index.
    order = torch.sort(key, stable=True).indices
    bin_sorted = bins.view(-1).index_select(0, pos).index_select(0, order)
    foreign_sorted = is_foreign.index_select(0, order).long()

    index = torch.arange(order.numel(), device=device)
    new_bin = torch.ones_like(bin_sorted, dtype=torch.bool)
    new_bin[1:] = bin_sorted[1:] != bin_sorted[:-1]
    bin_start = torch.cummax(torch.where(new_bin, index, 0), 0).values
    before = torch.cumsum(foreign_sorted, 0) - foreign_sorted  # exclusive
    in_bin_before = before - before.index_select(0, bin_start)
    sorted_rank = torch.empty_like(order).scatter_(0, order, index)  # inverse permutation

    slot = shared.view(-1).nonzero().squeeze(1)  # flat [c, m] slots of the shared goods
    good_row = _floor_div(slot, cols.shape[1])
    good_pos = good_row * num_gallery + cols.view(-1).index_select(0, slot)
    found = sorted_rank.index_select(0, torch.searchsorted(pos, good_pos))
    result = torch.zeros_like(cols)
    result.view(-1).scatter_(0, slot, in_bin_before.index_select(0, found))
    return result


def _floor_div(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """x // divisor for non-negative int64 x below 2**50, in float64: exact
    there, and vectorised on CPU, unlike int64 division."""
    return x.double().div_(divisor).floor_().long()


def _sparse_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the True entries of a sparse 1-D bool tensor whose
    length is a multiple of 8.

    Finds the non-zero 8-byte words first, so the dense scan handles 8x fewer
    elements than `nonzero` on the bytes (much faster on CPU).
    """
    words = mask.view(torch.int64).nonzero().squeeze(1)
    word_bytes = mask.view(-1, 8).index_select(0, words)
    which, byte = word_bytes.nonzero(as_tuple=True)
    return words.index_select(0, which) * 8 + byte


def _descending_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) that sort float32 `values` in descending order.

    Exact (unlike float arithmetic on the values): equal values get equal keys,
    so a stable sort keeps their original order.
    """
    bits = (values + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ascending = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # flip the magnitude of negatives
    return (2**31 - 1) - ascending.long()


# --------------------------------------------------------------------------
# Result


def _summarise(per_query: torch.Tensor) -> dict[str, float | int]:
    """Average the per-query [first rank, AP, mINP] over the valid queries."""
    first = per_query[:, 0]
    sums = torch.stack([
        torch.isfinite(first).sum().double(),
        *[(first <= k).sum().double() for k in _TOPK],
        per_query[:, 1].sum(),
        per_query[:, 2].sum(),
    ]).tolist()  # one host sync
    num_valid = int(sums[0])
    if num_valid == 0:
        raise _no_valid_query(per_query.shape[0])
    return {
        **{f"top{k}": hits / num_valid for k, hits in zip(_TOPK, sums[1:])},
        "mAP": sums[-2] / num_valid,
        "mINP": sums[-1] / num_valid,
        "num_valid_queries": num_valid,
        "num_skipped_queries": per_query.shape[0] - num_valid,
    }


class NoValidQuery(ValueError):
    """No query of a protocol has a good gallery item: the protocol measures nothing on these splits."""


def _no_valid_query(num_queries: int) -> NoValidQuery:
    return NoValidQuery(f"no valid query: none of the {num_queries} queries has a good "
                        "gallery item under this protocol")


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest logit is the target (a 0-d tensor, no host sync)."""
    return (logits.argmax(1) == targets).float().mean()


def within_identity_accuracy(cosines: torch.Tensor, clothes_labels: torch.Tensor, pids: torch.Tensor,
                             pid2clothes: torch.Tensor) -> torch.Tensor:
    """How often the clothes classifier picks a sample's outfit among its own identity's outfits (0-d tensor).

    Chance is 1 / (outfits of the identity): above it, f1 still tells a person's outfits apart,
    which is what the CAL loss works against.
    """
    own = pid2clothes[pids].bool()
    return (cosines.masked_fill(~own, float("-inf")).argmax(1) == clothes_labels).float().mean()
