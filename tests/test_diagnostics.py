"""rlq.diagnostics against brute-force computations, and the diagnostics evaluate.py and training write."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import evaluate
from evaluate import Args
from rlq.data import Evaluation, Sample
from rlq.diagnostics import (
    branch_features,
    clothes_leakage,
    evaluations_clothes_leakage,
    lq_consistency,
)

Labels = tuple[int, int, int]  # (pid, camid, clothes_id)


def brute_force_leakage(query: list[list[float]], gallery: list[list[float]], query_labels: list[Labels],
                        gallery_labels: list[Labels]) -> float | None:
    """Every (query, same-outfit, other-outfit) triple of one identity, the query's camera left out; ties count half."""
    wins, triples = 0.0, 0
    for q, (pid, camid, clothes) in zip(query, query_labels):
        same_identity = [(sum(a * b for a, b in zip(q, g)), g_clothes)
                         for g, (g_pid, g_camid, g_clothes) in zip(gallery, gallery_labels) if g_pid == pid and g_camid != camid]
        positives = [s for s, c in same_identity if c == clothes]
        negatives = [s for s, c in same_identity if c != clothes]
        for positive in positives:
            for negative in negatives:
                wins += 1.0 if positive > negative else 0.5 if positive == negative else 0.0
                triples += 1
    return wins / triples if triples else None


def samples(labels: list[Labels]) -> list[Sample]:
    return [Sample(f"img{i}.png", pid, camid, clothes, f"img{i}", str(pid)) for i, (pid, camid, clothes) in enumerate(labels)]


def random_labels(rng: random.Random, count: int, pids: int, cameras: int, outfits: int) -> list[Labels]:
    return [(rng.randrange(pids), rng.randrange(cameras), rng.randrange(outfits)) for _ in range(count)]


def unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row))
    return [x / norm for x in row]


def normalised(rows: list[list[float]]) -> list[list[float]]:
    return [unit(row) for row in rows]


def gaussian_features(rng: random.Random, count: int, dim: int) -> list[list[float]]:
    return normalised([[rng.gauss(0, 1) for _ in range(dim)] for _ in range(count)])


def half_vectors(rng: random.Random, count: int, dim: int = 8) -> list[list[float]]:
    """Unit vectors with four entries of +-0.5 drawn from a set of three: every dot product is exact (a multiple
    of 0.25 in any summation order), and many are exactly tied."""
    choices = []
    for _ in range(3):
        row = [0.0] * dim
        for i in rng.sample(range(dim), 4):
            row[i] = rng.choice((0.5, -0.5))
        choices.append(row)
    return [list(rng.choice(choices)) for _ in range(count)]


def leakage(query: list[list[float]], gallery: list[list[float]], query_labels: list[Labels],
            gallery_labels: list[Labels]) -> float | None:
    return clothes_leakage(torch.tensor(query), torch.tensor(gallery), samples(query_labels), samples(gallery_labels))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("features", [gaussian_features, half_vectors])
def test_clothes_leakage_is_the_fraction_of_triples_won(seed, features):
    rng = random.Random(seed)
    query_labels, gallery_labels = random_labels(rng, 15, 4, 3, 3), random_labels(rng, 60, 5, 3, 3)
    query, gallery = features(rng, 15, 8), features(rng, 60, 8)
    expected = brute_force_leakage(query, gallery, query_labels, gallery_labels)
    assert expected is not None
    assert leakage(query, gallery, query_labels, gallery_labels) == pytest.approx(expected, abs=1e-12)


def test_tied_similarities_count_half():
    # Same outfit 0.6 against other outfits 0.6 and 0.0 (exact in any arithmetic): one tie and one win of two pairs.
    query = [[1.0, 0.0]]
    gallery = [[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]]
    labels = [(0, 1, 0), (0, 1, 1), (0, 2, 1)]
    assert leakage(query, gallery, [(0, 0, 0)], labels) == 0.75


def test_gallery_images_from_the_query_camera_are_left_out():
    # The same-outfit image from the query's camera would beat the other outfit; the one from another camera does not.
    query = [[1.0, 0.0]]
    gallery = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    labels = [(0, 0, 0), (0, 1, 0), (0, 1, 1)]
    assert leakage(query, gallery, [(0, 0, 0)], labels) == 0.0
    assert brute_force_leakage(query, gallery, [(0, 0, 0)], labels) == 0.0


def centred_problem(with_outfit: bool) -> tuple[list, list, list, list]:
    """Features = identity centre (+ one offset per outfit); 4 identities x 3 outfits, 3 cameras.

    The centres are one-hot, so that without offsets every same-identity similarity is exactly 1."""
    rng = random.Random(7)
    centres = [[3.0 if i == pid else 0.0 for i in range(16)] for pid in range(4)]
    offsets = {(pid, outfit): [rng.gauss(0, 0.5) for _ in range(16)] for pid in range(4) for outfit in range(3)}

    def feature(pid: int, outfit: int) -> list[float]:
        return [c + (o if with_outfit else 0.0) for c, o in zip(centres[pid], offsets[pid, outfit])]

    query_labels, gallery_labels = random_labels(rng, 20, 4, 3, 3), random_labels(rng, 80, 4, 3, 3)
    query = normalised([feature(pid, outfit) for pid, _, outfit in query_labels])
    gallery = normalised([feature(pid, outfit) for pid, _, outfit in gallery_labels])
    return query, gallery, query_labels, gallery_labels


def test_outfit_offsets_give_one_and_identity_centres_alone_give_a_half():
    assert leakage(*centred_problem(with_outfit=True)) == 1.0
    assert leakage(*centred_problem(with_outfit=False)) == 0.5


def test_no_outfit_to_compare_gives_none():
    rng = random.Random(3)
    query, gallery = gaussian_features(rng, 10, 8), gaussian_features(rng, 40, 8)
    query_labels, gallery_labels = random_labels(rng, 10, 3, 3, 1), random_labels(rng, 40, 3, 3, 1)
    own_outfit = [(pid, camid, i) for i, (pid, camid, _) in enumerate(query_labels + gallery_labels)]
    assert leakage(query, gallery, own_outfit[:10], own_outfit[10:]) is None  # every image its own outfit
    one_outfit = [(pid, camid, pid) for pid, camid, _ in query_labels + gallery_labels]
    assert leakage(query, gallery, one_outfit[:10], one_outfit[10:]) is None  # one outfit per identity

    splits = {"query": samples(one_outfit[:10]), "gallery": samples(one_outfit[10:])}
    features = {"query": torch.tensor(query), "gallery": torch.tensor(gallery)}
    assert evaluations_clothes_leakage(splits, [Evaluation("standard", "query", "gallery", "standard")], features, 4) is None


def test_evaluations_leakage_joins_the_query_splits_and_renormalises_each_branch():
    rng = random.Random(11)
    labels = {"query_same": random_labels(rng, 12, 4, 3, 3), "query_diff": random_labels(rng, 9, 4, 3, 3),
              "gallery": random_labels(rng, 50, 4, 3, 3)}
    rows = {name: [[rng.gauss(0, 1) for _ in range(6)] for _ in split] for name, split in labels.items()}
    evaluations = [Evaluation("sc", "query_same", "gallery", "standard"), Evaluation("cc", "query_diff", "gallery", "standard")]
    features = {name: torch.tensor(normalised(r)) for name, r in rows.items()}
    result = evaluations_clothes_leakage({name: samples(split) for name, split in labels.items()}, evaluations, features, 3)

    query_rows, query_labels = rows["query_same"] + rows["query_diff"], labels["query_same"] + labels["query_diff"]
    views = {"f1": slice(0, 3), "f2": slice(3, 6), "feature": slice(0, 6)}
    expected = {view: brute_force_leakage(normalised([r[part] for r in query_rows]),
                                          normalised([r[part] for r in rows["gallery"]]), query_labels, labels["gallery"])
                for view, part in views.items()}
    assert result.keys() == expected.keys()
    for view in expected:
        assert result[view] == pytest.approx(expected[view], abs=1e-12), view


def test_branch_features_renormalise_each_half():
    features = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    views = branch_features(features, 4)
    assert views.keys() == {"f1", "f2", "feature"}
    for view, half in (("f1", features[:, :4]), ("f2", features[:, 4:])):
        expected = torch.tensor(normalised(half.tolist()))
        assert torch.allclose(views[view], expected, atol=1e-6), view
    assert torch.equal(views["feature"], features)

    one_branch = branch_features(features, 8)  # vanilla CAL: the retrieval feature is f1
    assert one_branch.keys() == {"f1", "feature"} and torch.equal(one_branch["f1"], features)


def test_branch_features_of_the_wrong_width_are_an_error():
    with pytest.raises(ValueError, match="features of width 10 are neither one nor two branches of 4"):
        branch_features(torch.zeros(3, 10), 4)


def test_lq_consistency_is_the_mean_cosine_over_every_image():
    generator = torch.Generator().manual_seed(1)
    clean = {"query": torch.randn(4, 5, generator=generator), "gallery": torch.randn(7, 5, generator=generator)}
    degraded = {"blur": {name: feats + 0.5 * torch.randn(feats.shape, generator=generator) for name, feats in clean.items()},
                "none": clean}

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    pairs = [(a, b) for name in clean for a, b in zip(clean[name].tolist(), degraded["blur"][name].tolist())]
    consistency = lq_consistency(clean, degraded)
    assert consistency["blur"] == pytest.approx(sum(cosine(a, b) for a, b in pairs) / len(pairs), abs=1e-6)
    assert consistency["none"] == pytest.approx(1.0, abs=1e-12)
    assert lq_consistency(clean, {}) == {}


# --------------------------------------------------------------------------- evaluate.py and training


@pytest.fixture(scope="module")
def evaluated(tiny_run, synthetic_root, tmp_path_factory) -> tuple[dict, dict]:
    """(the --json output, the --save-features dump) of evaluate.py on the tiny run's last.pt, pixelate and mix."""
    out = tmp_path_factory.mktemp("diagnostics")
    evaluate.main(Args(checkpoint=tiny_run / "last.pt", root=synthetic_root, num_workers=0, batch_size=64,
                       degrade=("pixelate", "mix"), json=out / "m.json", save_features=out / "features.pt"))
    return json.loads((out / "m.json").read_text()), torch.load(out / "features.pt")


def test_evaluate_writes_both_diagnostics(evaluated):
    diagnostics = evaluated[0]["diagnostics"]
    assert diagnostics["clothes_leakage"].keys() == {"f1", "f2", "feature"}
    assert all(0 <= v <= 1 for v in diagnostics["clothes_leakage"].values())
    assert diagnostics["lq_consistency"].keys() == {"pixelate", "mix"}
    assert all(-1 <= v <= 1 for v in diagnostics["lq_consistency"].values())


def test_evaluate_leakage_of_f1_is_that_of_the_saved_features(evaluated):
    metrics, dump = evaluated
    query, gallery = dump["query"], dump["gallery"]
    branch_dim = query["features"].shape[1] // 2  # the tiny run's base model: concat(f1, f2)

    def f1(split: dict) -> list[list[float]]:
        return normalised(split["features"][:, :branch_dim].double().tolist())

    def labels(split: dict) -> list[Labels]:
        return list(zip(split["pids"].tolist(), split["camids"].tolist(), split["clothes"].tolist()))

    expected = brute_force_leakage(f1(query), f1(gallery), labels(query), labels(gallery))
    assert metrics["diagnostics"]["clothes_leakage"]["f1"] == pytest.approx(expected, abs=1e-9)


def test_training_evaluations_record_the_leakage(tiny_run, evaluated):
    evaluations = json.loads((tiny_run / "metrics.json").read_text())["evaluations"]
    assert len(evaluations) == 2
    for entry in evaluations:
        leakage = entry["diagnostics"]["clothes_leakage"]
        assert leakage.keys() == {"f1", "f2", "feature"} and all(0 <= v <= 1 for v in leakage.values())
    # The last evaluation ran on the model last.pt holds: the same leakage as evaluate.py's.
    from_evaluate = evaluated[0]["diagnostics"]["clothes_leakage"]
    assert evaluations[-1]["diagnostics"]["clothes_leakage"] == pytest.approx(from_evaluate, abs=1e-6)



def test_chance_top1_equals_the_mean_top1_of_random_rankings():
    from rlq.diagnostics import chance_top1
    from rlq.metrics import evaluate

    rng = np.random.default_rng(5)
    query = [Sample(f"q{i}", int(rng.integers(4)), int(rng.integers(3)), int(rng.integers(3)), f"q{i}", "p") for i in range(12)]
    gallery = [Sample(f"g{i}", int(rng.integers(5)), int(rng.integers(3)), int(rng.integers(3)), f"g{i}", "p") for i in range(60)]
    def labels(samples, field):
        return torch.tensor([getattr(s, field) for s in samples])

    for protocol in ("standard", "cc", "sc"):
        draws = []
        for _ in range(400):  # random features give random rankings (ties have probability 0)
            q_feat = torch.nn.functional.normalize(torch.randn(len(query), 8, dtype=torch.float64), dim=1).float()
            g_feat = torch.nn.functional.normalize(torch.randn(len(gallery), 8, dtype=torch.float64), dim=1).float()
            m = evaluate(q_feat, g_feat, labels(query, "pid"), labels(gallery, "pid"), labels(query, "camid"),
                         labels(gallery, "camid"), labels(query, "clothes_id"), labels(gallery, "clothes_id"), protocol=protocol)
            draws.append(m["top1"])
        assert chance_top1(query, gallery, protocol) == pytest.approx(np.mean(draws), abs=0.02), protocol
