"""Export a checkpoint's retrieval network to ONNX: an image batch in, L2-normalised features out.

    python -m rlq.export --checkpoint runs/rlq-ltcc/best.pt --out rlq_ltcc.onnx
    python -m rlq.export --checkpoint rlq_ltcc.pth.tar --out rlq_ltcc.onnx                    # the authors' weights

Input `images`: float32 [batch, 3, H, W] (H x W the checkpoint's input size, 384 x 192 for the
paper's), resized with bilinear interpolation and normalised with the ImageNet mean and std, as
`rlq.transforms.EvalTransform` does. Output `features`: float32 [batch, D], L2-normalised (D = 8192
for a two- or three-branch ResNet-50; rank by dot product). The batch axis is dynamic. By default
the feature is evaluate.py's: the sum of the image's and its mirror image's features
(`--no-flip-sum`: the image alone, half the compute). Needs `pip install -e ".[export]"` (onnx, onnxscript).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from rlq.files import ends_cleanly
from rlq.options import OptionError, at_least, check_outputs_apart, output_file


class RetrievalNetwork(nn.Module):
    """A re-ID model's test-time feature as a plain module (what is exported)."""

    def __init__(self, model: nn.Module, flip_sum: bool = True) -> None:
        super().__init__()
        self.model, self.flip_sum = model, flip_sum

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.flip_sum:
            return self.model.retrieval_features(images)
        return F.normalize(self.model.embed(images).float(), dim=1)


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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt / last.pt, or the authors' .pth.tar")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--no-flip-sum", action="store_true", help="the image's feature alone, without its mirror image's")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or more: the exporter's own)")
    args = parser.parse_args(argv)
    try:
        at_least(18, opset=args.opset)  # below 18, torch's version conversion fails on this network
        output_file(args.out, "--out")
        check_outputs_apart({"--out": args.out}, {"--checkpoint": args.checkpoint})
        height, width = export(args.checkpoint, args.out, flip_sum=not args.no_flip_sum, opset=args.opset)
    except (CheckpointError, OptionError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.out}: images [batch, 3, {height}, {width}] (ImageNet-normalised) -> features [batch, D] (L2-normalised)")
    return args.out


if __name__ == "__main__":
    with ends_cleanly():
        main()
