"""Images/s of each training input pipeline (decode + augment + collate) for 1, 2, 4... loader workers.

The pipelines are the training scripts' own datasets and loaders, on a generated folder of
person crops with realistic sizes (heights log-uniform in 50-400 pixels, as in LTCC; half JPEG,
half PNG) and bit-field clothes masks in preprocess_masks.py's format:

- base: `TrainImages` without masks (train_base.py);
- cap: `AttributedTrainImages` with the recolouring masks (train_cgal.py / the CAP phase with --masks):
  every item is an image and its recoloured copy;
- tad: `TADPairs` (the TAD phase): every item is an image and its synthetic low-quality copy (LTCC's mix);
- eval: `eval_loader` (feature extraction).

It then prints how many workers per GPU each pipeline needs to feed a GPU step rate: the
`--train-json` of bench_train.py (our measured step), or else an assumed 1,600 images/s (a planning
figure for the bf16 + channels_last CAL step on one H100-class GPU, not a measurement), counted in the pipeline's items (an item is one
image for base, two network images for cap, and three for tad: HQ + LQ for the student, HQ for
the teacher).

    python benchmarks/bench_data.py                            # 384x192, workers 1, 2, 4 ... up to the cores
    python benchmarks/bench_data.py --train-json train.json    # rates from bench_train.py --device cuda --json train.json
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from PIL import Image

from rlq.data import Sample
from rlq.options import OptionError, check_outputs_apart, formerly
from rlq.loaders import AttributedTrainImages, DeviceAugmented, TADPairs, TrainImages, eval_loader, tad_loader, train_loader
from rlq.masks import FAULTY_FILES, MASK_BITS, write_key_list, write_mask_png
from rlq.recolour import Recolouring
from rlq.sampler import PKSampler
from rlq.transforms import DeferredTrainTransform, TrainTransform

ANCHOR_IMAGES_PER_S = 1600.0
NETWORK_IMAGES_PER_ITEM = {"base": 1, "cap": 2, "tad": 3}
IMAGES_PER_ID = 8


@dataclass
class Args:
    """Images/s of each training input pipeline (decode + augment + collate) for 1, 2, 4... loader workers."""

    crops: Annotated[int, formerly("--images", "--crops")] = 2000
    """Generated person crops."""
    height: int = 384
    """Height the pipelines resize to."""
    width: int = 192
    """Width the pipelines resize to."""
    batch_size: int = 32
    """Items per batch."""
    batches: int = 30
    """Timed batches per measurement (after one untimed)."""
    workers: tuple[int, ...] = ()
    """Loader worker counts to measure (default: 1, 2, 4 ... up to the logical cores)."""
    pipelines: tuple[Literal["base", "cap", "tad", "eval"], ...] = ("base", "cap", "tad", "eval")
    """The pipelines to measure."""
    augment_on: tuple[Literal["workers", "device"], ...] = ("workers", "device")
    """The scripts' --augment-on: all of the augmentation in the workers, or its batched part on the device (not timed
    here: the workers then hand over resized uint8 images and the draws)."""
    train_json: Path | None = None
    """bench_train.py --json output: the step rates to feed (default: an assumed 1,600 images/s)."""
    folder: Path | None = None
    """Generate the crops here (default: a temporary folder)."""
    seed: int = 0
    """Seed of the generated crops and of the loaders' draws."""
    json: Path | None = None
    """Also write the results to this JSON file."""


def parse_args(argv: list[str] | None = None) -> Args:
    """The options, with the worker counts filled in."""
    args = tyro.cli(Args, args=argv)
    if not args.workers:
        cores = os.cpu_count() or 1
        args.workers = tuple(2**i for i in range(int(math.log2(cores)) + 1))
    return args


def generate_crops(folder: Path, count: int, seed: int) -> tuple[list[Sample], Path]:
    """`count` person-crop-like images (smooth colour fields + noise) with clothes masks; returns (samples, masks folder)."""
    rng = np.random.default_rng(seed)
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        height = int(np.exp(rng.uniform(np.log(50), np.log(400))))
        width = max(16, int(height * rng.uniform(0.33, 0.5)))
        coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        path = images / (f"{i:05d}.jpg" if i % 2 else f"{i:05d}.png")
        Image.fromarray(pixels).save(path, quality=95) if i % 2 else Image.fromarray(pixels).save(path)
        key = f"{i:05d}"
        write_mask_png(masks / f"{key}.png", body_masks(height, width))
        samples.append(Sample(path=str(path), pid=i // IMAGES_PER_ID, camid=i % 2, clothes_id=i // (IMAGES_PER_ID // 2),
                              key=key, pid_key=str(i // IMAGES_PER_ID), gender=i % 2, pose=i % 16))
    # About 5% of the images on each faulty list: the recolouring takes its one-colour path for them.
    for offset, name in enumerate(FAULTY_FILES.values()):
        write_key_list(masks / name, [s.key for s in samples[offset::20]])
    return samples, masks


def body_masks(height: int, width: int) -> np.ndarray:
    """Bit-field mask: head on top, tops, then pants, in a central column (the silhouette)."""
    bits = np.zeros((height, width), dtype=np.uint8)
    column = slice(width // 5, width - width // 5)
    bands = {"head": (0.0, 0.2), "tops": (0.2, 0.55), "pants": (0.55, 0.95)}
    for name, (top, bottom) in bands.items():
        value = 1 << MASK_BITS[name] | 1 << MASK_BITS["silhouette"]
        if name != "head":
            value |= 1 << MASK_BITS["clothes"]
        bits[int(top * height):int(bottom * height), column] = value
    return bits


def make_loader(pipeline: str, augment_on: str, samples: list[Sample], masks: Path, args: Args, workers: int):
    """The pipeline's DataLoader (with --augment-on device, the one inside `DeviceAugmented`: the workers' part only)."""
    transform = (DeferredTrainTransform if augment_on == "device" else TrainTransform)(args.height, args.width)
    loader = _make_loader(pipeline, transform, samples, masks, args, workers)
    return loader.loader if isinstance(loader, DeviceAugmented) else loader


def _make_loader(pipeline: str, transform: TrainTransform, samples: list[Sample], masks: Path, args: Args,
                 workers: int):
    device = torch.device("cpu")
    if pipeline == "eval":
        return eval_loader(samples, args.height, args.width, args.batch_size, workers)
    if pipeline == "tad":
        loader, _ = tad_loader(TADPairs(samples, transform, "ltcc", args.seed, 0), args.batch_size, workers, args.seed, 0, 1, device)
        return loader
    sampler = PKSampler([s.pid for s in samples], batch_size=args.batch_size, num_instances=4, seed=args.seed)
    if pipeline == "cap":
        recolouring = Recolouring(masks, num_original_clothes=max(s.clothes_id for s in samples) + 1)
        return train_loader(AttributedTrainImages(samples, transform, args.seed, 0, recolouring), sampler, args.batch_size, workers,
                            device)
    return train_loader(TrainImages(samples, transform, args.seed, 0), sampler, args.batch_size, workers, device)


def items_per_second(loader, batches: int, batch_size: int) -> float:
    """Items/s over `batches` batches, after one untimed batch (worker start-up); loops over epochs if needed."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(loader)
            next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def needed_rates(train_json: Path | None) -> tuple[dict[str, float], str]:
    """Items/s each pipeline must deliver to one GPU, and where the figure comes from."""
    if train_json is None:
        return ({k: ANCHOR_IMAGES_PER_S / n for k, n in NETWORK_IMAGES_PER_ITEM.items()},
                f"an assumed {ANCHOR_IMAGES_PER_S:.0f} images/s (a planning figure for the bf16 CAL step on one GPU, not measured)")
    results = json.loads(train_json.read_text())["results"]
    # bench_train's CAP batches have no recoloured copies: with masks each item is two network images.
    rates = {"base": results["base"]["ours"]["images_per_s"], "cap": results["cap"]["ours"]["images_per_s"] / 2,
             "tad": results["tad"]["ours"]["images_per_s"]}
    return rates, f"our measured steps ({train_json})"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:  # the crops and the results must not land on bench_train.py's results
        check_outputs_apart({"--json": args.json, "--folder": args.folder}, {"--train-json": args.train_json})
    except OptionError as error:
        sys.exit(f"error: {error}")
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} logical cores; torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        start = time.perf_counter()
        samples, masks = generate_crops(folder, args.crops, args.seed)
        print(f"generated {len(samples)} crops (heights 50-400, half JPEG, half PNG) in {time.perf_counter() - start:.0f} s; "
              f"output {args.height}x{args.width}, batch {args.batch_size}, {args.batches} timed batches\n")
        rates = {(p, a): {w: items_per_second(make_loader(p, a, samples, masks, args, w), args.batches, args.batch_size)
                          for w in args.workers}
                 for p in args.pipelines for a in (["workers"] if p == "eval" else args.augment_on)}

    need, source = needed_rates(args.train_json)
    print(f"{'pipeline':<9}{'augment on':>11}" + "".join(f"{f'{w} workers':>12}" for w in args.workers)
          + f"{'per worker':>12}{'need':>9}{'workers/GPU':>13}")
    report = {}
    for (pipeline, augment_on), by_workers in rates.items():
        per_worker = by_workers[min(by_workers)] / min(by_workers)
        needed = math.ceil(need[pipeline] / per_worker) if pipeline in need else None
        report[f"{pipeline} ({augment_on})"] = {"items_per_s": by_workers, "per_worker": per_worker, "need": need.get(pipeline),
                                               "workers": needed}
        print(f"{pipeline:<9}{augment_on:>11}" + "".join(f"{r:>12.0f}" for r in by_workers.values()) + f"{per_worker:>12.0f}"
              + (f"{need[pipeline]:>9.0f}{needed:>13d}" if needed else f"{'-':>9}{'-':>13}"))
    print(f"\nitems/s (cap: image + recoloured copy; tad: HQ + LQ pair). Need: {source}.")
    print("Workers/GPU assumes the per-worker rate of 1 worker holds on each further core.")
    over = [p for p, r in report.items() if r["workers"] and r["workers"] > 8]
    if over:
        print(f"more than 8 workers per GPU needed for: {', '.join(over)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"need_from": source, "pipelines": report}, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
