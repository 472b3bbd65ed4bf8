"""What a model's features hold beyond retrieval scores: outfit information and robustness to low quality.

- `clothes_leakage`: among the gallery images of a query's own identity (those from the query's
  camera left out, as every protocol does), the probability that a same-outfit image is more
  similar to the query than an other-outfit one (an AUC over (query, same-outfit image,
  other-outfit image) triples; ties count half). 0.5: the feature holds no outfit information
  beyond identity; 1: the outfit decides. CAL exists to bring f1 towards 0.5.
- `lq_consistency`: mean cosine between every test image's retrieval feature and that of its
  degraded copy. TAD exists to raise it.

Both work on the flip-summed, L2-normalised features of `rlq.evaluation`; f1 and f2 are the two
halves of a two-branch model's retrieval feature, each renormalised (the same as flip-summing
and normalising each branch on its own).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rlq.data import Evaluation, ReIDDataset, Sample


def branch_features(features: torch.Tensor, branch_dim: int) -> dict[str, torch.Tensor]:
    """{"f1", "f2", "feature"} views of retrieval features [N, D]: D = 2 * branch_dim is a two-branch
    model's concat(f1, f2); D = branch_dim a one-feature (vanilla CAL) model, whose f1 is the feature."""
    if features.shape[1] == branch_dim:
        return {"f1": features, "feature": features}
    if features.shape[1] != 2 * branch_dim:
        raise ValueError(f"features of width {features.shape[1]} are neither one nor two branches of {branch_dim}")
    return {"f1": F.normalize(features[:, :branch_dim], dim=1), "f2": F.normalize(features[:, branch_dim:], dim=1),
            "feature": features}


def _pairs_ranked_above(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Number of (positive, negative) pairs with positive > negative, ties counting half."""
    negatives = np.sort(negatives)
    below = np.searchsorted(negatives, positives, side="left")
    not_above = np.searchsorted(negatives, positives, side="right")
    return float(below.sum() + 0.5 * (not_above - below).sum())


def _labels(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pids, camera ids, clothes ids) of samples as arrays."""
    return (np.array([s.pid for s in samples]), np.array([s.camid for s in samples]),
            np.array([s.clothes_id for s in samples]))


def _indices_by_value(values: np.ndarray) -> dict[int, np.ndarray]:
    """{value: indices holding it, ascending}; one sort, not one scan of the gallery per identity."""
    order = np.argsort(values, kind="stable")
    distinct, starts = np.unique(values[order], return_index=True)
    return {int(v): group for v, group in zip(distinct, np.split(order, starts[1:]))}


def clothes_leakage(query: torch.Tensor, gallery: torch.Tensor, query_samples: list[Sample],
                    gallery_samples: list[Sample]) -> float | None:
    """AUC that a same-outfit gallery image of the query's identity beats an other-outfit one (None: no such triple).

    `query` and `gallery` are L2-normalised features [Nq, D], [Ng, D] in the order of the samples.
    Gallery images of the query's identity from the query's camera are left out.
    """
    # In numpy: picking a query's candidate rows costs microseconds, a torch tensor index milliseconds.
    query, gallery = query.double().numpy(), gallery.double().numpy()
    g_pid, g_cam, g_clothes = _labels(gallery_samples)
    by_pid = _indices_by_value(g_pid)
    wins, pairs = 0.0, 0
    for qi, q in enumerate(query_samples):
        candidates = by_pid.get(q.pid)
        if candidates is None:
            continue
        candidates = candidates[g_cam[candidates] != q.camid]
        same_outfit = g_clothes[candidates] == q.clothes_id
        n_pos, n_neg = int(same_outfit.sum()), int((~same_outfit).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        similarity = gallery[candidates] @ query[qi]
        wins += _pairs_ranked_above(similarity[same_outfit], similarity[~same_outfit])
        pairs += n_pos * n_neg
    return wins / pairs if pairs else None


def leakage_splits(evaluations: list[Evaluation]) -> tuple[list[str], str]:
    """The query splits of the evaluations (each once) and their gallery split."""
    queries = list(dict.fromkeys(e.query_split for e in evaluations))
    galleries = {e.gallery_split for e in evaluations}
    if len(galleries) != 1:
        raise ValueError(f"evaluations {[e.name for e in evaluations]} use several galleries {sorted(galleries)}")
    return queries, galleries.pop()


def evaluations_clothes_leakage(splits: dict[str, list[Sample]], evaluations: list[Evaluation],
                                features: dict[str, torch.Tensor], branch_dim: int) -> dict[str, float | None] | None:
    """{"f1", "f2", "feature"}: clothes leakage of each view over the evaluations' query splits against their gallery
    (None: no query has both a same-outfit and an other-outfit gallery image of its identity, e.g. no outfit labels)."""
    query_splits, gallery_split = leakage_splits(evaluations)
    query_samples = [s for name in query_splits for s in splits[name]]
    query_views = branch_features(torch.cat([features[name] for name in query_splits]), branch_dim)
    gallery_views = branch_features(features[gallery_split], branch_dim)
    leakage = {view: clothes_leakage(query_views[view], gallery_views[view], query_samples, splits[gallery_split])
               for view in query_views}
    if all(v is None for v in leakage.values()):
        return None
    return leakage


def dataset_clothes_leakage(dataset: ReIDDataset, features: dict[str, torch.Tensor],
                            branch_dim: int) -> dict[str, float | None] | None:
    """`evaluations_clothes_leakage` of the dataset's test evaluations."""
    return evaluations_clothes_leakage(dataset.splits, dataset.evaluations, features, branch_dim)


def chance_top1(query_samples: list[Sample], gallery_samples: list[Sample], protocol: str) -> float:
    """Expected top-1 of a ranking in random order under `protocol` (the definitions of `rlq.metrics`).

    Junk is removed, which leaves a query's good items and every item of other identities, so a random
    ranking puts a good item first with probability #good / (#good + #others); averaged over the queries
    that have a good item.
    """
    g_pid, g_cam, g_clothes = _labels(gallery_samples)
    rates = []
    for q in query_samples:
        same, other_view = g_pid == q.pid, g_cam != q.camid
        good = same & other_view
        if protocol == "cc":
            good &= g_clothes != q.clothes_id
        elif protocol == "sc":
            good &= g_clothes == q.clothes_id
        elif protocol != "standard":
            raise ValueError(f"protocol must be standard, cc or sc, got {protocol!r}")
        if good.any():
            rates.append(good.sum() / (good.sum() + (~same).sum()))
    if not rates:
        raise ValueError(f"no query has a good gallery item under the {protocol} protocol")
    return float(np.mean(rates))


def lq_consistency(clean: dict[str, torch.Tensor], degraded: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """{kind: mean cosine between each image's clean and degraded retrieval feature}, over every split given."""
    result = {}
    for kind, splits in degraded.items():
        cosines = torch.cat([(F.normalize(clean[name].double(), dim=1) * F.normalize(feats.double(), dim=1)).sum(1)
                             for name, feats in splits.items()])
        result[kind] = float(cosines.mean())
    return result


def diagnostics_text(diagnostics: dict) -> str:
    """One line per diagnostic, for logs."""
    lines = []
    leakage = diagnostics.get("clothes_leakage")
    if leakage is None:
        lines.append("clothes leakage: none (no query has both same- and other-outfit gallery images of its identity)")
    else:
        lines.append("clothes leakage (0.5 = no outfit information): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in leakage.items() if v is not None))
    if diagnostics.get("lq_consistency"):
        lines.append("LQ consistency (mean cosine clean vs degraded): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in diagnostics["lq_consistency"].items()))
    return "\n".join(lines)
