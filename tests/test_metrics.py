"""Tests of rlq.metrics.evaluate against an independent per-query reference.

The random problems use features whose similarities are exact in float32 and
float64 (entries are multiples of 1/16 and every row has norm exactly 1, so
dot products are exact multiples of 1/256): the comparison with the reference
is then free of rounding flips, and the many exact ties check the
tie-breaking (lower gallery index first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlq import metrics
from rlq.metrics import evaluate

KEYS = ("top1", "top5", "top10", "top20", "mAP", "mINP")


# --------------------------------------------------------------------------
# Reference: one query at a time, straight from the definitions.


def reference(qf, gf, qp, gp, qc, gc, qk=None, gk=None, protocol="standard") -> dict | None:
    """Per-query numpy evaluation; None when no query is valid."""
    qf = np.asarray(qf, dtype=np.float64)
    gf = np.asarray(gf, dtype=np.float64)
    qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    sums = dict.fromkeys(KEYS, 0.0)
    num_valid = 0
    for i in range(len(qf)):
        order = np.argsort(-(gf @ qf[i]), kind="stable")
        same_pid = gp[order] == qp[i]
        same_cam = gc[order] == qc[i]
        if protocol == "standard":
            good, junk = same_pid & ~same_cam, same_pid & same_cam
        else:
            same_clothes = gk[order] == qk[i]
            if protocol == "cc":
                good = same_pid & ~same_cam & ~same_clothes
                junk = (same_pid & same_cam) | (same_pid & same_clothes)
            else:
                good = same_pid & ~same_cam & same_clothes
                junk = (same_pid & same_cam) | (same_pid & ~same_clothes)
        ranks = np.flatnonzero(good[~junk]) + 1  # 1-based ranks of good items
        if ranks.size == 0:
            continue
        num_valid += 1
        for k in (1, 5, 10, 20):
            sums[f"top{k}"] += float(ranks[0] <= k)
        sums["mAP"] += float(np.mean(np.arange(1, ranks.size + 1) / ranks))
        sums["mINP"] += ranks.size / ranks[-1]
    if num_valid == 0:
        return None
    return {**{k: v / num_valid for k, v in sums.items()},
            "num_valid_queries": num_valid, "num_skipped_queries": len(qf) - num_valid}


def assert_same(result: dict, expected: dict) -> None:
    assert set(result) == set(expected)
    for key in KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key
    for key in ("num_valid_queries", "num_skipped_queries"):
        assert result[key] == expected[key] and isinstance(result[key], int), key


# --------------------------------------------------------------------------
# Random problems with exact similarities


def exact_features(rng: np.random.Generator, n: int, dim: int, ties: bool) -> np.ndarray:
    """Rows of norm exactly 1 with entries in {0, +-1/2, +-1/4, +-1/8, +-1/16}.

    ties=True: 16 entries of +-1/4 (similarities are multiples of 1/16: a
    handful of distinct values). Otherwise a random mix of magnitudes
    (multiples of 1/256: far fewer ties).
    """
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        if ties:
            magnitudes = [0.25] * 16
        else:
            units, magnitudes = 256, []  # squared norm left, in units of 1/256
            for unit, value in ((64, 0.5), (16, 0.25), (4, 0.125)):
                count = units // unit if unit == 4 else int(rng.integers(0, units // unit + 1))
                magnitudes += [value] * count
                units -= count * unit
            magnitudes += [0.0625] * units
        cols = rng.choice(dim, size=len(magnitudes), replace=False)
        row[cols] = np.asarray(magnitudes) * rng.choice([-1.0, 1.0], size=len(magnitudes))
    return out


def random_problem(rng: np.random.Generator, num_query: int, num_gallery: int, num_ids: int,
                   num_cams: int, num_clothes: int, ties: bool, structured: bool = False) -> dict:
    """Random labels and exact features; some query identities are absent from
    the gallery (those queries are skipped).

    structured=True: each item is its identity's prototype with about a fifth
    of the signs flipped (norm unchanged), so that, as with a real model,
    matches tend to rank near the top. Otherwise features are independent.
    """
    dim = 96
    query_pids = rng.integers(0, num_ids + 2, num_query)
    gallery_pids = rng.integers(0, num_ids, num_gallery)
    if structured:
        prototypes = exact_features(rng, num_ids + 2, dim, ties)

        def features(pids: np.ndarray) -> np.ndarray:
            flips = np.where(rng.random((len(pids), dim)) < 0.2, -1.0, 1.0)
            return (prototypes[pids] * flips).astype(np.float32)
    else:
        def features(pids: np.ndarray) -> np.ndarray:
            return exact_features(rng, len(pids), dim, ties)

    return dict(
        query_features=features(query_pids),
        gallery_features=features(gallery_pids),
        query_pids=query_pids,
        gallery_pids=gallery_pids,
        query_camids=rng.integers(0, num_cams, num_query),
        gallery_camids=rng.integers(0, num_cams, num_gallery),
        query_clothes=rng.integers(0, num_clothes, num_query),
        gallery_clothes=rng.integers(0, num_clothes, num_gallery),
    )


def reference_of(problem: dict, protocol: str) -> dict | None:
    p = problem
    return reference(p["query_features"], p["gallery_features"], p["query_pids"], p["gallery_pids"],
                     p["query_camids"], p["gallery_camids"], p["query_clothes"], p["gallery_clothes"],
                     protocol)


def check_against_reference(problem: dict, protocol: str, chunk_size: int | None = None) -> None:
    expected = reference_of(problem, protocol)
    if expected is None:
        with pytest.raises(ValueError, match="no valid query"):
            evaluate(**problem, protocol=protocol, chunk_size=chunk_size)
    else:
        assert_same(evaluate(**problem, protocol=protocol, chunk_size=chunk_size), expected)


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_on_random_problems(seed, ties, structured):
    rng = np.random.default_rng(seed)
    problem = random_problem(
        rng,
        num_query=int(rng.integers(1, 40)),
        num_gallery=int(rng.integers(1, 400)),
        num_ids=int(rng.choice([1, 3, 10, 60])),
        num_cams=int(rng.integers(1, 5)),
        num_clothes=int(rng.integers(1, 4)),
        ties=ties,
        structured=structured,
    )
    for protocol in metrics.PROTOCOLS:
        check_against_reference(problem, protocol, chunk_size=int(rng.integers(1, 12)))


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("ties", [True, False])
def test_matches_reference_on_a_larger_gallery(ties, structured):
    """Thousands of gallery items: many bins per row, default chunking."""
    rng = np.random.default_rng(100 + 2 * ties + structured)
    problem = random_problem(rng, num_query=50, num_gallery=3000, num_ids=40, num_cams=4,
                             num_clothes=3, ties=ties, structured=structured)
    for protocol in metrics.PROTOCOLS:
        check_against_reference(problem, protocol)


def test_both_counting_cases_are_exercised(monkeypatch):
    """Chunks where no foreign item shares a histogram bin with a good item,
    and chunks where some do (resolved by exact comparison, with a non-zero
    correction for some good items), both occur in a problem with few ties:
    the comparisons with the reference then cover both cases."""
    corrections = []
    original = metrics._foreign_in_shared_bins

    def spy(sims, bins, num_bins, item_bins, cols, shared, *args):
        result = original(sims, bins, num_bins, item_bins, cols, shared, *args)
        corrections.append(result[shared])
        return result

    monkeypatch.setattr(metrics, "_foreign_in_shared_bins", spy)
    rng = np.random.default_rng(7)
    problem = random_problem(rng, num_query=40, num_gallery=3000, num_ids=10, num_cams=3,
                             num_clothes=2, ties=False)
    check_against_reference(problem, "standard", chunk_size=1)
    assert 0 < len(corrections) < 40
    assert int((torch.cat(corrections) > 0).sum()) > 0


def test_all_similarities_equal_ranks_by_gallery_index():
    rng = np.random.default_rng(3)
    problem = random_problem(rng, num_query=20, num_gallery=200, num_ids=8, num_cams=3,
                             num_clothes=2, ties=True)
    problem["query_features"][:] = problem["gallery_features"][:] = problem["gallery_features"][0]
    for protocol in metrics.PROTOCOLS:
        check_against_reference(problem, protocol, chunk_size=3)


def test_queries_without_good_items_are_skipped_and_counted():
    rng = np.random.default_rng(4)
    problem = random_problem(rng, num_query=30, num_gallery=100, num_ids=5, num_cams=2,
                             num_clothes=2, ties=False)
    problem["query_pids"][:10] = 1000  # identity absent from the gallery
    problem["query_pids"][10] = problem["gallery_pids"][0]
    problem["query_camids"][10] = 7  # all of query 10's matches are junk (same camera)
    problem["gallery_camids"][problem["gallery_pids"] == problem["query_pids"][10]] = 7
    result = evaluate(**problem)
    assert result["num_skipped_queries"] >= 11
    assert result["num_valid_queries"] + result["num_skipped_queries"] == 30
    assert_same(result, reference_of(problem, "standard"))


def test_no_valid_query_raises():
    rng = np.random.default_rng(5)
    problem = random_problem(rng, num_query=5, num_gallery=50, num_ids=5, num_cams=2,
                             num_clothes=2, ties=False)
    problem["query_pids"][:] = 99
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(**problem)
    problem["query_pids"][:] = problem["gallery_pids"][0]
    problem["gallery_camids"][:] = problem["query_camids"][:] = 0  # every match is junk
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(**problem)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_threads_give_the_reference_results(monkeypatch, workers):
    """Chunks shared among CPU worker threads (each with its own workspace)
    give exactly the reference numbers, and the caller's thread setting is
    restored afterwards."""
    monkeypatch.setattr(metrics, "_num_workers", lambda device: workers)
    threads = torch.get_num_threads()
    rng = np.random.default_rng(21)
    problem = random_problem(rng, num_query=45, num_gallery=600, num_ids=15, num_cams=3,
                             num_clothes=3, ties=False, structured=True)
    for protocol in metrics.PROTOCOLS:
        check_against_reference(problem, protocol, chunk_size=4)
    assert torch.get_num_threads() == threads


def test_worker_error_propagates_and_restores_threads(monkeypatch):
    monkeypatch.setattr(metrics, "_num_workers", lambda device: 2)
    threads = torch.get_num_threads()

    def failing(*args):
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(metrics, "_chunk_metrics", failing)
    rng = np.random.default_rng(22)
    problem = random_problem(rng, num_query=20, num_gallery=50, num_ids=5, num_cams=2,
                             num_clothes=2, ties=False)
    with pytest.raises(RuntimeError, match="chunk failed"):
        evaluate(**problem, chunk_size=2)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("candidates_per_bin", [1e-6, 1.0, 1e6])
def test_bin_count_does_not_change_results(monkeypatch, candidates_per_bin):
    """From the most bins allowed down to _MIN_BINS per row (the bin count
    only moves work between the histogram and the exact comparison)."""
    monkeypatch.setattr(metrics, "_CANDIDATES_PER_BIN", candidates_per_bin)
    rng = np.random.default_rng(23)
    for structured in (True, False):
        problem = random_problem(rng, num_query=30, num_gallery=3000, num_ids=20, num_cams=3,
                                 num_clothes=2, ties=False, structured=structured)
        for protocol in metrics.PROTOCOLS:
            check_against_reference(problem, protocol, chunk_size=6)


def test_chunk_bins_follows_the_previous_chunk():
    ws = metrics._Workspace.allocate(2, 100_000, metrics._max_bins(100_000), torch.device("cpu"))
    assert metrics._chunk_bins(ws) == ws.max_bins  # nothing known yet
    ws.candidates_per_row = 10 * metrics._CANDIDATES_PER_BIN * metrics._MIN_BINS
    assert metrics._chunk_bins(ws) == metrics._LOW_BINS + 10 * metrics._MIN_BINS + 1
    ws.candidates_per_row = 0.0
    assert metrics._chunk_bins(ws) == metrics._LOW_BINS + metrics._MIN_BINS + 1
    ws.candidates_per_row = 1e9
    assert metrics._chunk_bins(ws) == ws.max_bins


# --------------------------------------------------------------------------
# Invariances and input types


@pytest.fixture
def problem() -> dict:
    return random_problem(np.random.default_rng(11), num_query=37, num_gallery=250, num_ids=12,
                          num_cams=3, num_clothes=3, ties=True)


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_chunk_size_does_not_change_results(problem, protocol):
    results = [evaluate(**problem, protocol=protocol, chunk_size=c) for c in (1, 7, 10_000, None)]
    assert all(r == results[0] for r in results)


def test_numpy_and_torch_inputs_agree(problem):
    as_torch = {k: torch.from_numpy(v) for k, v in problem.items()}
    for protocol in metrics.PROTOCOLS:
        assert evaluate(**as_torch, protocol=protocol) == evaluate(**problem, protocol=protocol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_features_accepted(problem, dtype):
    """Entries +-1/4 are exact in every dtype, so the results are identical."""
    expected = evaluate(**problem, protocol="cc")
    converted = dict(problem)
    for key in ("query_features", "gallery_features"):
        converted[key] = torch.from_numpy(problem[key]).to(dtype)
    assert evaluate(**converted, protocol="cc") == expected


def test_unnormalised_features_are_normalised(problem):
    scaled = dict(problem, query_features=problem["query_features"] * 4.0,
                  gallery_features=problem["gallery_features"] * 0.5)
    assert evaluate(**scaled) == evaluate(**problem)


def test_clothes_ignored_by_the_standard_protocol(problem):
    without = {k: v for k, v in problem.items() if "clothes" not in k}
    assert evaluate(**without) == evaluate(**problem)


# --------------------------------------------------------------------------
# Hand-computed case


def test_hand_computed_values():
    # Query 0 looks along x, query 1 along y; similarity = that coordinate.
    query_features = np.array([[1.0, 0.0], [0.0, 1.0]])
    gallery_features = np.array([
        [1.0, 0.0],    # g0  sims (1.0, 0.0)   pid 1, cam 0 (junk for q0: same camera)
        [0.6, 0.8],    # g1       (0.6, 0.8)   pid 1, cam 1
        [0.8, 0.6],    # g2       (0.8, 0.6)   pid 2, cam 0
        [0.0, 1.0],    # g3       (0.0, 1.0)   pid 1, cam 2
        [-0.6, 0.8],   # g4      (-0.6, 0.8)   pid 3
        [0.8, -0.6],   # g5       (0.8, -0.6)  pid 1, cam 1; ties with g2 for q0
    ])
    labels = dict(
        query_pids=[1, 2], gallery_pids=[1, 1, 2, 1, 3, 1],
        query_camids=[0, 1], gallery_camids=[0, 1, 0, 2, 1, 1],
        query_clothes=[0, 5], gallery_clothes=[0, 1, 7, 0, 4, 1],
    )
    run = lambda protocol: evaluate(query_features, gallery_features, **labels, protocol=protocol)

    # q0 ranking: g0 g2 g5 g1 g3 g4 (g2 before g5: equal similarity, lower index).
    # standard: junk g0; goods g5, g1, g3 at ranks 2, 3, 4 of (g2 g5 g1 g3 g4):
    #   AP = (1/2 + 2/3 + 3/4) / 3, mINP = 3/4.
    # q1 ranking: g3 g1 g4 g2 g0 g5; its only match g2 (other camera) at rank 4.
    standard = run("standard")
    q0_ap = (1 / 2 + 2 / 3 + 3 / 4) / 3
    assert_same(standard, dict(top1=0.0, top5=1.0, top10=1.0, top20=1.0,
                               mAP=(q0_ap + 1 / 4) / 2, mINP=(3 / 4 + 1 / 4) / 2,
                               num_valid_queries=2, num_skipped_queries=0))
    # cc: g3 (same clothes) becomes junk for q0: goods g5, g1 at ranks 2, 3 of
    # (g2 g5 g1 g4). q1: g2 has other clothes, still good at rank 4.
    assert_same(run("cc"), dict(top1=0.0, top5=1.0, top10=1.0, top20=1.0,
                                mAP=((1 / 2 + 2 / 3) / 2 + 1 / 4) / 2, mINP=(2 / 3 + 1 / 4) / 2,
                                num_valid_queries=2, num_skipped_queries=0))
    # sc: only g3 is good for q0, at rank 2 of (g2 g3 g4); q1 has no good item.
    assert_same(run("sc"), dict(top1=0.0, top5=1.0, top10=1.0, top20=1.0, mAP=1 / 2, mINP=1 / 2,
                                num_valid_queries=1, num_skipped_queries=1))


# --------------------------------------------------------------------------
# Errors


def test_unknown_protocol(problem):
    with pytest.raises(ValueError, match=r"unknown protocol 'xx'.*standard.*cc.*sc"):
        evaluate(**problem, protocol="xx")


@pytest.mark.parametrize("protocol", ["cc", "sc"])
def test_clothes_required(problem, protocol):
    without = dict(problem, query_clothes=None)
    with pytest.raises(ValueError, match="needs query_clothes and gallery_clothes"):
        evaluate(**without, protocol=protocol)


@pytest.mark.parametrize("key", ["query_pids", "gallery_camids", "gallery_clothes"])
def test_length_mismatch_names_the_sizes(problem, key):
    bad = dict(problem, **{key: problem[key][:-1]})
    n = len(problem[key])
    with pytest.raises(ValueError, match=rf"{key} has {n - 1} entries but there are {n}"):
        evaluate(**bad, protocol="cc")


def test_feature_dim_mismatch(problem):
    bad = dict(problem, gallery_features=problem["gallery_features"][:, :-1])
    with pytest.raises(ValueError, match="feature dims differ"):
        evaluate(**bad)


def test_non_finite_features_rejected(problem):
    bad = dict(problem, gallery_features=problem["gallery_features"].copy())
    bad["gallery_features"][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate(**bad)


# --------------------------------------------------------------------------
# Helpers


def test_descending_key_orders_like_the_floats():
    values = torch.tensor([0.5, -0.0, 0.0, -1e-30, 1e-30, -3.0, 3.0, 0.5, -0.5, 1.0, -1.0, 7e-45])
    keys = metrics._descending_key(values)
    for i in range(len(values)):
        for j in range(len(values)):
            assert (keys[i] < keys[j]) == bool(values[i] > values[j])
            assert (keys[i] == keys[j]) == bool(values[i] == values[j])


def test_floor_div_matches_integer_division():
    x = torch.cat([torch.arange(0, 5000), torch.randint(0, 2**40, (5000,)),
                   torch.tensor([2**26 * 125_353 - 1, 2**26 * 125_353])])
    for divisor in (1, 7, 20_000, 125_353):
        assert torch.equal(metrics._floor_div(x, divisor), x // divisor)


def test_sparse_nonzero_matches_nonzero():
    mask = torch.rand(8 * 1000) < 0.01
    mask[-1] = mask[0] = True
    assert torch.equal(metrics._sparse_nonzero(mask), mask.nonzero().squeeze(1))
    assert metrics._sparse_nonzero(torch.zeros(64, dtype=torch.bool)).numel() == 0


def test_accuracy_and_within_identity_accuracy_against_direct_counts():
    from rlq.metrics import accuracy, within_identity_accuracy

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert float(accuracy(logits, torch.tensor([1, 0, 0, 1]))) == 0.5
    # 2 identities: identity 0 owns clothes 0, 1; identity 1 owns clothes 2, 3.
    pid2clothes = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    cosines = torch.tensor([
        [0.1, 0.5, 0.9, 0.0],  # identity 0, outfit 1: other identity's class 2 scores highest, own best is 1 -> right
        [0.7, 0.2, 0.0, 0.0],  # identity 0, outfit 1: own best is 0 -> wrong
        [0.9, 0.0, 0.1, 0.3],  # identity 1, outfit 3: own best is 3 -> right
    ])
    value = within_identity_accuracy(cosines, torch.tensor([1, 1, 3]), torch.tensor([0, 0, 1]), pid2clothes)
    assert float(value) == pytest.approx(2 / 3)
