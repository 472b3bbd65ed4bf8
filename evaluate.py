"""Evaluate a checkpoint of this project on a dataset's retrieval protocols.

Rebuilds the model from the checkpoint's stored architecture and class counts,
extracts flip-summed, L2-normalised features (sharded over processes when
launched with `accelerate launch`) and runs every protocol of the dataset
(LTCC: standard, CC, SC; PRCC: SC = B vs A, CC = C vs A; others: standard).

    python evaluate.py --checkpoint runs/base-ltcc/best.pt --dataset ltcc --root /data/LTCC_ReID --json metrics.json
    accelerate launch --multi_gpu --num_processes 2 evaluate.py --checkpoint runs/base-ltcc/best.pt --root /data/LTCC_ReID
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from PIL import Image, ImageOps

from rlq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from rlq.data import DatasetLayoutError, Evaluation, Sample, load_dataset
from rlq.evaluation import results_table, run_evaluation, split_features
from rlq.launch import LaunchError, check_launch
from rlq.transforms import load_image


@dataclass
class Args:
    """Evaluate a checkpoint written by train_base.py (or the other training scripts)."""

    checkpoint: Path
    """best.pt / last.pt of a run."""
    dataset: Literal["ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external"] | None = None
    """Dataset to evaluate on (default: the one the checkpoint was trained on)."""
    root: Path | None = None
    """Dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic datasets."""
    batch_size: int = 128
    """Images per process per batch."""
    num_workers: int = 4
    """Data-loader worker processes per process."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision of the feature extraction (features are summed and normalised in float32)."""
    json: Path | None = None
    """Write the metrics (fractions in [0, 1]) to this JSON file."""
    save_features: Path | None = None
    """Write every evaluated split's features, pids, camids, clothes ids and image paths (torch.save) here."""
    visualize: int = 0
    """Write ranking images of this many queries (top-10 gallery, green = same identity, red = another)."""
    visualize_dir: Path = Path("visualize")
    """Folder of the --visualize PNGs."""


def save_features(path: Path, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor]) -> None:
    """{split: {features, pids, camids, clothes, paths}}, every image of every evaluated split, in dataset order."""
    dump = {}
    for name, feats in features.items():
        samples = splits[name]
        dump[name] = {
            "features": feats,
            "pids": torch.tensor([s.pid for s in samples]),
            "camids": torch.tensor([s.camid for s in samples]),
            "clothes": torch.tensor([s.clothes_id for s in samples]),
            "paths": [s.path for s in samples],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dump, path)


def _framed(path: str, colour: tuple[int, int, int], size: tuple[int, int] = (64, 128), border: int = 4) -> Image.Image:
    return ImageOps.expand(load_image(path).resize(size), border=border, fill=colour)


def visualize(evaluation: Evaluation, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor], count: int, out: Path) -> None:
    """One PNG per query: the query (blue frame) and its top-10 gallery images, green = same identity, red = another.

    Gallery images of the query's identity from the query's camera are left out,
    as every protocol drops them from the ranking.
    """
    query, gallery = splits[evaluation.query_split], splits[evaluation.gallery_split]
    similarity = features[evaluation.query_split] @ features[evaluation.gallery_split].T
    gallery_pids = torch.tensor([s.pid for s in gallery])
    gallery_cams = torch.tensor([s.camid for s in gallery])
    out.mkdir(parents=True, exist_ok=True)
    for qi in torch.linspace(0, len(query) - 1, min(count, len(query))).round().long().tolist():
        q = query[qi]
        same_view = (gallery_pids == q.pid) & (gallery_cams == q.camid)
        ranked = similarity[qi].masked_fill(same_view, float("-inf")).topk(min(10, len(gallery))).indices.tolist()
        tiles = [_framed(q.path, (0, 0, 255))]
        tiles += [_framed(gallery[g].path, (0, 160, 0) if gallery[g].pid == q.pid else (220, 0, 0)) for g in ranked]
        sheet = Image.new("RGB", (sum(t.width + 8 for t in tiles), tiles[0].height), "white")
        for i, tile in enumerate(tiles):
            sheet.paste(tile, (i * (tile.width + 8) + (8 if i else 0), 0))
        sheet.save(out / f"{evaluation.name}_query{qi:05d}.png")


def main(args: Args) -> dict[str, dict]:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    check_launch(accelerator)
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint).to(accelerator.device, memory_format=torch.channels_last)
    dataset = load_dataset(args.dataset or checkpoint["dataset"], args.root)
    height, width = checkpoint["input_size"]
    features = split_features(model, dataset.splits, dataset.evaluations, accelerator,
                              height=height, width=width, batch_size=args.batch_size, num_workers=args.num_workers)
    if not accelerator.is_main_process:
        return {}
    results = {e.name: run_evaluation(e, dataset.splits, features) for e in dataset.evaluations}
    print(f"{args.checkpoint} on {dataset.name} ({dataset.root}):\n{results_table(results)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.save_features is not None:
        save_features(args.save_features, dataset.splits, features)
    if args.visualize > 0:
        headline = next(e for e in dataset.evaluations if e.name == dataset.headline)
        visualize(headline, dataset.splits, features, args.visualize, args.visualize_dir)
    return results


if __name__ == "__main__":
    import tyro

    try:
        main(tyro.cli(Args))
    except (CheckpointError, DatasetLayoutError, LaunchError) as error:
        sys.exit(f"error: {error}")
