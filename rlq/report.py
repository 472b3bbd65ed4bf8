"""The quickstart's results: one row per model and seed, mean +- std over seeds, as markdown and JSON.

    python -m rlq.report runs/quickstart --seeds 1 2 3

reads `OUT/seed<S>/<model>.eval.json` (evaluate.py --json ... --degrade mix) for the models
base_no_cal, base, cgal and rlq, and the training accuracies of the attribute heads from
`OUT/seed<S>/{cgal,rlq}/metrics.json`; writes `OUT/results.json` (a list of rows, fractions) and
`OUT/results.md`, and prints the tables.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from rlq.attributes import attach_attributes, read_gender_csv, read_pose_csv
from rlq.data import ReIDDataset, load_dataset
from rlq.diagnostics import chance_top1
from rlq.files import ends_cleanly, write_text_atomic
from rlq.options import OptionError, check_outputs_apart, usage_error

MODELS = ("base_no_cal", "base", "cgal", "rlq")
LABELS = {"base_no_cal": "base, CAL never started", "base": "base (CAL)", "cgal": "base + CGAL/CAP", "rlq": "RLQ (CAP + TAD)"}
# (key in results.json, column title, shown in percent)
COLUMNS = (
    ("cc_top1", "CC top-1", True),
    ("cc_mAP", "CC mAP", True),
    ("clothes_leakage_f1", "clothes leakage (f1)", False),
    ("lq_consistency_mix", "LQ consistency (mix)", False),
    ("mix_cc_top1", "mix CC top-1", True),
)
ATTRIBUTE_MODELS = ("cgal", "rlq")


class ReportError(RuntimeError):
    """A run's evaluation file is missing or lacks what the table needs."""


def row_from_evaluation(model: str, seed: int, evaluation: dict, source: Path) -> dict:
    """One results.json row from evaluate.py's JSON (which must hold the CC protocol, the mix and the diagnostics)."""
    try:
        return {
            "model": model,
            "seed": seed,
            "cc_top1": evaluation["cc"]["top1"],
            "cc_mAP": evaluation["cc"]["mAP"],
            "clothes_leakage_f1": evaluation["diagnostics"]["clothes_leakage"]["f1"],
            "lq_consistency_mix": evaluation["diagnostics"]["lq_consistency"]["mix"],
            "mix_cc_top1": evaluation["degraded"]["mix"]["cc"]["top1"],
        }
    except (KeyError, TypeError) as error:
        raise ReportError(f"'{source}' lacks {error}: expected evaluate.py --json output of a dataset with the CC "
                          "protocol, evaluated with --degrade mix") from error


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(value: float, percent: bool) -> str:
    """A table cell: a fraction in percent with one decimal, or a score with three."""
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _cell_mean_std(values: list[float], percent: bool) -> str:
    mean, std = mean_std(values)
    return f"{cell(mean, percent)} ± {cell(std, percent)}"


def results_markdown(rows: list[dict]) -> str:
    """One line per (model, seed), then mean ± std per model when there are several seeds."""
    header = "| model | seed | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(COLUMNS)]
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    for model in models:
        for r in (r for r in rows if r["model"] == model):
            lines.append(f"| {LABELS[model]} | {r['seed']} | " + " | ".join(cell(r[k], p) for k, _, p in COLUMNS) + " |")
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) > 1:
        for model in models:
            mine = [r for r in rows if r["model"] == model]
            lines.append(f"| **{LABELS[model]}** | mean ± std ({len(mine)}) | "
                         + " | ".join(_cell_mean_std([r[k] for r in mine], p) for k, _, p in COLUMNS) + " |")
    return "\n".join(lines)


def majority_rate(labels: list[int]) -> float:
    """Accuracy of always answering the most frequent label: the chance level of a classifier."""
    return Counter(labels).most_common(1)[0][1] / len(labels)


def attribute_markdown(accuracies: list[dict], chance: dict[str, float]) -> str:
    """Last-epoch training accuracy of the gender and pose heads against their chance level."""
    heads = ("gender", "pose")
    lines = ["| model | seed | " + " | ".join(f"{h} head train accuracy" for h in heads) + " |", "|---|---:|---:|---:|"]
    for a in accuracies:
        lines.append(f"| {LABELS[a['model']]} | {a['seed']} | " + " | ".join(cell(a[h], True) for h in heads) + " |")
    lines.append("| chance (most frequent label) | | " + " | ".join(cell(chance[h], True) for h in heads) + " |")
    return "\n".join(lines)


def last_epoch_accuracies(model: str, seed: int, metrics_path: Path) -> dict:
    """Gender and pose head accuracies of a run's last training epoch (its metrics.json)."""
    if not metrics_path.is_file():
        raise ReportError(f"'{metrics_path}' does not exist: is the {model} run of seed {seed} finished?")
    last = json.loads(metrics_path.read_text())["train"][-1]  # train_rlq.py: the CAP phase (TAD is under "tad")
    try:
        return {"model": model, "seed": seed, "gender": last["gender_accuracy"], "pose": last["pose_accuracy"]}
    except KeyError as error:
        raise ReportError(f"'{metrics_path}' has no {error} in its last epoch: trained without that head?") from error


def cc_chance_top1(dataset: ReIDDataset) -> float:
    """CC top-1 of a random ranking on the synthetic target test set (`rlq.diagnostics.chance_top1`)."""
    cc = next(e for e in dataset.evaluations if e.name == "cc")
    return chance_top1(dataset.splits[cc.query_split], dataset.splits[cc.gallery_split], "cc")


def attribute_chance(dataset: ReIDDataset, gender_csv: Path, pose_csv: Path, pose_column: str) -> dict[str, float]:
    """Majority-label rate of gender and pose over the training images of the synthetic target set."""
    train = attach_attributes(dataset.train, read_gender_csv(gender_csv), read_pose_csv(pose_csv, pose_column))
    return {"gender": majority_rate([s.gender for s in train]), "pose": majority_rate([s.pose for s in train])}


def collect(out: Path, seeds: tuple[int, ...]) -> list[dict]:
    """results.json rows of every model and seed under `out`."""
    rows = []
    for seed in seeds:
        for model in MODELS:
            path = out / f"seed{seed}" / f"{model}.eval.json"
            if not path.is_file():
                raise ReportError(f"'{path}' does not exist: is the {model} run of seed {seed} finished?")
            rows.append(row_from_evaluation(model, seed, json.loads(path.read_text()), path))
    return rows


@dataclass
class Args:
    """The quickstart's results: one row per model and seed, mean +- std over seeds, as markdown and JSON."""

    out: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUT")]]
    """The quickstart's output folder (holding seed<S>/); results.json and results.md are written into it."""
    seeds: tuple[int, ...]
    """The training seeds to read."""
    root: Path | None = None
    """Synthetic dataset folder (with the attribute files: adds their chance level)."""
    pose_csv: Path | None = None
    """Pose clusters of the target training images."""
    pose_column: str = "R_LA_15"
    """Which pose-cluster column to read."""


def main(argv: list[str] | None = None) -> str:
    args = tyro.cli(Args, args=argv, prog="python -m rlq.report")
    if not args.seeds:
        usage_error("--seeds: expected one or more seeds")
    try:
        # Only these two files are written: the runs under OUT (and a dataset there, as the quickstart's) are left alone.
        check_outputs_apart({"OUT": (args.out / "results.json", args.out / "results.md")},
                            {"--root": args.root, "--pose-csv": args.pose_csv})
        rows = collect(args.out, args.seeds)
        accuracies = [last_epoch_accuracies(m, s, args.out / f"seed{s}" / m / "metrics.json")
                      for s in args.seeds for m in ATTRIBUTE_MODELS]
    except (ReportError, OptionError) as error:
        raise SystemExit(f"error: {error}") from error
    text = "Clothes-changing (CC) protocol on the synthetic target test set; top-1 and mAP in percent.\n\n" + results_markdown(rows)
    dataset = load_dataset("synthetic", args.root) if args.root is not None else None
    if dataset is not None:
        text += f"\n\nA random ranking scores CC top-1 {100 * cc_chance_top1(dataset):.1f} on average."
    if dataset is not None and args.pose_csv is not None:
        chance = attribute_chance(dataset, args.root / "target" / "gender.csv", args.pose_csv, args.pose_column)
        text += "\n\nAttribute heads (CAP) on the target training set, last epoch:\n\n" + attribute_markdown(accuracies, chance)
    write_text_atomic(args.out / "results.json", json.dumps(rows, indent=2) + "\n")
    write_text_atomic(args.out / "results.md", text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    with ends_cleanly():
        main()
