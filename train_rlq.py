"""Train RLQ: task-agnostic distillation (TAD) on an external set alternating with CAP on the target set.

The student is the three-branch model started from ImageNet (not from the teacher). Every
epoch is one full TAD pass over the external set (--external-dataset), then one full CAP
pass over the target set (--dataset); one Adam optimizer and one schedule serve both, the
clothes classifier keeps its own Adam. last.pt is written after each of the two phases, so
a resume continues the alternation where it stopped.

One TAD step, top to bottom in `tad_step` and `tad_terms`:

1. x_hq = external images, x_lq = their synthetic low-quality copies (the TARGET dataset's mix),
   each view augmented independently;
2. the frozen teacher (eval mode, no_grad) gives t1, t2 on x_hq;
3. the student runs on cat(x_hq, x_lq) in one batch and gives f1, f2 and its ID logits o1, o2
   (the pose branch is not used);
4. loss = MSE(t1, f1_hq) + MSE(t1, f1_lq) + MSE(t2, f2_hq) + MSE(t2, f2_lq)
   + KL(o2_hq || o2_lq) + KL(o1_hq || o1_lq)   (--teacher none: the two KL terms only);
5. one optimizer step for the student.

One CAP step (`cap_step`) is train_cgal.py's: discriminator step from --cal-start-epoch, then
CE(o1) + CE(o2) + CE(pose) + CE(gender) + KL(o2 -> o1) + mean|cos(f2, f3)| + Triplet(f2) + CAL(f1).

    python train_rlq.py --dataset synthetic --teacher runs/teacher/last.pt --external-dataset synthetic-external \\
        --gender-csv G.csv --pose-csv P.csv --output runs/rlq-synthetic --no-pretrained --backbone resnet18
    accelerate launch --multi_gpu --num_processes 2 train_rlq.py --dataset ltcc --root /data/LTCC_ReID \\
        --teacher runs/base-celeb/last.pt --external-root /data/Celeb-reID \\
        --gender-csv LTCC_Gender.csv --pose-csv LTCC_Pose_Cluster.csv --output runs/rlq-ltcc
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration, set_seed

import train_cgal
from rlq.attributes import AttributeFileError, label_training_samples, num_pose_classes
from rlq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from rlq.data import DatasetLayoutError, check_training_identities, hold_out_identities, load_dataset, summary_table
from rlq.files import ends_cleanly
from rlq.launch import LaunchError, Tracker, check_launch, memory_format, mixed_precision, trackers
from rlq.loaders import AttributedTrainImages, TADPairs, tad_loader, train_loader
from rlq.losses import normalized_mse, softened_kl
from rlq.model import BaseModel, CosineClassifier, RLQModel
from rlq.options import OptionError, check_training
from rlq.sampler import PKSampler
from rlq.training import (
    LossLog,
    NonFiniteLoss,
    PassTimer,
    adam,
    check_images,
    check_output,
    check_parameters,
    clothes_classes,
    eval_sets,
    evaluate_and_select,
    new_model,
    release_run_folder,
    restore,
    resume_path,
    save_run,
    stopped_message,
    tracker_config,
    train_transform,
)

Attribute = Literal["gender", "pose"]


@dataclass
class Config:
    """Train the RLQ student (TAD on an external set + CAP on the target set); defaults reproduce the paper."""

    teacher: Literal["none"] | Path
    """Frozen TAD teacher: a train_base.py / train_cgal.py checkpoint (or the authors', or an exported folder), or none (self-supervision: the KL terms only)."""
    dataset: Literal["ltcc", "prcc", "last", "deepchange", "synthetic"] = "ltcc"
    """Target dataset (CAP phase, evaluation, and the low-quality mix of the TAD phase)."""
    root: Path | None = None
    """Target dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic dataset."""
    external_dataset: Literal["celeb", "synthetic-external"] = "celeb"
    """External set of the TAD phase (its training images; no labels are used)."""
    external_root: Path | None = None
    """External dataset folder (e.g. /data/Celeb-reID). Optional for synthetic-external."""
    output: Path = Path("runs/rlq")
    """Run folder: best.pt, last.pt, metrics.json and tensorboard/ (with --log-with tensorboard)."""
    tad_model: Literal["rlq", "base"] = "rlq"
    """Student: rlq (three branches, CAP with --attributes) or base (two branches, base loss: the 'base + TAD' ablation)."""
    attributes: tuple[Attribute, ...] = ("gender", "pose")
    """Coarse attributes of the CAP phase (rlq student): gender, pose, or both."""
    gender_csv: Path | None = None
    """Gender CSV of the target set (Category,ID,Gender); needed with --attributes gender."""
    pose_csv: Path | None = None
    """Pose-cluster CSV of the target set (from preprocess_pose.py or the authors); needed with --attributes pose."""
    pose_column: str = "R_LA_15"
    """Pose-CSV column with the labels; K+1 pose classes (0 = no skeleton)."""
    missing_attributes: Literal["error", "zero"] = "error"
    """A training identity/image absent from an attribute file: an error, or (explicitly) label 0."""
    gender_input: Literal["f1", "f2", "concat"] = "f2"
    """Feature the gender head sees: f2 (paper), f1, or concat(f1, f2)."""
    disentangle: Literal["f1", "f2", "both"] = "f2"
    """Feature(s) pushed away from the pose feature f3 by mean |cos(., f3)| (with pose)."""
    backbone: str = "resnet50.tv_in1k"
    """timm ResNet name of the student (the teacher's must give the same feature size)."""
    pretrained: bool = True
    """Start the student's trunk from ImageNet weights (timm hub, or --pretrained-weights)."""
    pretrained_weights: Path | None = None
    """Local ImageNet state dict of the trunk (.pth / .safetensors), instead of the timm hub."""
    init_from: Path | None = None
    """Start the model from another run's checkpoint (ours, the authors' or an exported folder; any class counts) instead
    of ImageNet: trunk, branches and necks are copied, heads of other class counts (and those an exported folder leaves
    out) start fresh (see rlq.checkpoint.init_from_checkpoint)."""
    split_after: Literal["layer1", "layer2", "layer3"] = "layer2"
    """The trunk stage after which the CAL and ID branches fork."""
    pose_split_after: Literal["layer1", "layer2", "layer3"] = "layer1"
    """The trunk stage after which the pose branch forks (rlq student)."""
    height: int = 384
    """Input height (both phases)."""
    width: int = 192
    """Input width (both phases)."""
    epochs: int = 200
    """Training epochs, each one TAD pass then one CAP pass."""
    lr: float = 3.5e-4
    """Adam learning rate (model and clothes classifier)."""
    weight_decay: float = 5e-4
    """Adam weight decay (coupled L2, all parameters)."""
    milestones: tuple[int, ...] = (20, 40)
    """Epochs at which the model's learning rate is multiplied by --gamma (the clothes classifier's is not)."""
    gamma: float = 0.1
    """Learning-rate decay factor at each milestone."""
    batch_size: int = 32
    """Images per process per step: P x K target images (CAP), external images (TAD; the student sees them plus their LQ copies)."""
    num_instances: int = 4
    """K: images per identity in a CAP batch."""
    cal_start_epoch: int = 25
    """First (0-based) epoch with the clothes discriminator step and the CAL loss."""
    masks: Path | None = None
    """Clothes masks of the target set from preprocess_masks.py: turns on the recolouring augmentation."""
    eval_every: int = 10
    """Evaluate every N epochs (and after the last one)."""
    select_on: Literal["test", "val"] = "test"
    """Evaluations that pick best.pt: the test protocols, or the validation split (PRCC, LaST, DeepChange; LTCC with --val-ids)."""
    val_ids: int = 0
    """LTCC (no validation split of its own): hold out N training identities, all their outfits, as a clothes-changing
    validation query/gallery split for --select-on val; they leave the training set (rlq.data.hold_out_identities)."""
    val_seed: int = 0
    """Seed of the --val-ids draw (kept apart from --seed, so that every training seed sees the same split)."""
    eval_batch_size: int = 128
    """Images per process per evaluation batch."""
    num_workers: int = 4
    """Data-loader worker processes per process."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision of forward passes, teacher included (losses in float32); auto: bf16 on a GPU that has it, else fp32."""
    augment_on: Literal["auto", "workers", "device"] = "auto"
    """Where the training augmentation's crop, flip, normalisation and erasing run: in the loader workers, or batched on
    the training device (the same draws either way); auto: on the device when it is a GPU."""
    compile: bool = False
    """torch.compile the model (the first steps take longer while it compiles)."""
    log_every: int = 50
    """Read the loss terms back (one device sync), check them for NaN and log their means every N steps and at the end of each pass."""
    log_with: tuple[Tracker, ...] = ("tensorboard",)
    """Experiment trackers that get the loss terms, the evaluation metrics and this configuration, several at once
    (--log-with tensorboard wandb), or none. tensorboard writes to --output/tensorboard; the others (Accelerate's:
    wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio) keep to their own settings (login, environment)."""
    seed: int = 1
    """Base seed: torch uses seed + rank; samplers share the seed; augmentation uses (seed, epoch, rank, worker)."""
    resume: Path | None = None
    """Continue a run from a last.pt (or a run folder holding one), exactly where it stopped (also between the two phases)."""
    overwrite: bool = False
    """Start a new run in an --output folder that holds another run's last.pt (without it, that is refused)."""
    check_images: bool = True
    """Decode every target, external and evaluation image at start and stop with the list of unreadable ones."""
    adam_steps_idle_parameters: bool = False
    """Reproduce PyTorch < 2.0 (the authors' 1.13.1): zero_grad leaves zero gradients, not none, so Adam keeps moving
    the parameters a step does not use (in TAD the pose branch and the gender and pose heads) by its momentum and weight
    decay. Off: they stay still, as under PyTorch >= 2.0."""
    max_steps_per_epoch: int | None = None
    """Cap on the steps of each phase per epoch (quick runs and tests)."""


def used_attributes(cfg: Config) -> tuple[str, ...]:
    return cfg.attributes if cfg.tad_model == "rlq" else ()


def arch_kwargs(cfg: Config) -> dict:
    if cfg.tad_model == "base":
        return {"split_after": cfg.split_after}
    return {"split_after": cfg.split_after, "pose_split_after": cfg.pose_split_after, "num_pose_classes": num_pose_classes(cfg.pose_column),
            "gender_input": cfg.gender_input}


def with_attributes(cfg: Config, train: list) -> list:
    """The target training samples with gender / pose labels (unchanged for the base student)."""
    if cfg.tad_model == "base":
        if cfg.gender_csv is not None or cfg.pose_csv is not None:
            raise OptionError("--tad-model base predicts no attributes: leave out --gender-csv and --pose-csv")
        return train
    return label_training_samples(train, cfg.attributes, cfg.gender_csv, cfg.pose_csv, cfg.pose_column, cfg.missing_attributes)


def load_teacher(path: Path, student: BaseModel, device: torch.device) -> BaseModel:
    """The frozen teacher: eval mode, no gradients, never given to an optimizer."""
    checkpoint = load_checkpoint(path)
    teacher = model_from_checkpoint(checkpoint, path)
    if not isinstance(teacher, BaseModel):
        raise CheckpointError(f"teacher '{path}' is a {checkpoint['arch']} model: TAD needs two branches (base or rlq)")
    if teacher.feature_dim != student.feature_dim:
        raise CheckpointError(f"teacher '{path}' ({checkpoint['backbone']}) gives {teacher.feature_dim}-d features, "
                              f"the student {student.feature_dim}-d: use a teacher with the student's --backbone")
    return teacher.to(device, memory_format=memory_format(device)).eval().requires_grad_(False)


def branch_outputs(model, x: torch.Tensor, accelerator: Accelerator):
    """f1, f2 and the ID logits, without the pose branch (an RLQ model skips it; a base model has none)."""
    return model(x, attributes=False) if isinstance(accelerator.unwrap_model(model), RLQModel) else model(x)


def tad_terms(model, teacher, x_hq: torch.Tensor, x_lq: torch.Tensor, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """The TAD loss terms of one batch of external images (teacher None: self-supervision only)."""
    terms = {}
    out = branch_outputs(model, torch.cat([x_hq, x_lq]), accelerator)  # one batch: shared BatchNorm statistics
    f1_hq, f1_lq = out.f1.chunk(2)
    f2_hq, f2_lq = out.f2.chunk(2)
    o1_hq, o1_lq = out.id_logits_f1.chunk(2)
    o2_hq, o2_lq = out.id_logits_f2.chunk(2)
    if teacher is not None:
        with torch.no_grad(), accelerator.autocast():
            target = branch_outputs(teacher, x_hq, accelerator)
        terms["mse_f1_hq"] = normalized_mse(f1_hq, target.f1)
        terms["mse_f1_lq"] = normalized_mse(f1_lq, target.f1)
        terms["mse_f2_hq"] = normalized_mse(f2_hq, target.f2)
        terms["mse_f2_lq"] = normalized_mse(f2_lq, target.f2)
    terms["kl_o2"] = softened_kl(o2_lq, o2_hq)  # KL(o2_hq || o2_lq): the HQ view is the target
    terms["kl_o1"] = softened_kl(o1_lq, o1_hq)
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms


def tad_step(batch, model, teacher, optimizer, accelerator, adam_steps_idle_parameters: bool = False):
    """One TAD step on one batch of external images; returns the loss terms as device tensors.

    The pose branch and the attribute heads get no gradient here: with `adam_steps_idle_parameters` they keep the zero
    gradients zero_grad leaves them (PyTorch < 2.0), so Adam still moves them; without, they keep none and stay still."""
    x_hq, x_lq = (x.to(accelerator.device, non_blocking=True, memory_format=memory_format(accelerator.device)) for x in batch)
    terms = tad_terms(model, teacher, x_hq, x_lq, accelerator)
    optimizer.zero_grad(set_to_none=not adam_steps_idle_parameters)
    accelerator.backward(terms["total"])
    optimizer.step()
    return terms


def tad_epoch(cfg, epoch, model, teacher, optimizer, loader, accelerator, global_step):
    """One TAD pass over the external set; returns the mean of every loss term and the new global step."""
    model.train()
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    log = LossLog(accelerator, epoch=epoch, steps=steps, every=cfg.log_every, prefix="tad", desc=f"epoch {epoch} TAD",
                  global_step=global_step)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        log.add(tad_step(batch, model, teacher, optimizer, accelerator, cfg.adam_steps_idle_parameters))
    return log.close()


def cap_step(cfg, adversarial, batch, model, clothes_classifier, optimizer, clothes_optimizer, pid2clothes, accelerator):
    """One CAP step on one batch of target images: train_cgal.py's step, with the attributes of the student (none for
    the base student of --tad-model base); returns the loss terms as device tensors."""
    return train_cgal.train_step(dataclasses.replace(cfg, attributes=used_attributes(cfg)), adversarial, batch, model,
                                 clothes_classifier, optimizer, clothes_optimizer, pid2clothes, accelerator)


def cap_epoch(cfg, epoch, model, clothes_classifier, optimizer, clothes_optimizer, loader, pid2clothes, accelerator, global_step):
    """One CAP pass over the target set; returns the mean of every loss term and the new global step."""
    model.train()
    clothes_classifier.train()
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    log = LossLog(accelerator, epoch=epoch, steps=steps, every=cfg.log_every, prefix="loss", desc=f"epoch {epoch} CAP",
                  global_step=global_step)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        log.add(cap_step(cfg, epoch >= cfg.cal_start_epoch, batch, model, clothes_classifier, optimizer, clothes_optimizer,
                         pid2clothes, accelerator))
    return log.close()


def main(cfg: Config) -> dict:
    """Train; returns the best evaluation (epoch, top-1, mAP and all results) on the main process, None elsewhere."""
    check_training(cfg)
    # The TAD step leaves the pose branch and the attribute heads without gradients: DDP must allow that.
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.mixed_precision),
        log_with=trackers(cfg.log_with),
        project_config=ProjectConfiguration(project_dir=str(cfg.output), logging_dir=str(cfg.output / "tensorboard")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.tad_model == "rlq")],
    )
    check_launch(accelerator)
    check_output(cfg.output, cfg.resume, cfg.overwrite, accelerator)
    set_seed(cfg.seed + accelerator.process_index)
    dataset = check_training_identities(hold_out_identities(load_dataset(cfg.dataset, cfg.root), cfg.val_ids, cfg.val_seed))
    external = load_dataset(cfg.external_dataset, cfg.external_root)
    splits, evaluations = eval_sets(dataset, cfg.select_on)
    train = with_attributes(cfg, dataset.train)
    accelerator.print(summary_table(dataset))
    accelerator.print(summary_table(external))

    check_images(train + external.train + [s for split in splits.values() for s in split], accelerator, cfg.check_images)
    recolouring, pid2clothes = clothes_classes(dataset, cfg.masks)
    model = new_model(cfg, cfg.tad_model, dataset.num_train_pids, accelerator, **arch_kwargs(cfg))
    model = model.to(accelerator.device, memory_format=memory_format(accelerator.device))
    if cfg.compile:
        model.compile()  # in place: state_dict keys and unwrap_model stay those of the plain model
    teacher = None if cfg.teacher == "none" else load_teacher(cfg.teacher, model, accelerator.device)
    clothes_classifier = CosineClassifier(model.feature_dim, pid2clothes.shape[1]).to(accelerator.device)
    optimizer = adam(model.parameters(), cfg.lr, cfg.weight_decay)  # the student only
    clothes_optimizer = adam(clothes_classifier.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)

    start_epoch, skip_tad, best, history = 0, False, None, {"tad": [], "train": [], "evaluations": []}
    if cfg.resume is not None:
        source = resume_path(cfg.resume)
        checkpoint = load_checkpoint(source)
        restore(checkpoint, cfg, model, clothes_classifier, optimizer, clothes_optimizer, scheduler, accelerator, f"checkpoint '{source}'")
        start_epoch, best, history = checkpoint["epoch"], checkpoint["best"], checkpoint["history"]
        skip_tad = checkpoint["phase"] == "tad"  # that epoch's TAD pass is done: go on with its CAP pass
        where = f"the TAD phase of epoch {start_epoch}" if skip_tad else f"epoch {start_epoch - 1}"
        accelerator.print(f"resumed from {source} after {where}")

    # The scheduler stays unprepared: it steps once per epoch, whatever the process count.
    model, clothes_classifier, optimizer, clothes_optimizer = accelerator.prepare(model, clothes_classifier, optimizer, clothes_optimizer)
    pid2clothes = torch.as_tensor(pid2clothes, device=accelerator.device)

    transform = train_transform(cfg.augment_on, cfg.height, cfg.width, accelerator.device)
    train_set = AttributedTrainImages(train, transform, cfg.seed, accelerator.process_index, recolouring)
    sampler = PKSampler([s.pid for s in train], batch_size=cfg.batch_size, num_instances=cfg.num_instances,
                        seed=cfg.seed, rank=accelerator.process_index, world_size=accelerator.num_processes)
    loader = train_loader(train_set, sampler, cfg.batch_size, cfg.num_workers, accelerator.device)
    tad_set = TADPairs(external.train, transform, dataset.name, cfg.seed, accelerator.process_index)
    tad_batches, tad_sampler = tad_loader(tad_set, cfg.batch_size, cfg.num_workers, cfg.seed,
                                          accelerator.process_index, accelerator.num_processes, accelerator.device)
    loader_options = dict(height=cfg.height, width=cfg.width, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)

    def save_last(epochs_done: int, phase: str, improved: bool = False, evaluation_pending: bool = False) -> None:
        """last.pt after each phase (`phase` says which was the last one done); best.pt first when it improved."""
        save_run(cfg, accelerator, improved, {"phase": phase, "evaluation_pending": evaluation_pending}, model=model,
                 clothes_classifier=clothes_classifier, optimizer=optimizer, clothes_optimizer=clothes_optimizer, scheduler=scheduler,
                 epochs_done=epochs_done, best=best, history=history, arch=cfg.tad_model, arch_kwargs=arch_kwargs(cfg), dataset=dataset)

    def evaluate_and_save(epoch: int) -> None:
        nonlocal best
        best, improved = evaluate_and_select(model, dataset, splits, evaluations, accelerator, epoch=epoch, split_name=cfg.select_on,
                                             best=best, history=history, global_step=global_step, **loader_options)
        save_last(epoch + 1, "cap", improved)

    accelerator.init_trackers("train_rlq", config=tracker_config(cfg))
    global_step = sum(entry["steps"] for entry in history["tad"] + history["train"])
    if cfg.resume is not None and checkpoint.get("evaluation_pending"):
        evaluate_and_save(start_epoch - 1)  # the run stopped between writing last.pt and evaluating that epoch
    for epoch in range(start_epoch, cfg.epochs):
        if not (skip_tad and epoch == start_epoch):
            tad_sampler.set_epoch(epoch)
            first_step, timer = global_step, PassTimer(accelerator.device)
            losses, global_step = tad_epoch(cfg, epoch, model, teacher, optimizer, tad_batches, accelerator, global_step)
            history["tad"].append({"epoch": epoch, "steps": global_step - first_step, "lr": scheduler.get_last_lr()[0],
                                   **timer.record(), **losses})
            accelerator.print(f"epoch {epoch} TAD: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
            check_parameters(model, epoch, accelerator)
            save_last(epoch, "tad")  # `epoch` epochs complete, and this one's TAD pass
            accelerator.wait_for_everyone()

        sampler.set_epoch(epoch)
        first_step, timer = global_step, PassTimer(accelerator.device)
        losses, global_step = cap_epoch(cfg, epoch, model, clothes_classifier, optimizer, clothes_optimizer,
                                        loader, pid2clothes, accelerator, global_step)
        history["train"].append({"epoch": epoch, "steps": global_step - first_step, "lr": scheduler.get_last_lr()[0],
                                 **timer.record(), **losses})
        scheduler.step()
        accelerator.print(f"epoch {epoch} CAP: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))

        check_parameters(model, epoch, accelerator)
        evaluating = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        save_last(epoch + 1, "cap", evaluation_pending=evaluating)  # before the evaluation: one that fails loses no training
        if evaluating:
            evaluate_and_save(epoch)
        accelerator.wait_for_everyone()

    if best is not None:
        accelerator.print(f"best: epoch {best['epoch']}, {best['evaluation']} top-1 {100 * best['top1']:.1f}, mAP {100 * best['mAP']:.1f}")
    accelerator.end_training()
    release_run_folder(cfg.output)
    return best


if __name__ == "__main__":
    import tyro

    with ends_cleanly(stopped_message):
        try:
            main(tyro.cli(Config))
        except (NonFiniteLoss, CheckpointError, DatasetLayoutError, AttributeFileError, LaunchError, OptionError) as error:
            sys.exit(f"error: {error}")
