"""Export a checkpoint's retrieval network: to ONNX (an image batch in, L2-normalised features out), or to a
folder of safetensors weights and a config.json, to share (`--format safetensors`).

    python -m rlq.export --checkpoint runs/rlq-ltcc/best.pt --output rlq_ltcc.onnx
    python -m rlq.export --checkpoint rlq_ltcc.pth.tar --output rlq_ltcc.onnx                    # the authors' weights
    python -m rlq.export --checkpoint runs/rlq-ltcc/best.pt --format safetensors --output rlq-ltcc

ONNX: input `images`: float32 [batch, 3, H, W] (H x W the checkpoint's input size, 384 x 192 for the
paper's), resized with bilinear interpolation and normalised with the ImageNet mean and std, as
`rlq.transforms.EvalTransform` does. Output `features`: float32 [batch, D], L2-normalised (D = 8192
for a two- or three-branch ResNet-50; rank by dot product). The batch axis is dynamic. By default
the feature is evaluate.py's: the sum of the image's and its mirror image's features
(`--no-flip-sum`: the image alone, half the compute). Needs `pip install -e ".[export]"` (onnx, onnxscript).

safetensors: a new folder holding `model.safetensors` (the weights the retrieval feature uses: no optimizer,
no identity or attribute heads, no pose branch) and `config.json` (architecture, backbone, its options, feature
dimension, input size, normalisation, and the training run's configuration, dataset and code version). It loads
without pickle wherever rlq takes a checkpoint: `rlq.FeatureExtractor`, `evaluate.py --checkpoint`,
`--init-from`, `--teacher`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import safetensors.torch
import torch
import tyro
from torch import nn

from rlq.checkpoint import (
    EXPORTED_CONFIG,
    EXPORTED_WEIGHTS,
    CheckpointError,
    exported_config,
    exported_weights,
    load_checkpoint,
    model_from_checkpoint,
)
from rlq.files import ends_cleanly
from rlq.options import OptionError, at_least, check_outputs_apart, formerly, output_file, output_folder


class RetrievalNetwork(nn.Module):
    """A re-ID model's test-time feature as a plain module (what is exported)."""

    def __init__(self, model: nn.Module, flip_sum: bool = True) -> None:
        super().__init__()
        self.model, self.flip_sum = model, flip_sum

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.retrieval_features(images, self.flip_sum)


def export(checkpoint_path: Path, out: Path, flip_sum: bool = True, opset: int = 18) -> tuple[int, int]:
    """Write the ONNX file; returns the input size (H, W)."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise CheckpointError('ONNX export needs onnx and onnxscript: pip install -e ".[export]"') from None
    checkpoint = load_checkpoint(checkpoint_path)
    network = RetrievalNetwork(model_from_checkpoint(checkpoint, checkpoint_path), flip_sum).eval()
    height, width = checkpoint["input_size"]
    example = torch.zeros(2, 3, height, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(network, (example,), dynamo=True, opset_version=opset, input_names=["images"],
                                output_names=["features"], dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                                verbose=False)
    program.save(str(out))
    return height, width


def export_safetensors(checkpoint_path: Path, out: Path) -> dict:
    """Write the folder `out` (model.safetensors, config.json); returns the config.

    Both files are written into a temporary folder beside `out`, which then takes its place: a killed
    export leaves no half-written folder that would load.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint, checkpoint_path)
    config = exported_config(checkpoint, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        safetensors.torch.save_file(exported_weights(model), tmp / EXPORTED_WEIGHTS, metadata={"format": "pt"})
        (tmp / EXPORTED_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, out)  # onto an empty folder too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def new_folder(path: Path, option: str) -> None:
    """`path` is a folder that does not exist yet or is empty: an export never mixes its files with others."""
    output_folder(path, option)
    if path.is_dir() and any(path.iterdir()):
        raise OptionError(f"{option} '{path}' is a folder that holds files: expected a new or empty folder")


@dataclass
class Args:
    """Export a checkpoint's retrieval network: an ONNX file, or a folder of safetensors weights and config.json to share."""

    checkpoint: Path
    """best.pt / last.pt of a run, one of the authors' .pth.tar checkpoints, or an exported safetensors folder."""
    output: Annotated[Path, formerly("--out", "--output")]
    """The .onnx file to write, or (--format safetensors) the new or empty folder."""
    format: Literal["onnx", "safetensors"] = "onnx"
    """onnx: one .onnx file; safetensors: a folder of model.safetensors and config.json, to share."""
    flip_sum: bool = True
    """ONNX: the feature is the sum of the image's and its mirror image's, as evaluate.py's (--no-flip-sum: the
    image alone, half the compute)."""
    opset: int | None = None
    """ONNX opset (18 or more; default 18)."""


def check_options(args: Args) -> None:
    """The options of the chosen format, and outputs apart from the input, before anything is loaded."""
    if args.format == "safetensors" and (not args.flip_sum or args.opset is not None):
        raise OptionError("--no-flip-sum and --opset are ONNX options: leave them out with --format safetensors")
    at_least(18, opset=args.opset)  # below 18, torch's version conversion fails on this network
    check_outputs_apart({"--output": args.output}, {"--checkpoint": args.checkpoint})
    if args.format == "safetensors":
        new_folder(args.output, "--output")
    else:
        output_file(args.output, "--output")


def main(argv: list[str] | None = None) -> Path:
    args = tyro.cli(Args, args=argv, prog="python -m rlq.export")
    try:
        check_options(args)
        if args.format == "safetensors":
            config = export_safetensors(args.checkpoint, args.output)
            print(f"wrote {args.output}: {EXPORTED_WEIGHTS} ({config['arch']}, {config['backbone']}, {config['feature_dim']}-d "
                  f"features) and {EXPORTED_CONFIG}")
        else:
            height, width = export(args.checkpoint, args.output, flip_sum=args.flip_sum, opset=args.opset or 18)
            print(f"wrote {args.output}: images [batch, 3, {height}, {width}] (ImageNet-normalised) -> features [batch, D] "
                  "(L2-normalised)")
    except (CheckpointError, OptionError) as error:
        sys.exit(f"error: {error}")
    return args.output


if __name__ == "__main__":
    with ends_cleanly():
        main()
