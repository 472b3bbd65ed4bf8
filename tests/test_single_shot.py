"""PRCC's single-shot gallery protocol: one random gallery image per identity, averaged over fixed draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlq.data import Evaluation, Sample
from rlq.evaluation import SINGLE_SHOT_DRAWS, run_evaluation, run_single_shot, single_shot_gallery
from rlq.metrics import evaluate


def _problem(seed: int = 0):
    """PRCC-like: gallery from camera 0 (several images per identity), queries from camera 2."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 16))

    def samples(n: int, camid: int) -> tuple[list[Sample], torch.Tensor]:
        pids = rng.integers(0, 12, n)
        pids[:12] = np.arange(12)  # every identity present
        feats = centres[pids] + 1.2 * rng.normal(size=(n, 16))
        made = [Sample(f"{camid}_{i}.jpg", int(p), camid, int(p) * 3 + camid, f"{camid}_{i}", str(p)) for i, p in enumerate(pids)]
        return made, torch.from_numpy(feats).float()

    gallery, gallery_features = samples(60, 0)
    query, query_features = samples(30, 2)
    return {"query": query, "gallery": gallery}, {"query": query_features, "gallery": gallery_features}


def test_each_draw_holds_one_image_of_every_identity_and_is_fixed():
    splits, _ = _problem()
    gallery = splits["gallery"]
    draws = [single_shot_gallery(gallery, d) for d in range(SINGLE_SHOT_DRAWS)]
    for chosen in draws:
        pids = [gallery[i].pid for i in chosen]
        assert sorted(pids) == list(range(12))  # one per identity, all of them
    assert all(np.array_equal(a, single_shot_gallery(gallery, d)) for d, a in enumerate(draws))
    assert len({tuple(a) for a in draws}) > 1  # the draws differ


def test_single_shot_is_the_mean_of_direct_evaluations_over_the_draws():
    splits, features = _problem()
    evaluation = Evaluation("cc", "query", "gallery", "standard")
    direct = []
    for d in range(SINGLE_SHOT_DRAWS):
        chosen = single_shot_gallery(splits["gallery"], d)
        g = [splits["gallery"][i] for i in chosen]
        direct.append(evaluate(features["query"], features["gallery"][torch.from_numpy(chosen)],
                               torch.tensor([s.pid for s in splits["query"]]), torch.tensor([s.pid for s in g]),
                               torch.tensor([s.camid for s in splits["query"]]), torch.tensor([s.camid for s in g])))
    got = run_single_shot(evaluation, splits, features)
    for key in ("top1", "top5", "mAP", "mINP", "num_valid_queries"):
        assert got[key] == pytest.approx(np.mean([r[key] for r in direct]), abs=1e-9), key
    whole = run_evaluation(evaluation, splits, features)
    assert got["mAP"] != pytest.approx(whole["mAP"])  # a different protocol, a different number
