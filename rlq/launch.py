"""How the scripts set up Accelerate: the default precision and memory layout, the experiment trackers, and a guard
for multi-process launches that Accelerate would silently run as independent single processes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import accelerate
import torch
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from rlq.options import OptionError

# Accelerate's trackers (each named as its package), and none.
Tracker = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio", "none"]


class LaunchError(RuntimeError):
    """The launcher started several processes, but they do not form one Accelerate process group."""


def check_launch(accelerator: Accelerator) -> None:
    """Fail fast when WORLD_SIZE processes were launched but Accelerate sees another number.

    Without a GPU, Accelerate forms a CPU process group only when told to use the
    CPU; otherwise each launched process runs the whole job alone and they all
    write the same files. (`accelerate launch --cpu --num_processes N` starts a
    single process unless an MPI hostfile is given.)
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise LaunchError(
            f"{launched} processes were launched but Accelerate sees {accelerator.num_processes}; on a machine "
            "without GPUs launch with: ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ..."
        )


def mixed_precision(choice: str) -> str:
    """--mixed-precision auto: bf16 where the GPU supports it, else fp32 ("no")."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def memory_format(device: torch.device) -> torch.memory_format:
    """Layout of images and convolution weights: channels_last on a GPU (its fastest convolution kernels want it),
    the default on CPU, where channels_last ran our ResNets at 0.6-0.9x (benchmarks/bench_extract.py, bench_train.py)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def trackers(log_with: Sequence[str]) -> list[str] | None:
    """--log-with as Accelerator's log_with (None for none), every tracker checked to be installed: Accelerate
    itself leaves out a tracker whose package is missing without a word, and the run would log nowhere."""
    if "none" in log_with:
        if len(log_with) > 1:
            raise OptionError(f"--log-with {' '.join(log_with)}: none turns tracking off, so it goes alone")
        return None
    if not log_with:
        raise OptionError("--log-with: expected one or more trackers (tensorboard, wandb, mlflow, ...) or none")
    installed = {str(tracker) for tracker in get_available_trackers()}
    for name in log_with:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise OptionError(f"--log-with {name}: Accelerate {accelerate.__version__} has no such tracker: expected one "
                              f"of {', '.join(LOGGER_TYPE_TO_CLASS)}, or a newer accelerate")
        if name not in installed:
            raise OptionError(f"--log-with {name} needs the package '{name}': pip install {name}")
    return list(dict.fromkeys(log_with))
