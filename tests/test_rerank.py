"""k-reciprocal re-ranking against a direct dense implementation of the published algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlq.metrics import evaluate
from rlq.rerank import RerankMemoryError, rerank


def dense_reranking(query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Zhong et al.'s algorithm as published, with every matrix dense and N x N (float64); returns final Q x G distances."""
    x = np.concatenate([query, gallery]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, q = len(x), len(query)
    distance = np.maximum(2 - 2 * x @ x.T, 0)  # squared Euclidean distance of unit vectors
    distance = distance / distance.max(axis=1, keepdims=True)  # each row by its largest entry
    rank = np.argsort(distance, axis=1, kind="stable")
    half = int(np.around(k1 / 2)) + 1

    def reciprocal(i: int, k: int) -> np.ndarray:
        return np.array([j for j in rank[i, :k] if i in rank[j, :k]], dtype=int)

    encodings = np.zeros((n, n))
    for i in range(n):
        members = reciprocal(i, k1 + 1)
        expansion = list(members)
        for candidate in members:
            theirs = reciprocal(candidate, half)
            if len(np.intersect1d(theirs, members)) > 2 / 3 * len(theirs):
                expansion.extend(theirs)
        expansion = np.unique(expansion)
        weights = np.exp(-distance[i, expansion])
        encodings[i, expansion] = weights / weights.sum()
    if k2 != 1:
        encodings = np.stack([encodings[rank[i, :k2]].mean(axis=0) for i in range(n)])
    overlap = np.stack([np.minimum(encodings[i][None, :], encodings).sum(axis=1) for i in range(q)])
    jaccard = 1 - overlap / (2 - overlap)
    return ((1 - lambda_value) * jaccard + lambda_value * distance[:q])[:, q:]


def _problem(seed: int, num_query: int, num_gallery: int, dim: int = 16, ids: int = 12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    qp, gp = rng.integers(0, ids, num_query), rng.integers(0, ids, num_gallery)
    query = (centres[qp] + 0.9 * rng.normal(size=(num_query, dim))).astype(np.float32)
    gallery = (centres[gp] + 0.9 * rng.normal(size=(num_gallery, dim))).astype(np.float32)
    return query, gallery, qp, gp, rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)


@pytest.mark.parametrize(("seed", "k1", "k2", "lambda_value"), [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 10, 1, 0.5), (3, 7, 3, 0.0)])
def test_distances_equal_the_dense_published_algorithm(seed, k1, k2, lambda_value):
    query, gallery, *_ = _problem(seed, 25, 90)
    expected = dense_reranking(query, gallery, k1, k2, lambda_value)
    # A small chunk budget makes every chunked loop (neighbours, sets, encodings, expansion, overlap) take several passes.
    reranking = rerank(torch.from_numpy(query), torch.from_numpy(gallery), k1=k1, k2=k2, lambda_value=lambda_value,
                       chunk_elements=3000)
    got = -torch.cat([reranking.similarities(slice(i, min(i + 7, 25))) for i in range(0, 25, 7)]).double().numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_reranked_metrics_equal_metrics_of_the_dense_distances():
    query, gallery, qp, gp, qc, gc = _problem(4, 40, 150)
    reranking = rerank(torch.from_numpy(query), torch.from_numpy(gallery))
    labels = (torch.from_numpy(qp), torch.from_numpy(gp), torch.from_numpy(qc), torch.from_numpy(gc))
    ours = evaluate(torch.from_numpy(query), torch.from_numpy(gallery), *labels, similarity=reranking.similarities, chunk_size=9)
    dense = torch.from_numpy(-dense_reranking(query, gallery, 20, 6, 0.3)).float()
    direct = evaluate(torch.from_numpy(query), torch.from_numpy(gallery), *labels, similarity=lambda rows: dense[rows])
    for key in ("top1", "top5", "mAP", "mINP", "num_valid_queries"):
        assert ours[key] == pytest.approx(direct[key], abs=1e-9), key
    plain = evaluate(torch.from_numpy(query), torch.from_numpy(gallery), *labels)
    assert ours["mAP"] != pytest.approx(plain["mAP"])  # re-ranking changes the ranking


def test_too_large_a_problem_is_refused_before_building_the_encodings():
    query, gallery, *_ = _problem(5, 20, 80)
    with pytest.raises(RerankMemoryError, match=r"20 queries x 80 gallery images .* needs about .* GiB .* available"):
        rerank(torch.from_numpy(query), torch.from_numpy(gallery), memory_budget=1000)
