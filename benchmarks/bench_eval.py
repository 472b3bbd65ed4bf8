"""Time rlq.metrics.evaluate against a straightforward per-query numpy evaluator.

Both run in the same process on the same random features (identity centre +
clothes offset + noise, so that good matches tend to rank high; or pure noise
with --pure-random), for each protocol, and must give the same numbers. The
reference computes its own similarity matrix with numpy, then sorts each
query's row (stable argsort) and applies the junk/good masks, like the
classic Market-1501 / CAL evaluators.

    python benchmarks/bench_eval.py                      # 2000 x 20000, D=128, CPU
    python benchmarks/bench_eval.py --device cuda --queries 10176 --gallery 125353 \\
        --dim 8192 --ids 5000 --skip-reference          # LaST test size on a GPU
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from rlq.metrics import PROTOCOLS, evaluate

METRIC_KEYS = ("top1", "top5", "top10", "top20", "mAP", "mINP")
# The reference's numpy float32 similarities differ from torch's in the last
# bits, which can swap near-tied items: metrics may then differ by ~1e-6.
TOLERANCE = 1e-4


@dataclass
class Args:
    """Time rlq.metrics.evaluate against a straightforward per-query numpy evaluator, on the same random features."""

    queries: int = 2000
    """Query features."""
    gallery: int = 20000
    """Gallery features."""
    dim: int = 128
    """Feature dimension."""
    ids: int = 500
    """Identities."""
    cameras: int = 6
    """Cameras."""
    clothes_per_id: int = 3
    """Outfits per identity."""
    noise: float = 1.5
    """Noise std relative to the identity centres (larger: harder)."""
    pure_random: bool = False
    """Features are pure noise."""
    device: str = "cpu"
    """Where rlq.metrics.evaluate runs (cpu, cuda, cuda:1, ...); the reference always runs on the CPU."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Feature dtype on the device (the reference gets the same values in float32)."""
    protocols: tuple[Literal["standard", "cc", "sc"], ...] = PROTOCOLS
    """The protocols to time."""
    repeats: int = 3
    """Timed rounds; the minimum of each evaluator is reported."""
    chunk_size: int | None = None
    """Queries per chunk of rlq.metrics.evaluate (default: derived from the sizes, to bound memory)."""
    threads: int | None = None
    """Torch CPU threads (default: torch's)."""
    skip_reference: bool = False
    """Time rlq.metrics.evaluate only (the reference takes minutes at LaST size)."""
    seed: int = 0
    """Seed of the random features and labels."""
    json: Path | None = None
    """Also write the results to this JSON file."""


def parse_args(argv: list[str] | None = None) -> Args:
    return tyro.cli(Args, args=argv)


def make_data(args: Args) -> dict[str, np.ndarray]:
    """Random features and labels; float32 numpy arrays / int64 labels."""
    rng = np.random.default_rng(args.seed)
    query_pids = rng.integers(0, args.ids, args.queries)
    gallery_pids = rng.integers(0, args.ids, args.gallery)
    # Clothes ids are global: identity * clothes_per_id + outfit.
    query_clothes = query_pids * args.clothes_per_id + rng.integers(0, args.clothes_per_id, args.queries)
    gallery_clothes = gallery_pids * args.clothes_per_id + rng.integers(0, args.clothes_per_id, args.gallery)

    def features(pids: np.ndarray, clothes: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(pids), args.dim), dtype=np.float32)
        if args.pure_random:
            return noise
        return id_centres[pids] + 0.5 * clothes_centres[clothes] + args.noise * noise

    id_centres = rng.standard_normal((args.ids, args.dim), dtype=np.float32)
    clothes_centres = rng.standard_normal((args.ids * args.clothes_per_id, args.dim), dtype=np.float32)
    return dict(
        query_features=features(query_pids, query_clothes),
        gallery_features=features(gallery_pids, gallery_clothes),
        query_pids=query_pids,
        gallery_pids=gallery_pids,
        query_camids=rng.integers(0, args.cameras, args.queries),
        gallery_camids=rng.integers(0, args.cameras, args.gallery),
        query_clothes=query_clothes,
        gallery_clothes=gallery_clothes,
    )


def reference_evaluate(query_features, gallery_features, query_pids, gallery_pids, query_camids,
                       gallery_camids, query_clothes, gallery_clothes, protocol: str) -> dict:
    """Per-query numpy loop over a full similarity matrix (same definitions)."""
    qf = query_features / np.linalg.norm(query_features, axis=1, keepdims=True)
    gf = gallery_features / np.linalg.norm(gallery_features, axis=1, keepdims=True)
    sims = qf @ gf.T
    sums = dict.fromkeys(METRIC_KEYS, 0.0)
    num_valid = 0
    for i in range(len(qf)):
        order = np.argsort(-sims[i], kind="stable")  # ties: lower gallery index first
        same_pid = gallery_pids[order] == query_pids[i]
        same_cam = gallery_camids[order] == query_camids[i]
        if protocol == "standard":
            good, junk = same_pid & ~same_cam, same_pid & same_cam
        else:
            same_clothes = gallery_clothes[order] == query_clothes[i]
            if protocol == "cc":
                good = same_pid & ~same_cam & ~same_clothes
                junk = same_pid & (same_cam | same_clothes)
            else:
                good = same_pid & ~same_cam & same_clothes
                junk = same_pid & (same_cam | ~same_clothes)
        ranks = np.flatnonzero(good[~junk]) + 1
        if ranks.size == 0:
            continue
        num_valid += 1
        for k in (1, 5, 10, 20):
            sums[f"top{k}"] += ranks[0] <= k
        sums["mAP"] += np.mean(np.arange(1, ranks.size + 1) / ranks)
        sums["mINP"] += ranks.size / ranks[-1]
    return {**{k: float(v) / num_valid for k, v in sums.items()}, "num_valid_queries": num_valid}


def timed(fn: Callable[[], dict], sync: Callable[[], None]) -> tuple[float, dict]:
    """Wall time of one run of fn, and its result."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    parts = [f"CPU {cpu_name()} ({os.cpu_count()} logical cores)", f"torch threads {torch.get_num_threads()}"]
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    if hasattr(os, "getloadavg"):
        parts.append("load average %.2f %.2f %.2f" % os.getloadavg())
    parts.append(f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}")
    return "; ".join(parts)


def cpu_parallel_speedup() -> float:
    """How much faster a matrix product runs on all torch threads than on one.

    Near the thread count on an idle machine; lower when other work (on a
    shared virtual machine, other tenants) takes the cores. Printed at the
    start and end of a run, to tell what the timings were measured on.
    """
    threads = torch.get_num_threads()
    a = torch.randn(768, 768)

    def best_seconds(num_threads: int) -> float:
        torch.set_num_threads(num_threads)
        a @ a  # warm-up
        return min(timed(lambda: a @ a, lambda: None)[0] for _ in range(7))

    try:
        return best_seconds(1) / best_seconds(threads)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> dict:
    """Times and metrics per protocol; "failures" counts protocols where the two evaluators disagree."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", machine_description(device))
    print(f"CPU parallel speed-up at start: {cpu_parallel_speedup():.2f}x on {torch.get_num_threads()} threads")

    data = make_data(args)
    on_device = {k: torch.from_numpy(v).to(device) for k, v in data.items()}
    for key in ("query_features", "gallery_features"):
        on_device[key] = on_device[key].to(getattr(torch, args.dtype))
        if not args.skip_reference:
            data[key] = on_device[key].float().cpu().numpy()  # the reference sees the same values
    kind = "pure random" if args.pure_random else f"identity centres + noise {args.noise}"
    print(f"data: {args.queries} queries x {args.gallery} gallery, dim {args.dim}, {args.ids} ids, "
          f"{args.cameras} cameras, {kind}, features {args.dtype} on {device}")

    failures, report = 0, {}
    for protocol in args.protocols:
        def fast_run() -> dict:
            return evaluate(**on_device, protocol=protocol, chunk_size=args.chunk_size)

        def reference_run() -> dict:
            return reference_evaluate(**data, protocol=protocol)

        fast_run()  # warm-up (plain numpy has nothing to warm up)
        # Rounds alternate the two, so that both see the same machine load
        # (a shared machine's speed drifts over minutes); best of each reported.
        fast_times, ref_times = [], []
        for _ in range(args.repeats):
            seconds, fast = timed(fast_run, sync)
            fast_times.append(seconds)
            if not args.skip_reference:
                seconds, ref = timed(reference_run, lambda: None)
                ref_times.append(seconds)
        fast_s = min(fast_times)
        summary = ", ".join(f"{k} {fast[k]:.4f}" for k in METRIC_KEYS)
        print(f"\n[{protocol}] {summary}, valid queries {fast['num_valid_queries']}")
        report[protocol] = {"seconds": fast_s, "metrics": fast}
        if args.skip_reference:
            print(f"[{protocol}] rlq.metrics.evaluate {fast_s * 1e3:.1f} ms")
            continue
        ref_s = min(ref_times)
        rounds = [r / f for f, r in zip(fast_times, ref_times)]
        diff = max(abs(fast[k] - ref[k]) for k in METRIC_KEYS)
        same = diff <= TOLERANCE and fast["num_valid_queries"] == ref["num_valid_queries"]
        failures += not same
        report[protocol] |= {"reference_seconds": ref_s, "ratio": ref_s / fast_s, "max_difference": diff, "same": same}
        print(f"[{protocol}] rlq.metrics.evaluate {fast_s * 1e3:.1f} ms | per-query numpy reference "
              f"{ref_s * 1e3:.1f} ms | speed-up {ref_s / fast_s:.1f}x (rounds {min(rounds):.1f}x to "
              f"{max(rounds):.1f}x) | max metric difference {diff:.2e} ({'same' if same else 'MISMATCH'})")
    print(f"\nCPU parallel speed-up at end: {cpu_parallel_speedup():.2f}x on {torch.get_num_threads()} threads")
    report = {"sizes": {"queries": args.queries, "gallery": args.gallery, "dim": args.dim}, "device": str(device),
              "protocols": report, "failures": failures}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
