"""train_cgal.py: a tiny run on the synthetic dataset, attribute-file errors and the ablation switches."""

from __future__ import annotations

import json
import shutil
import re

import pytest
import torch
from conftest import TINY_RUN

import train_cgal
from rlq.attributes import AttributeFileError, label_training_samples
from rlq.checkpoint import load_checkpoint
from rlq.data import load_dataset
from rlq.model import build_model
from train_cgal import Config, main
from train_rlq import load_teacher

CAP_TERMS = {"id_f1", "id_f2", "pose", "gender", "kl", "disentangle_f2", "triplet", "total",
             "pose_accuracy", "gender_accuracy"}  # the heads' training accuracies are logged beside the losses
ADVERSARIAL_TERMS = {"clothes_discriminator", "cal", "clothes_accuracy_within_id"}


@pytest.fixture(scope="module")
def cgal_run(synthetic_root, attribute_files, tmp_path_factory):
    gender_csv, pose_csv = attribute_files
    output = tmp_path_factory.mktemp("cgal")
    main(Config(root=synthetic_root, output=output, gender_csv=gender_csv, pose_csv=pose_csv, **TINY_RUN))
    yield output
    shutil.rmtree(output, ignore_errors=True)  # its checkpoints are large: CI's disk is not


def test_run_trains_every_cap_term_evaluates_and_checkpoints(cgal_run):
    metrics = json.loads((cgal_run / "metrics.json").read_text())
    assert set(metrics["train"][0]) - {"epoch", "steps", "lr", "seconds"} == CAP_TERMS  # before --cal-start-epoch
    assert set(metrics["train"][1]) - {"epoch", "steps", "lr", "seconds"} == CAP_TERMS | ADVERSARIAL_TERMS
    assert [e["epoch"] for e in metrics["evaluations"]] == [0, 1] and set(metrics["evaluations"][0]["results"]) == {"standard", "cc", "sc"}
    last = load_checkpoint(cgal_run / "last.pt")
    assert (cgal_run / "best.pt").is_file() and last["epoch"] == 2
    assert last["arch"] == "rlq" and last["arch_kwargs"]["num_pose_classes"] == 16 and last["arch_kwargs"]["gender_input"] == "f2"


def test_checkpoint_serves_as_a_frozen_teacher(cgal_run):
    student = build_model("rlq", 30, "resnet18", pretrained=False)
    teacher = load_teacher(cgal_run / "best.pt", student, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_missing_attribute_rows_are_a_clear_error_unless_zero_is_asked_for(synthetic_root, attribute_files, tmp_path):
    gender_csv, pose_csv = attribute_files
    train = load_dataset("synthetic", synthetic_root).train
    lines = pose_csv.read_text().splitlines(keepends=True)
    dropped = lines[1].split(",")[1]
    short_pose = tmp_path / "pose.csv"
    short_pose.write_text("".join(lines[:1] + lines[2:]))
    both = ("gender", "pose")
    with pytest.raises(AttributeFileError, match=re.escape(f"1 training images missing from '{short_pose}' [R_LA_15] (first: {dropped})")):
        label_training_samples(train, both, gender_csv, short_pose)
    labelled = label_training_samples(train, both, gender_csv, short_pose, missing="zero")
    assert next(s for s in labelled if s.key == dropped).pose == 0

    short_gender = tmp_path / "gender.csv"
    pid = train[0].pid_key
    short_gender.write_text("".join(line for line in gender_csv.read_text().splitlines(keepends=True) if f",{pid}," not in line))
    with pytest.raises(AttributeFileError, match=re.escape(f"1 training identities missing from '{short_gender}' (first: {pid})")):
        label_training_samples(train, both, short_gender, pose_csv)
    with pytest.raises(AttributeFileError, match="--attributes pose needs --pose-csv"):
        label_training_samples(train, both, gender_csv, None)


@pytest.mark.parametrize(("switches", "terms"), [
    ({"attributes": ("gender",)}, {"id_f1", "id_f2", "gender", "kl", "triplet", "total", "gender_accuracy"}),
    ({"attributes": ("pose",), "disentangle": "both"},
     {"id_f1", "id_f2", "pose", "kl", "disentangle_f1", "disentangle_f2", "triplet", "total", "pose_accuracy"}),
    ({"gender_input": "concat", "disentangle": "f1"}, CAP_TERMS - {"disentangle_f2"} | {"disentangle_f1"}),
])
def test_ablation_switches_choose_the_loss_terms(synthetic_root, attribute_files, tmp_path, monkeypatch, switches, terms):
    monkeypatch.setattr(train_cgal, "evaluate_and_select", lambda *args, best, **kwargs: (best, False))
    gender_csv, pose_csv = attribute_files
    options = TINY_RUN | {"epochs": 1, "max_steps_per_epoch": 1, "cal_start_epoch": 5}
    main(Config(root=synthetic_root, output=tmp_path, gender_csv=gender_csv, pose_csv=pose_csv, **options, **switches))
    last = load_checkpoint(tmp_path / "last.pt")
    assert set(last["history"]["train"][0]) - {"epoch", "steps", "lr", "seconds"} == terms
    gender_inputs = 2 * 1024 if switches.get("gender_input") == "concat" else 1024
    assert last["model"]["gender_classifier.weight"].shape == (2, gender_inputs)
