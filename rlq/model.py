"""Re-ID models: vanilla CAL, the two-branch base model and the three-branch RLQ student.

All three are built from one timm ResNet ("trunk") whose layer4 runs at stride 1.
Every branch ends in the same neck (global max pool ++ global avg pool -> BatchNorm1d),
whose output is both the training feature and the retrieval feature.

Naming: f1 is the CAL-branch feature (the only feature of vanilla CAL), f2 the ID-branch
feature, f3 the pose-branch feature. Inside `shared`, `backbone` and the branches the
submodules keep timm/torchvision's names (conv1, bn1, layer1, ..., and the block names
inside the layers), so the authors' checkpoints map onto these models by renaming keys.

The clothes classifier is deliberately not part of any model: it is the discriminator of
the adversarial CAL loss, has its own optimizer and is run (and back-propagated) twice per
step, once on the detached f1 and once, after its update, on the live f1. Keeping it out of
the model keeps a DDP-wrapped model to one forward/backward per step.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable, Literal, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.models import load_state_dict
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

from rlq.options import OptionError

__all__ = [
    "ReIDOutput",
    "PoolBNNeck",
    "CosineClassifier",
    "CALModel",
    "BaseModel",
    "RLQModel",
    "create_trunk",
    "build_model",
    "retrieval_state_dict",
]

Stage = Literal["layer1", "layer2", "layer3"]
GenderInput = Literal["f1", "f2", "concat"]

_STEM = ("conv1", "bn1", "act1", "maxpool")
_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class ReIDOutput(NamedTuple):
    """Everything the training losses need from one forward pass.

    A NamedTuple (not a dataclass) so that DDP and Accelerate find and convert the tensors
    inside it. Fields an architecture does not have are None.
    """

    f1: Tensor
    id_logits_f1: Tensor
    f2: Tensor | None = None
    id_logits_f2: Tensor | None = None
    f3: Tensor | None = None
    pose_logits: Tensor | None = None
    gender_logits: Tensor | None = None


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


class PoolBNNeck(nn.Module):
    """concat(global max pool, global avg pool) -> BatchNorm1d; output dim 2 * channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2 * channels)
        nn.init.normal_(self.bn.weight, mean=1.0, std=0.02)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)
        return self.bn(pooled)


class CosineClassifier(nn.Module):
    """Cosine similarities between L2-normalised inputs and class weights.

    No bias and no scale: the losses apply the scale (16), so the same cosines serve
    both the discriminator loss and the adversarial CAL loss.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        # Unit-norm rows: only directions matter, and unit norm gives Adam steps a
        # consistent size relative to the weights.
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def _linear_head(in_features: int, num_classes: int) -> nn.Linear:
    """Linear classifier with weight ~ N(0, 0.001) and zero bias (all ID-style heads)."""
    head = nn.Linear(in_features, num_classes)
    nn.init.normal_(head.weight, std=0.001)
    nn.init.zeros_(head.bias)
    return head


# ---------------------------------------------------------------------------------------
# Trunk
# ---------------------------------------------------------------------------------------


def _remove_last_stride(trunk: ResNet) -> None:
    """Run layer4 at stride 1 without dilation (a 384x192 input gives a 24x12 map)."""
    block = trunk.layer4[0]
    if isinstance(block, Bottleneck):
        strided_conv = block.conv2
    elif isinstance(block, BasicBlock):
        strided_conv = block.conv1
    else:
        raise ValueError(f"Unsupported ResNet block type {type(block).__name__}")
    shortcut = block.downsample
    if not isinstance(block.aa, nn.Identity) or shortcut is None or not isinstance(shortcut[0], nn.Conv2d):
        # Anti-aliased or avg-down variants downsample outside the two convs.
        raise OptionError("--backbone: only plain ResNets (strided conv in block and shortcut) are supported, not the "
                          "anti-aliased or avg-down variants")
    strided_conv.stride = (1, 1)
    shortcut[0].stride = (1, 1)


def _load_trunk_weights(trunk: ResNet, path: str) -> None:
    """Load an ImageNet state dict from a local file, failing loudly on any mismatch."""
    try:
        weights = load_state_dict(path)
    except Exception as err:  # torch.load's and safetensors' errors of a damaged or foreign file
        raise OptionError(f"cannot read --pretrained-weights '{path}' ({type(err).__name__}): expected the trunk's ImageNet "
                          "state dict saved by torch.save (.pth) or safetensors") from None
    state_dict = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    try:
        result = trunk.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise OptionError(f"Weights in {path} do not fit the trunk: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise OptionError(
            f"Weights in {path} do not fit the trunk: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )


def create_trunk(
    backbone: str = "resnet50.tv_in1k",
    pretrained: bool = True,
    pretrained_weights: str | None = None,
) -> ResNet:
    """A timm ResNet with a stride-1 layer4.

    Args:
        backbone: timm model name; `resnet50.tv_in1k` holds the torchvision ImageNet
            weights the authors used.
        pretrained: load ImageNet weights (from the timm hub unless `pretrained_weights`).
        pretrained_weights: local file with the trunk's ImageNet state dict (.pth or
            .safetensors; an `fc.*` classifier in it is ignored). Needs `pretrained=True`.
    """
    if pretrained_weights is not None and not pretrained:
        raise ValueError("pretrained_weights given with pretrained=False")
    from_hub = pretrained and pretrained_weights is None
    trunk = timm.create_model(backbone, pretrained=from_hub, num_classes=0)
    if not isinstance(trunk, ResNet):
        raise OptionError(f"--backbone {backbone} is not a timm ResNet: expected e.g. resnet50.tv_in1k or resnet18")
    if pretrained_weights is not None:
        _load_trunk_weights(trunk, pretrained_weights)
    _remove_last_stride(trunk)
    return trunk


def _stages_until(stage: str) -> tuple[str, ...]:
    """Module names of the stem and layers up to and including `stage`."""
    return _STEM + _LAYERS[: _LAYERS.index(stage) + 1]


def _stages_after(stage: str) -> tuple[str, ...]:
    return _LAYERS[_LAYERS.index(stage) + 1 :]


def _sequential(trunk: ResNet, names: tuple[str, ...], copy_modules: bool = False) -> nn.Sequential:
    """Trunk submodules as a named Sequential (shared or deep-copied)."""
    take = copy.deepcopy if copy_modules else (lambda m: m)
    return nn.Sequential(OrderedDict((name, take(getattr(trunk, name))) for name in names))


def _check_stage(name: str, value: str) -> None:
    if value not in _LAYERS[:3]:
        raise ValueError(f"{name} must be layer1, layer2 or layer3, got {value!r}")


def _flip_sum_normalise(features: Callable[[Tensor], Tensor], x: Tensor, flip: bool = True) -> Tensor:
    """L2-normalised feature(x) + feature(horizontally flipped x) (a sum, not a mean); `flip=False`: feature(x) alone.

    Summed and normalised in float32 so ranking does not suffer from bf16 autocast.
    """
    summed = features(x).float()
    if flip:
        summed = summed + features(torch.flip(x, dims=[3])).float()
    return F.normalize(summed, dim=1)


def retrieval_state_dict(model: CALModel | BaseModel) -> dict[str, Tensor]:
    """The weights `retrieval_features` uses: the state dict without the model's `training_only` submodules."""
    return {k: v for k, v in model.state_dict().items() if k.partition(".")[0] not in model.training_only}


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


class CALModel(nn.Module):
    """Vanilla CAL: trunk -> neck -> f, with an identity classifier on f."""

    # Submodules that `retrieval_features` never runs: exported weights leave them out (rlq.export).
    training_only: tuple[str, ...] = ("classifier",)

    def __init__(self, trunk: ResNet, num_pids: int) -> None:
        super().__init__()
        self.feature_dim = 2 * trunk.num_features
        self.retrieval_dim = self.feature_dim
        self.backbone = _sequential(trunk, _stages_until("layer4"))
        self.neck = PoolBNNeck(trunk.num_features)
        self.classifier = _linear_head(self.feature_dim, num_pids)

    def forward(self, x: Tensor) -> ReIDOutput:
        f = self.neck(self.backbone(x))
        return ReIDOutput(f1=f, id_logits_f1=self.classifier(f))

    def embed(self, x: Tensor) -> Tensor:
        """The feature of one view, before flip-summing and normalisation [B, feature_dim]."""
        return self.neck(self.backbone(x))

    def retrieval_features(self, x: Tensor, flip: bool = True) -> Tensor:
        """Test-time feature [B, retrieval_dim] (flip-summed unless `flip=False`); call in eval mode."""
        return _flip_sum_normalise(self.embed, x, flip)


class BaseModel(nn.Module):
    """Two branches: a shared stem, then a CAL branch (f1) and an ID branch (f2).

    Both branches own separate copies of the trunk layers after `split_after`, so they
    start from identical weights. Each feature has its own identity classifier.
    """

    training_only: tuple[str, ...] = ("cal_classifier", "id_classifier")

    def __init__(self, trunk: ResNet, num_pids: int, split_after: Stage = "layer2") -> None:
        super().__init__()
        _check_stage("split_after", split_after)
        self.feature_dim = 2 * trunk.num_features
        self.retrieval_dim = 2 * self.feature_dim  # concat(f1, f2)
        self.shared = _sequential(trunk, _stages_until(split_after))
        self.cal_branch = _sequential(trunk, _stages_after(split_after), copy_modules=True)
        self.id_branch = _sequential(trunk, _stages_after(split_after), copy_modules=True)
        self.cal_neck = PoolBNNeck(trunk.num_features)
        self.id_neck = PoolBNNeck(trunk.num_features)
        self.cal_classifier = _linear_head(self.feature_dim, num_pids)
        self.id_classifier = _linear_head(self.feature_dim, num_pids)

    def _branch_features(self, shared: Tensor) -> tuple[Tensor, Tensor]:
        f1 = self.cal_neck(self.cal_branch(shared))
        f2 = self.id_neck(self.id_branch(shared))
        return f1, f2

    def forward(self, x: Tensor) -> ReIDOutput:
        f1, f2 = self._branch_features(self.shared(x))
        return ReIDOutput(
            f1=f1, id_logits_f1=self.cal_classifier(f1), f2=f2, id_logits_f2=self.id_classifier(f2)
        )

    def embed(self, x: Tensor) -> Tensor:
        """concat(f1, f2) of one view, before flip-summing and normalisation [B, 2 * feature_dim]."""
        return torch.cat(self._branch_features(self.shared(x)), dim=1)

    def retrieval_features(self, x: Tensor, flip: bool = True) -> Tensor:
        """Test-time feature concat(f1, f2) [B, retrieval_dim] (flip-summed unless `flip=False`); call in eval mode."""
        return _flip_sum_normalise(self.embed, x, flip)


class RLQModel(BaseModel):
    """The base model plus a pose branch (f3) and the coarse-attribute heads.

    The pose branch forks from `shared` after `pose_split_after` and owns copies of all
    later layers. The pose head sits on f3; the gender head on f2, f1 or concat(f1, f2).
    """

    # The pose branch trains the shared layers; retrieval uses f1 and f2 alone.
    training_only = BaseModel.training_only + ("pose_branch", "pose_neck", "pose_classifier", "gender_classifier")

    def __init__(
        self,
        trunk: ResNet,
        num_pids: int,
        split_after: Stage = "layer2",
        pose_split_after: Stage = "layer1",
        num_pose_classes: int = 16,
        gender_input: GenderInput = "f2",
    ) -> None:
        super().__init__(trunk, num_pids, split_after)
        _check_stage("pose_split_after", pose_split_after)
        if _LAYERS.index(pose_split_after) > _LAYERS.index(split_after):
            raise OptionError(f"--pose-split-after {pose_split_after} comes after --split-after {split_after}: the pose branch "
                              "must fork no later than the CAL/ID branches")
        if gender_input not in ("f1", "f2", "concat"):
            raise ValueError(f"gender_input must be f1, f2 or concat, got {gender_input!r}")
        self.pose_split_after = pose_split_after
        self.gender_input = gender_input
        self.pose_branch = _sequential(trunk, _stages_after(pose_split_after), copy_modules=True)
        self.pose_neck = PoolBNNeck(trunk.num_features)
        self.pose_classifier = _linear_head(self.feature_dim, num_pose_classes)
        gender_dim = 2 * self.feature_dim if gender_input == "concat" else self.feature_dim
        self.gender_classifier = _linear_head(gender_dim, 2)

    def _gender_features(self, f1: Tensor, f2: Tensor) -> Tensor:
        if self.gender_input == "concat":
            return torch.cat([f1, f2], dim=1)
        return f1 if self.gender_input == "f1" else f2

    def forward(self, x: Tensor, attributes: bool = True) -> ReIDOutput:
        """Set `attributes=False` to skip the pose branch and the pose/gender heads.

        The TAD step uses only f1, f2 and the ID logits; skipping the pose branch there
        also keeps its BatchNorm statistics free of external-set images. (Under DDP such a
        step leaves parameters unused: wrap with find_unused_parameters=True.)
        """
        pose_input = None
        for name, stage in self.shared.named_children():
            x = stage(x)
            if name == self.pose_split_after:
                pose_input = x
        f1, f2 = self._branch_features(x)
        out = ReIDOutput(
            f1=f1, id_logits_f1=self.cal_classifier(f1), f2=f2, id_logits_f2=self.id_classifier(f2)
        )
        if not attributes:
            return out
        f3 = self.pose_neck(self.pose_branch(pose_input))
        return out._replace(
            f3=f3,
            pose_logits=self.pose_classifier(f3),
            gender_logits=self.gender_classifier(self._gender_features(f1, f2)),
        )


def build_model(
    arch: Literal["cal", "base", "rlq"],
    num_pids: int,
    backbone: str = "resnet50.tv_in1k",
    pretrained: bool = True,
    pretrained_weights: str | None = None,
    **arch_kwargs,
) -> CALModel | BaseModel | RLQModel:
    """Build a model on a fresh stride-1 trunk (see `create_trunk` for the weight options).

    `arch_kwargs` go to the model class: `split_after` (base, rlq); `pose_split_after`,
    `num_pose_classes` and `gender_input` (rlq). Options an architecture lacks raise.
    """
    classes = {"cal": CALModel, "base": BaseModel, "rlq": RLQModel}
    if arch not in classes:
        raise ValueError(f"arch must be one of {sorted(classes)}, got {arch!r}")
    trunk = create_trunk(backbone, pretrained, pretrained_weights)
    return classes[arch](trunk, num_pids, **arch_kwargs)
