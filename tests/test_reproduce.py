"""scripts/reproduce_<name>.sh: the printed commands carry the paper's settings (method.md sections 3, 4, 7)."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from conftest import REPO

RLQ_ARGS = ["--external-root", "/data/Celeb-reID", "--teacher", "runs/reproduce/celeb/base/seed1/last.pt",
            "--gender-csv", "G.csv", "--pose-csv", "P.csv", "--masks", "masks"]
# name: (script, batch per process, processes, seeds, protocol of the table, checkpoint evaluated)
PAPER = {
    "ltcc": ("train_rlq.py", 32, 2, [1, 2, 3, 4], "cc", "best.pt"),
    "prcc": ("train_rlq.py", 40, 2, [1, 2, 3, 4], "cc", "best.pt"),
    "last": ("train_rlq.py", 40, 4, [1, 2, 3, 4], "standard", "best.pt"),
    "deepchange": ("train_rlq.py", 40, 6, [1, 2, 3, 4], "standard", "best.pt"),
}


def dry_run(name: str, *args: str, output=None) -> list[list[str]]:
    extra = ["--output", str(output)] if output else []
    result = subprocess.run(["bash", str(REPO / "scripts" / f"reproduce_{name}.sh"), "--root", f"/data/{name}", *args, *extra,
                             "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [as_accelerate_launch(shlex.split(line)) for line in result.stdout.splitlines() if line.strip()]


def as_accelerate_launch(command: list[str]) -> list[str]:
    """`python -m accelerate.commands.launch ...` (printed where no `accelerate` is on PATH) as `accelerate launch ...`."""
    if command[1:3] == ["-m", "accelerate.commands.launch"]:
        return ["accelerate", "launch", *command[3:]]
    return command


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_rlq_dry_run_has_the_papers_settings(name):
    script, batch, processes, seeds, protocol, checkpoint = PAPER[name]
    lines = dry_run(name, *RLQ_ARGS)
    assert lines[0][0] == "#"  # the header names the published number
    trainings = [c for c in lines if script in c]
    assert [int(option(c, "--seed")) for c in trainings] == seeds
    for command in trainings:
        assert "launch" in command and "--multi_gpu" in command
        assert int(option(command, "--num_processes")) == processes
        assert int(option(command, "--batch-size")) == batch and int(option(command, "--epochs")) == 200
        assert option(command, "--dataset") == name and option(command, "--root") == f"/data/{name}"
        assert option(command, "--teacher").endswith("celeb/base/seed1/last.pt")
        assert option(command, "--pose-column") == "R_LA_15" and option(command, "--masks") == "masks"
        assert option(command, "--select-on") == "test" and "--resume" not in command
    evaluations = [c for c in lines if "evaluate.py" in c]
    assert len(evaluations) == len(seeds) and all(option(c, "--checkpoint").endswith(checkpoint) for c in evaluations)
    assert all("--gallery-protocol" not in c for c in evaluations)  # PRCC's published numbers: the whole gallery
    table = lines[-1]
    assert "rlq.seeds" in table and option(table, "--evaluation") == protocol
    assert [a for a in table if a.endswith("test.json")] == [option(c, "--json") for c in evaluations]


def test_celeb_trains_the_base_teacher_and_with_attribute_files_the_cgal_teacher():
    base_only = dry_run("celeb")
    trainings = [c for c in base_only if "launch" in c]
    assert len(trainings) == 1 and "train_base.py" in trainings[0]
    assert int(option(trainings[0], "--batch-size")) == 40 and int(option(trainings[0], "--num_processes")) == 2
    assert int(option(trainings[0], "--seed")) == 1
    # The authors' teacher is the epoch-200 checkpoint.
    assert option(next(c for c in base_only if "evaluate.py" in c), "--checkpoint").endswith("base/seed1/last.pt")
    both = dry_run("celeb", "--gender-csv", "G.csv", "--pose-csv", "P.csv")
    assert [s for c in both if "launch" in c for s in c if s.startswith("train_")] == ["train_base.py", "train_cgal.py"]


def test_precision_and_the_idle_parameter_option_reach_every_command():
    """By default the scripts' own defaults (auto precision, PyTorch 2 zero_grad); asked for, the authors' setting
    (fp32, Adam moving idle parameters) reaches every training and evaluation command."""
    for extra, precision, idle in (([], "auto", False), (["--mixed-precision", "no", "--adam-steps-idle-parameters"], "no", True)):
        lines = dry_run("ltcc", *RLQ_ARGS, *extra)
        trainings, evaluations = [c for c in lines if "train_rlq.py" in c], [c for c in lines if "evaluate.py" in c]
        assert len(trainings) == len(evaluations) == 4
        assert all(option(c, "--mixed-precision") == precision for c in trainings + evaluations)
        assert all(("--adam-steps-idle-parameters" in c) == idle for c in trainings)
    celeb = dry_run("celeb", "--gender-csv", "G.csv", "--pose-csv", "P.csv", "--mixed-precision", "no",
                    "--adam-steps-idle-parameters")
    trainings = {s: c for c in celeb if "launch" in c for s in c if s.startswith("train_")}
    assert "--adam-steps-idle-parameters" in trainings["train_cgal.py"]
    assert "--adam-steps-idle-parameters" not in trainings["train_base.py"]  # every parameter is used there
    assert all(option(c, "--mixed-precision") == "no" for c in celeb if "launch" in c or "evaluate.py" in c)


def test_a_rerun_resumes_and_skips_what_is_done(tmp_path):
    (tmp_path / "rlq" / "seed1").mkdir(parents=True)
    (tmp_path / "rlq" / "seed1" / "test.json").write_text("{}")
    (tmp_path / "rlq" / "seed2").mkdir()
    (tmp_path / "rlq" / "seed2" / "last.pt").write_bytes(b"")
    lines = dry_run("ltcc", *RLQ_ARGS, output=tmp_path)
    folder = str(tmp_path / "rlq" / "seed1")
    seed1 = [c for c in lines if ("--output" in c and option(c, "--output") == folder)
             or ("--json" in c and option(c, "--json").startswith(folder))]
    assert all(c[:2] == ["#", "done:"] for c in seed1) and len(seed1) == 2
    seed2_training = next(c for c in lines if "launch" in c and option(c, "--seed") == "2")
    assert option(seed2_training, "--resume") == str(tmp_path / "rlq" / "seed2")


@pytest.mark.parametrize(("args", "message"), [
    ([], "RLQ needs --teacher"),
    (RLQ_ARGS + ["--select-on", "val"], "--val-ids"),
])
def test_missing_pieces_are_named(args, message):
    result = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_ltcc.sh"), "--root", "/data/ltcc", *args, "--dry-run"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr
