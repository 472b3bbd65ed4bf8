"""The paper's runs as commands: train every seed, evaluate each checkpoint, build the seed table.

    python -m rlq.reproduce ltcc --root /data/LTCC_ReID --external-root /data/Celeb-reID \\
        --teacher runs/reproduce/celeb/base/seed1/last.pt --gender-csv LTCC_Gender.csv --pose-csv LTCC_Pose_Cluster.csv \\
        --masks masks/ltcc --dry-run

(`scripts/reproduce_<name>.sh` call this.) The settings are the authors' (method.md sections 3,
4 and 7): batch per process, number of processes (GPUs), 200 epochs, seeds 1-4 (the teacher:
one run), the Celeb-reID teacher, pose column R_LA_15. Every command is printed before it runs;
--dry-run prints them only. A seed whose test.json exists is skipped, and one with a last.pt is
resumed, so a killed reproduction continues where it stopped.

Model selection: by default as the paper (best of the evaluations every 10 epochs on the test
set, labelled as such in the table); --select-on val picks on the validation split instead
(PRCC, LaST, DeepChange; on LTCC it holds out --val-ids training identities).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from rlq.files import ends_cleanly
from rlq.options import OptionError, check_outputs_apart, formerly, usage_error


@dataclass(frozen=True)
class PaperRun:
    """One training configuration of the paper and the number it published."""

    name: str  # the run folder under --output
    script: str
    dataset: str
    batch_size: int  # per process
    processes: int
    seeds: tuple[int, ...]
    evaluation: str  # the protocol of the published number
    published: str
    checkpoint: str = "best.pt"  # the one evaluated and tabled
    attributes: bool = True  # takes --gender-csv / --pose-csv


EPOCHS = 200
POSE_COLUMN = "R_LA_15"
SEEDS = (1, 2, 3, 4)
Name = Literal["celeb", "deepchange", "last", "ltcc", "prcc"]
RUNS: dict[Name, list[PaperRun]] = {
    "celeb": [
        # The authors' teacher is the epoch-200 checkpoint, not the best one.
        PaperRun("base", "train_base.py", "celeb", 40, 2, (1,), "standard", "58.1 / 14.2", "last.pt", attributes=False),
        PaperRun("cgal", "train_cgal.py", "celeb", 40, 2, (1,), "standard", "59.2 / 14.9", "last.pt"),
    ],
    "ltcc": [PaperRun("rlq", "train_rlq.py", "ltcc", 32, 2, SEEDS, "cc", "46.4 / 21.5-21.9")],
    "prcc": [PaperRun("rlq", "train_rlq.py", "prcc", 40, 2, SEEDS, "cc", "65.1 / 63.8 (whole gallery)")],
    "last": [PaperRun("rlq", "train_rlq.py", "last", 40, 4, SEEDS, "standard", "77.9 / 35.3")],
    "deepchange": [PaperRun("rlq", "train_rlq.py", "deepchange", 40, 6, SEEDS, "standard", "59.2 / 22.5")],
}


@dataclass
class Args:
    """The paper's runs as commands: train every seed, evaluate each checkpoint, build the seed table."""

    name: tyro.conf.Positional[Name]
    """celeb: the teacher (base, and CGAL with attribute files); the others: RLQ on that dataset."""
    root: Path
    """The dataset's folder."""
    external_root: Path | None = None
    """RLQ: the Celeb-reID folder (the TAD phase's external set)."""
    teacher: Path | None = None
    """RLQ: the teacher checkpoint (reproduce celeb makes runs/reproduce/celeb/base/seed1/last.pt)."""
    gender_csv: Path | None = None
    """The dataset's gender CSV (Category,ID,Gender)."""
    pose_csv: Path | None = None
    """The dataset's pose-cluster CSV (the column read: R_LA_15)."""
    masks: Path | None = None
    """preprocess_masks.py output: the clothes-recolouring augmentation (the paper's)."""
    output: Annotated[Path | None, formerly("--out", "--output")] = None
    """Folder of the runs, one sub-folder per run and seed (default: runs/reproduce/NAME)."""
    seeds: tuple[int, ...] = ()
    """Training seeds (default: the paper's, 1 2 3 4; the teacher: 1)."""
    select_on: Literal["test", "val"] = "test"
    """test: the paper's model selection (on the test set); val: on the validation split."""
    val_ids: int = 0
    """LTCC with --select-on val: identities held out for validation."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Every training and evaluation command's --mixed-precision (no: fp32, as the authors trained)."""
    adam_steps_idle_parameters: bool = False
    """The training commands' option of that name (RLQ, CGAL): Adam moves the parameters a step leaves unused, as in PyTorch 1.13."""
    dry_run: bool = False
    """Print the commands only."""


def parse_args(argv: list[str] | None = None) -> Args:
    """The options, checked, with the run folder filled in."""
    args = tyro.cli(Args, args=argv, prog="python -m rlq.reproduce")
    args.output = args.output or Path("runs/reproduce") / args.name
    if args.name != "celeb" and (args.teacher is None or args.external_root is None):
        usage_error(f"{args.name}: RLQ needs --teacher (e.g. runs/reproduce/celeb/base/seed1/last.pt) and --external-root "
                    "(Celeb-reID)")
    if args.name != "celeb" and (args.gender_csv is None or args.pose_csv is None):
        usage_error(f"{args.name}: RLQ needs --gender-csv and --pose-csv (docs/datasets.md)")
    if args.select_on == "val" and args.name == "ltcc" and args.val_ids == 0:
        usage_error("ltcc has no validation split: with --select-on val give --val-ids N (e.g. 10)")
    return args


def runs_for(args: Args) -> list[PaperRun]:
    """The celeb CGAL teacher needs attribute files; without them only the base teacher is trained."""
    return [run for run in RUNS[args.name] if not run.attributes or args.name != "celeb" or (args.gender_csv and args.pose_csv)]


def train_command(args: Args, run: PaperRun, seed: int, folder: Path) -> list[str]:
    launch = ["accelerate", "launch"] if shutil.which("accelerate") else [sys.executable, "-m", "accelerate.commands.launch"]
    command = [*launch, "--multi_gpu", "--num_processes", str(run.processes), run.script,
               "--dataset", run.dataset, "--root", str(args.root), "--batch-size", str(run.batch_size),
               "--epochs", str(EPOCHS), "--seed", str(seed), "--output", str(folder), "--select-on", args.select_on,
               "--mixed-precision", args.mixed_precision]
    if args.adam_steps_idle_parameters and run.script != "train_base.py":  # the base model uses every parameter
        command += ["--adam-steps-idle-parameters"]
    if args.val_ids:
        command += ["--val-ids", str(args.val_ids)]
    if run.script == "train_rlq.py":
        command += ["--teacher", str(args.teacher), "--external-root", str(args.external_root)]
    if run.attributes:
        command += ["--gender-csv", str(args.gender_csv), "--pose-csv", str(args.pose_csv), "--pose-column", POSE_COLUMN]
    if args.masks is not None:
        command += ["--masks", str(args.masks)]
    if (folder / "last.pt").is_file():
        command += ["--resume", str(folder)]
    return command


def commands(args: Args) -> list[tuple[list[str], Path | None]]:
    """(command, file that marks it done) in order: a seed's test.json marks its training and evaluation done
    (None: always run)."""
    steps = []
    for run in runs_for(args):
        evaluations = []
        for seed in args.seeds or run.seeds:
            folder = args.output / run.name / f"seed{seed}"
            result = folder / "test.json"
            steps.append((train_command(args, run, seed, folder), result))
            steps.append(([sys.executable, "evaluate.py", "--checkpoint", str(folder / run.checkpoint), "--root", str(args.root),
                           "--mixed-precision", args.mixed_precision, "--json", str(result)], result))
            evaluations.append(str(result))
        steps.append(([sys.executable, "-m", "rlq.seeds", *evaluations, "--evaluation", run.evaluation,
                       "--output", str(args.output / run.name / "seeds")], None))
    return steps


def check_paths(args: Args) -> None:
    """Before the first command: no run folder is or holds an input. Only --output/<run> is written, so the teacher that
    `reproduce celeb` made under the same --output is fine."""
    inputs = {"--root": args.root, "--external-root": args.external_root, "--teacher": args.teacher,
              "--gender-csv": args.gender_csv, "--pose-csv": args.pose_csv, "--masks": args.masks}
    check_outputs_apart({"--output": tuple(args.output / run.name for run in runs_for(args))}, inputs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_paths(args)
    except OptionError as error:
        sys.exit(f"error: {error}")
    print(f"# reproduce {args.name}: {EPOCHS} epochs, model selection on {args.select_on}; published (top-1 / mAP): "
          + "; ".join(f"{run.name} {run.published} ({run.evaluation})" for run in runs_for(args)))
    for command, makes in commands(args):
        done = makes is not None and makes.is_file()
        print(("# done: " if done else "") + shlex.join(command), flush=True)
        if args.dry_run or done:
            continue
        if subprocess.run(command).returncode != 0:
            sys.exit(f"error: this step failed: {shlex.join(command)}")


if __name__ == "__main__":
    with ends_cleanly():
        main()
