"""Checkpoints in the authors' format (method.md section 8), and their forward pass, written independently of rlq.

Their models are `nn.Sequential`s of torchvision ResNet children (conv1, bn1, relu, maxpool,
layer1..layer4 = indices 0..7) with layer4's first block at stride 1, so this module builds
them from torchvision, names the parts as they do and randomises every weight and BatchNorm
statistic. `features` is their test-time feature: normalise(f(x) + f(flipped x)), with
f = concat(BN(concat(maxpool, avgpool)) of each branch), f1 before f2.
"""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _stride_one_layer4(resnet: torchvision.models.ResNet) -> None:
    block = resnet.layer4[0]
    strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
    strided.stride = (1, 1)
    block.downsample[0].stride = (1, 1)


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Random BatchNorm affine parameters and running statistics (torchvision's init leaves them 1/0)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=generator)
                m.bias.normal_(0.0, 0.01, generator=generator)


class _Classifier(nn.Module):
    """Their identity classifiers wrap the Linear layer as `.classifier`."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)


class AuthorsModel(nn.Module):
    """The authors' vanilla CAL ("cal"), two-branch ("base") or three-branch ("rlq") model, under their names.

    `common_layers` layers are shared (base, rlq); the pose branch (rlq) holds the last `pose_layers` layers.
    """

    def __init__(self, arch: str, depth: int = 18, num_pids: int = 11, common_layers: int = 2, pose_layers: int = 3,
                 num_pose_classes: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        _stride_one_layer4(resnet)
        children = list(resnet.children())[:8]  # conv1, bn1, relu, maxpool, layer1..layer4
        channels = 2 * resnet.fc.in_features  # max pool ++ avg pool
        self.arch = arch
        if arch == "cal":
            self.base = nn.Sequential(*children)
            self.bn = nn.BatchNorm1d(channels)
        else:
            self.common = nn.Sequential(*children[: 4 + common_layers])
            self.branch1 = nn.Sequential(*copy.deepcopy(children[4 + common_layers :]))
            self.branch2 = nn.Sequential(*copy.deepcopy(children[4 + common_layers :]))
            self.bn1 = nn.BatchNorm1d(channels)
            self.bn2 = nn.BatchNorm1d(channels)
            self.identity_classifier = _Classifier(channels, num_pids)
        if arch == "rlq":
            self.pose_fork = 4 - pose_layers  # common[:4 + pose_fork] feeds the pose branch
            self.branch3 = nn.Sequential(*copy.deepcopy(children[8 - pose_layers :]))
            self.bn3 = nn.BatchNorm1d(channels)
            self.identity_classifier2 = _Classifier(channels, num_pose_classes)
        # Saved outside model_state_dict: the identity classifier and the clothes classifier on f1.
        self.f1_classifier = _Classifier(channels, num_pids)
        self.clothes_weight = torch.randn(7, channels)
        _randomise(self, torch.Generator().manual_seed(seed))
        self.eval()

    def state_dicts(self) -> dict:
        model_state = {k: v for k, v in self.state_dict().items() if not k.startswith("f1_classifier.")}
        return {
            "model_state_dict": model_state,
            "classifier_state_dict": self.f1_classifier.state_dict(),
            "clothes_classifier_state_dict": {"weight": self.clothes_weight},
            "rank1": np.float64(0.4321),  # their evaluation returns numpy scalars
            "epoch": 59,
        }

    def save(self, path: Path) -> Path:
        torch.save(self.state_dicts(), path)
        return path

    @staticmethod
    def _neck(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        return bn(torch.cat([F.adaptive_max_pool2d(x, 1).flatten(1), F.adaptive_avg_pool2d(x, 1).flatten(1)], dim=1))

    def branch_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """f (cal) or f1, f2 and, for rlq, f3."""
        if self.arch == "cal":
            return {"f1": self._neck(self.bn, self.base(x))}
        shared = self.common(x)
        out = {"f1": self._neck(self.bn1, self.branch1(shared)), "f2": self._neck(self.bn2, self.branch2(shared))}
        if self.arch == "rlq":
            out["f3"] = self._neck(self.bn3, self.branch3(self.common[: 4 + self.pose_fork](x)))
        return out

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Their retrieval feature: normalise(f(x) + f(flip x)), f = concat(f1, f2) (or f for CAL)."""

        def f(images: torch.Tensor) -> torch.Tensor:
            out = self.branch_features(images)
            return torch.cat([out["f1"], out["f2"]], dim=1) if "f2" in out else out["f1"]

        return F.normalize(f(x) + f(torch.flip(x, dims=[3])), dim=1)


def as_written_under_numpy1(path: Path) -> Path:
    """Rewrite a torch.save file as numpy 1.x would have pickled its numpy scalars (numpy.core, not numpy._core)."""
    with zipfile.ZipFile(path) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for name, data in entries.items():
            if name.endswith("/data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path
