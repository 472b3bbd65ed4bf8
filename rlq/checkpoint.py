"""Checkpoints: atomic writes, clear read errors, fit checks and RNG states.

A checkpoint is a plain dict saved with `torch.save`. Every one we write carries
how it was made (`provenance`, in `rlq.checkpoint_format`): the script's full
config, the dataset and its class counts, the architecture, backbone and
architecture options, the input size, and the code version (rlq.__version__ and
the git commit when the code lives in a git checkout). `model_from_checkpoint`
rebuilds the model from these entries alone. Everything in a checkpoint is a
tensor or a plain Python value, so it loads with `torch.load(weights_only=True)`.

Entries: `model` (state dict), `arch`, `backbone`, `arch_kwargs`, `classes`
({num_pids, num_clothes, ...}), `dataset`, `input_size` ([H, W]), `config`,
`version`; training scripts add `epoch` (epochs completed), `best`, and in
last.pt the state to resume from (optimizers, scheduler, per-rank RNG states).

`load_checkpoint` also reads the authors' released .pth.tar files and returns them
converted into this format (`rlq.authors`), so every script that takes a checkpoint
takes theirs; and folders written by `python -m rlq.export --format safetensors`
(`model.safetensors`: the retrieval network's weights; `config.json`: how to build
it and how it was made), read without any pickle.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from rlq.authors import convert_authors_checkpoint
from rlq.checkpoint_format import CheckpointError, code_version, mismatch_report
from rlq.files import read_json_file, write_bytes_atomic
from rlq.model import build_model, retrieval_state_dict
from rlq.transforms import IMAGENET_MEAN, IMAGENET_STD


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a kill never leaves half a checkpoint."""
    buffer = io.BytesIO()  # serialised first, so that a full disk is reported with the size the file needs
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


# The authors' files store their rank-1 as a numpy scalar (numpy 1.x pickles it under numpy.core, 2.x under numpy._core).
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # the function numpy pickles scalars with
NUMPY_SCALARS = [_NUMPY_SCALAR, (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                 *(type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64))]


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint onto the CPU, with an error naming the file if it is missing, truncated or foreign.

    The authors' released checkpoints (`model_state_dict`, ...; see `rlq.authors`) are recognised
    and returned converted into this project's format; an exported folder is read by `load_exported`.
    """
    path = Path(path)
    if path.is_dir():
        return load_exported(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALARS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        # Only the kind of failure: torch's message explains weights_only at length, which is not the problem here.
        raise CheckpointError(
            f"cannot read checkpoint '{path}': the file is truncated, damaged or not a checkpoint "
            f"of this project or of the authors' ({type(error).__name__} in torch.load)"
        ) from None
    if isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:
        return convert_authors_checkpoint(checkpoint, path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(
            f"'{path}' is neither a checkpoint written by this project (no 'model' entry) nor one of the authors' "
            "(no 'model_state_dict' entry)"
        )
    return checkpoint


# An exported folder (rlq.export --format safetensors): no pickle anywhere, so anyone can load it safely.
EXPORTED_WEIGHTS, EXPORTED_CONFIG = "model.safetensors", "config.json"
# What building the model needs from config.json (the rest describes the network and its run for people).
_BUILD_ENTRIES = ("arch", "backbone", "arch_kwargs", "classes", "input_size", "normalisation")


def exported_config(checkpoint: dict, model: nn.Module) -> dict:
    """config.json of an exported model: how to build it and feed it, and its training run's provenance."""
    return {
        "arch": checkpoint["arch"],
        "backbone": checkpoint["backbone"],
        "arch_kwargs": checkpoint["arch_kwargs"],
        "classes": checkpoint["classes"],
        "feature_dim": model.retrieval_dim,
        "feature": "L2-normalised sum of the features of the image and of its mirror image: rank by dot product",
        "input_size": checkpoint["input_size"],
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize": "bilinear",
                          "scale": "RGB / 255, then (x - mean) / std"},
        "provenance": {k: checkpoint[k] for k in ("dataset", "config", "version", "epoch", "best") if k in checkpoint},
        "exported_with": code_version(),
    }


def exported_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.safetensors of an exported model: the weights retrieval uses (no identity or attribute heads)."""
    return {k: v.contiguous() for k, v in retrieval_state_dict(model).items()}


def load_exported(folder: Path) -> dict:
    """An exported folder as a checkpoint (`retrieval_only`: `model` lacks the training-only modules), read without
    pickle: JSON and safetensors. Every problem is one error naming the file."""
    config_path, weights_path = folder / EXPORTED_CONFIG, folder / EXPORTED_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"'{folder}' is a folder without {path.name}: expected a folder written by "
                                  "python -m rlq.export --format safetensors (of a run folder, give its best.pt)")
    config = read_json_file(config_path, dict, CheckpointError, "the config.json of python -m rlq.export --format safetensors")
    missing = [entry for entry in _BUILD_ENTRIES if entry not in config]
    if missing:
        raise CheckpointError(f"'{config_path}' lacks {', '.join(missing)}: expected the config.json of "
                              "python -m rlq.export --format safetensors")
    ours, theirs = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, config["normalisation"]
    if not isinstance(theirs, dict) or {k: theirs.get(k) for k in ours} != ours:
        raise CheckpointError(f"'{config_path}' asks for another input normalisation than rlq's ImageNet mean and std "
                              f"({config['normalisation']}): rlq cannot feed this network as it was trained")
    try:
        weights = safetensors.torch.load_file(weights_path)
    except Exception as error:  # safetensors raises its own SafetensorError, OSError, ... for damaged files
        raise CheckpointError(f"cannot read '{weights_path}': the file is truncated, damaged or not a safetensors file "
                              f"({type(error).__name__}: {error})") from None
    provenance = config.get("provenance", {})
    return {"model": weights, **{entry: config[entry] for entry in _BUILD_ENTRIES},
            "dataset": provenance.get("dataset"), "config": provenance.get("config", {}),
            "version": provenance.get("version"), "retrieval_only": True}


def load_state_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that, on any mismatch, raises one error listing every mismatched, missing and unexpected key."""
    report = mismatch_report(module.state_dict(), state_dict)
    if report:
        raise CheckpointError(f"{source} does not fit the {type(module).__name__} built for it:\n{report}")
    module.load_state_dict(state_dict)


def rng_states() -> dict:
    """This process's global RNG states (torch CPU/CUDA, numpy, random) as weights_only-loadable values."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def rng_states_of_all_processes() -> list[dict]:
    """`rng_states` of every process, in rank order (a collective: call it on every process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [rng_states()]
    # accelerate.utils.gather_object skips CPU process groups, so gather with torch.distributed itself.
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, rng_states())
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def model_from_checkpoint(checkpoint: dict, source: Path) -> nn.Module:
    """The model a checkpoint describes, with its weights (no ImageNet download: every weight comes from the file).

    An exported folder holds the retrieval weights alone: the model's training-only modules (identity and attribute
    heads, RLQ's pose branch) keep their fresh initialisation, which no retrieval feature uses.
    """
    model = build_model(checkpoint["arch"], checkpoint["classes"]["num_pids"], checkpoint["backbone"], pretrained=False,
                        **checkpoint["arch_kwargs"])
    state = checkpoint["model"]
    if checkpoint.get("retrieval_only"):
        fresh = model.state_dict()
        state = {k: v for k, v in fresh.items() if k.partition(".")[0] in model.training_only} | state
    load_state_checked(model, state, f"checkpoint '{source}' ({checkpoint['arch']}, {checkpoint['backbone']})")
    return model


# Modules that hold (part of) a ResNet trunk, in the order a source checkpoint's stages are preferred
# when a module of the new model has no same-named counterpart: the ID branch before the CAL branch.
_TRUNK_MODULES = ("shared", "backbone", "id_branch", "cal_branch", "pose_branch")


def _trunk_stages(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"layer3.0.conv1.weight": tensor, ...}: each trunk stage of a checkpoint, from its preferred module."""
    stages: dict[str, torch.Tensor] = {}
    for module in _TRUNK_MODULES:
        for key, tensor in state_dict.items():
            owner, _, rest = key.partition(".")
            if owner == module:
                stages.setdefault(rest, tensor)
    return stages


def init_from_checkpoint(model: nn.Module, checkpoint: dict, source: Path) -> str:
    """Start `model` from another run's weights (any architecture and class counts, same ResNet); returns a summary.

    Tensors with the same name and shape are copied (trunk, branches, necks; identity heads when the
    class counts agree). A trunk stage the checkpoint lacks under the same name is taken from the
    checkpoint's own copy of that stage (e.g. a three-branch model's pose branch from a two-branch
    checkpoint's shared layers and ID branch), as every branch starts from the same ImageNet trunk in
    the paper. Everything else (heads of other class counts) keeps its fresh initialisation.
    """
    theirs = checkpoint["model"]
    stages = _trunk_stages(theirs)
    own = model.state_dict()
    loaded, by_name, by_stage = {}, 0, 0
    for key, tensor in own.items():
        owner, _, rest = key.partition(".")
        if key in theirs and theirs[key].shape == tensor.shape:
            loaded[key], by_name = theirs[key], by_name + 1
        elif owner in _TRUNK_MODULES and rest in stages and stages[rest].shape == tensor.shape:
            loaded[key], by_stage = stages[rest], by_stage + 1
    trunk_keys = [k for k in own if k.partition(".")[0] in _TRUNK_MODULES]
    missing_trunk = [k for k in trunk_keys if k not in loaded]
    # A deeper ResNet of the same widths (resnet34 for resnet18) fits by name and shape: compare the stages too.
    extra_stages = sorted(set(stages) - {k.partition(".")[2] for k in trunk_keys})
    if missing_trunk or extra_stages:
        raise CheckpointError(f"--init-from '{source}' ({checkpoint.get('arch')}, {checkpoint.get('backbone')}) does not hold "
                              f"the trunk of this {type(model).__name__}: {len(missing_trunk)} of {len(trunk_keys)} trunk "
                              f"tensors missing or of another shape, {len(extra_stages)} trunk tensors it lacks "
                              f"(first: {', '.join((missing_trunk + extra_stages)[:5])})")
    model.load_state_dict(loaded, strict=False)
    fresh = [k for k in own if k not in loaded]
    return (f"initialised from '{source}': {by_name} tensors by name, {by_stage} trunk tensors from the same stage "
            f"elsewhere in the checkpoint, {len(fresh)} left fresh" + (f" ({', '.join(fresh)})" if fresh else ""))
