"""Shared fixtures: the synthetic dataset (generated once per test session) and a tiny training run on it."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlq.synthetic import generate

# Under pytest-xdist (-n N) the workers share the cores: each takes its share of threads, and so do the processes its
# tests start, or their thread pools fight over the cores (a 2-core run took 40 CPU-minutes instead of 15).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)

REPO = Path(__file__).resolve().parents[1]
# The training and evaluation scripts live at the repository root, outside the rlq package.
sys.path.insert(0, str(REPO))


def run_here(*command: str) -> subprocess.CompletedProcess:
    """`python *command` (a repository script or `-m module`, run from the repository root) in this test process.

    The script runs as `__main__` with `sys.argv` set, through its own argument parsing and `ends_cleanly`, so its exit
    status and stderr are those a shell gets: `sys.exit("error: ...")` ends stderr with that line and gives 1, an
    uncaught exception prints its traceback and gives 1, warnings print as Python prints them by default. It saves the
    3 s of importing torch and timm that a fresh process pays; a test about processes themselves (signals, locks,
    several ranks, workers) uses `subprocess` instead.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    if command[0] == "-m":
        argv, start = [command[1], *command[2:]], lambda: runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        script = str(REPO / command[0])
        argv, start = [script, *command[1:]], lambda: runpy.run_path(script, run_name="__main__")
    saved_argv, saved_cwd, saved_sigterm = sys.argv, os.getcwd(), signal.getsignal(signal.SIGTERM)
    returncode = 0
    with warnings.catch_warnings(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        warnings.resetwarnings()  # Python's own defaults, not pytest's capture
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("ignore", "'.*' found in sys.modules after import of package", RuntimeWarning)  # runpy, here only
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        sys.argv = argv
        os.chdir(REPO)
        try:
            start()
        except SystemExit as stop:
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
            returncode = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            returncode = 1
        finally:
            sys.argv = saved_argv
            os.chdir(saved_cwd)
            signal.signal(signal.SIGTERM, saved_sigterm)
    return subprocess.CompletedProcess(["python", *command], returncode, stdout.getvalue(), stderr.getvalue())


def launch_two_cpu_processes(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a repository script as 2 CPU processes of one Accelerate process group (gloo).

    `accelerate launch --cpu --num_processes 2` starts a single process (its multi-CPU mode needs an
    MPI hostfile); the torchrun launcher (--multi_gpu) with ACCELERATE_USE_CPU forms a real CPU group.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / script), *args]
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# The tests' dataset: the small preset (seed 0) with 6 of its 20 target test identities (21 queries, 149 gallery images).
# Every tiny run evaluates its test split after each epoch, and evaluation was the larger part of such a run; training
# is capped in steps, so the training split keeps its size. The learning guard (test_learning.py) and the generator's
# own tests (test_synthetic.py) read the whole small preset.
TEST_DATASET = dict(target_test_ids=6)


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """The folder `name` that `make(folder)` fills, made once per test session and read by every pytest-xdist worker.

    A session-scoped fixture alone is made once per worker. Here the first worker to ask makes the folder under a lock
    while the others wait for it; the tests only read it. A folder that a failed `make` left is made again.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders (popen-gw0, ...) sit side by side in the session's
    folder, made = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a killed worker's process ends
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
            made.touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The tests' synthetic dataset (TEST_DATASET): pass it as --root with --dataset synthetic.

    It holds target/ (LTCC layout, with target/parsing/ LIP label maps) and external/ (Celeb-reID layout).
    """
    return made_once(tmp_path_factory, "synthetic", lambda folder: generate(folder, seed=0, **TEST_DATASET))


@pytest.fixture(scope="session")
def small_preset_root(tmp_path_factory) -> Path:
    """The synthetic dataset's small preset (seed 0) as the demo and `python -m rlq.synthetic` make it."""
    return made_once(tmp_path_factory, "small_preset", lambda folder: generate(folder, seed=0))


# A training run small enough for CPU tests: random init, resnet18, 32x16 images (a quarter of 64x32's pixels and about
# 40% of its time per step; layer4 still sees a 2x1 map), 3 steps per epoch, 2 epochs with the CAL loss on in the
# second, evaluated after every epoch.
TINY_RUN = dict(
    dataset="synthetic",
    pretrained=False,
    backbone="resnet18",
    height=32,
    width=16,
    batch_size=16,
    epochs=2,
    max_steps_per_epoch=3,
    cal_start_epoch=1,
    eval_every=1,
    eval_batch_size=64,
    num_workers=0,
)


@pytest.fixture(scope="session")
def tiny_run(synthetic_root, tmp_path_factory) -> Path:
    """Output folder of one TINY_RUN of train_base.py (best.pt, last.pt, metrics.json)."""
    from train_base import Config, main

    return made_once(tmp_path_factory, "tiny_run", lambda output: main(Config(root=synthetic_root, output=output, **TINY_RUN)))


@pytest.fixture(scope="session")
def attribute_files(synthetic_root, tmp_path_factory) -> tuple[Path, Path]:
    """(gender CSV, pose CSV) of the synthetic target set; the pose labels (column R_LA_15, 0..15) are arbitrary but fixed."""
    from rlq.data import load_dataset

    pose_csv = tmp_path_factory.mktemp("attributes") / "pose.csv"
    train = load_dataset("synthetic", synthetic_root).train
    rows = "".join(f"train,{s.key},{float(i % 16)}\n" for i, s in enumerate(train))
    pose_csv.write_text("Category,Image,R_LA_15\n" + rows)
    return synthetic_root / "target" / "gender.csv", pose_csv


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A best.pt of an untrained two-branch resnet18 at 64x32, in the format training writes, made in a second.

    Its weights and BatchNorm statistics are random (not ImageNet's nor a fresh initialisation's), so that every
    image gets its own feature and a loader that mixed up two tensors would be caught.
    """
    import torch

    from rlq.checkpoint import save_atomic
    from rlq.checkpoint_format import provenance
    from rlq.model import build_model

    torch.manual_seed(0)
    model = build_model("base", 5, "resnet18", pretrained=False, split_after="layer2")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    config = {"dataset": "synthetic", "backbone": "resnet18", "height": 64, "width": 32, "model": "base"}
    checkpoint = {"model": model.state_dict(), "epoch": 1, "best": None} | provenance(
        config, arch="base", backbone="resnet18", arch_kwargs={"split_after": "layer2"},
        classes={"num_pids": 5, "num_clothes": 9, "num_original_clothes": 9}, dataset="synthetic", input_size=(64, 32))
    path = tmp_path_factory.mktemp("small_checkpoint") / "best.pt"
    save_atomic(checkpoint, path)
    return path


# The tests the fast subset (python -m pytest -q -n 2 -m "not slow") leaves out, and why. Each takes 3 s or more on 2 cores
# (measured with --durations): a training run or several processes of its own beyond the shared tiny runs above. The
# fast subset keeps at least one test of every module and script (the tiny base, CGAL and RLQ runs, evaluate.py,
# export, the API, trackers, pre-processing, every CLI's --help), so an edit's wiring is still exercised.
OWN_RUN = "its own training run, beyond the shared tiny runs"
SLOW = {
    "test_gpu_check.py::test_the_cpu_form_runs_every_check_and_reports_each": "the GPU check's tiny CPU form: every script and benchmark",
    **{f"test_learning.py::{name}": "the learning guard: an 8-epoch run that must learn identity" for name in (
        "test_identity_is_found_across_clothes_far_above_chance", "test_training_losses_fall_and_the_discriminator_learns_outfits")},
    "test_benchmarks.py::test_fp32_fast_path_gives_the_reference_losses": "bench_train's step of every stage against the reference",
    "test_benchmarks.py::test_bf16_fast_path_matches_fp32_within_bf16_tolerance": "bench_train's step of every stage in bf16",
    "test_benchmarks.py::test_bench_rerank_runs_both_paths_in_their_own_processes_and_they_agree": "a process per measurement",
    "test_evaluate.py::test_two_processes_give_the_same_numbers_and_every_feature": "two processes",
    "test_train_base.py::test_two_process_training_matches_its_checkpoint": "two processes",
    "test_losses.py::test_triplet_distributed_gathers_gallery_local_gradients": "two processes",
    "test_train_base.py::test_compiled_training_writes_a_plain_checkpoint": "torch.compile",
    "test_train_base.py::test_resume_continues_exactly": "a run, killed and resumed, against a straight one",
    "test_train_rlq.py::test_resume_after_a_tad_phase_continues_with_that_epochs_cap_phase": "a run, killed and resumed, against a straight one",
    "test_run_guards.py::test_a_signal_ends_a_training_run_with_one_line_saying_how_to_resume": "a run stopped by each signal, resumed",
    "test_run_guards.py::test_the_lock_lives_as_long_as_the_run_and_dies_with_it": "two runs at once, one killed",
    "test_lowquality.py::test_degraded_evaluation_is_deterministic_and_differs_from_clean": "evaluate.py twice under every degradation",
    "test_export.py::test_our_checkpoint_exports_the_retrieval_feature": "an ONNX export and onnxruntime",
    "test_export.py::test_the_authors_checkpoint_exports_their_feature": "an ONNX export and onnxruntime",
    "test_recolour.py::test_training_with_masks_widens_the_clothes_classifier": OWN_RUN,
    "test_gpu_check.py::test_a_failing_check_does_not_stop_the_others_and_the_status_says_so": "several check processes",
    **{f"test_hardening.py::{name}": OWN_RUN for name in (
        "test_a_failing_evaluation_loses_no_training_and_a_resume_evaluates_that_epoch",
        "test_a_new_run_does_not_overwrite_another_runs_checkpoints",
        "test_diverged_weights_are_never_written",
        "test_resume_applies_a_new_learning_rate_schedule_and_records_it",
    )},
    **{f"test_run_guards.py::{name}": OWN_RUN for name in (
        "test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_previous_one",
        "test_training_keeps_going_and_resumes_when_the_headline_protocol_has_no_valid_query",
    )},
}


# The files that take longest (measured with --durations under -n 2), run first: pytest-xdist hands each worker whole
# files in collection order (--dist loadfile --no-loadscope-reorder; by default it would order files by their number
# of tests, and the GPU check's few long ones came last), and a long file handed out last leaves the other worker idle.
LONGEST_FILES = ("test_gpu_check.py", "test_learning.py", "test_train_base.py", "test_run_guards.py", "test_train_rlq.py",
                 "test_hardening.py", "test_diagnostics.py", "test_evaluate.py", "test_lowquality.py")


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect anything
def pytest_collection_modifyitems(config, items):
    """Mark the SLOW tests; when every test file was collected, a SLOW entry that names no test is an error (a renamed
    test would otherwise slip into the fast subset unnoticed). The longest files go first."""
    items.sort(key=lambda item: LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES else len(LONGEST_FILES))
    found = set()
    for item in items:
        name = item.nodeid.split("[")[0].removeprefix("tests/")
        if name in SLOW:
            item.add_marker(pytest.mark.slow)
            found.add(name)
    every_file = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    if every_file <= {item.path.name for item in items} and set(SLOW) - found:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {sorted(set(SLOW) - found)}")
