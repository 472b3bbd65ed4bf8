"""Convert one of the authors' released checkpoints (.pth.tar) into this project's checkpoint format.

    python scripts/convert_authors_checkpoint.py --checkpoint rlq_ltcc.pth.tar --output checkpoints/rlq_ltcc.pt

`evaluate.py --checkpoint` and `train_rlq.py --teacher` read the authors' files directly as
well; converting once skips the conversion on every start and gives a file that records the
inferred architecture, backbone, split points and class counts (see `rlq.authors`). Their
files do not say which dataset they were trained on: evaluate.py needs `--dataset`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from rlq.authors import describe
from rlq.checkpoint import CheckpointError, load_checkpoint, save_atomic
from rlq.files import ends_cleanly
from rlq.options import OptionError, check_outputs_apart, formerly, output_file


@dataclass
class Args:
    """Convert an authors' checkpoint into this project's format."""

    checkpoint: Annotated[Path, formerly("--src", "--checkpoint")]
    """The authors' checkpoint (torch.save of model_state_dict, classifier_state_dict, ...)."""
    output: Annotated[Path, formerly("--out", "--output")]
    """Where to write the converted checkpoint (written atomically)."""


def main(args: Args) -> None:
    output_file(args.output, "--output")
    check_outputs_apart({"--output": args.output}, {"--checkpoint": args.checkpoint})
    checkpoint = load_checkpoint(args.checkpoint)
    if "authors_checkpoint" not in checkpoint["config"]:
        raise CheckpointError(f"'{args.checkpoint}' is a checkpoint of this project, not one of the authors'")
    save_atomic(checkpoint, args.output)
    print(f"{args.checkpoint}: {describe(checkpoint)}, {checkpoint['classes']['num_clothes']} clothes classes -> {args.output}")


if __name__ == "__main__":
    import tyro

    with ends_cleanly():
        try:
            main(tyro.cli(Args))
        except (CheckpointError, OptionError) as error:
            sys.exit(f"error: {error}")
