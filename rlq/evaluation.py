"""Multi-process feature extraction and a dataset's retrieval evaluations.

Every process extracts features for its shard of a split (Accelerate splits the
batches); features and sample indices are gathered with padding removed and put
back in dataset order, so every process ends with the same [N, D] matrix. The
ranking itself (`rlq.metrics.evaluate`) runs on the main process only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from rlq.data import Evaluation, Sample, format_table
from rlq.launch import memory_format
from rlq.loaders import eval_loader
from rlq.metrics import NoValidQuery, evaluate
from rlq.rerank import rerank

METRIC_COLUMNS = ("top1", "top5", "top10", "top20", "mAP", "mINP")


def extract_features(
    model: torch.nn.Module,
    samples: list[Sample],
    accelerator: Accelerator,
    *,
    height: int,
    width: int,
    batch_size: int,
    num_workers: int,
    degrade: Callable[[Image.Image, int], Image.Image] | None = None,
) -> torch.Tensor:
    """Flip-summed, L2-normalised retrieval features [N, D] (float32, CPU) of `samples`, in their order.

    `degrade(image, index)`, if given, turns every image into a low-quality copy first (`rlq.lowquality`).

    `model` is the bare model (not DDP-wrapped); it is put in eval mode for the
    extraction and back into its previous mode afterwards.
    """
    return loader_features(model, eval_loader(samples, height, width, batch_size, num_workers, degrade), accelerator)


@torch.no_grad()
def loader_features(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, flip: bool = True) -> torch.Tensor:
    """`extract_features` of the (images [B, 3, H, W], indices [B]) batches of an evaluation loader, in index order
    (`flip=False`: each image's feature alone, without its mirror image's)."""
    num_images = len(loader.dataset)
    loader = accelerator.prepare_data_loader(loader)
    was_training = model.training
    model.eval()
    features, indices = [], []
    for images, index in tqdm(loader, desc="features", unit="batch", disable=not accelerator.is_main_process, leave=False):
        images = images.to(accelerator.device, memory_format=memory_format(accelerator.device))
        with accelerator.autocast():
            batch_features = model.retrieval_features(images, flip)
        batch_features, index = accelerator.gather_for_metrics((batch_features, index.to(accelerator.device)))
        features.append(batch_features.float().cpu())
        indices.append(index.cpu())
    model.train(was_training)
    return _in_dataset_order(torch.cat(features), torch.cat(indices), num_images)


def _in_dataset_order(features: torch.Tensor, indices: torch.Tensor, num_samples: int) -> torch.Tensor:
    counts = torch.bincount(indices, minlength=num_samples)
    if len(indices) != num_samples or not torch.all(counts == 1):
        raise RuntimeError(
            f"gathered {len(indices)} features for {num_samples} images, "
            f"{int((counts == 0).sum())} images missing and {int((counts > 1).sum())} repeated"
        )
    ordered = torch.empty_like(features)
    ordered[indices] = features
    return ordered


def split_features(
    model: torch.nn.Module,
    splits: dict[str, list[Sample]],
    evaluations: list[Evaluation],
    accelerator: Accelerator,
    **loader_options,
) -> dict[str, torch.Tensor]:
    """Features of every split the evaluations use, each extracted once."""
    names = dict.fromkeys(name for e in evaluations for name in (e.query_split, e.gallery_split))
    return {name: extract_features(model, splits[name], accelerator, **loader_options) for name in names}


def _labels(samples: list[Sample], field: str) -> torch.Tensor:
    return torch.tensor([getattr(s, field) for s in samples], dtype=torch.long)


def run_evaluation(evaluation: Evaluation, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor],
                   similarity: Callable[[slice], torch.Tensor] | None = None) -> dict:
    """Metrics of one protocol run (fractions in [0, 1], query counts); `similarity` replaces the cosine ranking."""
    query, gallery = splits[evaluation.query_split], splits[evaluation.gallery_split]
    return evaluate(
        features[evaluation.query_split],
        features[evaluation.gallery_split],
        _labels(query, "pid"),
        _labels(gallery, "pid"),
        _labels(query, "camid"),
        _labels(gallery, "camid"),
        _labels(query, "clothes_id"),
        _labels(gallery, "clothes_id"),
        protocol=evaluation.protocol,
        similarity=similarity,
    )


def run_reranked(evaluation: Evaluation, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor],
                 device: torch.device, **rerank_options) -> dict:
    """`run_evaluation` ranked by k-reciprocal re-ranking (`rlq.rerank`) on `device`."""
    names = (evaluation.query_split, evaluation.gallery_split)
    on_device = {name: features[name].to(device) for name in names}
    reranking = rerank(*(on_device[name] for name in names), **rerank_options)
    return run_evaluation(evaluation, splits, on_device, similarity=reranking.similarities)


SINGLE_SHOT_DRAWS = 10


def single_shot_gallery(gallery: list[Sample], draw: int) -> np.ndarray:
    """Sorted indices of one gallery image per identity, drawn with the fixed seed `draw`."""
    pids = np.array([s.pid for s in gallery])
    rng = np.random.default_rng([20251130, draw])
    return np.sort([rng.choice(np.flatnonzero(pids == pid)) for pid in np.unique(pids)])


def run_single_shot(evaluation: Evaluation, splits: dict[str, list[Sample]], features: dict[str, torch.Tensor],
                    draws: int = SINGLE_SHOT_DRAWS) -> dict:
    """`run_evaluation` against single-shot galleries (one random image per identity), averaged over `draws`
    fixed draws (PRCC's other convention; the whole gallery is CAL's and RLQ's)."""
    name = evaluation.gallery_split
    runs = []
    for draw in range(draws):
        chosen = single_shot_gallery(splits[name], draw)
        runs.append(run_evaluation(evaluation, splits | {name: [splits[name][i] for i in chosen]},
                                   features | {name: features[name][torch.from_numpy(chosen)]}))
    # Everything is averaged, the query counts too: on PRCC they are the same in every draw (the gallery is
    # camera A, the queries B or C), elsewhere a query can lack a valid match in some draws.
    return {k: sum(r[k] for r in runs) / draws for k in runs[0]}


# What a query needs in the gallery to count, per protocol (the junk and good rules of rlq.metrics).
GOOD_MATCH = {"standard": "an image of its identity from another camera",
              "cc": "an image of its identity from another camera in other clothes",
              "sc": "an image of its identity from another camera in the same clothes"}


def run_protocols(evaluations: list[Evaluation], splits: dict[str, list[Sample]],
                  run_one: Callable[[Evaluation], dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """({name: metrics} of the protocols that have a valid query, {name: one line saying why it has none})."""
    results, missing = {}, {}
    for evaluation in evaluations:
        try:
            results[evaluation.name] = run_one(evaluation)
        except NoValidQuery:
            missing[evaluation.name] = (f"{evaluation.name}: no valid query: none of the {len(splits[evaluation.query_split])} "
                                        f"{evaluation.query_split} images has {GOOD_MATCH[evaluation.protocol]} in "
                                        f"{evaluation.gallery_split}, so this protocol measures nothing here")
    return results, missing


def evaluate_model(
    model: torch.nn.Module,
    splits: dict[str, list[Sample]],
    evaluations: list[Evaluation],
    accelerator: Accelerator,
    **loader_options,
) -> tuple[dict[str, dict], dict[str, torch.Tensor], dict[str, str]]:
    """Run every evaluation: all processes extract, the main process ranks.

    Returns ({evaluation name: metrics}, {split: features}, {evaluation name: why it has no valid query}): the
    metrics of the protocols with a valid query on the main process ({} on the others), and the features on every
    process, for whatever else is measured on them.
    """
    features = split_features(model, splits, evaluations, accelerator, **loader_options)
    if not accelerator.is_main_process:
        return {}, features, {}
    results, missing = run_protocols(evaluations, splits, lambda e: run_evaluation(e, splits, features))
    return results, features, missing


def headline_key(results: dict[str, dict], headline: str) -> tuple[float, float]:
    """(top-1, mAP) of the headline evaluation, both from the same run: compare tuples to pick the best."""
    return results[headline]["top1"], results[headline]["mAP"]


def results_table(results: dict[str, dict]) -> str:
    """Metrics in percent with one decimal, plus valid / all queries."""
    rows = []
    for name, m in results.items():
        total = m["num_valid_queries"] + m["num_skipped_queries"]
        rows.append([name, *(f"{100 * m[c]:.1f}" for c in METRIC_COLUMNS), f"{m['num_valid_queries']:g}/{total:g}"])
    return format_table(["protocol", "top-1", "top-5", "top-10", "top-20", "mAP", "mINP", "valid queries"], rows)
