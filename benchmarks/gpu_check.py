"""The GPU check: every training script end to end with the defaults a user gets, and every benchmark at the paper's sizes.

One command for the few minutes a GPU is available (`scripts/gpu_check.sh` runs it, after installing what the
machine lacks from local wheels):

    bash scripts/gpu_check.sh                              # a GPU machine, within --budget-min (8) minutes
    bash scripts/gpu_check.sh --device cpu --tiny          # the same checks at tiny sizes on CPU (CI runs this)

The checks, each in processes of its own, so that one that fails or hangs never stops the others:

- data: the synthetic dataset with realistic crop sizes (on the GPU 150-420 px tall), its pose clusters
  (preprocess_pose.py) and clothes masks (preprocess_masks.py);
- train_base.py, train_cgal.py, train_rlq.py: with every default (auto precision, channels_last, fused Adam,
  augmentation on the device, persistent pinned workers) at the paper's size (ResNet-50 --no-pretrained, 384x192,
  LTCC's batch of 32 per process), a few capped steps per epoch over 2 epochs, then --resume for a 3rd, then
  evaluate.py on its checkpoint with --rerank --degrade mix. Recorded: steps/s and images/s of the second epoch (from
  metrics.json's pass times), peak GPU memory, and whether the resume continued the run (its first two epochs kept,
  the third added). The RLQ teacher is the train_base.py check's checkpoint;
- train_rlq.py, 2 processes: the same RLQ run through `accelerate launch --multi_gpu --num_processes 2` (skipped, and
  said so, with one GPU; with --device cpu, two CPU processes);
- bench_train.py, bench_extract.py, bench_data.py (--train-json: workers per GPU for our measured steps), bench_eval.py
  at LaST's test size (10,176 x 125,353, 8,192-d) and bench_rerank.py at the largest size that fits the budget.

--budget-min is kept by trimming steps, batches and sizes (each check gets its share of what is left), never by
leaving a check out. A check fails when its run fails or gives a wrong result (a resume that did not continue,
evaluators or re-rankers that disagree, fast-path losses off the fp32 reference); a speed target (CAL step >= 1.7x
and RLQ epoch >= 1.9x the fp32 reference, evaluation under 1 s per protocol at LaST's size, ...) is reported as met or
not. Writes gpu_check.md (one row per check) and gpu_check.json (with the machine and the date) to --report-dir,
prints the table, and exits with status 1 when a check failed.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import tyro  # noqa: E402
from bench_eval import cpu_name  # noqa: E402

from rlq.checkpoint import load_checkpoint  # noqa: E402
from rlq.options import formerly, usage_error  # noqa: E402

PYTHON = [sys.executable]  # every check's processes run on this interpreter
LTCC_EPOCH = {"tad": 631, "cap": 299}  # steps of one RLQ epoch on LTCC at batch 32 (as bench_train.py)
PAPER_EPOCHS = 200
RLQ_RUN_HOURS = 3.0  # target: a 200-epoch RLQ run on LTCC on one GPU
TRAIN_TARGETS = {"cal": 1.7, "rlq epoch": 1.9}  # bench_train.py ratios against the fp32 reference
EVAL_SECONDS = 1.0  # per protocol at LaST's test size
LAST_TEST = (10176, 125353)
STEP_TOLERANCE = {"rel": 0.05, "abs": 0.05}  # first-step losses, ours (bf16) against the fp32 reference


@dataclass
class Sizes:
    """What the checks run at: the paper's sizes on a GPU, tiny ones on CPU (--tiny)."""

    backbone: str
    height: int
    width: int
    batch_size: int  # per process (the paper's LTCC batch on the GPU)
    eval_batch_size: int
    num_workers: int | None  # None: the scripts' default
    steps_per_epoch: int  # capped steps per pass, before trimming
    synthetic: list[str]  # python -m rlq.synthetic size options
    bench: dict[str, Callable[[float], list[str]]]  # each benchmark's arguments at a size factor (1: the planned sizes)
    rerank_sizes: list[str]
    rerank_dim: int
    planned: dict[str, float]  # seconds each check is expected to take at full size


def gpu_sizes() -> Sizes:
    def images(factor: float) -> str:
        return str(max(512, 512 * round(4 * factor)))

    def repeats(factor: float) -> str:
        return "2" if factor >= 0.75 else "1"

    return Sizes(
        backbone="resnet50.tv_in1k", height=384, width=192, batch_size=32, eval_batch_size=128, num_workers=None,
        steps_per_epoch=20,
        # the small preset (30 + 20 target identities, 90 external ones) with HQ crops 384 px tall: 144-415 px in all
        synthetic=["--image-height", "384"],
        bench={
            "bench_train.py": lambda f: ["--device", "cuda", "--steps", str(max(5, round(20 * f))), "--warmup", str(max(2, round(5 * f)))],
            "bench_extract.py": lambda f: ["--device", "cuda", "--images", images(f), "--crops", images(f), "--repeats", repeats(f)],
            "bench_data.py": lambda f: ["--crops", "1200", "--batches", str(max(3, round(10 * f))), "--workers", "1", "4",
                                        "--augment-on", "device"],
            "bench_eval.py": lambda f: ["--device", "cuda", "--queries", str(LAST_TEST[0]), "--gallery", str(LAST_TEST[1]),
                                        "--dim", "8192", "--ids", "5000", "--skip-reference", "--repeats", repeats(f)],
        },
        rerank_sizes=["2000x20000", "5000x60000", f"{LAST_TEST[0]}x{LAST_TEST[1]}"], rerank_dim=8192,
        planned={"data": 40, "train_base.py": 60, "train_cgal.py": 60, "train_rlq.py": 75, "train_rlq.py, 2 processes": 75,
                 "bench_train.py": 90, "bench_extract.py": 30, "bench_data.py": 45, "bench_eval.py": 45, "bench_rerank.py": 60},
    )


def tiny_sizes() -> Sizes:
    return Sizes(
        # In-process loading and one step per pass: what takes the time here is starting the processes.
        backbone="resnet18", height=32, width=16, batch_size=16, eval_batch_size=64, num_workers=0, steps_per_epoch=1,
        synthetic=["--image-height", "48", "--target-train-ids", "12", "--target-test-ids", "4", "--external-train-ids", "12",
                   "--external-test-ids", "4"],
        bench={
            "bench_train.py": lambda f: ["--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "8"],
            "bench_extract.py": lambda f: ["--images", "16", "--crops", "16", "--num-workers", "0", "--batch-size", "8",
                                           "--reference-batch-size", "4", "--repeats", "1"],
            "bench_data.py": lambda f: ["--crops", "48", "--batches", "2", "--workers", "1", "--batch-size", "8", "--height", "64",
                                        "--width", "32", "--augment-on", "device"],
            "bench_eval.py": lambda f: ["--queries", "100", "--gallery", "1000", "--dim", "32", "--ids", "50", "--repeats", "1"],
        },
        rerank_sizes=["40x200"], rerank_dim=32,
        planned={"data": 10, "train_base.py": 25, "train_cgal.py": 25, "train_rlq.py": 30, "train_rlq.py, 2 processes": 35,
                 "bench_train.py": 12, "bench_extract.py": 5, "bench_data.py": 5, "bench_eval.py": 3, "bench_rerank.py": 6},
    )


@dataclass
class Row:
    """One check's line of the report."""

    check: str
    status: str = "passed"  # passed, failed or skipped
    figure: str = ""
    target: str = "-"
    met: str = "-"  # yes, no, or - (no target, or a GPU target on CPU)
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.status = "failed"
        self.figure = f"{reason}; {self.figure}" if self.figure else reason


class CheckFailed(Exception):
    """A run of a check failed: the message says which and how."""


class Context:
    """The options, the sizes, the work folder and the clock that every check shares."""

    def __init__(self, args: Args) -> None:
        self.args = args
        self.gpu = args.device == "cuda"
        self.sizes = tiny_sizes() if args.tiny else gpu_sizes()
        self.work = args.output
        self.data = self.work / "data"
        self.logs = self.work / "logs"
        self.start = time.perf_counter()
        self.deadline = self.start + 60 * args.budget_min
        self.gpus = torch.cuda.device_count() if self.gpu else 0
        self.runs = 0
        self.train_json: Path | None = None  # bench_train.py's results, once it has run: bench_data.py's step rates

    def factor(self, remaining_checks: list[str]) -> float:
        """The share of their planned sizes that the checks still to run can have: 1 when on time, down to 0.2."""
        left = self.deadline - time.perf_counter()
        planned = sum(self.sizes.planned[c] for c in remaining_checks)
        return max(0.2, min(1.0, left / planned)) if planned else 1.0

    def run(self, name: str, command: list[str], timeout: float, env: dict | None = None) -> str:
        """Run one command of a check with its output in logs/; its output, or CheckFailed with the line that says why."""
        self.runs += 1
        log = self.logs / f"{self.runs:02d}-{name}.log"
        environment = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
        with log.open("w") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            # A session of its own: a run that hangs is ended with everything it started (launcher ranks, loader workers),
            # so that nothing keeps the GPU busy for the checks after it.
            process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise CheckFailed(f"{name} did not finish in {timeout:.0f} s (log: {log})") from None
        output = log.read_text(errors="replace")
        if returncode != 0:
            raise CheckFailed(f"{name} exited with {returncode}: {last_error(output)} (log: {log})")
        return output


def last_error(output: str) -> str:
    """The line that says why a run failed: its `error:` line, else the last line of its traceback or output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]


# ----------------------------------------------------------------------------- data


def check_data(ctx: Context, row: Row, factor: float) -> None:
    """The synthetic dataset (LTCC + Celeb-reID layouts), pose clusters of its training images and its clothes masks."""
    ctx.run("synthetic", [*PYTHON, "-m", "rlq.synthetic", "--output", str(ctx.data), "--seed", "0", *ctx.sizes.synthetic],
            timeout=600)
    ctx.run("pose", [*PYTHON, "preprocess_pose.py", "--dataset", "synthetic", "--root", str(ctx.data), "--keypoints",
                     str(ctx.data / "target" / "keypoints.json"), "--output", str(ctx.work / "pose.csv"), "--variants", "R_LA",
                     "--ks", "15"], timeout=300)
    ctx.run("masks", [*PYTHON, "preprocess_masks.py", "--dataset", "synthetic", "--root", str(ctx.data), "--parsing",
                      str(ctx.data / "target" / "parsing"), "--output", str(ctx.work / "masks")], timeout=300)
    counts = json.loads((ctx.data / "manifest.json").read_text())["counts"]
    heights = crop_heights(ctx.data)
    row.details = {"counts": counts, "crop_heights": heights}
    images = sum(n for part in counts.values() for key, n in part.items() if key != "ids")
    row.figure = (f"{images} images, crops {heights['min']}-{heights['max']} px "
                  f"tall (median {heights['median']}); pose clusters (K = 15) and clothes masks")


def crop_heights(root: Path) -> dict[str, int]:
    from PIL import Image

    heights = sorted(Image.open(p).height for p in root.rglob("*") if p.suffix in (".png", ".jpg") and "parsing" not in p.parts
                     and p.name != "contact_sheet.png")
    return {"min": heights[0], "median": heights[len(heights) // 2], "max": heights[-1]}


# ----------------------------------------------------------------------------- the training scripts end to end


def training_flags(ctx: Context, script: str, steps: int, output: Path) -> list[str]:
    """The script's options: every speed option at its default, the sizes, and each stage's own inputs (the attribute
    files and masks of CAP, the teacher and the external set of RLQ)."""
    s = ctx.sizes
    flags = ["--dataset", "synthetic", "--root", str(ctx.data), "--backbone", s.backbone, "--no-pretrained",
             "--height", str(s.height), "--width", str(s.width), "--batch-size", str(s.batch_size),
             "--eval-batch-size", str(s.eval_batch_size), "--max-steps-per-epoch", str(steps), "--seed", "1",
             "--output", str(output)]
    flags += ["--num-workers", str(s.num_workers)] if s.num_workers is not None else []
    attributes = ["--gender-csv", str(ctx.data / "target" / "gender.csv"), "--pose-csv", str(ctx.work / "pose.csv"),
                  "--masks", str(ctx.work / "masks")]
    if script == "train_cgal.py":
        flags += attributes
    if script == "train_rlq.py":
        teacher = ctx.work / "train_base.py" / "last.pt"
        flags += [*attributes, "--teacher", str(teacher) if teacher.is_file() else "none",
                  "--external-dataset", "synthetic-external", "--external-root", str(ctx.data)]
    return flags


def launcher(ctx: Context, processes: int) -> tuple[list[str], dict]:
    if processes == 1:
        return PYTHON, {}
    launch = [*PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    if ctx.gpu:
        return launch, {}
    # Accelerate 1.x: --cpu --num_processes 2 starts one process; the torchrun launcher with ACCELERATE_USE_CPU forms a group.
    return [*launch, "--mixed_precision", "no", "--dynamo_backend", "no"], {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


def check_training(ctx: Context, row: Row, factor: float, script: str, processes: int = 1) -> None:
    steps = max(1, round(ctx.sizes.steps_per_epoch * factor))
    output = ctx.work / row.check.replace(", ", "-").replace(" ", "_")
    prefix, env = launcher(ctx, processes)
    timeout = max(120.0, 4 * ctx.sizes.planned[row.check])
    command = [*prefix, script, *training_flags(ctx, script, steps, output)]
    row.details = {"steps_per_epoch": steps, "processes": processes, "command": shlex.join(command + ["--epochs", "2"])}
    if script == "train_rlq.py" and "none" in command:
        row.details["note"] = "the train_base.py check left no checkpoint: TAD ran without a teacher (--teacher none)"

    ctx.run(f"{script}-2-epochs", [*command, "--epochs", "2"], timeout, env)
    first = load_checkpoint(output / "last.pt")
    resumed_output = ctx.run(f"{script}-resume", [*command, "--epochs", "3", "--resume", str(output)], timeout, env)
    last = load_checkpoint(output / "last.pt")
    resume = resume_continued(first, last, "resumed from" in resumed_output)

    passes = {"cap": last["history"]["train"]} | ({"tad": last["history"]["tad"]} if "tad" in last["history"] else {})
    # Images through the student per step: a CAP sample with --masks is an image and its recoloured copy, a TAD sample
    # an HQ and an LQ view (the teacher's forward on the HQ view is not counted).
    per_sample = {"cap": 1 if script == "train_base.py" else 2, "tad": 2}
    rates = {name: pass_rate(entries[1], ctx.sizes.batch_size * processes * per_sample[name])  # epoch 1: workers, kernels warm
             for name, entries in passes.items()}
    peak = max((e.get("peak_gpu_mib", 0) for entries in passes.values() for e in entries), default=0)
    row.details |= {"rates": rates, "peak_gpu_mib": peak or None, "resume": resume}

    if processes == 1:
        evaluation = ctx.work / f"{output.name}-eval.json"
        ctx.run(f"{script}-evaluate", [*PYTHON, "evaluate.py", "--checkpoint", str(output / "last.pt"), "--root", str(ctx.data),
                                       "--rerank", "--degrade", "mix", "--batch-size", str(ctx.sizes.eval_batch_size),
                                       "--json", str(evaluation)]
                + (["--num-workers", str(ctx.sizes.num_workers)] if ctx.sizes.num_workers is not None else []), timeout)
        row.details["evaluation"] = evaluation_summary(json.loads(evaluation.read_text()))

    shown = {"cap": "CAP" if script != "train_base.py" else "train", "tad": "TAD"}
    figure = [f"{shown[name]} {r['steps_per_s']:.1f} steps/s, {r['images_per_s']:.0f} images/s" for name, r in rates.items()]
    if ctx.gpu:
        figure.append(f"peak GPU memory {peak / 1024:.1f} GiB")
    figure.append("resume continued" if resume["continued"] else "resume did NOT continue")
    if "evaluation" in row.details:
        e = row.details["evaluation"]
        figure.append(f"evaluate.py: {e['headline']} top-1 {100 * e['top1']:.1f}, re-ranked {100 * e['reranked_top1']:.1f}, "
                      f"mix {100 * e['mix_top1']:.1f}")
    if script == "train_rlq.py" and processes == 1:
        hours = PAPER_EPOCHS * sum(LTCC_EPOCH[name] / rates[name]["steps_per_s"] for name in LTCC_EPOCH) / 3600
        row.details["projected_ltcc_run_hours"] = hours
        figure.append(f"a {PAPER_EPOCHS}-epoch LTCC run: {hours:.1f} h of steps")
        row.target = f"LTCC run under {RLQ_RUN_HOURS:.0f} h on one GPU"
        row.met = ("yes" if hours < RLQ_RUN_HOURS else "no") if ctx.gpu else "-"
    row.figure = "; ".join(figure)
    if not resume["continued"]:
        row.fail(f"resume did not continue: {resume['why']}")


def pass_rate(entry: dict, images_per_step: int) -> dict[str, float]:
    return {"steps": entry["steps"], "seconds": entry["seconds"], "steps_per_s": entry["steps"] / entry["seconds"],
            "images_per_s": entry["steps"] * images_per_step / entry["seconds"]}


def resume_continued(first: dict, last: dict, said_resumed: bool) -> dict:
    """Whether the resumed run kept the first two epochs as they were and added the third."""
    why = []
    if not said_resumed:
        why.append("the run did not say 'resumed from'")
    if (first["epoch"], last["epoch"]) != (2, 3):
        why.append(f"epochs done {first['epoch']} then {last['epoch']}, expected 2 then 3")
    for name, entries in last["history"].items():
        if name in ("train", "tad"):
            if [e["epoch"] for e in entries] != [0, 1, 2]:
                why.append(f"{name} epochs {[e['epoch'] for e in entries]}, expected [0, 1, 2]")
            elif entries[:2] != first["history"][name]:
                why.append(f"the {name} history of epochs 0-1 changed")
    return {"continued": not why, "why": "; ".join(why)}


def evaluation_summary(results: dict) -> dict[str, float | str]:
    headline = "cc" if "cc" in results else "standard"
    return {"headline": headline.upper() if headline == "cc" else headline, "top1": results[headline]["top1"],
            "mAP": results[headline]["mAP"], "reranked_top1": results["reranked"][headline]["top1"],
            "mix_top1": results["degraded"]["mix"][headline]["top1"]}


# ----------------------------------------------------------------------------- the benchmarks


def bench(ctx: Context, name: str, arguments: list[str], timeout: float) -> dict:
    """Run benchmarks/<name> with --json; its results."""
    out = ctx.work / f"{Path(name).stem}.json"
    ctx.run(Path(name).stem, [*PYTHON, str(REPO / "benchmarks" / name), *arguments, "--json", str(out)], timeout)
    return json.loads(out.read_text())


def check_bench_train(ctx: Context, row: Row, factor: float) -> None:
    report = bench(ctx, "bench_train.py", ctx.sizes.bench["bench_train.py"](factor), max(180.0, 4 * ctx.sizes.planned[row.check]))
    ctx.train_json = ctx.work / "bench_train.json"
    results = report["results"]
    row.details = {"mixed_precision": report["mixed_precision"], "ratios": {k: r["ratio"] for k, r in results.items()},
                   "ours_images_per_s": {k: r["ours"]["images_per_s"] for k, r in results.items() if "images_per_s" in r["ours"]},
                   "ours_peak_mib": {k: r["ours"]["peak_mib"] for k, r in results.items() if "peak_mib" in r["ours"]}}
    row.figure = ", ".join(f"{k} {r['ratio']:.2f}x" for k, r in results.items())
    row.target = ", ".join(f"{k} >= {v}x" for k, v in TRAIN_TARGETS.items())
    if ctx.gpu:
        row.met = "yes" if all(results[k]["ratio"] >= v for k, v in TRAIN_TARGETS.items()) else "no"
    off = [f"{stage} {term}" for stage, r in results.items() if "first_step" in r["ours"]
           for term, value in r["reference"]["first_step"].items()
           if abs(r["ours"]["first_step"][term] - value) > STEP_TOLERANCE["abs"] + STEP_TOLERANCE["rel"] * abs(value)]
    row.details["first_step_losses_off"] = off
    if off:
        row.fail(f"first-step losses off the fp32 reference: {', '.join(off)}")


def check_bench_extract(ctx: Context, row: Row, factor: float) -> None:
    result = bench(ctx, "bench_extract.py", ctx.sizes.bench["bench_extract.py"](factor), max(120.0, 4 * ctx.sizes.planned[row.check]))
    row.details = result
    row.figure = (f"ours {result['ours']:.0f} images/s vs fp32 {result['reference']:.0f} ({result['ratio']:.2f}x); "
                  f"end to end {result['end_to_end']:.0f} images/s; smallest cosine {result['min_cosine']:.4f}")
    row.target = "features agree (smallest cosine >= 0.99)"
    row.met = "yes" if result["min_cosine"] >= 0.99 else "no"


def check_bench_data(ctx: Context, row: Row, factor: float) -> None:
    arguments = ctx.sizes.bench["bench_data.py"](factor)
    train_json = ctx.train_json if ctx.train_json is not None and ctx.train_json.is_file() else None
    if train_json is not None:
        arguments += ["--train-json", str(train_json)]
    report = bench(ctx, "bench_data.py", arguments, max(120.0, 4 * ctx.sizes.planned[row.check]))
    pipelines = report["pipelines"]
    row.details = report
    cores = os.cpu_count() or 1
    per_gpu = cores // max(1, ctx.gpus)
    needed = {k: p["workers"] for k, p in pipelines.items() if p["workers"] is not None}
    row.figure = ("workers per GPU needed: " + ", ".join(f"{k} {v}" for k, v in needed.items())
                  + f" (for {'our measured steps' if train_json else 'an assumed 1,600 images/s'})")
    row.target = f"at most the cores per GPU ({per_gpu})"
    row.met = ("yes" if max(needed.values()) <= per_gpu else "no") if ctx.gpu else "-"


def check_bench_eval(ctx: Context, row: Row, factor: float) -> None:
    report = bench(ctx, "bench_eval.py", ctx.sizes.bench["bench_eval.py"](factor), max(180.0, 4 * ctx.sizes.planned[row.check]))
    protocols = report["protocols"]
    sizes = report["sizes"]
    row.details = report
    row.figure = (", ".join(f"{p} {r['seconds']:.2f} s" for p, r in protocols.items())
                  + f" ({sizes['queries']:,} x {sizes['gallery']:,}, {sizes['dim']:,}-d)")
    row.target = f"under {EVAL_SECONDS:.0f} s per protocol at LaST's test size"
    at_last = (sizes["queries"], sizes["gallery"]) == LAST_TEST
    row.met = ("yes" if all(r["seconds"] < EVAL_SECONDS for r in protocols.values()) else "no") if ctx.gpu and at_last else "-"
    if report["failures"]:
        row.fail(f"rlq.metrics.evaluate and the per-query reference disagree on {report['failures']} protocol(s)")


def check_bench_rerank(ctx: Context, row: Row, factor: float) -> None:
    """Sizes in increasing order while the next one's time (scaled as N^2 from the last) fits this check's share."""
    share = max(30.0, ctx.sizes.planned[row.check] * factor)
    started, done = time.perf_counter(), {}
    previous = None
    for size in ctx.sizes.rerank_sizes:
        n = sum(int(v) for v in size.split("x"))
        if previous is not None:  # the re-ranking itself grows as N^2 (the neighbour search), process start-ups do not
            last_n, last_wall, last_compute = previous
            predicted = last_wall - last_compute + last_compute * (n / last_n) ** 2
            if time.perf_counter() - started + predicted > share:
                row.details["stopped_before"] = {"size": size, "predicted_seconds": round(predicted, 1)}
                break
        begin = time.perf_counter()
        report = bench(ctx, "bench_rerank.py", ["--sizes", size, "--dim", str(ctx.sizes.rerank_dim), "--device", ctx.args.device],
                       timeout=max(180.0, 4 * share))
        done[size] = report[size]
        compute = report[size]["ours"]["seconds"] + report[size].get("dense", {}).get("seconds", 0.0)
        previous = (n, time.perf_counter() - begin, compute)
    largest, result = list(done.items())[-1]
    row.details["sizes"] = done
    memory = f", GPU peak {result['ours']['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in result["ours"] else ""
    row.figure = f"largest {largest.replace('x', ' x ')}: {result['ours']['seconds']:.1f} s{memory}, {ctx.sizes.rerank_dim}-d"
    row.target = f"LaST's test size ({LAST_TEST[0]:,} x {LAST_TEST[1]:,})"
    row.met = ("yes" if largest == f"{LAST_TEST[0]}x{LAST_TEST[1]}" else "no") if ctx.gpu else "-"
    compared = {s: r["max_difference"] for s, r in done.items() if "max_difference" in r}
    if compared:
        row.figure += "; same distances as the dense reference at " + ", ".join(compared)
    if any(d > 1e-4 for d in compared.values()):
        row.fail(f"re-ranked distances differ from the dense reference: {compared}")


# ----------------------------------------------------------------------------- the report


def machine(ctx: Context) -> dict:
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if ctx.gpu:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(ctx.gpus)]
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["driver"] = nvidia_driver()
    return info


def nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def machine_line(info: dict) -> str:
    if "gpus" in info:
        gpus = f"{len(info['gpus'])} x {info['gpus'][0]} ({info['gpu_memory_gib']} GiB), driver {info['driver'] or 'unknown'}, "
    else:
        gpus = "no GPU, "
    return (f"{gpus}CUDA {info['cuda'] or '-'}, cuDNN {info['cudnn'] or '-'}, torch {info['torch']}, Python {info['python']}; "
            f"{info['cores']} cores of {info['cpu']}")


def markdown(report: dict) -> str:
    lines = [f"# GPU check, {report['machine']['date']}", "",
             f"Machine: {machine_line(report['machine'])}.", "",
             f"Command: `{report['command']}` (budget {report['budget_min']:g} min, took {report['seconds'] / 60:.1f} min; "
             f"{report['sizes']}).", "",
             "| check | result | figure | target | met | seconds |", "|---|---|---|---|---|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['check']} | {row['status']} | {row['figure']} | {row['target']} | {row['met']} | {row['seconds']:.0f} |")
    failed = [r["check"] for r in report["rows"] if r["status"] == "failed"]
    lines += ["", f"{len(failed)} check(s) failed: {', '.join(failed)}." if failed else "Every check passed."]
    return "\n".join(lines) + "\n"


CHECKS = {
    "data": check_data,
    "train_base.py": lambda ctx, row, f: check_training(ctx, row, f, "train_base.py"),
    "train_cgal.py": lambda ctx, row, f: check_training(ctx, row, f, "train_cgal.py"),
    "train_rlq.py": lambda ctx, row, f: check_training(ctx, row, f, "train_rlq.py"),
    "train_rlq.py, 2 processes": lambda ctx, row, f: check_training(ctx, row, f, "train_rlq.py", processes=2),
    "bench_train.py": check_bench_train,
    "bench_extract.py": check_bench_extract,
    "bench_data.py": check_bench_data,
    "bench_eval.py": check_bench_eval,
    "bench_rerank.py": check_bench_rerank,
}


def run_checks(ctx: Context) -> list[Row]:
    rows, names = [], list(CHECKS)
    multi = "train_rlq.py, 2 processes"
    for i, name in enumerate(names):
        row = Row(name)
        rows.append(row)
        if name == multi and ctx.gpu and ctx.gpus < 2:
            row.status, row.figure = "skipped", f"{ctx.gpus} GPU on this machine: needs 2 or more"
            print(f"[{time.perf_counter() - ctx.start:4.0f} s] {name}: skipped ({row.figure})", flush=True)
            continue
        remaining = [n for n in names[i:] if not (n == multi and ctx.gpu and ctx.gpus < 2)]
        factor = ctx.factor(remaining)
        print(f"[{time.perf_counter() - ctx.start:4.0f} s] {name} ...", flush=True)
        begin = time.perf_counter()
        try:
            CHECKS[name](ctx, row, factor)
        except CheckFailed as error:
            row.fail(str(error))
        except Exception as error:  # a check's own bug must not stop the others either
            row.fail(f"{type(error).__name__}: {error}")
        row.seconds = time.perf_counter() - begin
        row.details["size_factor"] = round(factor, 3)
        print(f"[{time.perf_counter() - ctx.start:4.0f} s] {name}: {row.status} in {row.seconds:.0f} s: {row.figure}", flush=True)
    return rows


@dataclass
class Args:
    """The GPU check: every training script end to end with the defaults a user gets, and every benchmark at the paper's
    sizes; writes gpu_check.md and gpu_check.json and exits with status 1 when a check failed."""

    device: Literal["cuda", "cpu"] = "cuda"
    """Where the checks run."""
    tiny: bool = False
    """Tiny sizes (resnet18, 64x32, 1 step per pass): the checks of the checks, on CPU."""
    budget_min: float = 8.0
    """Minutes the whole check should take; kept by trimming steps, batches and sizes."""
    output: Annotated[Path | None, formerly("--work", "--output")] = None
    """Folder of the data, runs and logs, which must not exist yet (default: runs/gpu_check/<UTC date and time>)."""
    report_dir: Path | None = None
    """Where gpu_check.md and gpu_check.json go (default: --output)."""


def parse_args(argv: list[str] | None = None) -> Args:
    """The options, checked, with the work folder and the report folder filled in."""
    args = tyro.cli(Args, args=argv, prog="bash scripts/gpu_check.sh")
    if args.budget_min <= 0:
        usage_error(f"--budget-min {args.budget_min:g}: expected minutes above 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        usage_error("--device cuda: torch sees no GPU on this machine (torch.cuda.is_available() is False); "
                    "use --device cpu --tiny to check the checks")
    if args.output is None:
        args.output = REPO / "runs" / "gpu_check" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if args.output.exists():
        usage_error(f"--output '{args.output}' exists: every check starts from an empty folder of its own, so give a new one")
    args.report_dir = args.report_dir or args.output
    if args.report_dir.exists() and not args.report_dir.is_dir():
        usage_error(f"--report-dir '{args.report_dir}' is a file: expected a folder")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = shlex.join(["bash", "scripts/gpu_check.sh", *(sys.argv[1:] if argv is None else argv)])
    ctx = Context(args)
    ctx.logs.mkdir(parents=True)
    info = machine(ctx)
    sizes = ctx.sizes
    described = (f"{sizes.backbone} --no-pretrained, {sizes.height}x{sizes.width}, batch {sizes.batch_size} per process, "
                 f"at most {sizes.steps_per_epoch} steps per pass")
    print(f"gpu check: {machine_line(info)}\n{described}; budget {args.budget_min:g} min; work folder {args.output}", flush=True)
    rows = run_checks(ctx)
    report = {"machine": info, "command": command, "budget_min": args.budget_min, "sizes": described,
              "seconds": time.perf_counter() - ctx.start, "rows": [asdict(r) for r in rows],
              "failed": [r.check for r in rows if r.status == "failed"]}
    args.report_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (args.report_dir / "gpu_check.md").write_text(text)
    (args.report_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + text + f"\nwrote {args.report_dir / 'gpu_check.md'} and {args.report_dir / 'gpu_check.json'}; logs in {ctx.logs}")
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
