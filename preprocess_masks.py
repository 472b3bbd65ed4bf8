"""Clothes masks, faulty-mask lists and resolution buckets from human parsing.

For every image of the chosen splits, reads its SCHP parsing (a label-map PNG
or an H x W x 20 score-map `.npy`, LIP labels), and writes under `--output` (the
layout is documented in `rlq/masks.py`):

- `<Sample.key>.png`: bit-field masks (tops, pants, whole clothes, silhouette, head),
- `faulty_tops.txt`, `faulty_pants.txt`: images whose tops / pants mask is unusable,
- `sizes.csv`: the resolution bucket of every image (by height).

The parsing of image `<dataset root>/<rel>.<ext>` is `<parsing>/<rel>.png` or
`<parsing>/<rel>.npy`, e.g. `parsing/train/000_1_c1_000001.png` for
`LTCC_ReID/train/000_1_c1_000001.png`.

    python preprocess_masks.py --dataset ltcc --root /data/LTCC_ReID --parsing /data/schp/LTCC_ReID --output masks/ltcc
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from tqdm import tqdm

from rlq.data import DatasetLayoutError, Sample, format_table, load_dataset
from rlq.masks import (
    FAULTY_FILES,
    MAX_SECOND_PIECE_FRACTION,
    MIN_REGION_FRACTION,
    SIZE_BUCKETS,
    SIZE_HEADER,
    SIZES_FILE,
    MaskInputError,
    decode_masks,
    encode_masks,
    find_parsing,
    mask_path,
    parsing_candidates,
    read_parsing,
    region_is_faulty,
    size_bucket,
    size_csv_name,
    size_row,
    write_key_list,
    write_mask_png,
)
from rlq.files import die_with_parent, ends_cleanly, write_csv_atomic
from rlq.options import OptionError, at_least, between, check_outputs_apart, formerly, output_folder
from rlq.pose import image_size


@dataclass
class Args:
    """Turn human parsing (SCHP, LIP labels) into the clothes masks of the recolouring augmentation,
    the faulty-mask lists and the resolution-bucket CSV."""

    dataset: Literal["ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external"]
    """Which dataset layout to read."""
    parsing: Path
    """Parsing outputs mirroring the dataset folder: <parsing>/<rel>.png (LIP label map) or <parsing>/<rel>.npy (SCHP scores H x W x 20) for image <root>/<rel>.<ext>."""
    output: Annotated[Path, formerly("--out", "--output")]
    """Output folder: <key>.png bit-field masks, faulty_tops.txt, faulty_pants.txt, sizes.csv."""
    root: Path | None = None
    """Dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic datasets."""
    splits: tuple[str, ...] = ("train",)
    """Splits to process (e.g. train query gallery); the lists and sizes.csv cover exactly these."""
    workers: int = min(8, os.cpu_count() or 1)
    """Worker processes (1 = no pool)."""
    min_fraction: float = MIN_REGION_FRACTION
    """Faulty rule: a tops/pants region covering less than this fraction of the silhouette is faulty."""
    max_second_piece: float = MAX_SECOND_PIECE_FRACTION
    """Faulty rule: a region is faulty if a connected piece other than its largest holds this fraction of it."""


@dataclass(frozen=True)
class Job:
    image: str
    key: str
    parsing: Path
    mask: Path
    min_fraction: float
    max_second_piece: float


@dataclass(frozen=True)
class Result:
    key: str
    faulty: frozenset[str]  # which of "tops", "pants" are faulty
    height: int


def process(job: Job) -> Result:
    """Write one image's bit-field mask and judge its tops and pants."""
    try:
        bits = encode_masks(read_parsing(job.parsing))
    except MaskInputError as error:
        raise MaskInputError(f"image '{job.image}': {error}") from error
    write_mask_png(job.mask, bits)
    masks = decode_masks(bits)
    try:
        _, height = image_size(job.image)
    except OSError as error:
        raise MaskInputError(f"cannot read the image '{job.image}' (needed for its size bucket): {error}") from error
    silhouette = masks["silhouette"]
    faulty = frozenset(p for p in FAULTY_FILES if region_is_faulty(masks[p], silhouette, job.min_fraction, job.max_second_piece))
    return Result(job.key, faulty, height)


def make_jobs(args: Args, root: Path, samples: list[Sample]) -> list[Job]:
    """One job per image; every missing parsing file is reported at once, before any work."""
    jobs, missing = [], []
    for sample in samples:
        parsing = find_parsing(args.parsing, root, sample.path)
        if parsing is None:
            missing.append(sample)
            continue
        jobs.append(Job(sample.path, sample.key, parsing, mask_path(args.output, sample), args.min_fraction, args.max_second_piece))
    if missing:
        expected = [(s.path, *parsing_candidates(args.parsing, root, s.path)) for s in missing[:3]]
        first = "; ".join(f"image '{image}' -> expected '{png}' or '{npy}'" for image, png, npy in expected)
        raise MaskInputError(f"{len(missing)} of {len(samples)} images have no parsing file (first: {first})")
    return jobs


def run_jobs(jobs: list[Job], workers: int) -> list[Result]:
    progress = dict(total=len(jobs), desc="masks", unit="img")
    if workers <= 1:
        return [process(job) for job in tqdm(jobs, **progress)]
    with Pool(workers, initializer=die_with_parent) as pool:
        return list(tqdm(pool.imap(process, jobs, chunksize=16), **progress))


def main(args: Args) -> None:
    at_least(1, workers=args.workers)
    between("min_fraction", args.min_fraction, 0, 1)
    between("max_second_piece", args.max_second_piece, 0, 1)
    output_folder(args.output, "--output")
    check_outputs_apart({"--output": args.output}, {"--parsing": args.parsing, "--root": args.root})
    dataset = load_dataset(args.dataset, args.root)
    splits = list(dict.fromkeys(args.splits))  # a split named twice is processed once
    unknown = [s for s in splits if s not in dataset.splits]
    if unknown:
        known = ", ".join(dataset.splits)
        raise DatasetLayoutError(f"{dataset.name} has no split {', '.join(unknown)}: expected some of {known}")
    samples = [s for split in splits for s in dataset.splits[split]]
    results = run_jobs(make_jobs(args, dataset.root, samples), args.workers)

    for part, name in FAULTY_FILES.items():
        write_key_list(args.output / name, [r.key for r in results if part in r.faulty])
    rows = [size_row(*size_csv_name(dataset.name, dataset.root, s.path), r.height) for s, r in zip(samples, results)]
    write_csv_atomic(args.output / SIZES_FILE, SIZE_HEADER, rows)

    counts = [sum(part in r.faulty for r in results) for part in FAULTY_FILES] + [sum(bool(r.faulty) for r in results)]
    buckets = np.bincount([size_bucket(r.height) for r in results], minlength=len(SIZE_BUCKETS))
    print(format_table(["images", "faulty tops", "faulty pants", "either (one colour)"], [[len(results), *counts]]))
    print(format_table(["height", *SIZE_BUCKETS], [["images", *buckets]]))
    print(f"wrote {len(results)} masks, {', '.join(FAULTY_FILES.values())} and {SIZES_FILE} to {args.output}")


if __name__ == "__main__":
    import tyro

    with ends_cleanly():
        try:
            main(tyro.cli(Args))
        except (DatasetLayoutError, MaskInputError, OptionError) as error:
            sys.exit(f"error: {error}")
