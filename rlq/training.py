"""Plumbing the training scripts share: checkpoints, resume, the NaN guard, evaluation and best selection, logs.

Each script keeps its own training step (forward, losses, optimizer steps) and its own
epoch loop; what is here is what they would otherwise repeat word for word.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

from rlq.checkpoint import (
    CheckpointError,
    init_from_checkpoint,
    load_checkpoint,
    load_state_checked,
    rng_states_of_all_processes,
    save_atomic,
    set_rng_states,
)
from rlq.checkpoint_format import plain, provenance
from rlq.data import DatasetLayoutError, ReIDDataset, unreadable_images, unreadable_report
from rlq.diagnostics import diagnostics_text, evaluations_clothes_leakage
from rlq.evaluation import evaluate_model, headline_key, results_table
from rlq.files import remove_stale_temporaries, signals_deferred, write_text_atomic
from rlq.masks import mask_path
from rlq.model import build_model
from rlq.options import output_folder
from rlq.recolour import Recolouring, num_colours, widen_pid2clothes
from rlq.transforms import DeferredTrainTransform, TrainTransform

# Checkpoint entries needed only to continue training (best.pt leaves them out).
TRAINING_STATE = ("optimizer", "clothes_optimizer", "scheduler", "scaler", "rng", "history", "phase")


class NonFiniteLoss(RuntimeError):
    """A loss term or a parameter became NaN, infinite or absurdly large: the run stops, keeping the last good checkpoint."""


# A loss term or a weight this large means the run has diverged (healthy ones stay below about 100).
DIVERGED = 1e6


def check_parameters(model: torch.nn.Module, epoch: int, accelerator: Accelerator) -> None:
    """Stop before a checkpoint is written if any weight is non-finite or diverged (every process holds the same weights)."""
    named = list(accelerator.unwrap_model(model).named_parameters())
    largest = torch.stack([p.detach().abs().max().float() for _, p in named]).cpu()
    bad = [name for (name, _), value in zip(named, largest.tolist()) if not value < DIVERGED]  # NaN fails too
    if bad:
        raise NonFiniteLoss(f"the model's weights diverged in epoch {epoch} ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                            "not finite or above 1e6): stopping without writing them; last.pt keeps the epochs before")


class RunState:
    """Where this process's training run is: what it says when Ctrl-C or SIGTERM stops it (`stopped_message`)."""

    def __init__(self) -> None:
        self.output: Path | None = None
        self.main = True  # a launch's other processes say nothing
        self.where = "its start-up"  # outside a training pass
        self.log: LossLog | None = None  # the training pass under way, which says its own step
        self.saved: str | None = None  # what this run's last write of last.pt holds

    def place(self) -> str:
        return self.log.place() if self.log is not None else self.where


RUN = RunState()


def stopped_message() -> str | None:
    """The one line a stopped training run ends with: where it was, what last.pt holds, how to go on."""
    if not RUN.main:
        return None
    if RUN.output is None:
        return "interrupted during start-up; nothing was written"
    last = RUN.output / "last.pt"
    if not last.is_file():
        return f"interrupted in {RUN.place()}, before the first checkpoint: run the same command again"
    held = RUN.saved or "what it held when this run started"
    return f"interrupted in {RUN.place()}; {last} holds {held}: continue with --resume {RUN.output}"


def check_output(output: Path, resume: Path | None, overwrite: bool, accelerator: Accelerator) -> None:
    """A run folder that can be written, that no other run is using (locked for this run's life), not holding another
    run's checkpoint unless asked to; stale temporaries removed. Call it on every process."""
    output_folder(output, "--output")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"cannot write to --output '{output}' ({error.strerror}): expected a writable folder") from None
    new_run = resume is None and not overwrite
    problem = [claim_run_folder(output, new_run) if accelerator.is_main_process else None]  # the launch claims it once
    if accelerator.num_processes > 1:
        problem = broadcast_object_list(problem)  # so that every process stops, not the main one alone
    if problem[0] is not None:
        raise CheckpointError(problem[0])
    RUN.__init__()
    RUN.output, RUN.main = output, accelerator.is_main_process
    remove_stale_temporaries(output)


RUN_LOCK = ".run.lock"
_held_locks: dict[Path, int] = {}  # run folder -> descriptor of its lock, held until the run ends


def claim_run_folder(folder: Path, new_run: bool) -> str | None:
    """Take an exclusive lock on `folder` for this run; None, or why it cannot be this run's folder.

    An OS lock (flock) on the empty file `folder/.run.lock`: the kernel releases it when the process ends, however it
    ends (exit, crash, kill -9), so a dead run never blocks the next one, and names the holder (`lock_holder`). The
    file is never written, so a refused run changes nothing in the folder.
    """
    another_run = (f"--output '{folder}' holds another run's last.pt: continue that run with --resume {folder}, "
                   "or start a new one over it with --overwrite") if new_run and (folder / "last.pt").is_file() else None
    if folder.resolve() in _held_locks:  # this process's own run folder (a run called again from Python)
        return another_run
    if another_run and not (folder / RUN_LOCK).exists():
        return another_run  # written before runs took locks: nobody can hold it
    descriptor = os.open(folder / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return (f"--output '{folder}' is in use by another run ({lock_holder(folder / RUN_LOCK)}): one run per folder; "
                "wait for it to end, or give this run another --output")
    if another_run:
        os.close(descriptor)
        return another_run
    _held_locks[folder.resolve()] = descriptor
    return None


def lock_holder(path: Path) -> str:
    """The process holding the flock on `path` and its command line, from the kernel's table (/proc/locks, Linux)."""
    status = os.stat(path)
    file_id = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        table = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for line in table:
        fields = line.split()
        if "->" not in fields and len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == file_id:
            try:
                command = Path(f"/proc/{fields[4]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = ""
            command = " ".join(command.split())  # one line, however the command was typed
            return f"process {fields[4]}" + (f": {command[:200]}" if command else "")
    return "another process"


def release_run_folder(folder: Path) -> None:
    """The run is over: free its folder for the next one (a process that ends frees it anyway)."""
    descriptor = _held_locks.pop(folder.resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


def check_images(samples: list, accelerator: Accelerator, enabled: bool) -> None:
    """Decode every image once, before training (main process; all processes stop together with the list)."""
    problems = [None]
    if enabled and accelerator.is_main_process:
        start = time.perf_counter()
        problems = [unreadable_images(samples)]
        accelerator.print(f"checked {len(samples)} images in {time.perf_counter() - start:.1f} s (--no-check-images skips this)")
    if enabled:
        problems = broadcast_object_list(problems)
    if problems[0]:
        raise DatasetLayoutError(unreadable_report(problems[0]))


def eval_sets(dataset: ReIDDataset, select_on: str) -> tuple[dict, list]:
    """Splits and evaluations that pick the best checkpoint."""
    if select_on == "test":
        return dataset.splits, dataset.evaluations
    if not dataset.val_evaluations:
        raise DatasetLayoutError(f"{dataset.name} at '{dataset.root}' has no validation split: use --select-on test")
    return dataset.val_splits, dataset.val_evaluations


def clothes_classes(dataset: ReIDDataset, masks: Path | None) -> tuple[Recolouring | None, np.ndarray]:
    """The recolouring (None without masks) and the pid -> clothes matrix the CAL loss uses.

    Every training image must have its mask: checked here, before any training.
    """
    if masks is None:
        return None, dataset.pid2clothes
    if not masks.is_dir():
        raise DatasetLayoutError(f"--masks '{masks}' is not a folder: expected the output of preprocess_masks.py")
    missing = [s for s in dataset.train if not mask_path(masks, s).is_file()]
    if missing:
        shown = ", ".join(str(mask_path(masks, s)) for s in missing[:5])
        raise DatasetLayoutError(f"--masks '{masks}' lacks the masks of {len(missing)} of {len(dataset.train)} training images "
                                 f"(e.g. {shown}): run preprocess_masks.py over the whole training split")
    colours = num_colours(dataset.name)
    return Recolouring(masks, dataset.num_train_clothes, colours), widen_pid2clothes(dataset.pid2clothes, colours)


class LossLog:
    """The loss terms of one epoch (or TAD / CAP pass): summed on the device, read back now and then.

    Reading a value back is a host-device sync, and averaging it over processes an all-reduce,
    so the step loop never does either: `add` only adds the step's terms to a window on the
    device. Every `every` steps and at the end of the pass the window is averaged over its steps
    and the processes, checked (a non-finite mean stops the run, naming the epoch, the step
    range and the terms), logged to the trackers and shown on the progress bar (main process).
    Call `add` and `close` on every process, at the same steps.
    """

    def __init__(self, accelerator: Accelerator, *, epoch: int, steps: int, every: int, prefix: str, desc: str,
                 global_step: int) -> None:
        self.accelerator, self.epoch, self.every, self.prefix = accelerator, epoch, every, prefix
        self.global_step = global_step
        self.names: list[str] | None = None
        self.window: torch.Tensor | None = None  # sum of the window's steps, on the device
        self.window_steps = 0
        self.steps = 0  # steps of this pass read back so far
        self.totals: dict[str, float] = {}
        self.progress = tqdm(total=steps, desc=desc, disable=not accelerator.is_main_process, leave=False)
        self.desc, self.total = desc, steps
        RUN.log = self

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.detach().float() for t in terms.values()])
        if self.names is None:
            self.names = list(terms)
        elif list(terms) != self.names:
            raise RuntimeError(f"loss terms changed within a pass: {self.names} -> {list(terms)}")
        self.window = values if self.window is None else self.window + values
        self.window_steps += 1
        self.global_step += 1
        self.progress.update()
        if self.window_steps == self.every:
            self._flush()

    def _flush(self) -> None:
        if self.window_steps == 0:
            return
        means = (self.accelerator.reduce(self.window, reduction="mean") / self.window_steps).tolist()
        named = dict(zip(self.names, means))
        first, last = self.steps, self.steps + self.window_steps - 1
        if not all(math.isfinite(v) and abs(v) < DIVERGED for v in means):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in named.items())
            where = f"step {first}" if first == last else f"steps {first}-{last} (window means)"
            kind = "non-finite" if not all(math.isfinite(v) for v in means) else "diverging"
            raise NonFiniteLoss(f"{kind} loss in epoch {self.epoch}, {where}: {shown}; "
                                "stopping (the last good checkpoint is kept)")
        for k, v in named.items():
            self.totals[k] = self.totals.get(k, 0.0) + v * self.window_steps
        self.steps += self.window_steps
        self.window, self.window_steps = None, 0
        self.accelerator.log({f"{self.prefix}/{k}": v for k, v in named.items()}, step=self.global_step)
        self.progress.set_postfix({k: f"{v:.3f}" for k, v in named.items()})

    def place(self) -> str:
        """Where the pass is, for the line of a stopped run."""
        return f"{self.desc}, step {self.steps + self.window_steps} of {self.total}"

    def close(self) -> tuple[dict[str, float], int]:
        """The pass's mean of every term, and the global step after it."""
        self._flush()
        self.progress.close()
        return {k: v / self.steps for k, v in self.totals.items()}, self.global_step


class PassTimer:
    """Wall time and, on a GPU, peak allocated memory of one training pass: recorded beside its losses in metrics.json.

    Start it just before the pass; `record()` after `LossLog.close()`, whose read-back has synchronised the device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start = time.perf_counter()

    def record(self) -> dict[str, float]:
        record = {"seconds": round(time.perf_counter() - self.start, 3)}
        if self.device.type == "cuda":
            record["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return record


def train_transform(augment_on: str, height: int, width: int, device: torch.device) -> TrainTransform:
    """--augment-on: the training augmentation finished in the loader workers, or batched on the training device
    (auto: on the device when it is a GPU, which takes most per-image work off the workers)."""
    on_device = augment_on == "device" or (augment_on == "auto" and device.type == "cuda")
    return (DeferredTrainTransform if on_device else TrainTransform)(height, width)


def adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with coupled (L2) weight decay, as the paper; one fused kernel on a GPU, multi-tensor on CPU."""
    params = list(params)
    on_gpu = all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=on_gpu or None, foreach=None if on_gpu else True)


def share_batchnorm_statistics(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every process rank 0's BatchNorm running statistics (the ones the checkpoint saves).

    DDP broadcasts buffers only at the start of a forward, so after the last training step each
    process holds statistics updated by its own batch; evaluating with those would make the
    shards' features inconsistent with each other and with the checkpoint.
    """
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)


def new_model(cfg, arch: str, num_pids: int, accelerator: Accelerator, **arch_kwargs) -> torch.nn.Module:
    """The model a run starts from: an ImageNet (or random) trunk, or --init-from another run's weights."""
    imagenet = cfg.pretrained and cfg.init_from is None  # with --init-from every trunk weight comes from the checkpoint
    model = build_model(arch, num_pids, cfg.backbone, imagenet,
                        str(cfg.pretrained_weights) if imagenet and cfg.pretrained_weights else None, **arch_kwargs)
    if cfg.init_from is not None:
        accelerator.print(init_from_checkpoint(model, load_checkpoint(cfg.init_from), cfg.init_from))
    return model


def resume_path(path: Path) -> Path:
    return path / "last.pt" if path.is_dir() else path


def training_checkpoint(cfg, accelerator: Accelerator, *, model, clothes_classifier, optimizer, clothes_optimizer, scheduler,
                        epochs_done: int, best, history, rng, arch: str, arch_kwargs: dict, dataset: ReIDDataset) -> dict:
    """Everything needed to continue the run, and everything that tells how it was made (see rlq.checkpoint)."""
    checkpoint = {
        "model": accelerator.unwrap_model(model).state_dict(),
        "clothes_classifier": accelerator.unwrap_model(clothes_classifier).state_dict(),
        "optimizer": optimizer.state_dict(),
        "clothes_optimizer": clothes_optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,  # one entry per process, in rank order
        "epoch": epochs_done,
        "mixed_precision": accelerator.mixed_precision,  # what --mixed-precision auto resolved to
        "best": best,
        "history": history,
    } | provenance(
        asdict(cfg),
        arch=arch,
        backbone=cfg.backbone,
        arch_kwargs=arch_kwargs,
        classes={
            "num_pids": dataset.num_train_pids,
            "num_clothes": accelerator.unwrap_model(clothes_classifier).weight.shape[0],
            "num_original_clothes": dataset.num_train_clothes,
        },
        dataset=dataset.name,
        input_size=(cfg.height, cfg.width),
    )
    if accelerator.scaler is not None:
        checkpoint["scaler"] = accelerator.scaler.state_dict()
    return checkpoint


def save_run(cfg, accelerator: Accelerator, improved: bool = False, extra: dict | None = None, **checkpoint_fields) -> None:
    """last.pt (and first best.pt, when the evaluation improved) and metrics.json; call it on every process.

    `checkpoint_fields` go to `training_checkpoint`; `extra` entries are added to the checkpoint.
    """
    rng = rng_states_of_all_processes()  # so that a resume restores each rank's own
    if not accelerator.is_main_process:
        return
    checkpoint = training_checkpoint(cfg, accelerator, rng=rng, **checkpoint_fields) | (extra or {})
    with signals_deferred():  # a stop between the writes would leave the stop line naming the epoch before
        if improved:
            save_atomic(without_training_state(checkpoint), cfg.output / "best.pt")
        save_atomic(checkpoint, cfg.output / "last.pt")
        write_json_atomic(cfg.output / "metrics.json", {"best": checkpoint["best"], **checkpoint["history"]})
        done = checkpoint["epoch"]
        RUN.saved = {0: "no whole epoch", 1: "epoch 0"}.get(done, f"epochs 0-{done - 1}") + (
            f" and the TAD phase of epoch {done}" if checkpoint.get("phase") == "tad" else "")


def without_training_state(checkpoint: dict) -> dict:
    """best.pt: the model and how it was made, without what only a resume needs."""
    return {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE}


# Options a resumed run may change. The optimizer and schedule options are written into the restored
# optimizer and scheduler (whose saved state would otherwise keep the old values); the others act on what
# the run does from now on. Any other option changed is refused: it would not describe the checkpoint's run.
RESUME_APPLIED = ("lr", "weight_decay", "milestones", "gamma")
RESUME_FREE = ("epochs", "eval_every", "eval_batch_size", "num_workers", "log_every", "mixed_precision", "compile", "augment_on",
               "check_images", "root", "external_root", "output", "resume", "overwrite", "max_steps_per_epoch", "pretrained",
               "pretrained_weights", "init_from", "log_with")


def restore(checkpoint, cfg, model, clothes_classifier, optimizer, clothes_optimizer, scheduler, accelerator, source) -> None:
    """Load a last.pt into the (not yet prepared) model, classifier, optimizers, scheduler, scaler and RNGs.

    Changed options are applied (`RESUME_APPLIED`: the new learning rate, weight decay, milestones and gamma
    take effect as if the run had used them from the start), accepted (`RESUME_FREE`) or refused; the
    change is recorded in the history's "resumes".
    """
    if "optimizer" not in checkpoint:
        raise CheckpointError(f"{source} holds no training state (a best.pt is written for evaluation): "
                              "resume from the run's last.pt, or give --resume the run folder")
    before = checkpoint["config"]
    writer, this = training_script(before), training_script(asdict(cfg))
    if writer != this:
        raise CheckpointError(f"{source} was written by {writer}, not {this}: resume it with {writer} --resume, or start "
                              f"a new {this} run (another --output, or --overwrite)")
    changed = {k: [before[k], v] for k, v in plain(asdict(cfg)).items() if k != "resume" and k in before and before[k] != v}
    refused = [k for k in changed if k not in RESUME_APPLIED + RESUME_FREE]
    if refused:
        raise CheckpointError(f"{source} (written by {writer}) was trained with other "
                              + ", ".join(f"--{k.replace('_', '-')} ({before[k]})" for k in refused)
                              + ": a resumed run must keep them; start a new run (--overwrite or another --output) to change them")
    load_state_checked(model, checkpoint["model"], source)
    load_state_checked(clothes_classifier, checkpoint["clothes_classifier"], f"{source} (clothes classifier)")
    optimizer.load_state_dict(checkpoint["optimizer"])
    clothes_optimizer.load_state_dict(checkpoint["clothes_optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    apply_optimizer_options(cfg, optimizer, clothes_optimizer, scheduler)
    if "scaler" in checkpoint and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(checkpoint["scaler"])
    states = checkpoint["rng"]
    if len(states) != accelerator.num_processes:
        accelerator.print(f"warning: {source} was written by {len(states)} processes, not {accelerator.num_processes}: "
                          "the run continues, but not bit-for-bit as it would have")
    set_rng_states(states[accelerator.process_index % len(states)])
    if changed:
        accelerator.print("options changed since the checkpoint (applied from here on): "
                          + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        checkpoint["history"].setdefault("resumes", []).append({"epoch": checkpoint["epoch"], "changed": changed})


def training_script(config: dict) -> str:
    """Which training script a run's configuration belongs to: each Config has an option the others lack."""
    for option, script in (("teacher", "train_rlq.py"), ("attributes", "train_cgal.py"), ("model", "train_base.py")):
        if option in config:
            return script
    return "another program"


def apply_optimizer_options(cfg, optimizer, clothes_optimizer, scheduler) -> None:
    """Write --lr, --weight-decay, --milestones and --gamma into restored optimizers and schedule.

    The model's learning rate becomes what MultiStepLR gives at the schedule's epoch with the new
    values: lr * gamma ** (milestones passed); the clothes classifier's is not scheduled.
    """
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    scheduler.milestones = Counter(cfg.milestones)
    scheduler.gamma = cfg.gamma
    lr = cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if m <= scheduler.last_epoch)
    for group in optimizer.param_groups:
        group.update(lr=lr, initial_lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in clothes_optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler._last_lr = [lr] * len(optimizer.param_groups)


def evaluate_and_select(model, dataset: ReIDDataset, splits: dict, evaluations: list, accelerator: Accelerator, *,
                        epoch: int, split_name: str, best: dict | None, history: dict, global_step: int,
                        **loader_options) -> tuple[dict | None, bool]:
    """Evaluate (all processes extract, the main process ranks), log, and keep the best by headline (top-1, mAP).

    The clothes leakage of the same features (`rlq.diagnostics`) is printed, logged and kept in the
    history entry beside the metrics; it plays no part in picking the best.

    Returns (best, improved); `improved` is True on the main process only. Call it on every process.
    """
    RUN.log, RUN.where = None, f"the evaluation after epoch {epoch}"
    share_batchnorm_statistics(model, accelerator)
    bare_model = accelerator.unwrap_model(model)
    results, features, missing = evaluate_model(bare_model, splits, evaluations, accelerator, **loader_options)
    if not accelerator.is_main_process:
        return best, False
    diagnostics = {"clothes_leakage": evaluations_clothes_leakage(splits, evaluations, features, bare_model.feature_dim)}
    table = results_table(results) if results else "no protocol has a valid query"
    accelerator.print(f"epoch {epoch} ({split_name}):\n{table}\n" + "".join(f"{line}\n" for line in missing.values())
                      + diagnostics_text(diagnostics))
    entry = {"epoch": epoch, "split": split_name, "results": results, "diagnostics": diagnostics}
    history["evaluations"].append(entry | ({"no_valid_query": missing} if missing else {}))
    scalars = {f"{split_name}/{name}/{m}": results[name][m] for name in results for m in ("top1", "mAP")}
    scalars |= {f"{split_name}/clothes_leakage/{view}": value
                for view, value in (diagnostics["clothes_leakage"] or {}).items() if value is not None}
    accelerator.log(scalars, step=global_step)
    selected = dataset.headline if dataset.headline in results else next(iter(results), None)
    if selected is None:
        accelerator.print("best.pt is not updated: no protocol has a valid query")
        return best, False
    if selected != dataset.headline:
        accelerator.print(f"best.pt is picked on {selected}: {dataset.headline}, the headline protocol, has no valid query")
    top1, mAP = headline_key(results, selected)
    if best is not None and (top1, mAP) <= (best["top1"], best["mAP"]):
        return best, False
    return {"epoch": epoch, "evaluation": selected, "top1": top1, "mAP": mAP, "results": results}, True


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def tracker_config(cfg) -> dict:
    """The run's configuration as every tracker takes it: scalars and strings (TensorBoard's hparams accept no others)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in plain(asdict(cfg)).items()}
