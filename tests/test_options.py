"""Option values and output paths the scripts cannot use: refused before any work, with a line naming the option."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_RUN, run_here
from test_hardening import TINY_FLAGS, one_error_line

import evaluate
import preprocess_masks
import preprocess_pose
import train_base
import train_cgal
import train_rlq
from rlq import export, seeds, synthetic
from rlq.options import OptionError, at_least, between, check_training, output_file, output_folder, positive

# --- the checks themselves -------------------------------------------------------------------------------------------


def test_at_least_names_the_flag_and_checks_every_element():
    at_least(1, batch_size=1, max_steps_per_epoch=None, milestones=(1, 5))
    with pytest.raises(OptionError, match=r"^--batch-size 0: expected 1 or more$"):
        at_least(1, batch_size=0)
    with pytest.raises(OptionError, match=r"^--milestones 20 -5: expected 1 or more$"):
        at_least(1, milestones=(20, -5))


def test_positive_and_between_refuse_the_edges_they_should():
    positive(lr=1e-9)
    with pytest.raises(OptionError, match=r"^--gamma 0.0: expected a number above 0$"):
        positive(gamma=0.0)
    with pytest.raises(OptionError, match=r"^--lr nan: expected a number above 0$"):
        positive(lr=float("nan"))
    between("rerank_lambda", 0.0, 0, 1)
    between("rerank_lambda", 1.0, 0, 1)
    with pytest.raises(OptionError, match=r"^--rerank-lambda 1.5: expected a number from 0 to 1$"):
        between("rerank_lambda", 1.5, 0, 1)


def test_output_paths(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    output_folder(tmp_path / "new" / "deeper", "--output")  # can be made
    output_file(tmp_path / "new" / "m.json", "--json")
    with pytest.raises(OptionError, match=r"--output '.*notes.txt' is a file: expected a folder"):
        output_folder(a_file, "--output")
    with pytest.raises(OptionError, match=r"--output '.*notes.txt/sub': '.*notes.txt' is a file, so this folder cannot be made"):
        output_folder(a_file / "sub", "--output")
    with pytest.raises(OptionError, match=r"--json '.*' is a folder: expected a file name"):
        output_file(tmp_path, "--json")
    with pytest.raises(OptionError, match=r"^--json '.*notes.txt/m.json': its folder '.*notes.txt' is a file: expected a folder$"):
        output_file(a_file / "m.json", "--json")
    assert a_file.read_text() == "mine" and not (tmp_path / "new").exists()  # checking creates nothing


# --- the training scripts: every shared option ------------------------------------------------------------------------

BAD_TRAINING_OPTIONS = [
    ({"batch_size": 0}, "--batch-size 0: expected 1 or more"),
    ({"batch_size": 6}, "--batch-size 6: expected a multiple of --num-instances (4), the images of each identity in a batch"),
    ({"num_instances": 0}, "--num-instances 0: expected 1 or more"),
    ({"epochs": 0}, "--epochs 0: expected 1 or more"),
    ({"height": 0}, "--height 0: expected 1 or more"),
    ({"eval_every": 0}, "--eval-every 0: expected 1 or more"),
    ({"log_every": 0}, "--log-every 0: expected 1 or more"),
    ({"eval_batch_size": 0}, "--eval-batch-size 0: expected 1 or more"),
    ({"max_steps_per_epoch": 0}, "--max-steps-per-epoch 0: expected 1 or more"),
    ({"milestones": (20, -5)}, "--milestones 20 -5: expected 1 or more"),
    ({"cal_start_epoch": -1}, "--cal-start-epoch -1: expected 0 or more"),
    ({"num_workers": -1}, "--num-workers -1: expected 0 or more"),
    ({"weight_decay": -0.1}, "--weight-decay -0.1: expected 0 or more"),
    ({"lr": -1.0}, "--lr -1.0: expected a number above 0"),
    ({"gamma": 0.0}, "--gamma 0.0: expected a number above 0"),
    ({"backbone": "resnet9000"}, "--backbone resnet9000: timm has no such model"),
    ({"backbone": "resnet18.no_such_weights"}, "--backbone resnet18.no_such_weights: timm has no such model"),
    ({"pretrained": True, "pretrained_weights": Path("/nowhere/r50.pth")}, "--pretrained-weights '/nowhere/r50.pth' does not exist"),
]


@pytest.mark.parametrize("script", [train_base, train_cgal, train_rlq])
@pytest.mark.parametrize(("change", "message"), BAD_TRAINING_OPTIONS, ids=[m.split(":")[0] for _, m in BAD_TRAINING_OPTIONS])
def test_training_options_are_checked_before_any_work(script, change, message, tmp_path):
    extra = {"teacher": "none"} if script is train_rlq else {}
    cfg = script.Config(output=tmp_path / "run", **TINY_RUN, **extra)
    check_training(cfg)  # the tiny run itself is fine
    with pytest.raises(OptionError) as error:
        script.main(dataclasses.replace(cfg, **change))
    assert str(error.value).startswith(message)
    assert not (tmp_path / "run").exists()


def test_a_bad_training_option_is_one_error_line(synthetic_root, tmp_path):
    result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(tmp_path / "run"),
                      *TINY_FLAGS, "--batch-size", "6")
    one_error_line(result, "--batch-size 6: expected a multiple of --num-instances (4)")
    assert not (tmp_path / "run").exists()


def test_a_pretrained_weights_file_that_is_no_state_dict(synthetic_root, tmp_path):
    weights = tmp_path / "r18.pth"
    weights.write_bytes(b"\x80\x02not a pickle at all")
    cfg = train_base.Config(output=tmp_path / "run", root=synthetic_root, **(TINY_RUN | {"pretrained": True}),
                            pretrained_weights=weights)
    with pytest.raises(OptionError, match=r"cannot read --pretrained-weights '.*r18.pth' \(\w+\): expected the trunk's ImageNet"):
        train_base.main(cfg)


def test_a_batch_larger_than_the_identities_names_the_option(synthetic_root, tmp_path):
    cfg = train_base.Config(output=tmp_path / "run", root=synthetic_root, **(TINY_RUN | {"batch_size": 4 * 1000}))
    with pytest.raises(OptionError, match=r"^--batch-size 4000: \d+ identities cannot fill one batch of 1000 identities"):
        train_base.main(cfg)


# --- evaluate.py -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"batch_size": 0}, "--batch-size 0: expected 1 or more"),
    ({"num_workers": -1}, "--num-workers -1: expected 0 or more"),
    ({"visualize": -1}, "--visualize -1: expected 0 or more"),
    ({"rerank_k1": 0}, "--rerank-k1 0: expected 1 or more"),
    ({"rerank_lambda": 2.0}, "--rerank-lambda 2.0: expected a number from 0 to 1"),
])
def test_evaluate_options_are_checked_before_the_model_is_loaded(change, message, tmp_path):
    with pytest.raises(OptionError) as error:  # the checkpoint need not exist: the options fail first
        evaluate.main(evaluate.Args(checkpoint=tmp_path / "none.pt", **change))
    assert str(error.value) == message


def test_evaluate_output_under_a_file_is_one_error_line(tiny_run, synthetic_root, tmp_path):
    a_file = tmp_path / "results"
    a_file.write_text("mine")
    result = run_here("evaluate.py", "--checkpoint", str(tiny_run / "last.pt"), "--root", str(synthetic_root), "--num-workers", "0",
                      "--json", str(a_file / "m.json"))
    one_error_line(result, f"--json '{a_file / 'm.json'}': its folder '{a_file}' is a file: expected a folder")
    assert a_file.read_text() == "mine"


def test_evaluate_checks_the_evaluated_images_first(synthetic_root, tiny_run, tmp_path):
    root = tmp_path / "LTCC_ReID"
    shutil.copytree(synthetic_root / "target" / "LTCC_ReID", root)
    broken = sorted((root / "test").glob("*.png"))[2]
    broken.write_bytes(b"no image")
    result = run_here("evaluate.py", "--checkpoint", str(tiny_run / "last.pt"), "--dataset", "ltcc", "--root", str(root),
                      "--num-workers", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: 1 unreadable image(s)" in result.stderr and str(broken) in result.stderr


# --- the pre-processing scripts ----------------------------------------------------------------------------------------


def test_preprocess_pose_refuses_bad_options_before_reading(synthetic_root, tmp_path):
    a_file = tmp_path / "notes"
    a_file.write_text("mine")
    keypoints = (synthetic_root / "target" / "keypoints.json",)
    args = preprocess_pose.Args(dataset="synthetic", root=synthetic_root, keypoints=keypoints, output=tmp_path / "p.csv", ks=(5,))
    with pytest.raises(OptionError, match=r"^--n-init 0: expected 1 or more$"):
        preprocess_pose.main(dataclasses.replace(args, n_init=0))
    with pytest.raises(OptionError, match=r"^--output '.*' is a folder: expected a file name$"):
        preprocess_pose.main(dataclasses.replace(args, output=tmp_path))
    with pytest.raises(OptionError, match=r"^--figures '.*notes' is a file: expected a folder$"):
        preprocess_pose.main(dataclasses.replace(args, figures=a_file))
    assert a_file.read_text() == "mine" and not (tmp_path / "p.csv").exists()


def test_preprocess_pose_names_an_unreadable_image(synthetic_root, tmp_path):
    root = tmp_path / "LTCC_ReID"
    shutil.copytree(synthetic_root / "target" / "LTCC_ReID", root)
    keypoints = synthetic_root / "target" / "keypoints.json"
    posed = {record["image_id"] for record in json.loads(keypoints.read_text())}  # images without a pose are not read
    broken = next(path for path in sorted((root / "train").glob("*.png")) if path.name in posed)
    broken.write_bytes(b"no image")
    result = run_here("preprocess_pose.py", "--dataset", "ltcc", "--root", str(root), "--keypoints", str(keypoints),
                      "--output", str(tmp_path / "p.csv"), "--ks", "5")
    one_error_line(result, f"cannot read the image '{broken}'", "python -m rlq.data --check-images")
    assert not (tmp_path / "p.csv").exists()


def test_preprocess_masks_refuses_bad_options_before_any_mask(synthetic_root, tmp_path):
    a_file = tmp_path / "masks"
    a_file.write_text("mine")
    parsing = synthetic_root / "target" / "parsing"
    result = run_here("preprocess_masks.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--parsing", str(parsing),
                      "--output", str(a_file))
    one_error_line(result, f"--output '{a_file}' is a file: expected a folder")
    assert a_file.read_text() == "mine"
    args = preprocess_masks.Args(dataset="synthetic", root=synthetic_root, parsing=parsing, output=tmp_path / "m")
    with pytest.raises(OptionError, match=r"^--min-fraction -1.0: expected a number from 0 to 1$"):
        preprocess_masks.main(dataclasses.replace(args, min_fraction=-1.0))
    with pytest.raises(OptionError, match=r"^--workers 0: expected 1 or more$"):
        preprocess_masks.main(dataclasses.replace(args, workers=0))
    assert not (tmp_path / "m").exists()


# --- the rlq.* command lines -------------------------------------------------------------------------------------------


def _exit_line(main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return str(exit_.value.code).strip()


def test_export_refuses_a_low_opset_and_a_folder_as_output(tiny_run, tmp_path):
    checkpoint = str(tiny_run / "last.pt")
    assert _exit_line(export.main, ["--checkpoint", checkpoint, "--output", str(tmp_path / "m.onnx"), "--opset", "17"]) == \
        "error: --opset 17: expected 18 or more"
    assert _exit_line(export.main, ["--checkpoint", checkpoint, "--output", str(tmp_path)]) == \
        f"error: --output '{tmp_path}' is a folder: expected a file name"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b'{"cc":', b"\xd3\x00\x01", b"[1, 2]"], ids=["truncated", "binary", "list"])
def test_seeds_names_a_file_that_is_not_an_evaluation(content, tmp_path, capsys):
    bad = tmp_path / "seed1.json"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        seeds.main([str(bad), "--output", str(tmp_path / "table")])
    assert exit_.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: '{bad}' ") and "expected evaluate.py --json output or a run's metrics.json" in line
    assert not (tmp_path / "table.md").exists()


def test_synthetic_refuses_bad_sizes_and_a_file_as_out(tmp_path):
    line = _exit_line(synthetic.main, ["--output", str(tmp_path / "d"), "--target-train-ids", "0"])
    assert line == "error: invalid synthetic config: at least one identity in every part and split"
    a_file = tmp_path / "notes"
    a_file.write_text("mine")
    line = _exit_line(synthetic.main, ["--output", str(a_file), "--workers", "1"])
    assert line == f"error: {a_file.resolve()} exists and was not written by rlq.synthetic; refusing to replace it"
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_json_written_by_seeds_for_good_input_still_works(tmp_path):
    good = tmp_path / "seed1.json"
    good.write_text(json.dumps({"cc": {"top1": 0.5, "mAP": 0.25}}))
    table = seeds.main([str(good), "--output", str(tmp_path / "table")])
    assert table["rows"][0]["top1"] == 0.5 and (tmp_path / "table.md").is_file()
