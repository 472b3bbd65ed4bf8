"""One configuration trained with several seeds, as one table: every seed, mean +- std, the mean of the best two.

    python -m rlq.seeds runs/ltcc/seed1/test.json runs/ltcc/seed2/test.json ... --evaluation cc --output runs/ltcc/seeds

Each input is evaluate.py's --json output for one run's checkpoint, or a run folder, whose
metrics.json `best` is used (only when it was picked on the test split: a `--select-on val`
run's best was never evaluated on the test set during training, so evaluate its best.pt).
Top-1 and mAP of a row always come from the same evaluation of the same checkpoint.

The "mean of the best two" is the paper's convention (the best two of seeds 1-4, ranked by
top-1, then mAP); it is printed as such, beside the honest mean +- std over all seeds.
Writes OUTPUT.md and OUTPUT.json and prints the table.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from rlq.files import ends_cleanly, read_json_file, write_text_atomic
from rlq.options import OptionError, check_outputs_apart, formerly, output_file, usage_error


class SeedTableError(RuntimeError):
    """An input is missing or does not hold the evaluation the table needs."""


def read_json(path: Path) -> dict:
    return read_json_file(path, dict, SeedTableError, "evaluate.py --json output or a run's metrics.json")


def read_run(path: Path, evaluation: str) -> dict:
    """{"run", "top1", "mAP"} of one run: from an evaluate.py JSON file, or a run folder's metrics.json best."""
    if path.is_dir():
        metrics_path = path / "metrics.json"
        if not metrics_path.is_file():
            raise SeedTableError(f"'{path}' holds no metrics.json: expected a run folder of a training script")
        metrics = read_json(metrics_path)
        best = metrics.get("best")
        if best is None:
            raise SeedTableError(f"'{metrics_path}' has no best evaluation yet")
        split = next((e["split"] for e in metrics["evaluations"] if e["epoch"] == best["epoch"]), "test")
        if split != "test":
            raise SeedTableError(f"'{path}' picked its best checkpoint on the {split} split, so its numbers are not test numbers: "
                                 f"run evaluate.py --checkpoint {path / 'best.pt'} --json FILE and pass FILE")
        results = best["results"]
    else:
        if not path.is_file():
            raise SeedTableError(f"'{path}' does not exist: expected evaluate.py --json output or a run folder")
        results = read_json(path)
    if evaluation not in results:
        raise SeedTableError(f"'{path}' has no '{evaluation}' evaluation (it has: {', '.join(sorted(results))})")
    return {"run": str(path), "top1": results[evaluation]["top1"], "mAP": results[evaluation]["mAP"]}


def summarise(rows: list[dict]) -> dict:
    """Mean and sample std over all rows, and the mean of the best two rows (by top-1, then mAP)."""
    if not rows:
        raise SeedTableError("no runs given")
    summary = {"runs": len(rows)}
    for metric in ("top1", "mAP"):
        values = [r[metric] for r in rows]
        summary[metric] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    best_two = sorted(rows, key=lambda r: (r["top1"], r["mAP"]), reverse=True)[:2]
    summary["best_two"] = {"runs": [r["run"] for r in best_two],
                           "top1": statistics.mean(r["top1"] for r in best_two),
                           "mAP": statistics.mean(r["mAP"] for r in best_two)}
    return summary


def markdown(rows: list[dict], summary: dict, evaluation: str) -> str:
    lines = [f"`{evaluation}` evaluation, top-1 and mAP in percent, each row from one checkpoint's evaluation.", "",
             "| run | top-1 | mAP |", "|---|---:|---:|"]
    lines += [f"| {r['run']} | {100 * r['top1']:.1f} | {100 * r['mAP']:.1f} |" for r in rows]
    n = summary["runs"]
    lines.append(f"| **mean ± std ({n} runs)** | {100 * summary['top1']['mean']:.1f} ± {100 * summary['top1']['std']:.1f} "
                 f"| {100 * summary['mAP']['mean']:.1f} ± {100 * summary['mAP']['std']:.1f} |")
    best_two = summary["best_two"]
    lines.append(f"| mean of the best two (the paper's convention; not an estimate of a run) | {100 * best_two['top1']:.1f} "
                 f"| {100 * best_two['mAP']:.1f} |")
    return "\n".join(lines) + "\n"


@dataclass
class Args:
    """One configuration trained with several seeds, as one table: every seed, mean +- std, the mean of the best two."""

    runs: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(metavar="RUN [RUN ...]")]]
    """evaluate.py --json files or run folders (their metrics.json best, picked on the test split), one per seed."""
    output: Annotated[Path, formerly("--out", "--output")]
    """Path prefix of the table: writes OUTPUT.md and OUTPUT.json."""
    evaluation: str = "cc"
    """Protocol of the table: cc (LTCC, PRCC) or standard (others)."""


def main(argv: list[str] | None = None) -> dict:
    args = tyro.cli(Args, args=argv, prog="python -m rlq.seeds")
    if not args.runs:
        usage_error("RUN: give one or more evaluate.py --json files or run folders")
    markdown_path, json_path = args.output.with_suffix(".md"), args.output.with_suffix(".json")
    try:
        output_file(markdown_path, "--output")
        # --output names two files (an evaluation seed1.json is refused as --output seed1 too); of a run folder only its
        # metrics.json is read, so a table may be written beside it.
        read = [path / "metrics.json" if path.is_dir() else path for path in args.runs]
        check_outputs_apart({"--output": (markdown_path, json_path)}, {"RUN": read})
        rows = [read_run(path, args.evaluation) for path in args.runs]
        summary = summarise(rows)
    except (SeedTableError, OptionError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    text = markdown(rows, summary, args.evaluation)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(markdown_path, text)
    table = {"evaluation": args.evaluation, "rows": rows, "summary": summary}
    write_text_atomic(json_path, json.dumps(table, indent=2) + "\n")
    print(text, end="")
    return table


if __name__ == "__main__":
    with ends_cleanly():
        main()
