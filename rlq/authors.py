"""The authors' released checkpoints (.pth.tar), read into this project's models and checkpoint format.

Their file (method.md section 8) is a `torch.save`d dict: `model_state_dict`,
`classifier_state_dict` (the identity classifier on f1: `classifier.weight/bias`),
`clothes_classifier_state_dict` (`weight`), `rank1` and `epoch` (0-based). Their models are
`nn.Sequential`s of torchvision ResNet children (0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7
layer1..layer4), so their keys map onto ours by renaming prefixes:

    vanilla CAL    base.{0,1,4..7}  -> backbone.{conv1,bn1,layer1..layer4}    bn -> neck.bn
    two-branch     common.{0,1,4..} -> shared.{conv1,bn1,layer1..}            bn1 -> cal_neck.bn
                   branch1.{0,1,..} -> cal_branch.{layers after the split}   bn2 -> id_neck.bn
                   branch2.{0,1,..} -> id_branch.{layers after the split}
                   identity_classifier.classifier -> id_classifier
    three-branch   the above, plus branch3.{0,..} -> pose_branch.{layers after the pose split},
                   bn3 -> pose_neck.bn, identity_classifier2.classifier -> pose_classifier
    all            classifier_state_dict classifier -> classifier (CAL) / cal_classifier

Inside the layers the names are torchvision's, which timm's ResNet shares. Everything the model
needs is inferred from the tensors: the architecture from the top-level names, the split points
from which layers `common` and `branch3` hold, the ResNet depth, block type and width from the
layers' blocks, and the class counts from the classifiers. Their forward pass is ours (stride-1
layer4, concat(max pool, avg pool) -> BatchNorm1d, test feature = normalise(f(x) + f(flip x)),
concat(f1, f2) for the branched models), so the loaded weights give the features their model gives.

They do not save the gender head of the three-branch model: ours keeps a fixed (seeded) random
initialisation, and a warning says so. It is not part of the retrieval feature.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from rlq.checkpoint_format import CheckpointError, mismatch_report, provenance
from rlq.model import build_model

__all__ = ["INPUT_SIZE", "convert_authors_checkpoint", "describe"]

INPUT_SIZE = (384, 192)  # the authors' input (height, width); their files do not store it
_ENTRIES = ("model_state_dict", "classifier_state_dict", "clothes_classifier_state_dict")
# Their identity classifier on f1 is saved outside model_state_dict; its keys get this prefix here.
_F1_CLASSIFIER = "classifier_state_dict:"
_LAYERS = ("layer1", "layer2", "layer3", "layer4")
_TORCHVISION_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
_ARCH_NAMES = {"cal": "vanilla CAL model", "base": "two-branch base model", "rlq": "three-branch RLQ model"}
_GENDER_HEAD = "gender_classifier."

# (block type, blocks per layer, layer1's first conv width) -> timm name. The authors' trunk had
# torchvision's ImageNet weights (the name's tag); with pretrained=False only the architecture matters.
_RESNETS = {
    ("basic", (2, 2, 2, 2), 64): "resnet18.tv_in1k",
    ("basic", (3, 4, 6, 3), 64): "resnet34.tv_in1k",
    ("bottleneck", (3, 4, 6, 3), 64): "resnet50.tv_in1k",
    ("bottleneck", (3, 4, 23, 3), 64): "resnet101.tv_in1k",
    ("bottleneck", (3, 8, 36, 3), 64): "resnet152.tv_in1k",
    ("bottleneck", (3, 4, 6, 3), 128): "wide_resnet50_2.tv_in1k",
    ("bottleneck", (3, 4, 23, 3), 128): "wide_resnet101_2.tv_in1k",
}


def _flat_state(raw: dict, source: Path) -> dict[str, Tensor]:
    """model_state_dict plus the f1 identity classifier, as one dict of tensors."""
    missing = [entry for entry in _ENTRIES if not isinstance(raw.get(entry), dict)]
    if missing:
        raise CheckpointError(f"authors' checkpoint '{source}' lacks the entries {missing} (it has {sorted(raw)})")
    state = dict(raw["model_state_dict"]) | {_F1_CLASSIFIER + k: v for k, v in raw["classifier_state_dict"].items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"authors' checkpoint '{source}': these entries are not tensors: {not_tensors}")
    return state


def _top_level(state: dict[str, Tensor]) -> set[str]:
    return {key.split(".", 1)[0] for key in state if not key.startswith(_F1_CLASSIFIER)}


def _arch(state: dict[str, Tensor], source: Path) -> str:
    names = _top_level(state)
    if "base" in names:
        return "cal"
    if "common" in names:
        return "rlq" if names & {"branch3", "bn3", "identity_classifier2"} else "base"
    raise CheckpointError(
        f"authors' checkpoint '{source}' is none of their architectures: expected base.* keys (vanilla CAL) or "
        f"common.*/branch1.*/branch2.* keys (two- and three-branch models), found top-level names {sorted(names)}"
    )


def _indices(state: dict[str, Tensor], prefix: str) -> list[int]:
    """Sorted distinct child indices i of the keys `{prefix}.{i}.*`."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for key in state if (m := pattern.match(key))})


def _split_after(state: dict[str, Tensor], source: Path) -> str:
    """The last layer of `common` (the CAL and ID branches hold the layers after it)."""
    last = max(_indices(state, "common"), default=None)
    stages = {_TORCHVISION_INDEX[layer]: layer for layer in _LAYERS[:3]}
    if last not in stages:
        raise CheckpointError(
            f"authors' checkpoint '{source}': common.* must end with layer1, layer2 or layer3 (common.4, .5 or .6), "
            f"found common.{last}"
        )
    return stages[last]


def _pose_split_after(state: dict[str, Tensor], source: Path) -> str:
    """The layer the pose branch forks after: branch3 holds the 1-3 layers after it."""
    count = len(_indices(state, "branch3"))
    if not 1 <= count <= 3:
        raise CheckpointError(f"authors' checkpoint '{source}': branch3.* must hold 1 to 3 layers, found {count}")
    return _LAYERS[3 - count]


def _trunk_pairs(theirs: str, ours: str, layers: tuple[str, ...]) -> list[tuple[str, str]]:
    parts = ("conv1", "bn1", *layers)
    return [(f"{theirs}.{_TORCHVISION_INDEX[part]}.", f"{ours}.{part}.") for part in parts]


def _branch_pairs(theirs: str, ours: str, after: str) -> list[tuple[str, str]]:
    layers = _LAYERS[_LAYERS.index(after) + 1 :]
    return [(f"{theirs}.{i}.", f"{ours}.{layer}.") for i, layer in enumerate(layers)]


def _prefix_pairs(arch: str, arch_kwargs: dict) -> list[tuple[str, str]]:
    """(their key prefix, our key prefix) for every module of the architecture."""
    if arch == "cal":
        return _trunk_pairs("base", "backbone", _LAYERS) + [("bn.", "neck.bn."), (f"{_F1_CLASSIFIER}classifier.", "classifier.")]
    split = arch_kwargs["split_after"]
    pairs = _trunk_pairs("common", "shared", _LAYERS[: _LAYERS.index(split) + 1])
    pairs += _branch_pairs("branch1", "cal_branch", split) + _branch_pairs("branch2", "id_branch", split)
    pairs += [("bn1.", "cal_neck.bn."), ("bn2.", "id_neck.bn."), ("identity_classifier.classifier.", "id_classifier."),
              (f"{_F1_CLASSIFIER}classifier.", "cal_classifier.")]
    if arch == "rlq":
        pairs += _branch_pairs("branch3", "pose_branch", arch_kwargs["pose_split_after"])
        pairs += [("bn3.", "pose_neck.bn."), ("identity_classifier2.classifier.", "pose_classifier.")]
    return pairs


def _renamed(key: str, pairs: list[tuple[str, str]]) -> str | None:
    """`key` with the first matching prefix replaced (pairs as (from, to)); None when none matches."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _backbone(state: dict[str, Tensor], source: Path) -> str:
    """The timm ResNet whose blocks the (renamed) state holds: block type, blocks per layer, width."""
    pattern = re.compile(r"(?:^|\.)(layer[1-4])\.(\d+)\.")
    blocks: dict[str, set[int]] = {layer: set() for layer in _LAYERS}
    for key in state:
        if m := pattern.search(key):
            blocks[m.group(1)].add(int(m.group(2)))
    depths = tuple(len(blocks[layer]) for layer in _LAYERS)
    block = "bottleneck" if any(re.search(r"layer\d\.\d+\.conv3\.", key) for key in state) else "basic"
    width_key = next((k for k in state if k.endswith("layer1.0.conv1.weight")), None)
    width = state[width_key].shape[0] if width_key else None
    if (block, depths, width) not in _RESNETS:
        raise CheckpointError(
            f"authors' checkpoint '{source}' holds a ResNet this project cannot build: {block} blocks, {depths} blocks "
            f"per layer, layer1 width {width} (known: {sorted(_RESNETS.values())})"
        )
    return _RESNETS[(block, depths, width)]


def _classes(raw: dict, arch: str, state: dict[str, Tensor], source: Path) -> tuple[dict, dict]:
    """(classes, extra arch_kwargs) from the classifiers' output sizes."""
    f1_classifier = raw["classifier_state_dict"].get("classifier.weight")
    clothes = raw["clothes_classifier_state_dict"].get("weight")
    if f1_classifier is None or clothes is None:
        raise CheckpointError(
            f"authors' checkpoint '{source}' lacks classifier_state_dict['classifier.weight'] or "
            "clothes_classifier_state_dict['weight'] (their identity and clothes classifiers on f1)"
        )
    classes = {"num_pids": f1_classifier.shape[0], "num_clothes": clothes.shape[0]}
    if arch != "rlq":
        return classes, {}
    pose = state.get("identity_classifier2.classifier.weight")
    if pose is None:
        raise CheckpointError(
            f"authors' checkpoint '{source}' lacks identity_classifier2.classifier.weight (the pose classifier)"
        )
    return classes, {"num_pose_classes": pose.shape[0]}


def describe(checkpoint: dict) -> str:
    """One line saying which model a (converted) checkpoint holds."""
    kwargs = checkpoint["arch_kwargs"]
    splits = "".join(f", {name.replace('_', ' ')} {kwargs[name]}"
                     for name in ("split_after", "pose_split_after") if name in kwargs)
    identities = checkpoint["classes"]["num_pids"]
    return f"{_ARCH_NAMES[checkpoint['arch']]} ({checkpoint['backbone']}{splits}, {identities} identities)"


def _arch_and_splits(state: dict[str, Tensor], source: Path) -> tuple[str, dict]:
    """The architecture and its split points, from the top-level names and what `common` and `branch3` hold."""
    arch = _arch(state, source)
    arch_kwargs = {}
    if arch != "cal":
        arch_kwargs["split_after"] = _split_after(state, source)
    if arch == "rlq":
        arch_kwargs |= {"pose_split_after": _pose_split_after(state, source), "gender_input": "f2"}
    return arch, arch_kwargs


def _our_names(state: dict[str, Tensor], pairs: list[tuple[str, str]], arch: str, source: Path) -> dict[str, Tensor]:
    unknown = [key for key in state if _renamed(key, pairs) is None]
    if unknown:
        raise CheckpointError(
            f"authors' checkpoint '{source}' looks like their {_ARCH_NAMES[arch]} but has keys with no counterpart in it "
            f"({len(unknown)}): {unknown[:20]}"
        )
    return {_renamed(key, pairs): value for key, value in state.items()}


def convert_authors_checkpoint(raw: dict, source: Path) -> dict:
    """The authors' checkpoint dict (as torch.load returns it) as a checkpoint of this project.

    Raises CheckpointError naming the file and the keys when anything does not map: unknown
    keys, keys the architecture needs but the file lacks, and tensors of the wrong shape.
    """
    state = _flat_state(raw, source)
    arch, arch_kwargs = _arch_and_splits(state, source)
    pairs = _prefix_pairs(arch, arch_kwargs)
    ours = _our_names(state, pairs, arch, source)
    backbone = _backbone(ours, source)
    classes, class_kwargs = _classes(raw, arch, state, source)
    arch_kwargs |= class_kwargs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the gender head the file lacks gets the same initialisation every time
        model = build_model(arch, classes["num_pids"], backbone, pretrained=False, **arch_kwargs)
    own = model.state_dict()
    ours |= {k: v for k, v in own.items() if k.startswith(_GENDER_HEAD)}
    clothes = raw["clothes_classifier_state_dict"]
    checkpoint = {"model": ours, "clothes_classifier": dict(clothes)} | provenance(
        config={"authors_checkpoint": str(source), "authors_epoch": raw.get("epoch"),
                "authors_rank1": _plain_number(raw.get("rank1"))},
        arch=arch,
        backbone=backbone,
        arch_kwargs=arch_kwargs,
        classes=classes,
        dataset=None,
        input_size=INPUT_SIZE,
    )
    theirs = [(new, old) for old, new in pairs]
    problems = [mismatch_report(own, ours, name=lambda key: _renamed(key, theirs) or key),
                _clothes_classifier_problem(clothes, model.feature_dim)]
    if any(problems):
        report = "\n".join(p for p in problems if p)
        raise CheckpointError(f"authors' checkpoint '{source}' does not fit the {describe(checkpoint)} it describes:\n{report}")
    if arch == "rlq":
        warnings.warn(
            f"authors' checkpoint '{source}' has no gender head (the authors do not save it): gender_classifier keeps a "
            "fixed random initialisation; retrieval features do not use it",
            stacklevel=3,  # the caller of load_checkpoint
        )
    return checkpoint


def _clothes_classifier_problem(clothes: dict[str, Tensor], feature_dim: int) -> str:
    """'' when the clothes classifier is one [num_clothes, feature_dim] weight (our CosineClassifier), else what is wrong."""
    if list(clothes) == ["weight"] and clothes["weight"].shape[1:] == (feature_dim,):
        return ""
    found = {k: "x".join(map(str, v.shape)) for k, v in clothes.items()}
    return f"  clothes_classifier_state_dict: {found}, expected {{'weight': num_clothes x {feature_dim}}}"


def _plain_number(value) -> float | int | None:
    """Their rank-1 is a numpy scalar; checkpoints of this project hold plain Python values."""
    return None if value is None else value.item() if hasattr(value, "item") else value
