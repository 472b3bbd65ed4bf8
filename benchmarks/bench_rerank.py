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

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

K1, K2, LAMBDA = 20, 6, 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["500x5000", "2000x30000"], help="QUERIESxGALLERY")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--ids", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dense-limit-gib", type=float, default=4.0, help="run the dense reference where its matrices fit in this")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--one", choices=["ours", "dense"], help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    p.add_argument("--size", help=argparse.SUPPRESS)
    return p.parse_args(argv)


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


def measure_one(args: argparse.Namespace) -> dict:
    """In a child process: one path at one size; seconds, peak extra memory, and a digest of the distances."""
    from rlq.rerank import rerank

    num_query, num_gallery = (int(v) for v in args.size.split("x"))
    query, gallery = features(num_query, num_gallery, args.dim, args.ids)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_bytes()
    start = time.perf_counter()
    if args.one == "dense":
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


def run_child(args: argparse.Namespace, path: str, size: str) -> dict:
    command = [sys.executable, __file__, "--one", path, "--size", size, "--dim", str(args.dim), "--ids", str(args.ids),
               "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{path} at {size} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args)))
        return {}
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
