"""The checkpoint format that `rlq.checkpoint` (our files) and `rlq.authors` (theirs, converted into ours) share:
its error, the provenance entries every checkpoint carries, and the report of a state dict that does not fit a model.

Its own module so that rlq.checkpoint can import rlq.authors, which needs these, without either importing the other.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import torch

import rlq


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into."""


def code_version() -> dict[str, str | None]:
    """rlq's version and, when run from a git checkout, its commit (with '-dirty' for local changes)."""
    commit = None
    try:
        cwd = Path(rlq.__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True).stdout
        commit += "-dirty" if dirty.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout (e.g. an installed wheel), or git is missing
    return {"rlq": rlq.__version__, "git": commit}


def plain(value: Any) -> Any:
    """A config value as plain Python (paths -> str, tuples -> lists) for checkpoints and JSON."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def provenance(config: dict, arch: str, backbone: str, arch_kwargs: dict, classes: dict, dataset: str | None,
               input_size: tuple[int, int]) -> dict:
    """The checkpoint entries that say how a model was made and let `model_from_checkpoint` rebuild it."""
    return {
        "config": plain(config),
        "arch": arch,
        "backbone": backbone,
        "arch_kwargs": plain(arch_kwargs),
        "classes": classes,
        "dataset": dataset,
        "input_size": list(input_size),
        "version": code_version(),
    }


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _listed(title: str, items: list[str], limit: int = 20) -> str:
    shown = items[:limit] + ([f"... ({len(items) - limit} more)"] if len(items) > limit else [])
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {item}" for item in shown)


def mismatch_report(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor],
                    name: Callable[[str], str] = str) -> str:
    """Every shape-mismatched, missing and unexpected key of `state_dict` against `own`, listed ('' when it fits).

    `name` turns a key into the name shown (e.g. the name the key has in another format).
    """
    mismatched = [f"{name(k)}: checkpoint {_shape(v)}, model {_shape(own[k])}" for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = [name(k) for k in own if k not in state_dict]
    unexpected = [name(k) for k in state_dict if k not in own]
    parts = [(t, i) for t, i in (("shape mismatches", mismatched), ("missing from the checkpoint", missing), ("unexpected in the checkpoint", unexpected)) if i]
    return "\n".join(_listed(t, i) for t, i in parts)
