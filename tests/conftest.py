"""Shared fixtures: the synthetic dataset (generated once per test session) and a tiny training run on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlq.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
# The training and evaluation scripts live at the repository root, outside the rlq package.
sys.path.insert(0, str(REPO))


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


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The small synthetic dataset (seed 0): pass it as --root with --dataset synthetic.

    It holds target/ (LTCC layout, with target/parsing/ LIP label maps) and external/ (Celeb-reID layout).
    """
    return generate(tmp_path_factory.mktemp("synthetic"), seed=0)


# A training run small enough for CPU tests: random init, resnet18, 64x32 images, 3 steps per epoch,
# 2 epochs with the CAL loss on in the second, evaluated after every epoch.
TINY_RUN = dict(
    dataset="synthetic",
    pretrained=False,
    backbone="resnet18",
    height=64,
    width=32,
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

    output = tmp_path_factory.mktemp("tiny_run")
    main(Config(root=synthetic_root, output=output, **TINY_RUN))
    return output


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
