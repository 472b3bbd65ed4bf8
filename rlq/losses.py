"""Training losses of CAL, the base model, CGAL and TAD.

Every loss computes in float32 (inputs are upcast), so it is safe on bf16 autocast
outputs. Clothes losses take the cosines of `rlq.model.CosineClassifier` and apply the
scale themselves.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cross_entropy_smooth",
    "all_gather_keep_local_grad",
    "triplet_loss",
    "clothes_discriminator_loss",
    "clothes_adversarial_loss",
    "softened_kl",
    "abs_cosine_loss",
    "normalized_mse",
]


def cross_entropy_smooth(logits: Tensor, targets: Tensor, eps: float = 0.1) -> Tensor:
    """Cross-entropy against (1 - eps) * onehot + eps / C, averaged over the batch.

    Used for identity (f1 and f2), pose and gender logits.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=eps)


def all_gather_keep_local_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from all processes (rank order); only the local slice keeps its graph.

    The other slices are detached copies, so gradients reach this process's samples only
    (DDP then averages parameter gradients as usual). Every process must pass the same
    shape. Without an initialised process group this returns `x` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.detach().contiguous())
    gathered[dist.get_rank()] = x
    return torch.cat(gathered, dim=0)


def triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss with cosine distance (1 - cos), anchors = local samples.

    Hardest positives and negatives are searched among the features of all processes.
    An anchor with no negative contributes zero.
    """
    features = F.normalize(features.float(), dim=1)
    gallery = all_gather_keep_local_grad(features)
    gallery_labels = all_gather_keep_local_grad(labels)
    distance = 1.0 - features @ gallery.t()
    same = labels[:, None] == gallery_labels[None, :]
    hardest_positive = distance.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = distance.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def clothes_discriminator_loss(cosines: Tensor, clothes_labels: Tensor, scale: float = 16.0) -> Tensor:
    """CosFace (margin 0) loss of the clothes classifier: CE on scale * cos.

    The caller computes `cosines` from `f1.detach()` so this loss trains only the
    clothes classifier, never the backbone.
    """
    return F.cross_entropy(scale * cosines.float(), clothes_labels)


def clothes_adversarial_loss(
    cosines: Tensor,
    clothes_labels: Tensor,
    pids: Tensor,
    pid2clothes: Tensor,
    scale: float = 16.0,
    eps: float = 0.1,
) -> Tensor:
    """Clothes-based adversarial loss (CAL) on the cosines of the live (non-detached) f1.

    With z = scale * cos and P_i the clothes classes of sample i's identity, each class j
    is scored against the other identities' clothes only:
        log p_ij = z_ij - log(sum_{k not in P_i} exp(z_ik) + exp(z_ij)),
    and the loss is mean_i sum_j -m_ij log p_ij with
        m_ij = (1 - eps) * [j = y_i] + eps / |P_i| * [j in P_i].
    Minimising it pulls f1 towards all clothes of the same identity.

    Args:
        cosines: [B, num_clothes] clothes-classifier cosines.
        clothes_labels: [B] clothes label y_i.
        pids: [B] identity labels.
        pid2clothes: [num_pids, num_clothes] 0/1 (or bool) matrix of each identity's clothes.
    """
    logits = scale * cosines.float()
    own = pid2clothes[pids].bool()
    # log of sum_{k not in P_i} exp(z_ik); -inf if the identity owns every class.
    others = torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=1, keepdim=True)
    log_p = logits - torch.logaddexp(others, logits)
    # Not F.one_hot: on a GPU it checks the label range, a host-device sync inside every step.
    onehot = torch.zeros_like(logits).scatter_(1, clothes_labels[:, None], 1.0)
    weights = (1.0 - eps) * onehot + eps * own / own.sum(dim=1, keepdim=True)
    return -(weights * log_p).sum(dim=1).mean()


def softened_kl(logits: Tensor, target_logits: Tensor, tau: float = 0.8, factor: float = 0.64) -> Tensor:
    """factor * tau^2 * sum KL(softmax(target/tau) || softmax(logits/tau)) / (B * C).

    Divided by the number of logit entries, not by B. Neither side is detached, so both
    receive gradients. Cross-branch KL: logits = f1 ID logits, target = f2 ID logits.
    TAD self-supervision: logits = the student's logits on the LQ copy, target = on the
    HQ image.
    """
    log_q = F.log_softmax(logits.float() / tau, dim=1)
    log_p = F.log_softmax(target_logits.float() / tau, dim=1)
    kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    return factor * tau**2 * kl / logits.numel()


def abs_cosine_loss(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch of |cos(a_i, b_i)| (pose disentangling: a = f2, b = f3)."""
    return F.cosine_similarity(a.float(), b.float(), dim=1).abs().mean()


def normalized_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """TAD distillation: mean_b ||normalize(student_b) - normalize(teacher_b)||^2."""
    diff = F.normalize(student.float(), dim=1) - F.normalize(teacher.float(), dim=1)
    return diff.pow(2).sum(dim=1).mean()
