"""rlq.authors: the authors' checkpoints load strictly, give their model's features, and fail clearly when they do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import tyro
from authors_format import AuthorsModel, as_written_under_numpy1
from conftest import REPO

import evaluate
from evaluate import Args
from rlq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:authors' checkpoint .* has no gender head:UserWarning")

RLQ_DEFAULTS = {"split_after": "layer2", "pose_split_after": "layer1", "gender_input": "f2", "num_pose_classes": 16}


def _load(path: Path) -> tuple[dict, torch.nn.Module]:
    checkpoint = load_checkpoint(path)
    return checkpoint, model_from_checkpoint(checkpoint, path).eval()


def _save(state_dicts: dict, path: Path) -> Path:
    torch.save(state_dicts, path)
    return path


@pytest.mark.parametrize(
    ("arch", "depth", "common_layers", "pose_layers", "arch_kwargs"),
    [
        ("cal", 18, 2, 3, {}),
        ("base", 18, 2, 3, {"split_after": "layer2"}),
        ("rlq", 18, 2, 3, RLQ_DEFAULTS),
        ("rlq", 18, 3, 2, RLQ_DEFAULTS | {"split_after": "layer3", "pose_split_after": "layer2"}),
        ("rlq", 50, 2, 3, RLQ_DEFAULTS),  # Bottleneck blocks, as released
    ],
)
def test_authors_checkpoint_gives_their_features(tmp_path, arch, depth, common_layers, pose_layers, arch_kwargs):
    theirs = AuthorsModel(arch, depth, common_layers=common_layers, pose_layers=pose_layers)
    checkpoint, model = _load(theirs.save(tmp_path / "model.pth.tar"))
    assert (checkpoint["arch"], checkpoint["backbone"], checkpoint["arch_kwargs"]) == (arch, f"resnet{depth}.tv_in1k", arch_kwargs)
    assert checkpoint["classes"] == {"num_pids": 11, "num_clothes": 7}
    assert checkpoint["dataset"] is None and checkpoint["input_size"] == [384, 192]
    assert checkpoint["config"]["authors_epoch"] == 59 and checkpoint["config"]["authors_rank1"] == pytest.approx(0.4321)
    assert torch.equal(checkpoint["clothes_classifier"]["weight"], theirs.clothes_weight)

    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.retrieval_features(x), theirs.features(x), rtol=0, atol=1e-5)
        out, ref = model(x), theirs.branch_features(x)
        for name, feature in ref.items():  # f1, f2, f3: every branch, neck included
            torch.testing.assert_close(getattr(out, name), feature, rtol=0, atol=1e-4)
        torch.testing.assert_close(out.id_logits_f1, theirs.f1_classifier.classifier(ref["f1"]), rtol=0, atol=1e-5)
        if arch != "cal":
            torch.testing.assert_close(out.id_logits_f2, theirs.identity_classifier.classifier(ref["f2"]), rtol=0, atol=1e-5)
        if arch == "rlq":
            torch.testing.assert_close(out.pose_logits, theirs.identity_classifier2.classifier(ref["f3"]), rtol=0, atol=1e-5)


def test_resnet50_keys_map_by_name_and_the_missing_gender_head_is_announced(tmp_path):
    theirs = AuthorsModel("rlq", 50)
    path = theirs.save(tmp_path / "rlq.pth.tar")
    with pytest.warns(UserWarning, match="has no gender head"):
        checkpoint = load_checkpoint(path)
    state, ours = theirs.state_dict(), checkpoint["model"]
    for their_key, our_key in [
        ("common.0.weight", "shared.conv1.weight"),
        ("common.1.running_var", "shared.bn1.running_var"),
        ("common.4.2.conv3.weight", "shared.layer1.2.conv3.weight"),
        ("common.5.3.bn2.bias", "shared.layer2.3.bn2.bias"),
        ("branch1.0.5.conv3.weight", "cal_branch.layer3.5.conv3.weight"),
        ("branch1.1.0.downsample.1.running_var", "cal_branch.layer4.0.downsample.1.running_var"),
        ("branch2.1.2.bn3.weight", "id_branch.layer4.2.bn3.weight"),
        ("branch3.0.0.downsample.0.weight", "pose_branch.layer2.0.downsample.0.weight"),
        ("branch3.2.1.conv2.weight", "pose_branch.layer4.1.conv2.weight"),
        ("bn1.running_mean", "cal_neck.bn.running_mean"),
        ("bn2.weight", "id_neck.bn.weight"),
        ("bn3.bias", "pose_neck.bn.bias"),
        ("identity_classifier.classifier.weight", "id_classifier.weight"),
        ("identity_classifier2.classifier.bias", "pose_classifier.bias"),
        ("f1_classifier.classifier.weight", "cal_classifier.weight"),  # saved as classifier_state_dict['classifier.weight']
    ]:
        assert torch.equal(ours[our_key], state[their_key]), their_key
    assert ours["shared.layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # Bottleneck, not BasicBlock
    assert {k for k in ours if k.startswith("gender_classifier.")} == {"gender_classifier.weight", "gender_classifier.bias"}


def test_rank1_pickled_by_numpy1_loads_without_arbitrary_pickle(tmp_path):
    path = as_written_under_numpy1(AuthorsModel("cal").save(tmp_path / "cal.pth.tar"))
    assert load_checkpoint(path)["config"]["authors_rank1"] == pytest.approx(0.4321)


def test_truncated_file_is_a_clear_error_naming_it(tmp_path):
    full = AuthorsModel("base").save(tmp_path / "full.pth.tar").read_bytes()
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint '{path}'.*truncated"):
        load_checkpoint(path)


def test_missing_branch_is_listed_by_their_key_names(tmp_path):
    state_dicts = AuthorsModel("base").state_dicts()
    removed = [k for k in state_dicts["model_state_dict"] if k.startswith("branch2.")]
    state_dicts["model_state_dict"] = {k: v for k, v in state_dicts["model_state_dict"].items() if k not in removed}
    path = _save(state_dicts, tmp_path / "no_branch2.pth.tar")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"'{path}'" in message and "two-branch base model" in message
    assert f"missing from the checkpoint ({len(removed)}):\n    branch2.0.0.conv1.weight\n" in message


def test_unknown_keys_are_listed(tmp_path):
    state_dicts = AuthorsModel("rlq").state_dicts()
    state_dicts["model_state_dict"]["attention.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"three-branch RLQ model but has keys with no counterpart.*'attention\.weight'"):
        load_checkpoint(_save(state_dicts, tmp_path / "unknown.pth.tar"))

    state_dicts = AuthorsModel("rlq").state_dicts()
    state_dicts["model_state_dict"]["branch1.0.0.extra.weight"] = torch.zeros(3)  # inside a known module
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint \(1\):\n\s+branch1\.0\.0\.extra\.weight"):
        load_checkpoint(_save(state_dicts, tmp_path / "extra.pth.tar"))


def test_wrong_shapes_are_listed_with_both_shapes(tmp_path):
    state_dicts = AuthorsModel("rlq").state_dicts()
    state_dicts["model_state_dict"]["bn2.weight"] = torch.ones(10)
    state_dicts["model_state_dict"]["identity_classifier.classifier.weight"] = torch.zeros(12, 1024)
    state_dicts["clothes_classifier_state_dict"]["weight"] = torch.zeros(7, 100)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(_save(state_dicts, tmp_path / "shapes.pth.tar"))
    message = str(error.value)
    assert "bn2.weight: checkpoint 10, model 1024" in message
    assert "identity_classifier.classifier.weight: checkpoint 12x1024, model 11x1024" in message
    assert "clothes_classifier_state_dict: {'weight': '7x100'}, expected {'weight': num_clothes x 1024}" in message


def test_files_of_no_known_architecture_or_lacking_entries_are_refused(tmp_path):
    state_dicts = AuthorsModel("cal").state_dicts()
    state_dicts["model_state_dict"] = {"features.0.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"none of their architectures.*\['features'\]"):
        load_checkpoint(_save(state_dicts, tmp_path / "other.pth.tar"))
    state_dicts = AuthorsModel("cal").state_dicts()
    del state_dicts["clothes_classifier_state_dict"]
    with pytest.raises(CheckpointError, match=r"lacks the entries \['clothes_classifier_state_dict'\]"):
        load_checkpoint(_save(state_dicts, tmp_path / "partial.pth.tar"))


def test_evaluate_needs_a_dataset_for_an_authors_checkpoint(tmp_path):
    path = AuthorsModel("cal").save(tmp_path / "cal.pth.tar")
    with pytest.raises(CheckpointError, match="does not record the dataset.*pass --dataset"):
        evaluate.main(Args(checkpoint=path, num_workers=0))


def test_converter_round_trips(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from convert_authors_checkpoint import Args as ConvertArgs, main as convert

    src, out = AuthorsModel("rlq").save(tmp_path / "rlq.pth.tar"), tmp_path / "converted" / "rlq.pt"
    with pytest.warns(UserWarning, match="has no gender head"):
        convert(tyro.cli(ConvertArgs, args=["--checkpoint", str(src), "--output", str(out)]))
    assert "three-branch RLQ model (resnet18.tv_in1k, split after layer2, pose split after layer1, 11 identities)" in capsys.readouterr().out

    converted = torch.load(out, weights_only=True)
    assert "model" in converted and "model_state_dict" not in converted
    assert converted["config"]["authors_checkpoint"] == str(src)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        direct, from_converted = _load(src)[1].retrieval_features(x), _load(out)[1].retrieval_features(x)
    assert torch.equal(direct, from_converted)
    assert [p.name for p in out.parent.iterdir()] == ["rlq.pt"]  # written atomically: no temporary file left

    ours = _save({"model": {}, "config": {"epochs": 60}}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="is a checkpoint of this project, not one of the authors'"):
        convert(ConvertArgs(checkpoint=ours, output=tmp_path / "again.pt"))
