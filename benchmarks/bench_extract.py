"""Feature-extraction images/s: our evaluation path against a plain fp32 one, then end to end with the data loader.

1. Network only, on synthetic tensors: `retrieval_features` (flip-sum, L2-normalised, the
   8192-d feature of the base model) under no_grad, ours with `--mixed-precision auto` (bf16
   on a GPU that has it, fp32 on CPU), channels_last on a GPU and --batch-size, against fp32, NCHW at
   --reference-batch-size. Both give features of the same images: the smallest cosine between
   the two says what the precision costs.
2. End to end: `rlq.evaluation.extract_features` (what evaluate.py and the training scripts
   run: decode, resize, normalise, forward, gather) on generated crops with --num-workers loader
   workers.

    python benchmarks/bench_extract.py                    # CPU: ResNet-18, 64x32
    python benchmarks/bench_extract.py --device cuda      # the paper's sizes: ResNet-50, 384x192, batch 512
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
import tyro
from accelerate import Accelerator
from bench_data import generate_crops
from bench_eval import machine_description

from rlq.evaluation import extract_features
from rlq.launch import memory_format, mixed_precision
from rlq.model import build_model
from rlq.options import formerly


@dataclass
class Args:
    """Feature-extraction images/s: our evaluation path against a plain fp32 one, then end to end with the data loader."""

    device: Literal["cpu", "cuda"] = "cpu"
    """Where the network runs."""
    backbone: str | None = None
    """timm ResNet of the base model (default: resnet18 on CPU, resnet50.tv_in1k on CUDA)."""
    height: int | None = None
    """Input height (default: 64 on CPU, 384 on CUDA)."""
    width: int | None = None
    """Input width (default: 32 on CPU, 192 on CUDA)."""
    batch_size: int | None = None
    """Our batch (default: 32 on CPU, 512 on CUDA)."""
    reference_batch_size: int | None = None
    """The reference's batch (default: 32 on CPU, 128 on CUDA)."""
    images: int | None = None
    """Synthetic images per timed network pass (default: 256 on CPU, 4096 on CUDA)."""
    repeats: int = 3
    """Timed passes per path, alternating; the best is reported."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Our autocast precision, as evaluate.py's option (auto: bf16 on a GPU that has it, else fp32)."""
    num_workers: Annotated[int, formerly("--workers", "--num-workers")] = 2
    """Data-loader worker processes of the end-to-end pass."""
    crops: int | None = None
    """Generated crops of the end-to-end pass (default: 512 on CPU, 4096 on CUDA)."""
    json: Path | None = None
    """Also write the results to this JSON file."""


def parse_args(argv: list[str] | None = None) -> Args:
    """The options, with the defaults of --device filled in."""
    args = tyro.cli(Args, args=argv)
    gpu = args.device == "cuda"
    defaults = {"backbone": "resnet50.tv_in1k" if gpu else "resnet18", "height": 384 if gpu else 64, "width": 192 if gpu else 32,
                "batch_size": 512 if gpu else 32, "reference_batch_size": 128 if gpu else 32, "images": 4096 if gpu else 256,
                "crops": 4096 if gpu else 512}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def network_pass(model, images: torch.Tensor, batch_size: int, device: torch.device, autocast, layout: torch.memory_format):
    """Features of `images` (CPU float) in batches; returns (features on CPU, images/s, peak CUDA MiB or None)."""
    model.to(memory_format=layout)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    features = []

    def run() -> None:
        features.clear()
        for batch in images.split(batch_size):
            with autocast():
                features.append(model.retrieval_features(batch.to(device, memory_format=layout)))

    run()  # warm-up (cuDNN algorithm search, allocator)
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    rate = len(images) / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return torch.cat(features).float().cpu(), rate, peak


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    precision = mixed_precision(args.mixed_precision) if device.type == "cuda" or args.mixed_precision != "auto" else "no"
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", machine_description(device))
    torch.manual_seed(0)
    model = build_model("base", 77, args.backbone, pretrained=False).to(device).eval()
    images = torch.randn(args.images, 3, args.height, args.width)

    reference_rate = our_rate = 0.0
    for _ in range(args.repeats):  # alternating, so that a slow spell of the machine does not fall on one path only
        fp32, rate, reference_peak = network_pass(model, images, args.reference_batch_size, device,
                                                  lambda: torch.autocast(device.type, enabled=False), torch.contiguous_format)
        reference_rate = max(reference_rate, rate)
        ours, rate, our_peak = network_pass(model, images, args.batch_size, device, accelerator.autocast, memory_format(device))
        our_rate = max(our_rate, rate)
    agreement = F.cosine_similarity(fp32, ours, dim=1).min().item()
    print(f"\nnetwork ({args.backbone}, {args.height}x{args.width}, {fp32.shape[1]}-d, {args.images} images):")
    print(f"  reference: fp32, NCHW, batch {args.reference_batch_size}: {reference_rate:.1f} images/s"
          + (f", peak {reference_peak:.0f} MiB" if reference_peak else ""))
    layout = "channels_last" if device.type == "cuda" else "NCHW"
    print(f"  ours: {precision} autocast, {layout}, batch {args.batch_size}: {our_rate:.1f} images/s"
          + (f", peak {our_peak:.0f} MiB" if our_peak else "") + f"  ({our_rate / reference_rate:.2f}x)")
    print(f"  smallest cosine between the two features of an image: {agreement:.5f}")

    with tempfile.TemporaryDirectory() as tmp:
        samples, _ = generate_crops(Path(tmp), args.crops, seed=0)
        options = dict(height=args.height, width=args.width, batch_size=args.batch_size, num_workers=args.num_workers)
        extract_features(model, samples[: args.batch_size], accelerator, **options)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        extract_features(model, samples, accelerator, **options)
        synchronize(device)
        end_to_end = len(samples) / (time.perf_counter() - start)
    print(f"\nend to end (rlq.evaluation.extract_features, {args.crops} generated crops 50-400 px tall, "
          f"{args.num_workers} workers, their start-up included): {end_to_end:.1f} images/s")
    result = {"reference": reference_rate, "ours": our_rate, "ratio": our_rate / reference_rate, "min_cosine": agreement,
              "end_to_end": end_to_end, "reference_peak_mib": reference_peak, "ours_peak_mib": our_peak}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
