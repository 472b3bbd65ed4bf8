"""Time the real training step of every stage against a plain fp32 eager step of the same network and losses.

"ours" calls the step functions of the training scripts (train_base.train_step for CAL and
the base model, train_cgal.train_step, train_rlq.tad_step and train_rlq.cap_step) with the
scripts' defaults: --mixed-precision auto (bf16 on a GPU that has it, fp32 on CPU),
channels_last on a GPU, fused (GPU) or multi-tensor (CPU) Adam, loss terms kept on the device and read
back once per --log-every window (rlq.training.LossLog). The reference, written here, runs
the same network and the same rlq.losses in fp32, NCHW, with torch's default Adam, and
reads every loss term back after every step, as a plain PyTorch loop does. Both start from
the same weights and see the same synthetic batches (no data loading: see bench_data.py).

Steps are timed after --warmup steps (which include compilation with --compile), with the
CAL adversarial step on (the paper's epochs 25-200). Peak memory is the CUDA allocator's peak
per path (not measured on CPU). The RLQ epoch combines the TAD and CAP steps in the
proportion of the paper's LTCC epoch (631 TAD + 299 CAP steps at batch 32).

    python benchmarks/bench_train.py                       # CPU: ResNet-18, 64x32, batch 16
    python benchmarks/bench_train.py --device cuda         # the paper's sizes: ResNet-50, 384x192, batch 64
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import tyro
from accelerate import Accelerator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the training scripts live at the repository root

import train_base  # noqa: E402
import train_cgal  # noqa: E402
import train_rlq  # noqa: E402
from bench_eval import machine_description  # noqa: E402

from rlq.launch import memory_format, mixed_precision  # noqa: E402
from rlq.losses import (  # noqa: E402
    abs_cosine_loss,
    clothes_adversarial_loss,
    clothes_discriminator_loss,
    cross_entropy_smooth,
    normalized_mse,
    softened_kl,
    triplet_loss,
)
from rlq.model import CosineClassifier, build_model  # noqa: E402
from rlq.options import usage_error  # noqa: E402
from rlq import training  # noqa: E402
from rlq.training import LossLog, adam  # noqa: E402
from tqdm import tqdm  # noqa: E402

# No progress bars from the loss logs of the timed steps.
training.tqdm = lambda *args, **kwargs: tqdm(*args, **(kwargs | {"disable": True}))

Stage = Literal["cal", "base", "cgal", "tad", "cap"]
STAGES: tuple[Stage, ...] = get_args(Stage)
ARCH = {"cal": "cal", "base": "base", "cgal": "rlq", "tad": "rlq", "cap": "rlq"}
RLQ_KWARGS = {"split_after": "layer2", "pose_split_after": "layer1", "num_pose_classes": 16, "gender_input": "f2"}
LTCC_EPOCH = {"tad": 631, "cap": 299}  # steps per RLQ epoch on LTCC at batch 32
TARGETS = {"cal": 1.7, "rlq epoch": 1.9}  # on a GPU (issue 12)
LR, WEIGHT_DECAY = 3.5e-4, 5e-4


@dataclass
class Args:
    """Time the real training step of every stage against a plain fp32 eager step of the same network and losses."""

    device: Literal["cpu", "cuda"] = "cpu"
    """Where the steps run."""
    backbone: str | None = None
    """timm ResNet (default: resnet18 on CPU, resnet50.tv_in1k on CUDA)."""
    height: int | None = None
    """Input height (default: 64 on CPU, 384 on CUDA)."""
    width: int | None = None
    """Input width (default: 32 on CPU, 192 on CUDA)."""
    batch_size: int | None = None
    """Images per step (TAD: HQ/LQ pairs), a multiple of 4 (default: 16 on CPU, 64 on CUDA)."""
    num_pids: int = 77
    """Identity classes (LTCC: 77)."""
    clothes_per_pid: int = 3
    """Clothes classes per identity."""
    steps: int | None = None
    """Timed steps per path (default: 5 on CPU, 30 on CUDA)."""
    warmup: int | None = None
    """Untimed steps first (default: 2 on CPU, 10 on CUDA)."""
    stages: tuple[Stage, ...] = STAGES
    """The stages to time."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Ours: the scripts' --mixed-precision (auto: bf16 on a GPU that has it, else fp32)."""
    compile: bool = False
    """Ours with torch.compile (the scripts' --compile)."""
    threads: int | None = None
    """Torch CPU threads (default: torch's)."""
    json: Path | None = None
    """Also write the results to this JSON file."""


def parse_args(argv: list[str] | None = None) -> Args:
    """The options, with the defaults of --device filled in."""
    args = tyro.cli(Args, args=argv)
    gpu = args.device == "cuda"
    defaults = {"backbone": "resnet50.tv_in1k" if gpu else "resnet18", "height": 384 if gpu else 64, "width": 192 if gpu else 32,
                "batch_size": 64 if gpu else 16, "steps": 30 if gpu else 5, "warmup": 10 if gpu else 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batch_size % 4:
        usage_error("--batch-size must be a multiple of 4 (P identities x 4 images)")
    return args


# ----------------------------------------------------------------------------- inputs and models


def make_batches(args: Args, stage: str, device: torch.device, count: int = 4) -> list[tuple]:
    """`count` synthetic batches in the layout of the stage's loader (P x 4 identities, each image in its owner's clothes)."""
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    batches = []
    for _ in range(count):
        images = torch.randn(b, 1, 3, args.height, args.width, generator=g)
        if stage == "tad":
            batches.append((images[:, 0].to(device), torch.randn(b, 3, args.height, args.width, generator=g).to(device)))
            continue
        pids = torch.randperm(args.num_pids, generator=g)[: b // 4].repeat_interleave(4)
        clothes = pids * args.clothes_per_pid + torch.randint(0, args.clothes_per_pid, (b,), generator=g)
        batch = (images, pids[:, None], clothes[:, None])
        if ARCH[stage] == "rlq":
            attributes = torch.stack([torch.randint(0, 2, (b,), generator=g), torch.randint(0, 16, (b,), generator=g)], 1)
            batch += (attributes[:, None],)
        batches.append(tuple(t.to(device) for t in batch))
    return batches


def pid2clothes_matrix(args: Args, device: torch.device) -> torch.Tensor:
    owner = torch.arange(args.num_pids * args.clothes_per_pid) // args.clothes_per_pid
    return (owner[None, :] == torch.arange(args.num_pids)[:, None]).float().to(device)


def make_models(args: Args, stage: str, device: torch.device, layout: torch.memory_format):
    """(model, clothes classifier, TAD teacher or None), the same weights on every call."""
    torch.manual_seed(0)
    kwargs = {"cal": {}, "base": {"split_after": "layer2"}}.get(ARCH[stage], RLQ_KWARGS)
    model = build_model(ARCH[stage], args.num_pids, args.backbone, pretrained=False, **kwargs)
    classifier = CosineClassifier(model.feature_dim, args.num_pids * args.clothes_per_pid)
    teacher = build_model("base", 632, args.backbone, pretrained=False, split_after="layer2") if stage == "tad" else None
    model, classifier = model.to(device, memory_format=layout), classifier.to(device)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=layout).eval().requires_grad_(False)
    return model, classifier, teacher


# ----------------------------------------------------------------------------- the plain fp32 reference


def reference_step(stage: str, batch: tuple, model, classifier, teacher, optimizer, clothes_optimizer, pid2clothes) -> dict:
    """One fp32 NCHW step of the stage's losses, every term read back to the host (`.item()`)."""
    if stage == "tad":
        x_hq, x_lq = batch
        out = model(torch.cat([x_hq, x_lq]), attributes=False)
        f1_hq, f1_lq = out.f1.chunk(2)
        f2_hq, f2_lq = out.f2.chunk(2)
        o1_hq, o1_lq = out.id_logits_f1.chunk(2)
        o2_hq, o2_lq = out.id_logits_f2.chunk(2)
        with torch.no_grad():
            target = teacher(x_hq)
        terms = {"mse_f1_hq": normalized_mse(f1_hq, target.f1), "mse_f1_lq": normalized_mse(f1_lq, target.f1),
                 "mse_f2_hq": normalized_mse(f2_hq, target.f2), "mse_f2_lq": normalized_mse(f2_lq, target.f2),
                 "kl_o2": softened_kl(o2_lq, o2_hq), "kl_o1": softened_kl(o1_lq, o1_hq)}
        total = sum(terms.values())
    else:
        images, pids, clothes = (t.flatten(0, 1) for t in batch[:3])
        out = model(images)
        discriminator = clothes_discriminator_loss(classifier(out.f1.detach()), clothes)
        clothes_optimizer.zero_grad()
        discriminator.backward()
        clothes_optimizer.step()
        terms = {"clothes_discriminator": discriminator, "id_f1": cross_entropy_smooth(out.id_logits_f1, pids)}
        if stage != "cal":
            terms["id_f2"] = cross_entropy_smooth(out.id_logits_f2, pids)
        if ARCH[stage] == "rlq":
            genders, poses = batch[3].flatten(0, 1).unbind(1)
            terms["pose"] = cross_entropy_smooth(out.pose_logits, poses)
            terms["gender"] = cross_entropy_smooth(out.gender_logits, genders)
        if stage != "cal":
            terms["kl"] = softened_kl(out.id_logits_f1, out.id_logits_f2)
        if ARCH[stage] == "rlq":
            terms["disentangle_f2"] = abs_cosine_loss(out.f2, out.f3)
        if stage != "cal":
            terms["triplet"] = triplet_loss(out.f2, pids)
        terms["cal"] = clothes_adversarial_loss(classifier(out.f1), clothes, pids, pid2clothes)
        total = sum(v for k, v in terms.items() if k != "clothes_discriminator")
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return {k: v.item() for k, v in terms.items()} | {"total": total.item()}


# ----------------------------------------------------------------------------- ours: the scripts' steps


def script_config(stage: str):
    return {"cal": lambda: train_base.Config(model="cal"), "base": lambda: train_base.Config(model="base"),
            "cgal": train_cgal.Config}.get(stage, lambda: train_rlq.Config(teacher="none"))()


def our_step(stage: str, cfg, batch: tuple, model, classifier, teacher, optimizer, clothes_optimizer, pid2clothes, accelerator):
    if stage == "tad":
        return train_rlq.tad_step(batch, model, teacher, optimizer, accelerator)
    step = {"cal": train_base.train_step, "base": train_base.train_step, "cgal": train_cgal.train_step}.get(stage, train_rlq.cap_step)
    return step(cfg, True, batch, model, classifier, optimizer, clothes_optimizer, pid2clothes, accelerator)


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: Args, stage: str, path: str, device: torch.device, accelerator: Accelerator) -> dict:
    """Images/s (TAD: HQ/LQ pairs/s), seconds per step, peak CUDA memory and the first step's loss terms of one path."""
    ours = path == "ours"
    batches = make_batches(args, stage, device)
    pid2clothes = pid2clothes_matrix(args, device)
    model, classifier, teacher = make_models(args, stage, device, memory_format(device) if ours else torch.contiguous_format)
    model.train()
    classifier.train()
    if ours:
        cfg = script_config(stage)
        if args.compile:
            model.compile()
        optimizer, clothes_optimizer = adam(model.parameters(), LR, WEIGHT_DECAY), adam(classifier.parameters(), LR, WEIGHT_DECAY)
        model, classifier, optimizer, clothes_optimizer = accelerator.prepare(model, classifier, optimizer, clothes_optimizer)

        def run(step: int, log: LossLog) -> None:
            log.add(our_step(stage, cfg, batches[step % len(batches)], model, classifier, teacher, optimizer, clothes_optimizer,
                             pid2clothes, accelerator))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        clothes_optimizer = torch.optim.Adam(classifier.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

        def run(step: int, log: list) -> None:
            log.append(reference_step(stage, batches[step % len(batches)], model, classifier, teacher, optimizer,
                                      clothes_optimizer, pid2clothes))

    def new_log():
        return LossLog(accelerator, epoch=0, steps=args.steps, every=50, prefix="bench", desc=f"{stage} {path}",
                       global_step=0) if ours else []

    first = new_log()
    run(0, first)
    first_terms = first.close()[0] if ours else first[0]
    log = new_log()
    for step in range(1, args.warmup):
        run(step, log)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    log = new_log()
    for step in range(args.steps):
        run(args.warmup + step, log)
    if ours:
        log.close()  # the last window's read-back belongs to the timed steps
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"images_per_s": args.batch_size / seconds, "seconds_per_step": seconds, "peak_mib": peak, "first_step": first_terms}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = mixed_precision(args.mixed_precision) if device.type == "cuda" or args.mixed_precision != "auto" else "no"
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", machine_description(device))
    print(f"sizes: {args.backbone}, {args.height}x{args.width}, batch {args.batch_size}, {args.num_pids} ids; "
          f"ours: {precision} autocast, {'channels_last' if device.type == 'cuda' else 'NCHW'}, "
          f"{'fused' if device.type == 'cuda' else 'foreach'} Adam"
          f"{', torch.compile' if args.compile else ''}; {args.warmup} warm-up + {args.steps} timed steps\n")

    results = {}
    for stage in args.stages:
        results[stage] = {}
        for path in ("reference", "ours"):
            results[stage][path] = measure(args, stage, path, device, accelerator)
            accelerator.free_memory()  # drops the prepared objects it holds, so the next path's peak is its own
        results[stage]["ratio"] = results[stage]["reference"]["seconds_per_step"] / results[stage]["ours"]["seconds_per_step"]
    if {"tad", "cap"} <= set(results):
        epoch = {path: sum(n * results[s][path]["seconds_per_step"] for s, n in LTCC_EPOCH.items()) for path in ("reference", "ours")}
        results["rlq epoch"] = {"reference": {"seconds": epoch["reference"]}, "ours": {"seconds": epoch["ours"]},
                                "ratio": epoch["reference"] / epoch["ours"]}

    def memory(m: dict) -> str:
        return "-" if m.get("peak_mib") is None else f"{m['peak_mib']:.0f}"

    print(f"{'stage':<10} {'reference img/s':>16} {'ours img/s':>11} {'ratio':>6} {'ref peak MiB':>13} {'ours peak MiB':>14}")
    for stage, r in results.items():
        if stage == "rlq epoch":
            print(f"{stage:<10} {r['reference']['seconds']:>14.1f} s {r['ours']['seconds']:>9.1f} s {r['ratio']:>5.2f}x"
                  f"   ({LTCC_EPOCH['tad']} TAD + {LTCC_EPOCH['cap']} CAP steps)")
            continue
        print(f"{stage:<10} {r['reference']['images_per_s']:>16.1f} {r['ours']['images_per_s']:>11.1f} {r['ratio']:>5.2f}x "
              f"{memory(r['reference']):>13} {memory(r['ours']):>14}")
    if device.type == "cuda":
        for name, target in TARGETS.items():
            if name in results:
                verdict = "met" if results[name]["ratio"] >= target else "NOT met"
                print(f"target {name} >= {target}x: {verdict} ({results[name]['ratio']:.2f}x)")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in asdict(args).items()}, "mixed_precision": precision,
                                         "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
