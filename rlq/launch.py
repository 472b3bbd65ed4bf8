"""How the scripts set up Accelerate: the default precision and memory layout, and a guard for multi-process launches that
Accelerate would silently run as independent single processes."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


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
