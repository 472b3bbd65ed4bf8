"""Tests for rlq.losses against independent loop/numpy computations."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlq.losses import (
    abs_cosine_loss,
    all_gather_keep_local_grad,
    clothes_adversarial_loss,
    clothes_discriminator_loss,
    cross_entropy_smooth,
    normalized_mse,
    softened_kl,
    triplet_loss,
)
from rlq.model import CosineClassifier


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _log_softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _cosine_np(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- cross-entropy with label smoothing -----------------------------------------------------


def test_cross_entropy_smooth_targets() -> None:
    logits = torch.randn(5, 4, generator=_rng())
    targets = torch.tensor([0, 3, 1, 1, 2])
    smoothed = np.full((5, 4), 0.1 / 4)
    smoothed[np.arange(5), targets.numpy()] += 0.9  # 0.925 on the label, 0.025 elsewhere
    assert smoothed[0, 0] == pytest.approx(0.925) and smoothed[0, 1] == pytest.approx(0.025)
    expected = -(smoothed * _log_softmax_np(logits.double().numpy())).sum(1).mean()
    assert cross_entropy_smooth(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_smooth_accepts_bf16() -> None:
    logits = torch.randn(3, 2, generator=_rng())
    targets = torch.tensor([0, 1, 1])
    loss = cross_entropy_smooth(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(cross_entropy_smooth(logits, targets).item(), rel=2e-2)


# --- triplet --------------------------------------------------------------------------------------


def _triplet_reference(features: np.ndarray, labels: np.ndarray, anchors: range) -> float:
    """Explicit loops: for each anchor, the farthest positive and the closest negative."""
    losses = []
    for i in anchors:
        distances = [1 - _cosine_np(features[i], features[j]) for j in range(len(labels))]
        positive = max(d for d, label in zip(distances, labels) if label == labels[i])
        negative = min(d for d, label in zip(distances, labels) if label != labels[i])
        losses.append(max(positive - negative + 0.3, 0.0))
    return float(np.mean(losses))


def test_triplet_hand_made_hardest_selection() -> None:
    def unit(degrees: float) -> list[float]:
        return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]

    # Anchor 0 at 0 deg: positives at 10 and 60 deg (hardest: 60), negatives at 30 and 170 deg
    # (hardest: 30). Scaled lengths must not matter (cosine distance).
    features = torch.tensor([unit(0), unit(10), [3 * v for v in unit(60)], unit(30), unit(170)])
    labels = torch.tensor([0, 0, 0, 1, 1])
    d = lambda deg: 1 - math.cos(math.radians(deg))  # noqa: E731
    per_anchor = [
        max(d(60) - d(30) + 0.3, 0),  # anchor 0
        max(d(50) - d(20) + 0.3, 0),  # anchor 1 (10 deg): positives 0, 60 -> 50; negatives 30, 170 -> 20
        max(d(60) - d(30) + 0.3, 0),  # anchor 2 (60 deg): positives 0, 10 -> 60; negatives 30, 170 -> 30
        max(d(140) - d(20) + 0.3, 0),  # anchor 3 (30 deg): positive 170 -> 140; negatives 0, 10, 60 -> 20
        max(d(140) - d(110) + 0.3, 0),  # anchor 4 (170 deg): positive 30 -> 140; negatives -> 110 (to 60)
    ]
    assert triplet_loss(features, labels).item() == pytest.approx(np.mean(per_anchor), abs=1e-6)
    assert triplet_loss(features, labels).item() == pytest.approx(
        _triplet_reference(features.numpy(), labels.numpy(), range(5)), abs=1e-6
    )


def test_triplet_random_and_gradients() -> None:
    features = torch.randn(12, 16, generator=_rng(), requires_grad=True)
    labels = torch.arange(12) // 4
    loss = triplet_loss(features, labels)
    expected = _triplet_reference(features.detach().numpy(), labels.numpy(), range(12))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert features.grad.abs().sum() > 0


def test_triplet_anchor_without_negative_contributes_zero() -> None:
    features = torch.randn(4, 8, generator=_rng(), requires_grad=True)
    loss = triplet_loss(features, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_triplet_worker(rank: int, world_size: int, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        batch = 6
        all_features = torch.randn(world_size * batch, 8, generator=_rng(7))
        all_labels = torch.randint(0, 4, (world_size * batch,), generator=_rng(8))
        local = slice(rank * batch, (rank + 1) * batch)

        features = all_features[local].clone().requires_grad_()
        loss = triplet_loss(features, all_labels[local])
        loss.backward()

        # Single process on the concatenated batch, local anchors only: same value ...
        anchors = range(local.start, local.stop)
        expected = _triplet_reference(all_features.numpy(), all_labels.numpy(), anchors)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
        # ... and the same gradient with respect to the local samples.
        reference = all_features.clone().requires_grad_()
        normed = torch.nn.functional.normalize(reference, dim=1)
        distance = 1 - normed[local] @ normed.t()
        same = all_labels[local][:, None] == all_labels[None, :]
        hard_pos = distance.masked_fill(~same, -float("inf")).amax(1)
        hard_neg = distance.masked_fill(same, float("inf")).amin(1)
        torch.relu(hard_pos - hard_neg + 0.3).mean().backward()
        torch.testing.assert_close(features.grad, reference.grad[local])

        gathered = all_gather_keep_local_grad(features)
        torch.testing.assert_close(gathered.detach(), all_features)
        features.grad = None
        gathered.sum().backward()  # one copy of each local sample carries the gradient
        torch.testing.assert_close(features.grad, torch.ones_like(features))
    finally:
        dist.destroy_process_group()


def test_triplet_distributed_gathers_gallery_local_gradients() -> None:
    mp.spawn(_distributed_triplet_worker, args=(2, _free_port()), nprocs=2, join=True)


# --- clothes losses ----------------------------------------------------------------------------------


def test_clothes_discriminator_loss_trains_only_classifier() -> None:
    torch.manual_seed(0)
    classifier = CosineClassifier(8, 5)
    f1 = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2])
    cosines = classifier(f1.detach())
    loss = clothes_discriminator_loss(cosines, labels)
    expected = -_log_softmax_np(16 * cosines.detach().double().numpy())[np.arange(4), labels.numpy()].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert f1.grad is None
    assert classifier.weight.grad.abs().sum() > 0


def _cal_reference(
    cosines: np.ndarray, labels: np.ndarray, pids: np.ndarray, pid2clothes: np.ndarray
) -> float:
    """Explicit loops over samples i and classes j, straight from the formula."""
    z = 16 * cosines
    total = 0.0
    for i in range(z.shape[0]):
        own = pid2clothes[pids[i]].astype(bool)
        others = sum(math.exp(z[i, k]) for k in range(z.shape[1]) if not own[k])
        for j in range(z.shape[1]):
            m = 0.9 * (j == labels[i]) + 0.1 / own.sum() * own[j]
            if m:
                total -= m * (z[i, j] - math.log(others + math.exp(z[i, j])))
    return total / z.shape[0]


def test_clothes_adversarial_loss_matches_formula_and_reaches_f1() -> None:
    torch.manual_seed(0)
    pid2clothes = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    pids = torch.tensor([0, 0, 1, 2, 2])
    labels = torch.tensor([0, 1, 2, 5, 3])
    classifier = CosineClassifier(8, 6)
    f1 = torch.randn(5, 8, requires_grad=True)
    cosines = classifier(f1)
    loss = clothes_adversarial_loss(cosines, labels, pids, pid2clothes)
    expected = _cal_reference(
        cosines.detach().double().numpy(), labels.numpy(), pids.numpy(), pid2clothes.numpy()
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert f1.grad.abs().sum() > 0


def test_clothes_adversarial_loss_stable_for_large_logits_and_full_ownership() -> None:
    cosines = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.9, -0.3]]) * 8  # z up to 128: exp overflows fp32
    cosines.requires_grad_()
    pid2clothes = torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool)  # pid 0 owns every class
    loss = clothes_adversarial_loss(cosines, torch.tensor([0, 1]), torch.tensor([0, 1]), pid2clothes)
    loss.backward()
    # pid 0: every log p is 0. pid 1: only class 1 is weighted,
    # log p = z_1 - logaddexp(logsumexp(z_0, z_2), z_1).
    z = 16 * cosines.detach()[1].double()
    expected = -(z[1] - torch.logaddexp(torch.logsumexp(z[[0, 2]], 0), z[1])).item() / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(cosines.grad).all()


# --- KL, disentangling, distillation -------------------------------------------------------------------


def test_softened_kl_matches_loops_and_reaches_both_sides() -> None:
    o1 = torch.randn(4, 6, generator=_rng(1), requires_grad=True)
    o2 = torch.randn(4, 6, generator=_rng(2), requires_grad=True)
    loss = softened_kl(o1, o2)
    p = np.exp(_log_softmax_np(o2.detach().double().numpy() / 0.8))
    q = np.exp(_log_softmax_np(o1.detach().double().numpy() / 0.8))
    kl = sum(p[b, c] * (math.log(p[b, c]) - math.log(q[b, c])) for b in range(4) for c in range(6))
    assert loss.item() == pytest.approx(0.64 * 0.8**2 * kl / (4 * 6), rel=1e-5)
    loss.backward()
    assert o1.grad.abs().sum() > 0 and o2.grad.abs().sum() > 0
    assert softened_kl(o2, o2).item() == pytest.approx(0.0, abs=1e-7)


def test_abs_cosine_loss() -> None:
    a = torch.randn(5, 7, generator=_rng(1))
    b = torch.randn(5, 7, generator=_rng(2))
    expected = np.mean([abs(_cosine_np(a[i].numpy(), b[i].numpy())) for i in range(5)])
    assert abs_cosine_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert abs_cosine_loss(a, -a).item() == pytest.approx(1.0, rel=1e-6)


def test_normalized_mse() -> None:
    a = torch.randn(5, 7, generator=_rng(1), requires_grad=True)
    b = torch.randn(5, 7, generator=_rng(2))
    an, bn = a.detach().numpy(), b.numpy()
    expected = np.mean(
        [np.sum((an[i] / np.linalg.norm(an[i]) - bn[i] / np.linalg.norm(bn[i])) ** 2) for i in range(5)]
    )
    loss = normalized_mse(a, b)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert a.grad.abs().sum() > 0
    assert normalized_mse(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
