"""Time and peak memory of k-reciprocal re-ranking: `rlq.rerank` against a dense implementation of the published algorithm.

Each measurement runs in a fresh process, so its peak memory (the growth of the resident set over
what the process held once the features existed) is its own. The dense reference, written here,
keeps every N x N matrix as the published code does (distances, ranks, encodings; N = queries +
gallery); it runs only where those fit in --dense-limit-gib, and both must give the same re-ranked
distances there. Features: identity centres + noise, L2-normalised.

    python benchmarks/bench_rerank.py                                      # 500 x 5,000 and 2,000 x 30,000, D = 256, CPU
    python benchmarks/bench_rerank.py --sizes 10176x125353 --device cuda   # LaST's test size on a GPU
"""

from __future__ import annotations

import json
import resource
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

K1, K2, LAMBDA = 20, 6, 0.3


@dataclass
class Args:
    """Time and peak memory of k-reciprocal re-ranking: rlq.rerank against a dense implementation of the published algorithm."""

    sizes: tuple[str, ...] = ("500x5000", "2000x30000")
    """Problem sizes, each QUERIESxGALLERY."""
    dim: int = 256
    """Feature dimension."""
    ids: int = 500
    """Identities of the random features."""
    device: str = "cpu"
    """Where rlq.rerank runs (cpu, cuda, ...); the dense reference always runs on the CPU."""
    dense_limit_gib: float = 4.0
    """Run the dense reference where its N x N matrices fit in this many GiB."""
    json: Path | None = None
    """Also write the results to this JSON file."""


def parse_args(argv: list[str] | None = None) -> Args:
    return tyro.cli(Args, args=argv)


def features(num_query: int, num_gallery: int, dim: int, ids: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    query = centres[rng.integers(0, ids, num_query)] + 1.5 * rng.standard_normal((num_query, dim), dtype=np.float32)
    gallery = centres[rng.integers(0, ids, num_gallery)] + 1.5 * rng.standard_normal((num_gallery, dim), dtype=np.float32)
    return query, gallery


def dense_reranking(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """The published algorithm with dense N x N float32 matrices, vectorised where it can be; final Q x G distances."""
    x = np.concatenate([query, gallery])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, q = len(x), len(query)
    distance = np.maximum(2 - 2 * x @ x.T, 0)
    distance /= distance.max(axis=1, keepdims=True)
    rank = np.argsort(distance, axis=1)
    half = int(np.around(K1 / 2)) + 1

    def reciprocal_sets(k: int) -> list[np.ndarray]:
        forward = rank[:, :k]
        mutual = (forward[forward] == np.arange(n)[:, None, None]).any(-1)
        return [forward[i][mutual[i]] for i in range(n)]

    own, halves = reciprocal_sets(K1 + 1), reciprocal_sets(half)
    encodings = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expansion = [own[i]] + [halves[c] for c in own[i] if np.isin(halves[c], own[i]).sum() > 2 / 3 * len(halves[c])]
        members = np.unique(np.concatenate(expansion))
        weights = np.exp(-distance[i, members])
        encodings[i, members] = weights / weights.sum()
    encodings = encodings[rank[:, :K2]].mean(axis=1)
    final = np.empty((q, n - q), dtype=np.float32)
    for i in range(q):
        overlap = np.minimum(encodings[i], encodings[q:]).sum(axis=1)
        final[i] = (1 - LAMBDA) * (1 - overlap / (2 - overlap)) + LAMBDA * distance[i, q:]
    return final


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_one(path: Literal["ours", "dense"], size: str, dim: int, ids: int, device_name: str) -> dict:
    """In a process of its own: one path at one size; seconds, peak extra memory, and a sample of the distances."""
    from rlq.rerank import rerank

    num_query, num_gallery = (int(v) for v in size.split("x"))
    query, gallery = features(num_query, num_gallery, dim, ids)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_bytes()
    start = time.perf_counter()
    if path == "dense":
        sample = dense_reranking(query, gallery)[:50, :200]
    else:
        # Every query's distances are computed, a block of rows at a time, as an evaluation consumes them; only the
        # sample compared with the dense reference is kept (LaST's whole Q x G matrix would be 5 GB of host memory).
        reranking = rerank(torch.from_numpy(query).to(device), torch.from_numpy(gallery).to(device))
        step = max(50, (1 << 24) // num_gallery)
        for i in range(0, num_query, step):
            block = (-reranking.similarities(slice(i, min(i + step, num_query)))).cpu().numpy()
            if i == 0:
                sample = block[:50, :200]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    result = {"seconds": seconds, "peak_gib": max(peak, 0) / 2**30, "sample": sample.tolist()}
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def run_child(args: Args, path: Literal["ours", "dense"], size: str) -> dict:
    """`measure_one` in a fresh process: spawned, not forked, so that nothing this process holds counts in its peak."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_one, path, size, args.dim, args.ids, args.device).result()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"k1 {K1}, k2 {K2}, lambda {LAMBDA}; dim {args.dim}, {args.ids} identities; device {args.device}\n")
    report = {}
    for size in args.sizes:
        num_query, num_gallery = (int(v) for v in size.split("x"))
        n = num_query + num_gallery
        dense_gib = 20 * n * n / 2**30  # distances and a temporary (float32), ranks (int64), encodings (float32)
        row = {"ours": run_child(args, "ours", size), "dense_needs_gib": dense_gib}
        if dense_gib <= args.dense_limit_gib:
            row["dense"] = run_child(args, "dense", size)
            difference = np.abs(np.array(row["ours"]["sample"]) - np.array(row["dense"]["sample"])).max()
            row["max_difference"] = float(difference)
        for measured in (row["ours"], row.get("dense", {})):
            measured.pop("sample", None)
        report[size] = row
        ours = row["ours"]
        line = f"{size}: rlq.rerank {ours['seconds']:.1f} s, peak {ours['peak_gib']:.2f} GiB"
        if "peak_gpu_gib" in ours:
            line += f" (GPU {ours['peak_gpu_gib']:.2f} GiB)"
        if "dense" in row:
            dense = row["dense"]
            line += (f" | dense reference {dense['seconds']:.1f} s, peak {dense['peak_gib']:.2f} GiB"
                     f" | same distances (max difference {row['max_difference']:.1e} on a 50 x 200 sample)")
        else:
            line += f" | dense reference not run: its N x N matrices need about {dense_gib:.0f} GiB"
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
