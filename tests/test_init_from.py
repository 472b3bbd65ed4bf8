"""--init-from: starting a model from another run's checkpoint, whatever its architecture and class counts."""

from __future__ import annotations

import pytest
import torch

from rlq.checkpoint import CheckpointError, init_from_checkpoint
from rlq.model import build_model


def _checkpoint(model, arch="base", backbone="resnet18"):
    return {"model": model.state_dict(), "arch": arch, "backbone": backbone}


def test_base_checkpoint_starts_every_branch_of_a_three_branch_model():
    torch.manual_seed(0)
    source = build_model("base", 9, "resnet18", pretrained=False)
    for p in source.parameters():  # make every tensor distinct from a fresh initialisation
        p.data.normal_()
    target = build_model("rlq", 5, "resnet18", pretrained=False)
    summary = init_from_checkpoint(target, _checkpoint(source), "src.pt")
    theirs, ours = source.state_dict(), target.state_dict()
    for key, value in ours.items():
        owner, _, rest = key.partition(".")
        if key in theirs and theirs[key].shape == value.shape:
            assert torch.equal(value, theirs[key]), key
        elif owner == "pose_branch":
            # layer2 comes from the shared part, layer3/4 from the ID branch (the preferred copy of those stages)
            stage_owner = "shared" if rest.startswith("layer2") else "id_branch"
            assert torch.equal(value, theirs[f"{stage_owner}.{rest}"]), key
    # Identity heads of another class count keep their fresh initialisation.
    assert not torch.equal(ours["id_classifier.weight"][:5], theirs["id_classifier.weight"][:5])
    assert ours["id_classifier.weight"].shape[0] == 5
    assert "src.pt" in summary and "left fresh" in summary and "id_classifier.weight" in summary


def test_same_architecture_and_classes_copies_everything():
    torch.manual_seed(1)
    source = build_model("base", 7, "resnet18", pretrained=False)
    target = build_model("base", 7, "resnet18", pretrained=False)
    summary = init_from_checkpoint(target, _checkpoint(source), "src.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert "0 left fresh" in summary


def test_another_resnet_is_refused_naming_the_file():
    source = build_model("base", 7, "resnet34", pretrained=False)
    target = build_model("base", 7, "resnet18", pretrained=False)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"--init-from 'other.pt' \(base, resnet34\) does not hold the trunk"):
        init_from_checkpoint(target, _checkpoint(source, backbone="resnet34"), "other.pt")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing half-loaded


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("given", ["last.pt", "exported folder"])
def test_training_script_starts_from_the_checkpoint(tiny_run, synthetic_root, tmp_path, monkeypatch, capsys, given):
    """train_base.py --init-from: before any step, the model is the checkpoint's (here a CAL model from a base run),
    whether given as the run's last.pt or as the folder `python -m rlq.export --format safetensors` made of it."""
    import train_base
    from conftest import TINY_RUN

    from rlq.checkpoint import load_checkpoint
    from rlq.export import main as export

    source_path = tiny_run / "last.pt"
    if given == "exported folder":
        source_path = export(["--checkpoint", str(source_path), "--format", "safetensors", "--output", str(tmp_path / "exported")])
    monkeypatch.setattr(train_base, "train_one_epoch", lambda *args: ({}, args[-1]))  # no step: the weights stay as loaded
    monkeypatch.setattr(train_base, "evaluate_and_select", lambda *args, best, **kwargs: (best, False))
    config = TINY_RUN | {"epochs": 1, "model": "cal"}
    train_base.main(train_base.Config(root=synthetic_root, output=tmp_path / "run", init_from=source_path, **config))
    source, started = load_checkpoint(tiny_run / "last.pt")["model"], load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    # The vanilla CAL model's single trunk takes the shared layers and the ID branch of the base model.
    assert torch.equal(started["backbone.layer1.0.conv1.weight"], source["shared.layer1.0.conv1.weight"])
    assert torch.equal(started["backbone.layer4.1.conv2.weight"], source["id_branch.layer4.1.conv2.weight"])
    assert f"initialised from '{source_path}'" in capsys.readouterr().out


def test_an_exported_folder_starts_the_same_model_but_its_heads(small_checkpoint, tmp_path):
    """--init-from an exported folder: every weight it holds is copied; the heads it leaves out start fresh."""
    from rlq.checkpoint import load_checkpoint
    from rlq.export import main as export

    folder = export(["--checkpoint", str(small_checkpoint), "--format", "safetensors", "--output", str(tmp_path / "exported")])
    source = load_checkpoint(small_checkpoint)["model"]
    target = build_model("base", 5, "resnet18", pretrained=False)
    summary = init_from_checkpoint(target, load_checkpoint(folder), folder)
    heads = ("cal_classifier.", "id_classifier.")
    assert all(torch.equal(value, source[key]) for key, value in target.state_dict().items() if not key.startswith(heads))
    assert not any(torch.equal(target.state_dict()[f"{head}weight"], source[f"{head}weight"]) for head in heads)
    assert "4 left fresh" in summary  # the weight and bias of both identity heads
