"""Tests for rlq.model on a randomly initialised resnet18 (no downloads)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from rlq.model import (
    BaseModel,
    CALModel,
    CosineClassifier,
    PoolBNNeck,
    RLQModel,
    build_model,
    create_trunk,
    retrieval_state_dict,
)

NUM_PIDS = 7
DIM = 1024  # 2 * 512 channels of resnet18's layer4


def _model(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, NUM_PIDS, backbone="resnet18", pretrained=False, **kwargs)


def _images(batch: int = 4, height: int = 64, width: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def _same_values(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _shares_no_tensor(a: nn.Module, b: nn.Module) -> bool:
    ptrs_a = {t.data_ptr() for t in a.state_dict().values()}
    return not ptrs_a & {t.data_ptr() for t in b.state_dict().values()}


# --- shapes and outputs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "present"),
    [
        ("cal", {"f1", "id_logits_f1"}),
        ("base", {"f1", "id_logits_f1", "f2", "id_logits_f2"}),
        ("rlq", {"f1", "id_logits_f1", "f2", "id_logits_f2", "f3", "pose_logits", "gender_logits"}),
    ],
)
def test_output_shapes(arch: str, present: set[str]) -> None:
    model = _model(arch)
    assert type(model) is {"cal": CALModel, "base": BaseModel, "rlq": RLQModel}[arch]
    out = model(_images())
    expected = {
        "f1": (4, DIM), "f2": (4, DIM), "f3": (4, DIM), "id_logits_f1": (4, NUM_PIDS),
        "id_logits_f2": (4, NUM_PIDS), "pose_logits": (4, 16), "gender_logits": (4, 2),
    }  # fmt: skip
    for name, value in out._asdict().items():
        if name in present:
            assert value.shape == expected[name], name
        else:
            assert value is None, name
    assert model.feature_dim == DIM
    model.eval()
    retrieval_dim = DIM if arch == "cal" else 2 * DIM
    assert model.retrieval_features(_images()).shape == (4, retrieval_dim)


def test_rlq_without_attributes_skips_pose_branch() -> None:
    model = _model("rlq")
    calls = []
    model.pose_branch.register_forward_hook(lambda *_: calls.append(1))
    out = model(_images(), attributes=False)
    assert out.f3 is None and out.pose_logits is None and out.gender_logits is None
    assert out.f2.shape == (4, DIM) and not calls


@pytest.mark.parametrize(("gender_input", "in_features"), [("f1", DIM), ("f2", DIM), ("concat", 2 * DIM)])
def test_gender_head_input(gender_input: str, in_features: int) -> None:
    model = _model("rlq", gender_input=gender_input).eval()
    out = model(_images())
    assert model.gender_classifier.in_features == in_features
    features = {"f1": out.f1, "f2": out.f2, "concat": torch.cat([out.f1, out.f2], 1)}[gender_input]
    torch.testing.assert_close(out.gender_logits, model.gender_classifier(features))


def test_num_pose_classes() -> None:
    assert _model("rlq", num_pose_classes=26)(_images()).pose_logits.shape == (4, 26)


# --- structure ----------------------------------------------------------------------------


def test_base_branches_share_stem_and_own_layers() -> None:
    model = _model("base")
    assert [n for n, _ in model.shared.named_children()] == [
        "conv1", "bn1", "act1", "maxpool", "layer1", "layer2",
    ]  # fmt: skip
    assert [n for n, _ in model.cal_branch.named_children()] == ["layer3", "layer4"]
    assert [n for n, _ in model.id_branch.named_children()] == ["layer3", "layer4"]
    # Separate objects with identical initial values (deep copies of one trunk).
    assert _shares_no_tensor(model.cal_branch, model.id_branch)
    assert _same_values(model.cal_branch, model.id_branch)
    # The stem is one set of parameters that both branches train.
    out = model(_images())
    for feature in (out.f1, out.f2):
        model.zero_grad()
        feature.pow(2).sum().backward(retain_graph=True)
        assert model.shared.conv1.weight.grad.abs().sum() > 0
    model.zero_grad()
    out.f1.sum().backward()
    assert all(p.grad is None for p in model.id_branch.parameters())


def test_rlq_pose_branch_forks_after_layer1() -> None:
    model = _model("rlq")
    assert [n for n, _ in model.pose_branch.named_children()] == ["layer2", "layer3", "layer4"]
    assert _shares_no_tensor(model.pose_branch.layer2, model.shared.layer2)
    assert _same_values(model.pose_branch.layer2, model.shared.layer2)
    assert _same_values(model.pose_branch.layer3, model.cal_branch.layer3)
    seen = {}
    model.shared.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o))
    model.pose_branch.register_forward_pre_hook(lambda m, i: seen.update(pose_in=i[0]))
    model(_images())
    assert seen["pose_in"] is seen["layer1"]


@pytest.mark.parametrize(
    ("split_after", "pose_split_after", "branch", "pose_branch"),
    [
        ("layer1", "layer1", ["layer2", "layer3", "layer4"], ["layer2", "layer3", "layer4"]),
        ("layer3", "layer1", ["layer4"], ["layer2", "layer3", "layer4"]),
        ("layer3", "layer2", ["layer4"], ["layer3", "layer4"]),
    ],
)
def test_split_points(split_after: str, pose_split_after: str, branch: list, pose_branch: list) -> None:
    model = _model("rlq", split_after=split_after, pose_split_after=pose_split_after)
    assert list(model.shared.named_children())[-1][0] == split_after
    assert [n for n, _ in model.cal_branch.named_children()] == branch
    assert [n for n, _ in model.id_branch.named_children()] == branch
    assert [n for n, _ in model.pose_branch.named_children()] == pose_branch
    out = model(_images())
    assert out.f1.shape == out.f2.shape == out.f3.shape == (4, DIM)


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError, match="fork no later"):
        _model("rlq", split_after="layer1", pose_split_after="layer2")
    with pytest.raises(ValueError):
        _model("base", split_after="layer4")
    with pytest.raises(ValueError):
        _model("rlq", gender_input="f3")
    with pytest.raises(TypeError):
        _model("cal", split_after="layer2")  # vanilla CAL has no branches
    with pytest.raises(ValueError):
        _model("resnet")


def test_layer4_stride_one_without_dilation() -> None:
    model = _model("base").eval()
    sizes = {}
    for name, module in [*model.shared.named_children(), *model.cal_branch.named_children()]:
        module.register_forward_hook(lambda m, i, o, name=name: sizes.update({name: tuple(o.shape[2:])}))
    with torch.no_grad():
        model(_images(batch=1, height=384, width=192))
    assert sizes["maxpool"] == sizes["layer1"] == (96, 48)
    assert sizes["layer2"] == (48, 24)
    assert sizes["layer3"] == sizes["layer4"] == (24, 12)
    with torch.no_grad():
        model(_images(batch=1, height=128, width=64))
    assert sizes["layer4"] == (8, 4)
    for conv in model.cal_branch.layer4.modules():
        if isinstance(conv, nn.Conv2d):
            assert conv.stride == (1, 1) and conv.dilation == (1, 1)


def test_layer4_stride_bottleneck() -> None:
    trunk = create_trunk("resnet50", pretrained=False)
    assert trunk.layer4[0].conv2.stride == (1, 1)
    assert trunk.layer4[0].downsample[0].stride == (1, 1)
    assert trunk.layer4[0].conv2.dilation == (1, 1)
    assert trunk.layer3[0].conv2.stride == (2, 2)


# --- initialisation and weights --------------------------------------------------------------


def test_head_initialisation() -> None:
    torch.manual_seed(0)
    model = build_model("rlq", 3000, backbone="resnet18", pretrained=False)
    for head in (model.cal_classifier, model.id_classifier):
        assert abs(head.weight.std().item() - 0.001) < 1e-4
        assert torch.count_nonzero(head.bias) == 0
    for neck in (model.cal_neck, model.id_neck, model.pose_neck):
        assert abs(neck.bn.weight.mean().item() - 1.0) < 0.005
        assert abs(neck.bn.weight.std().item() - 0.02) < 0.005
        assert torch.count_nonzero(neck.bn.bias) == 0


def test_neck_is_max_then_avg_pool_then_bn() -> None:
    neck = PoolBNNeck(3).eval()
    x = torch.randn(2, 3, 4, 2)
    pooled = torch.cat([x.flatten(2).max(2).values, x.flatten(2).mean(2)], 1)
    bn = neck.bn
    expected = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(neck(x), expected)


def test_pretrained_weights_from_file(tmp_path) -> None:
    torch.manual_seed(3)
    reference = timm.create_model("resnet18", pretrained=False)  # with its fc, as saved on disk
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("rlq", NUM_PIDS, backbone="resnet18", pretrained_weights=str(path))
    torch.testing.assert_close(model.shared.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    for branch in (model.cal_branch, model.id_branch, model.pose_branch):
        assert _same_values(branch.layer4, reference.layer4)  # strides live outside the state dict
    assert _same_values(model.pose_branch.layer2, reference.layer2)


def test_pretrained_weights_mismatch_raises(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        create_trunk("resnet34", pretrained_weights=str(path))  # missing blocks
    with pytest.raises(ValueError, match="do not fit"):
        create_trunk("resnet50", pretrained_weights=str(path))  # shape mismatch
    with pytest.raises(ValueError, match="pretrained=False"):
        create_trunk("resnet18", pretrained=False, pretrained_weights=str(path))


# --- forward behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cal", "base", "rlq"])
def test_retrieval_features_match_manual_flip_sum(arch: str) -> None:
    model = _model(arch).eval()
    x = _images()

    def features(images: torch.Tensor) -> torch.Tensor:
        out = model(images)
        return out.f1 if arch == "cal" else torch.cat([out.f1, out.f2], 1)

    with torch.no_grad():
        summed = features(x) + features(x.flip(3))
        expected = summed / summed.norm(dim=1, keepdim=True)
        torch.testing.assert_close(model.retrieval_features(x), expected)


@pytest.mark.parametrize("arch", ["cal", "base", "rlq"])
def test_retrieval_weights_are_exactly_those_the_retrieval_feature_uses(arch: str) -> None:
    """What an export keeps (rlq.export): every parameter the feature's gradient reaches, and no other."""
    model = _model(arch).eval()
    weights = retrieval_state_dict(model)
    projection = torch.randn(model.retrieval_dim, generator=torch.Generator().manual_seed(2))
    (model.retrieval_features(_images()) @ projection).sum().backward()
    used = {name for name, p in model.named_parameters() if p.grad is not None}  # in the graph (timm zero-inits some)
    assert used == {name for name, _ in model.named_parameters() if name in weights}
    assert set(weights) - {name for name, _ in model.named_parameters()} == {  # the BatchNorm statistics of those
        name for name, _ in model.named_buffers() if name in weights}


def test_eval_mode_uses_running_statistics() -> None:
    model = _model("rlq")
    x = _images()
    bn = model.id_neck.bn
    model.eval()
    with torch.no_grad():
        batch, single = model(x), model(x[:1])
    for name in ("f1", "f2", "f3"):  # each sample independent of the rest of the batch
        torch.testing.assert_close(getattr(batch, name)[:1], getattr(single, name))
    assert torch.count_nonzero(bn.running_mean) == 0  # eval does not update statistics
    model.train()
    with torch.no_grad():
        train_out = model(x)
    assert torch.count_nonzero(bn.running_mean) > 0  # train updates them
    # Train-mode necks normalise with batch statistics: per-feature batch mean = bias = 0.
    torch.testing.assert_close(train_out.f2.mean(0), bn.bias.detach(), atol=1e-5, rtol=0)
    assert not torch.allclose(train_out.f2, batch.f2)


def test_bf16_autocast_forward_cpu() -> None:
    model = _model("rlq").eval()
    x = _images()
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            retrieval = model.retrieval_features(x)
    assert out.f2.dtype == torch.bfloat16 and retrieval.dtype == torch.float32
    for name in ("f1", "f2", "f3"):
        similarity = F.cosine_similarity(getattr(out, name).float(), getattr(reference, name), dim=1)
        assert similarity.min() > 0.99, name
    assert torch.isfinite(out.gender_logits.float()).all()


def test_channels_last_matches_contiguous() -> None:
    model = _model("rlq").eval()
    x = _images()
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for name in ("f1", "f2", "f3", "pose_logits"):
        torch.testing.assert_close(getattr(out, name), getattr(reference, name), atol=1e-4, rtol=1e-4)


def test_cosine_classifier() -> None:
    torch.manual_seed(0)
    classifier = CosineClassifier(5, 3)
    torch.testing.assert_close(classifier.weight.norm(dim=1), torch.ones(3))
    x = torch.randn(4, 5)
    expected = torch.tensor([[F.cosine_similarity(x[i], classifier.weight[j], dim=0).item()
                              for j in range(3)] for i in range(4)])  # fmt: skip
    torch.testing.assert_close(classifier(x), expected, atol=1e-6, rtol=1e-5)
    assert [n for n, _ in classifier.named_parameters()] == ["weight"]
