"""Train the two-branch base model (or vanilla CAL) on one clothes-changing ReID dataset.

The defaults reproduce the paper's base model on LTCC / PRCC (200 epochs; the
authors' LTCC runs use batch 32 per process on 2 GPUs). One training step,
top to bottom in `train_step`:

1. forward the batch (originals, plus their recoloured copies with --masks);
2. from --cal-start-epoch on, one step of the clothes classifier (the CAL
   discriminator, its own Adam, not scheduled) on the detached f1;
3. the clothes logits of the live f1 with the updated discriminator;
4. backbone loss = CE(o1) + CE(o2) + KL(o2 -> o1) + Triplet(f2) + [epoch >= start] CAL(f1)
   (vanilla CAL: CE(o) + [epoch >= start] CAL(f));
5. one optimizer step for the trunk, branches and identity heads.

    python train_base.py --dataset synthetic --output runs/base-synthetic --no-pretrained --backbone resnet18
    accelerate launch --multi_gpu --num_processes 2 train_base.py --dataset ltcc --root /data/LTCC_ReID --output runs/base-ltcc
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from rlq.checkpoint import CheckpointError, load_checkpoint
from rlq.data import DatasetLayoutError, check_training_identities, hold_out_identities, load_dataset, summary_table
from rlq.files import ends_cleanly
from rlq.launch import LaunchError, Tracker, check_launch, memory_format, mixed_precision, trackers
from rlq.loaders import TrainImages, train_loader
from rlq.losses import (
    clothes_adversarial_loss,
    clothes_discriminator_loss,
    cross_entropy_smooth,
    softened_kl,
    triplet_loss,
)
from rlq.metrics import within_identity_accuracy
from rlq.model import CosineClassifier
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


@dataclass
class Config:
    """Train the base model (CAL branch + ID branch) or vanilla CAL; defaults reproduce the paper."""

    dataset: Literal["ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external"] = "ltcc"
    """Which dataset layout to read."""
    root: Path | None = None
    """Dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic datasets (generated into a cache)."""
    output: Path = Path("runs/base")
    """Run folder: best.pt, last.pt, metrics.json and tensorboard/ (with --log-with tensorboard)."""
    model: Literal["base", "cal"] = "base"
    """base: two branches (f1 CAL, f2 ID) with CE + KL + triplet + CAL; cal: vanilla CAL (one feature, CE + CAL)."""
    backbone: str = "resnet50.tv_in1k"
    """timm ResNet name (the authors used torchvision's ImageNet ResNet-50)."""
    pretrained: bool = True
    """Start the trunk from ImageNet weights (timm hub, or --pretrained-weights)."""
    pretrained_weights: Path | None = None
    """Local ImageNet state dict of the trunk (.pth / .safetensors), instead of the timm hub."""
    init_from: Path | None = None
    """Start the model from another run's checkpoint (ours, the authors' or an exported folder; any class counts) instead
    of ImageNet: trunk, branches and necks are copied, heads of other class counts (and those an exported folder leaves
    out) start fresh (see rlq.checkpoint.init_from_checkpoint)."""
    split_after: Literal["layer1", "layer2", "layer3"] = "layer2"
    """Base model: the trunk stage after which the CAL and ID branches fork."""
    height: int = 384
    """Input height."""
    width: int = 192
    """Input width."""
    epochs: int = 200
    """Training epochs (the paper: 200 on LTCC and PRCC)."""
    lr: float = 3.5e-4
    """Adam learning rate (model and clothes classifier)."""
    weight_decay: float = 5e-4
    """Adam weight decay (coupled L2, all parameters)."""
    milestones: tuple[int, ...] = (20, 40)
    """Epochs at which the model's learning rate is multiplied by --gamma (the clothes classifier's is not)."""
    gamma: float = 0.1
    """Learning-rate decay factor at each milestone."""
    batch_size: int = 32
    """Images per process per step (P identities x K images), before recoloured copies are added."""
    num_instances: int = 4
    """K: images per identity in a batch."""
    cal_start_epoch: int = 25
    """First (0-based) epoch with the clothes discriminator step and the CAL loss."""
    masks: Path | None = None
    """Clothes masks from preprocess_masks.py: turns on the recolouring augmentation (each image + a recoloured copy)."""
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
    """Autocast precision of forward passes (losses are computed in float32); auto: bf16 on a GPU that has it, else fp32."""
    augment_on: Literal["auto", "workers", "device"] = "auto"
    """Where the training augmentation's crop, flip, normalisation and erasing run: in the loader workers, or batched on
    the training device (the same draws either way); auto: on the device when it is a GPU."""
    compile: bool = False
    """torch.compile the model (the first steps take longer while it compiles)."""
    log_every: int = 50
    """Read the loss terms back (one device sync), check them for NaN and log their means every N steps and at epoch end."""
    log_with: tuple[Tracker, ...] = ("tensorboard",)
    """Experiment trackers that get the loss terms, the evaluation metrics and this configuration, several at once
    (--log-with tensorboard wandb), or none. tensorboard writes to --output/tensorboard; the others (Accelerate's:
    wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio) keep to their own settings (login, environment)."""
    seed: int = 1
    """Base seed: torch uses seed + rank; the sampler shares the seed; augmentation uses (seed, epoch, rank, worker)."""
    resume: Path | None = None
    """Continue a run from a last.pt (or a run folder holding one), exactly where it stopped."""
    overwrite: bool = False
    """Start a new run in an --output folder that holds another run's last.pt (without it, that is refused)."""
    check_images: bool = True
    """Decode every training and evaluation image at start and stop with the list of unreadable ones (about 5 s per 10,000 images on 2 cores)."""
    max_steps_per_epoch: int | None = None
    """Cap on steps per epoch (quick runs and tests); by default an epoch is one pass of the P x K sampler."""


def arch_kwargs(cfg: Config) -> dict:
    return {"split_after": cfg.split_after} if cfg.model == "base" else {}


def train_step(cfg, adversarial, batch, model, clothes_classifier, optimizer, clothes_optimizer, pid2clothes, accelerator):
    """One training step on one batch; returns the loss terms as device tensors (nothing is read back here)."""
    images, pids, clothes = batch
    # [B, n, 3, H, W] with n = 2 when each image comes with its recoloured copy.
    images = images.flatten(0, 1).to(accelerator.device, non_blocking=True, memory_format=memory_format(accelerator.device))
    pids = pids.flatten().to(accelerator.device, non_blocking=True)
    clothes = clothes.flatten().to(accelerator.device, non_blocking=True)

    out = model(images)
    terms = {}
    if adversarial:
        # Discriminator step: the clothes classifier learns clothes from the detached f1.
        terms["clothes_discriminator"] = clothes_discriminator_loss(clothes_classifier(out.f1.detach()), clothes)
        clothes_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(terms["clothes_discriminator"])
        clothes_optimizer.step()
    terms["id_f1"] = cross_entropy_smooth(out.id_logits_f1, pids)
    if cfg.model == "base":
        terms["id_f2"] = cross_entropy_smooth(out.id_logits_f2, pids)
        terms["kl"] = softened_kl(out.id_logits_f1, out.id_logits_f2)
        terms["triplet"] = triplet_loss(out.f2, pids)
    if adversarial:
        # The updated discriminator's view of the live f1. Its own gradients from this pass are
        # discarded (zeroed before its next step), so they are not synchronised either.
        with accelerator.no_sync(clothes_classifier):
            cosines = clothes_classifier(out.f1)
        terms["cal"] = clothes_adversarial_loss(cosines, clothes, pids, pid2clothes)
    terms["total"] = torch.stack([v for k, v in terms.items() if k != "clothes_discriminator"]).sum()
    if adversarial:  # how well the discriminator still tells this identity's outfits apart in f1 (not optimised)
        terms["clothes_accuracy_within_id"] = within_identity_accuracy(cosines.detach(), clothes, pids, pid2clothes)

    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(terms["total"])
    optimizer.step()
    return terms


def train_one_epoch(cfg, epoch, model, clothes_classifier, optimizer, clothes_optimizer, loader, pid2clothes, accelerator, global_step):
    """One epoch of training; returns the mean of every loss term and the new global step."""
    model.train()
    clothes_classifier.train()
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    log = LossLog(accelerator, epoch=epoch, steps=steps, every=cfg.log_every, prefix="loss", desc=f"epoch {epoch}",
                  global_step=global_step)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        log.add(train_step(cfg, epoch >= cfg.cal_start_epoch, batch, model, clothes_classifier, optimizer, clothes_optimizer,
                           pid2clothes, accelerator))
    return log.close()


def main(cfg: Config) -> dict:
    """Train; returns the best evaluation (epoch, top-1, mAP and all results) on the main process, None elsewhere."""
    check_training(cfg)
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.mixed_precision),
        log_with=trackers(cfg.log_with),
        project_config=ProjectConfiguration(project_dir=str(cfg.output), logging_dir=str(cfg.output / "tensorboard")),
    )
    check_launch(accelerator)
    check_output(cfg.output, cfg.resume, cfg.overwrite, accelerator)
    set_seed(cfg.seed + accelerator.process_index)
    dataset = check_training_identities(hold_out_identities(load_dataset(cfg.dataset, cfg.root), cfg.val_ids, cfg.val_seed))
    splits, evaluations = eval_sets(dataset, cfg.select_on)
    accelerator.print(summary_table(dataset))

    check_images(dataset.train + [s for split in splits.values() for s in split], accelerator, cfg.check_images)
    recolouring, pid2clothes = clothes_classes(dataset, cfg.masks)
    model = new_model(cfg, cfg.model, dataset.num_train_pids, accelerator, **arch_kwargs(cfg))
    model = model.to(accelerator.device, memory_format=memory_format(accelerator.device))
    if cfg.compile:
        model.compile()  # in place: state_dict keys and unwrap_model stay those of the plain model
    clothes_classifier = CosineClassifier(model.feature_dim, pid2clothes.shape[1]).to(accelerator.device)
    optimizer = adam(model.parameters(), cfg.lr, cfg.weight_decay)
    clothes_optimizer = adam(clothes_classifier.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)

    start_epoch, best, history = 0, None, {"train": [], "evaluations": []}
    if cfg.resume is not None:
        source = resume_path(cfg.resume)
        checkpoint = load_checkpoint(source)
        restore(checkpoint, cfg, model, clothes_classifier, optimizer, clothes_optimizer, scheduler, accelerator, f"checkpoint '{source}'")
        start_epoch, best, history = checkpoint["epoch"], checkpoint["best"], checkpoint["history"]
        accelerator.print(f"resumed from {source} after epoch {start_epoch - 1}")

    # The scheduler stays unprepared: it steps once per epoch, whatever the process count.
    model, clothes_classifier, optimizer, clothes_optimizer = accelerator.prepare(model, clothes_classifier, optimizer, clothes_optimizer)
    pid2clothes = torch.as_tensor(pid2clothes, device=accelerator.device)

    transform = train_transform(cfg.augment_on, cfg.height, cfg.width, accelerator.device)
    train_set = TrainImages(dataset.train, transform, cfg.seed, accelerator.process_index, recolouring)
    sampler = PKSampler([s.pid for s in dataset.train], batch_size=cfg.batch_size, num_instances=cfg.num_instances,
                        seed=cfg.seed, rank=accelerator.process_index, world_size=accelerator.num_processes)
    loader = train_loader(train_set, sampler, cfg.batch_size, cfg.num_workers, accelerator.device)
    loader_options = dict(height=cfg.height, width=cfg.width, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)

    def save(epochs_done: int, improved: bool = False, evaluation_pending: bool = False) -> None:
        save_run(cfg, accelerator, improved, {"evaluation_pending": evaluation_pending}, model=model,
                 clothes_classifier=clothes_classifier, optimizer=optimizer, clothes_optimizer=clothes_optimizer, scheduler=scheduler,
                 epochs_done=epochs_done, best=best, history=history, arch=cfg.model, arch_kwargs=arch_kwargs(cfg), dataset=dataset)

    def evaluate_and_save(epoch: int) -> None:
        nonlocal best
        best, improved = evaluate_and_select(model, dataset, splits, evaluations, accelerator, epoch=epoch, split_name=cfg.select_on,
                                             best=best, history=history, global_step=global_step, **loader_options)
        save(epoch + 1, improved)

    accelerator.init_trackers("train_base", config=tracker_config(cfg))
    global_step = sum(entry["steps"] for entry in history["train"])  # the sampler's batch count varies by epoch
    if cfg.resume is not None and checkpoint.get("evaluation_pending"):
        evaluate_and_save(start_epoch - 1)  # the run stopped between writing last.pt and evaluating that epoch
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        first_step, timer = global_step, PassTimer(accelerator.device)
        losses, global_step = train_one_epoch(cfg, epoch, model, clothes_classifier, optimizer, clothes_optimizer,
                                              loader, pid2clothes, accelerator, global_step)
        history["train"].append({"epoch": epoch, "steps": global_step - first_step, "lr": scheduler.get_last_lr()[0],
                                 **timer.record(), **losses})
        scheduler.step()
        accelerator.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))

        check_parameters(model, epoch, accelerator)
        evaluating = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        save(epoch + 1, evaluation_pending=evaluating)  # before the evaluation: one that fails loses no training
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
        except (NonFiniteLoss, CheckpointError, DatasetLayoutError, LaunchError, OptionError) as error:
            sys.exit(f"error: {error}")
