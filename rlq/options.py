"""Checks of command-line options, made before any work: a value the scripts cannot use ends the run with one line
that names the option and what it expects, not with a traceback from deep inside PyTorch minutes later. Also the
renamed options' former names, which the commands keep taking."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import tyro


class OptionError(ValueError):
    """A command-line option whose value the script cannot use."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def formerly(old_flag: str, new_flag: str):
    """The tyro.conf.arg of an option renamed `new_flag` that still takes its former name `old_flag`, as in
    `output: Annotated[Path, formerly("--out", "--output")]`.

    tyro lists a field's aliases before its own name (in --help and in the usage line), so here the former name is the
    field's own command-line name and the new one its alias: the new name is the one shown first."""
    return tyro.conf.arg(name=old_flag.removeprefix("--"), aliases=(new_flag,))


def usage_error(message: str) -> NoReturn:
    """Options that do not go together end the command as a malformed option does: one `error:` line, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def at_least(minimum: float, **options: float | int | tuple | None) -> None:
    """Every option (field name = value; a tuple is checked element by element; None is left alone) is >= minimum."""
    for name, value in options.items():
        values = value if isinstance(value, tuple) else (value,)
        bad = [v for v in values if v is not None and v < minimum]
        if bad:
            raise OptionError(f"{flag(name)} {' '.join(map(str, values))}: expected {minimum} or more")


def positive(**options: float | None) -> None:
    """Every option (field name = value) is > 0."""
    for name, value in options.items():
        if value is not None and not value > 0:
            raise OptionError(f"{flag(name)} {value}: expected a number above 0")


def between(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise OptionError(f"{flag(name)} {value}: expected a number from {low} to {high}")


def output_folder(path: Path | None, option: str) -> None:
    """`path` is (or can be made) a folder that this process can write in."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} '{path}' is a file: expected a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OptionError(f"{option} '{path}': '{existing}' is a file, so this folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"{option} '{path}': cannot write in '{existing}' (permission denied)")


def output_file(path: Path | None, option: str) -> None:
    """`path` is not a folder, and its folder is (or can be made) writable."""
    if path is None:
        return
    if Path(path).is_dir():
        raise OptionError(f"{option} '{path}' is a folder: expected a file name")
    output_folder(Path(path).parent, f"{option} '{path}': its folder")


def input_file(path: Path | None, option: str, expected: str) -> None:
    if path is not None and not Path(path).is_file():
        raise OptionError(f"{option} '{path}' does not exist: expected {expected}")


PathOptions = dict[str, "Path | tuple[Path, ...] | list[Path] | None"]


def _named_paths(options: PathOptions) -> list[tuple[str, Path]]:
    """(option, path) for every path given: an option may hold several paths (nargs) or none (None)."""
    named = []
    for option, value in options.items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        named += [(option, Path(v)) for v in values if v is not None]
    return named


def _relation(output: Path, input_: Path) -> str | None:
    if output == input_:
        return "same"
    if output.is_relative_to(input_):
        return "output inside"
    return "input inside" if input_.is_relative_to(output) else None


def _plain(path: Path) -> Path:
    """Absolute, with `..` removed but symlinks not followed: what the spelling itself says."""
    return Path(os.path.abspath(path))


def _shown(option: str, path: Path, resolved: Path, through_links: bool) -> str:
    """Where symlinks make the clash, a path they redirect is shown with where it leads: its spelling does not explain it."""
    return f"{option} '{path}'" + (f" (resolved: '{resolved}')" if through_links and _plain(path) != resolved else "")


def check_outputs_apart(outputs: PathOptions, inputs: PathOptions) -> None:
    """No output (a file the run writes, or a folder it writes into) is, or lies inside, an input (a file, or a folder
    such as a dataset root), and no input lies inside an output folder, where the run could overwrite or delete it.

    Keys are the options as the user types them. Paths are compared resolved (symlinks, `..`, relative vs absolute; a
    path that does not exist yet resolves too), so that no spelling lands an output on an input. Call it before any work."""
    for out_option, out_path in _named_paths(outputs):
        for in_option, in_path in _named_paths(inputs):
            out_resolved, in_resolved = out_path.resolve(), in_path.resolve()
            relation = _relation(out_resolved, in_resolved)
            if relation is None:
                continue
            through_links = _relation(_plain(out_path), _plain(in_path)) != relation
            output = _shown(out_option, out_path, out_resolved, through_links)
            input_ = _shown(in_option, in_path, in_resolved, through_links)
            if relation == "same":
                raise OptionError(f"{output} is {input_}, an input: choose another path for {out_option}, "
                                  "so that the input is not overwritten")
            if relation == "output inside":
                raise OptionError(f"{output} lies inside {input_}, an input: write {out_option} outside it")
            raise OptionError(f"{input_} lies inside {output}, which this run writes into: "
                              f"choose another {out_option} that does not hold its inputs")


def check_training(cfg) -> None:
    """The options the three training scripts share (their Config dataclasses)."""
    at_least(1, epochs=cfg.epochs, batch_size=cfg.batch_size, num_instances=cfg.num_instances, height=cfg.height,
             width=cfg.width, eval_every=cfg.eval_every, eval_batch_size=cfg.eval_batch_size, log_every=cfg.log_every,
             max_steps_per_epoch=cfg.max_steps_per_epoch, milestones=cfg.milestones)
    at_least(0, cal_start_epoch=cfg.cal_start_epoch, num_workers=cfg.num_workers, weight_decay=cfg.weight_decay,
             val_ids=cfg.val_ids)
    positive(lr=cfg.lr, gamma=cfg.gamma)
    if cfg.batch_size % cfg.num_instances:
        raise OptionError(f"--batch-size {cfg.batch_size}: expected a multiple of --num-instances ({cfg.num_instances}), "
                          "the images of each identity in a batch")
    import timm  # here, not at the top: rlq.reproduce (scripts/reproduce_*.sh) checks paths with this module, without torch

    name, _, tag = cfg.backbone.partition(".")
    if not timm.is_model(name) or (tag and cfg.backbone not in timm.list_pretrained(f"{name}.*")):
        raise OptionError(f"--backbone {cfg.backbone}: timm has no such model; expected a plain timm ResNet such as "
                          "resnet50.tv_in1k (the paper's) or resnet18")
    input_file(cfg.pretrained_weights, "--pretrained-weights", "a file with the trunk's ImageNet state dict (.pth or .safetensors)")
    if cfg.pretrained_weights is not None and not cfg.pretrained:
        raise OptionError("--pretrained-weights is given with --no-pretrained: leave out one of them")
    # --resume is left out: it is normally the last.pt inside --output, which the run is meant to continue.
    inputs = ("root", "external_root", "masks", "gender_csv", "pose_csv", "teacher", "init_from", "pretrained_weights")
    paths = {flag(name): getattr(cfg, name, None) for name in inputs}  # each script has some of them
    paths = {option: path for option, path in paths.items() if isinstance(path, Path)}  # not --teacher none
    check_outputs_apart({"--output": cfg.output}, paths)
