"""Evaluate a checkpoint of this project on a dataset's retrieval protocols.

Rebuilds the model from the checkpoint's stored architecture and class counts,
extracts flip-summed, L2-normalised features (sharded over processes when
launched with `accelerate launch`) and runs every protocol of the dataset
(LTCC: standard, CC, SC; PRCC: SC = B vs A, CC = C vs A; others: standard).

    python evaluate.py --checkpoint runs/base-ltcc/best.pt --dataset ltcc --root /data/LTCC_ReID --json metrics.json
    accelerate launch --multi_gpu --num_processes 2 evaluate.py --checkpoint runs/base-ltcc/best.pt --root /data/LTCC_ReID

The authors' released .pth.tar checkpoints load as they are (`rlq.authors`); they do not
record their dataset, so pass --dataset. So do the folders of `python -m rlq.export --format
safetensors` (`rlq.checkpoint.load_exported`). With --query-dir and --gallery-dir it ranks two
folders of unlabelled images instead (`rlq.ranking`): every query's top-k gallery images
with their similarities, as ranking.csv and one PNG per query.

    python evaluate.py --checkpoint rlq_ltcc.pth.tar --query-dir my/queries --gallery-dir my/gallery --ranking-dir ranking

On a dataset it also prints and returns (JSON key "diagnostics") the clothes leakage of f1, f2 and
the whole feature and, with --degrade, how close each degraded feature stays to its clean one (`rlq.diagnostics`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator

from rlq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from rlq.data import DatasetLayoutError, Evaluation, Sample, load_dataset
from rlq.diagnostics import dataset_clothes_leakage, diagnostics_text, lq_consistency
from rlq.evaluation import results_table, run_evaluation, run_protocols, run_reranked, run_single_shot, split_features
from rlq.files import ends_cleanly
from rlq.launch import LaunchError, check_launch, memory_format, mixed_precision
from rlq.lowquality import SizeBucketError, degraded_features, low_quality_report, lq_sample_sheet
from rlq.options import OptionError, at_least, between, check_outputs_apart, output_file, output_folder
from rlq.ranking import OTHER_IDENTITY_COLOUR, SAME_IDENTITY_COLOUR, RankingError, rank_folders, ranking_strip
from rlq.rerank import RerankMemoryError
from rlq.training import check_images


@dataclass
class Args:
    """Evaluate a checkpoint (of the training scripts, or the authors') on a dataset, or rank one image folder against another."""

    checkpoint: Path
    """best.pt / last.pt of a run, one of the authors' released .pth.tar checkpoints, or a folder written by
    python -m rlq.export --format safetensors."""
    dataset: Literal["ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external"] | None = None
    """Dataset to evaluate on (default: the one the checkpoint was trained on; required for the authors' checkpoints)."""
    root: Path | None = None
    """Dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic datasets."""
    batch_size: int = 128
    """Images per process per batch."""
    num_workers: int = 4
    """Data-loader worker processes per process."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision of the feature extraction (features are summed and normalised in float32);
    auto: bf16 on a GPU that has it, else fp32."""
    gallery_protocol: Literal["all", "single-shot"] = "all"
    """PRCC's two conventions: the whole gallery (CAL's and RLQ's published numbers), or single-shot: one random
    gallery image per identity, every metric averaged over 10 fixed draws (about 20 mAP points apart on PRCC)."""
    rerank: bool = False
    """Also rank with k-reciprocal re-ranking (Zhong et al. 2017) in bounded memory, printed beside the plain metrics
    (against the whole gallery; on the GPU when there is one)."""
    rerank_k1: int = 20
    """Re-ranking: neighbours of the k-reciprocal sets."""
    rerank_k2: int = 6
    """Re-ranking: neighbours of the local query expansion (1: none)."""
    rerank_lambda: float = 0.3
    """Re-ranking: weight of the original distance against the Jaccard distance."""
    json: Path | None = None
    """Write the metrics (fractions in [0, 1]) to this JSON file."""
    save_features: Path | None = None
    """Write every evaluated split's features, pids, camids, clothes ids and image paths (torch.save) here
    (with --query-dir: the query and gallery features and image paths)."""
    visualize: int = 0
    """Write ranking images of this many queries (top-k gallery, green = same identity, red = another)."""
    visualize_dir: Path = Path("visualize")
    """Folder of the --visualize PNGs."""
    degrade: tuple[Literal["pixelate", "motion", "gaussian", "mix"], ...] = ()
    """Also evaluate with all query and gallery images degraded (fixed per image; mix = the dataset's mix); prints clean vs each."""
    size_buckets: Path | None = None
    """Size CSV (Category,Image,<32,32-64,64-128,128-256,>256; authors' or preprocess_masks.py's): metrics per query-size bucket."""
    lq_samples: int = 0
    """Write a sheet of this many query images, each as HQ, pixelation, motion blur and Gaussian blur (to --lq-samples-path)."""
    lq_samples_path: Path = Path("lq_samples.png")
    """PNG of the --lq-samples sheet."""
    query_dir: Path | None = None
    """Rank the images under this folder (recursively; no labels needed) against --gallery-dir's, instead of evaluating a dataset."""
    gallery_dir: Path | None = None
    """The gallery folder of --query-dir."""
    top_k: int = 10
    """Gallery images per query in the --query-dir ranking (CSV and PNGs) and in the --visualize PNGs."""
    ranking_dir: Path = Path("ranking")
    """Folder of the --query-dir ranking: ranking.csv (query,rank,gallery,similarity) and one PNG per query."""
    check_images: bool = True
    """Decode every evaluated image before extracting features and stop with the list of unreadable ones."""


def check_args(args: Args) -> None:
    """Option values and output paths this run can use, checked before the model is loaded."""
    at_least(1, batch_size=args.batch_size, top_k=args.top_k, rerank_k1=args.rerank_k1, rerank_k2=args.rerank_k2)
    at_least(0, num_workers=args.num_workers, visualize=args.visualize, lq_samples=args.lq_samples)
    between("rerank_lambda", args.rerank_lambda, 0, 1)
    output_file(args.json, "--json")
    output_file(args.save_features, "--save-features")
    output_file(args.lq_samples_path if args.lq_samples else None, "--lq-samples-path")
    output_folder(args.visualize_dir if args.visualize else None, "--visualize-dir")
    output_folder(args.ranking_dir if args.query_dir is not None else None, "--ranking-dir")
    check_outputs_apart(outputs(args), {"--checkpoint": args.checkpoint, "--root": args.root, "--size-buckets": args.size_buckets,
                                        "--query-dir": args.query_dir, "--gallery-dir": args.gallery_dir})


def outputs(args: Args) -> dict[str, Path | None]:
    """What this run writes: the folders only when their option turns them on (a ranking folder inside --query-dir
    would have its PNGs ranked by the next run)."""
    return {"--json": args.json, "--save-features": args.save_features,
            "--visualize-dir": args.visualize_dir if args.visualize else None,
            "--lq-samples-path": args.lq_samples_path if args.lq_samples else None,
            "--ranking-dir": args.ranking_dir if args.query_dir is not None else None}


def check_finite_features(features: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """A model with diverged weights gives NaN or infinite features: say so instead of failing in the ranking."""
    for split, feats in features.items():
        bad = int((~torch.isfinite(feats).all(dim=1)).sum())
        if bad:
            raise CheckpointError(f"checkpoint '{checkpoint}' gives non-finite features for {bad} of {len(feats)} {split} images: "
                                  "its weights have diverged (a NaN or exploding run); evaluate an earlier checkpoint")


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


def visualize(evaluation: Evaluation, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor], count: int, top_k: int,
              out: Path) -> None:
    """One PNG per query: the query (blue frame) and its top-k gallery images, green = same identity, red = another.

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
        scores, ranked = similarity[qi].masked_fill(same_view, float("-inf")).topk(min(top_k, len(gallery)))
        colours = [SAME_IDENTITY_COLOUR if gallery[g].pid == q.pid else OTHER_IDENTITY_COLOUR for g in ranked.tolist()]
        strip = ranking_strip(q.path, [gallery[g].path for g in ranked.tolist()], scores.tolist(), colours)
        strip.save(out / f"{evaluation.name}_query{qi:05d}.png")


def rank_query_dir(args: Args, checkpoint: dict, model: torch.nn.Module, accelerator: Accelerator) -> None:
    """--query-dir against --gallery-dir at the checkpoint's input size (`rlq.ranking.rank_folders`)."""
    if args.query_dir is None or args.gallery_dir is None:
        raise RankingError("--query-dir and --gallery-dir go together")
    height, width = checkpoint["input_size"]
    ranking = rank_folders(model, args.query_dir, args.gallery_dir, accelerator, top_k=args.top_k, out=args.ranking_dir,
                           save_features=args.save_features, height=height, width=width, batch_size=args.batch_size,
                           num_workers=args.num_workers)
    if ranking is not None:
        print(f"ranked {len(ranking.gallery_paths)} gallery images for {len(ranking.query_paths)} queries: "
              f"{args.ranking_dir / 'ranking.csv'} and one PNG per query in {args.ranking_dir}")


def dataset_name(args: Args, checkpoint: dict) -> str:
    name = args.dataset or checkpoint["dataset"]
    if name is None:
        raise CheckpointError(f"'{args.checkpoint}' does not record the dataset it was trained on (the authors' checkpoints "
                              "do not): pass --dataset")
    return name


def main(args: Args) -> dict[str, dict]:
    """The metrics of every protocol, plus "diagnostics" (and "degraded", "size_buckets" when asked for), on the
    main process; {} on the others and when ranking --query-dir."""
    check_args(args)
    accelerator = Accelerator(mixed_precision=mixed_precision(args.mixed_precision))
    check_launch(accelerator)
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint).to(accelerator.device, memory_format=memory_format(accelerator.device))
    if args.query_dir is not None or args.gallery_dir is not None:
        rank_query_dir(args, checkpoint, model, accelerator)
        return {}
    dataset = load_dataset(dataset_name(args, checkpoint), args.root)
    evaluated = dict.fromkeys(split for e in dataset.evaluations for split in (e.query_split, e.gallery_split))
    check_images([s for split in evaluated for s in dataset.splits[split]], accelerator, args.check_images)
    height, width = checkpoint["input_size"]
    features = split_features(model, dataset.splits, dataset.evaluations, accelerator,
                              height=height, width=width, batch_size=args.batch_size, num_workers=args.num_workers)
    check_finite_features(features, args.checkpoint)
    degraded = degraded_features(model, dataset, args.degrade, accelerator,
                                 height=height, width=width, batch_size=args.batch_size, num_workers=args.num_workers)
    if not accelerator.is_main_process:
        return {}
    run = run_single_shot if args.gallery_protocol == "single-shot" else run_evaluation
    results, missing = run_protocols(dataset.evaluations, dataset.splits, lambda e: run(e, dataset.splits, features))
    if not results:
        raise DatasetLayoutError(f"no protocol of {dataset.name} ({dataset.root}) has a valid query: "
                                 + "; ".join(missing.values()))
    print(f"{args.checkpoint} on {dataset.name} ({dataset.root}), {args.gallery_protocol} gallery:\n{results_table(results)}"
          + "".join(f"\n{line}" for line in missing.values()))
    # From here on only the protocols that measure something (degraded, per size bucket, re-ranked, diagnostics).
    dataset = dataclasses.replace(dataset, evaluations=[e for e in dataset.evaluations if e.name in results],
                                  headline=dataset.headline if dataset.headline in results else next(iter(results)))
    if args.rerank:
        options = dict(k1=args.rerank_k1, k2=args.rerank_k2, lambda_value=args.rerank_lambda)
        reranked = {e.name: run_reranked(e, dataset.splits, features, accelerator.device, **options) for e in dataset.evaluations}
        print(f"re-ranked (k-reciprocal, k1 {args.rerank_k1}, k2 {args.rerank_k2}, lambda {args.rerank_lambda}):\n"
              f"{results_table(reranked)}")
    extra, text = low_quality_report(dataset, results, features, degraded, args.size_buckets)
    if text:
        print(text)
    results |= extra  # "degraded" and "size_buckets", when asked for
    if args.rerank:
        results["reranked"] = reranked
    if missing:
        results["no_valid_query"] = missing
    diagnostics = {"clothes_leakage": dataset_clothes_leakage(dataset, features, model.feature_dim),
                   "lq_consistency": lq_consistency(features, degraded)}
    print(diagnostics_text(diagnostics))
    results["diagnostics"] = diagnostics
    if args.lq_samples > 0:
        query = dataset.splits[dataset.evaluations[0].query_split]
        print(f"wrote {lq_sample_sheet(query, dataset.name, args.lq_samples, args.lq_samples_path)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.save_features is not None:
        save_features(args.save_features, dataset.splits, features)
    if args.visualize > 0:
        headline = next(e for e in dataset.evaluations if e.name == dataset.headline)
        visualize(headline, dataset.splits, features, args.visualize, args.top_k, args.visualize_dir)
    return results


if __name__ == "__main__":
    import tyro

    with ends_cleanly():
        try:
            main(tyro.cli(Args))
        except (CheckpointError, DatasetLayoutError, LaunchError, OptionError, RankingError, RerankMemoryError, SizeBucketError) as error:
            sys.exit(f"error: {error}")
