"""No output ever lands on an input: every script refuses, before any work, an output path that is or lies inside one of
its inputs, and an input inside a folder it writes into, with one `error:` line naming both options; nothing changes."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_RUN, run_here
from test_hardening import one_error_line

import evaluate
import preprocess_masks
import preprocess_pose
import train_base
import train_cgal
import train_rlq
from rlq import export, report, reproduce, seeds
from rlq.options import OptionError, check_outputs_apart

# --- the check itself, on plain paths ----------------------------------------------------------------------------------


def refusal(outputs: dict, inputs: dict) -> str:
    with pytest.raises(OptionError) as error:
        check_outputs_apart(outputs, inputs)
    return str(error.value)


def test_equal_paths_however_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    best = tmp_path / "runs" / "x" / "best.pt"
    same = "choose another path for --json, so that the input is not overwritten"
    assert refusal({"--json": best}, {"--checkpoint": best}) == f"--json '{best}' is --checkpoint '{best}', an input: {same}"
    assert refusal({"--json": Path("runs/x/best.pt")}, {"--checkpoint": best}) == \
        f"--json 'runs/x/best.pt' is --checkpoint '{best}', an input: {same}"
    assert refusal({"--json": Path("runs/y/../x/best.pt")}, {"--checkpoint": Path("runs/x/best.pt")}) == \
        f"--json 'runs/y/../x/best.pt' is --checkpoint 'runs/x/best.pt', an input: {same}"


def test_an_output_inside_an_input_folder_and_an_input_inside_an_output_folder(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    assert refusal({"--output": data / "parsing" / "masks"}, {"--parsing": data / "parsing"}) == \
        f"--output '{data}/parsing/masks' lies inside --parsing '{data}/parsing', an input: write --output outside it"
    assert refusal({"--output": runs}, {"--masks": runs / "x" / "masks"}) == \
        f"--masks '{runs}/x/masks' lies inside --output '{runs}', which this run writes into: " \
        "choose another --output that does not hold its inputs"


def test_a_symlink_is_followed_and_shown_resolved(tmp_path):
    (tmp_path / "data" / "parsing").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    line = refusal({"--output": tmp_path / "link" / "parsing" / "masks"}, {"--parsing": tmp_path / "data" / "parsing"})
    assert line == (f"--output '{tmp_path}/link/parsing/masks' (resolved: '{tmp_path}/data/parsing/masks') lies inside "
                    f"--parsing '{tmp_path}/data/parsing', an input: write --output outside it")
    (tmp_path / "out.json").symlink_to(tmp_path / "best.pt")  # a link to a file that does not exist yet leads there too
    assert refusal({"--json": tmp_path / "out.json"}, {"--checkpoint": tmp_path / "best.pt"}).startswith(
        f"--json '{tmp_path}/out.json' (resolved: '{tmp_path}/best.pt') is --checkpoint '{tmp_path}/best.pt'")


def test_paths_apart_pass_and_none_is_left_alone(tmp_path):
    check_outputs_apart({"--output": tmp_path / "runs" / "x2", "--json": None},
                        {"--init-from": tmp_path / "runs" / "x" / "best.pt", "--root": None, "--masks": tmp_path / "runs" / "x"})
    check_outputs_apart({"--json": tmp_path / "runs" / "x" / "eval.json"}, {"--checkpoint": tmp_path / "runs" / "x" / "best.pt"})
    # several paths under one option (nargs): each one is checked
    assert refusal({"--output": (tmp_path / "t.md", tmp_path / "t.json")}, {"RUN": [tmp_path / "a.json", tmp_path / "t.json"]}) \
        .startswith(f"--output '{tmp_path}/t.json' is RUN '{tmp_path}/t.json'")
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


# --- every script, in-process: the check comes before any work ---------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    """Stand-in inputs (the check runs before any is read): a dataset root, parsing, run, CSVs, keypoints, image folders."""
    for name, content in {"data/train/0001_c1.png": b"png", "data/parsing/train/0001_c1.png": b"lip", "runs/x/best.pt": b"ckpt",
                          "runs/x/last.pt": b"last", "csv/gender.csv": b"Category,ID,Gender\n", "csv/pose.csv": b"Category,Image\n",
                          "keypoints.json": b"[]", "queries/q.png": b"q", "gallery/g.png": b"g", "runs/x/m.json": b"{}"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    return tmp_path


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny(script, t: Path, **paths):
    extra = {"teacher": "none"} if script is train_rlq and "teacher" not in paths else {}
    return script.Config(**TINY_RUN, **extra, **paths)


def error_line(call, capsys) -> str:
    """The `error:` line a script's __main__ would print: from an OptionError, or from the SystemExit of a main that parses its command line."""
    try:
        call()
    except OptionError as error:
        return f"error: {error}"
    except SystemExit as exit_:
        line = exit_.code if isinstance(exit_.code, str) else capsys.readouterr().err
        assert exit_.code != 0
        return line.strip()
    raise AssertionError("no error")


INSIDE = "write {out} outside it"
HOLDS = "which this run writes into: choose another {out} that does not hold its inputs"
SAME = "choose another path for {out}, so that the input is not overwritten"

# (id, call(t) -> the script's main with clashing paths, expected line with {t} for the tree)
CASES = [
    ("train_base output inside root", lambda t: train_base.main(tiny(train_base, t, root=t / "data", output=t / "data" / "run")),
     "--output '{t}/data/run' lies inside --root '{t}/data', an input: " + INSIDE.format(out="--output")),
    ("train_base init-from inside output", lambda t: train_base.main(tiny(train_base, t, output=t / "runs", init_from=t / "runs/x/best.pt")),
     "--init-from '{t}/runs/x/best.pt' lies inside --output '{t}/runs', " + HOLDS.format(out="--output")),
    ("train_base output is masks", lambda t: train_base.main(tiny(train_base, t, output=t / "data/parsing", masks=t / "link/parsing")),
     "--output '{t}/data/parsing' is --masks '{t}/link/parsing' (resolved: '{t}/data/parsing'), an input: " + SAME.format(out="--output")),
    ("train_cgal pose-csv inside output", lambda t: train_cgal.main(tiny(train_cgal, t, output=t / "csv", pose_csv=t / "csv/pose.csv")),
     "--pose-csv '{t}/csv/pose.csv' lies inside --output '{t}/csv', " + HOLDS.format(out="--output")),
    ("train_cgal output is gender-csv", lambda t: train_cgal.main(tiny(train_cgal, t, output=t / "csv/gender.csv", gender_csv=t / "csv/gender.csv")),
     "--output '{t}/csv/gender.csv' is --gender-csv '{t}/csv/gender.csv', an input: " + SAME.format(out="--output")),
    ("train_rlq teacher inside output", lambda t: train_rlq.main(tiny(train_rlq, t, output=t / "runs/x", teacher=t / "runs/x/best.pt")),
     "--teacher '{t}/runs/x/best.pt' lies inside --output '{t}/runs/x', " + HOLDS.format(out="--output")),
    ("train_rlq output inside external-root", lambda t: train_rlq.main(tiny(train_rlq, t, output=t / "data/r", external_root=t / "data")),
     "--output '{t}/data/r' lies inside --external-root '{t}/data', an input: " + INSIDE.format(out="--output")),
    ("evaluate json is checkpoint", lambda t: evaluate.main(evaluate.Args(checkpoint=t / "runs/x/best.pt", json=t / "runs/x/../x/best.pt")),
     "--json '{t}/runs/x/../x/best.pt' is --checkpoint '{t}/runs/x/best.pt', an input: " + SAME.format(out="--json")),
    ("evaluate ranking-dir inside query-dir", lambda t: evaluate.main(evaluate.Args(
        checkpoint=t / "runs/x/best.pt", query_dir=t / "queries", gallery_dir=t / "gallery", ranking_dir=t / "queries/ranking")),
     "--ranking-dir '{t}/queries/ranking' lies inside --query-dir '{t}/queries', an input: " + INSIDE.format(out="--ranking-dir")),
    ("evaluate visualize-dir is root", lambda t: evaluate.main(evaluate.Args(
        checkpoint=t / "runs/x/best.pt", root=t / "data", visualize=2, visualize_dir=t / "data")),
     "--visualize-dir '{t}/data' is --root '{t}/data', an input: " + SAME.format(out="--visualize-dir")),
    ("evaluate save-features inside root", lambda t: evaluate.main(evaluate.Args(
        checkpoint=t / "runs/x/best.pt", root=t / "link", save_features=t / "data/f.pt")),
     "--save-features '{t}/data/f.pt' lies inside --root '{t}/link' (resolved: '{t}/data'), an input: "
     + INSIDE.format(out="--save-features")),
    ("evaluate lq-samples-path is size-buckets", lambda t: evaluate.main(evaluate.Args(
        checkpoint=t / "runs/x/best.pt", size_buckets=t / "csv/pose.csv", lq_samples=4, lq_samples_path=t / "csv/pose.csv")),
     "--lq-samples-path '{t}/csv/pose.csv' is --size-buckets '{t}/csv/pose.csv', an input: " + SAME.format(out="--lq-samples-path")),
    ("preprocess_pose output is keypoints", lambda t: preprocess_pose.main(preprocess_pose.Args(
        dataset="synthetic", keypoints=(t / "csv/pose.csv", t / "keypoints.json"), output=t / "keypoints.json")),
     "--output '{t}/keypoints.json' is --keypoints '{t}/keypoints.json', an input: " + SAME.format(out="--output")),
    ("preprocess_pose figures inside root", lambda t: preprocess_pose.main(preprocess_pose.Args(
        dataset="synthetic", root=t / "data", keypoints=(t / "keypoints.json",), output=t / "p.csv", figures=t / "data/figures")),
     "--figures '{t}/data/figures' lies inside --root '{t}/data', an input: " + INSIDE.format(out="--figures")),
    ("preprocess_masks output inside parsing", lambda t: preprocess_masks.main(preprocess_masks.Args(
        dataset="synthetic", parsing=t / "data/parsing", output=t / "data/parsing/masks")),
     "--output '{t}/data/parsing/masks' lies inside --parsing '{t}/data/parsing', an input: " + INSIDE.format(out="--output")),
    ("preprocess_masks parsing inside output", lambda t: preprocess_masks.main(preprocess_masks.Args(
        dataset="synthetic", parsing=t / "data/parsing", output=t / "data")),
     "--parsing '{t}/data/parsing' lies inside --output '{t}/data', " + HOLDS.format(out="--output")),
    ("export out is checkpoint", lambda t: export.main(["--checkpoint", str(t / "runs/x/best.pt"), "--output", str(t / "link/../runs/x/best.pt")]),
     "--output '{t}/link/../runs/x/best.pt' is --checkpoint '{t}/runs/x/best.pt', an input: " + SAME.format(out="--output")),
    ("seeds output is a run", lambda t: seeds.main([str(t / "runs/x/m.json"), "--output", str(t / "runs/x/m")]),
     "--output '{t}/runs/x/m.json' is RUN '{t}/runs/x/m.json', an input: " + SAME.format(out="--output")),
    ("seeds output is a run folder's metrics", lambda t: seeds.main([str(t / "runs/x"), "--output", str(t / "runs/x/metrics")]),
     "--output '{t}/runs/x/metrics.json' is RUN '{t}/runs/x/metrics.json', an input: " + SAME.format(out="--output")),
    ("report results is pose-csv", lambda t: report.main([str(t / "csv"), "--seeds", "1", "--pose-csv", str(t / "csv/results.json")]),
     "OUT '{t}/csv/results.json' is --pose-csv '{t}/csv/results.json', an input: " + SAME.format(out="OUT")),
    ("reproduce masks inside a run folder", lambda t: reproduce.main(["celeb", "--root", str(t / "data"), "--output", str(t / "runs"),
                                                                     "--masks", str(t / "runs/base/masks"), "--dry-run"]),
     "--masks '{t}/runs/base/masks' lies inside --output '{t}/runs/base', " + HOLDS.format(out="--output")),
    ("reproduce output inside root", lambda t: reproduce.main(["celeb", "--root", str(t / "data"), "--output", str(t / "data/runs"),
                                                              "--dry-run"]),
     "--output '{t}/data/runs/base' lies inside --root '{t}/data', an input: " + INSIDE.format(out="--output")),
    ("bench_data crops folder holds train-json", lambda t: bench_data().main(["--train-json", str(t / "runs/x/m.json"),
                                                                             "--folder", str(t / "runs")]),
     "--train-json '{t}/runs/x/m.json' lies inside --folder '{t}/runs', " + HOLDS.format(out="--folder")),
]


def bench_data():
    if str(REPO / "benchmarks") not in sys.path:  # the benchmarks import each other as scripts, as in test_benchmarks.py
        sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_data

    return bench_data


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_script_refuses_an_output_on_an_input(call, expected, tree, capsys):
    before = hashes(tree)
    assert error_line(lambda: call(tree), capsys) == "error: " + expected.format(t=tree)
    assert hashes(tree) == before  # every input byte-identical, and no file made


def test_a_teacher_in_another_run_folder_and_resume_inside_output_are_fine(tree):
    """Only the clashes are refused: the run then goes on to the next check (here: the stand-in checkpoint is no checkpoint)."""
    cfg = tiny(train_rlq, tree, output=tree / "runs/rlq", teacher=tree / "runs/x/best.pt", resume=tree / "runs/rlq/last.pt")
    train_rlq.check_training(cfg)
    check_outputs_apart({"--output": tree / "runs/reproduce/rlq"}, {"--teacher": tree / "runs/reproduce/celeb/base/seed1/last.pt"})


# --- as a user runs them: one process each, one `error:` line, nothing written -------------------------------------


def relative(path: Path) -> str:
    return os.path.relpath(path, REPO)  # the scripts run with the repository as their working folder


SUBPROCESS_CASES = [
    ("train_rlq", lambda t: ["train_rlq.py", "--dataset", "synthetic", "--teacher", relative(t / "runs/x/best.pt"),
                             "--output", str(t / "runs/x"), "--no-pretrained", "--backbone", "resnet18"],
     "--teacher '{rel}/runs/x/best.pt' lies inside --output '{t}/runs/x', " + HOLDS.format(out="--output")),
    ("evaluate", lambda t: ["evaluate.py", "--checkpoint", str(t / "runs/x/best.pt"), "--query-dir", str(t / "queries"),
                            "--gallery-dir", str(t / "gallery"), "--ranking-dir", relative(t / "queries")],
     "--ranking-dir '{rel}/queries' is --query-dir '{t}/queries', an input: " + SAME.format(out="--ranking-dir")),
    ("preprocess_masks", lambda t: ["preprocess_masks.py", "--dataset", "synthetic", "--parsing", str(t / "link/parsing"),
                                    "--output", str(t / "data/parsing/masks")],
     "--output '{t}/data/parsing/masks' lies inside --parsing '{t}/link/parsing' "
     "(resolved: '{t}/data/parsing'), an input: " + INSIDE.format(out="--output")),
    ("convert_authors_checkpoint", lambda t: ["scripts/convert_authors_checkpoint.py", "--checkpoint", str(t / "runs/x/best.pt"),
                                              "--output", str(t / "runs/x/best.pt")],
     "--output '{t}/runs/x/best.pt' is --checkpoint '{t}/runs/x/best.pt', an input: " + SAME.format(out="--output")),
]


@pytest.mark.parametrize(("command", "expected"), [c[1:] for c in SUBPROCESS_CASES], ids=[c[0] for c in SUBPROCESS_CASES])
def test_a_clash_is_one_error_line_from_the_command_line(command, expected, tree):
    before = hashes(tree)
    result = run_here(*command(tree))
    line = one_error_line(result)
    assert result.stderr.strip() == line  # the whole of stderr: nothing was loaded or logged first
    assert line == "error: " + expected.format(t=tree, rel=relative(tree))
    assert hashes(tree) == before
