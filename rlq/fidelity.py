"""How far our two differences from the authors' runs move results: paired seeds, mean ± std, and whether each
difference exceeds the spread over seeds.

    python -m rlq.fidelity runs/fidelity --seeds 1 2 3

reads `OUT/seed<S>/<model>.eval.json` (evaluate.py --json ... --degrade mix, as scripts/fidelity.sh writes them)
and writes `OUT/fidelity.json` and `OUT/fidelity.md`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from rlq.files import ends_cleanly, write_text_atomic
from rlq.report import COLUMNS, ReportError, cell, mean_std, row_from_evaluation

# (model as trained by ours, the same model with the one setting changed, what the pair compares)
PAIRS = (
    ("rlq", "rlq_idle", "RLQ: idle parameters still (ours) vs Adam stepping them (--adam-steps-idle-parameters)"),
    ("base", "base_bf16", "base (CAL): fp32 vs bf16 autocast"),
    ("cgal", "cgal_bf16", "base + CGAL/CAP: fp32 vs bf16 autocast"),
    ("rlq", "rlq_bf16", "RLQ: fp32 vs bf16 autocast"),
)


def compare(rows_a: list[dict], rows_b: list[dict]) -> list[dict]:
    """Per metric: mean ± std of each side over seeds, the per-seed difference b - a (mean ± std), and whether the
    difference of the means exceeds the seed spread (the larger of the two standard deviations; None with one seed,
    which has no spread)."""
    seeds_a, seeds_b = [r["seed"] for r in rows_a], [r["seed"] for r in rows_b]
    if seeds_a != seeds_b:
        raise ReportError(f"the pair was run on different seeds: {seeds_a} vs {seeds_b}")
    metrics = []
    for key, _, _ in COLUMNS:
        a, b = [r[key] for r in rows_a], [r[key] for r in rows_b]
        (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
        diff_mean, diff_std = mean_std([y - x for x, y in zip(a, b)])
        metrics.append({"metric": key, "a_mean": mean_a, "a_std": std_a, "b_mean": mean_b, "b_std": std_b,
                        "diff_mean": diff_mean, "diff_std": diff_std,
                        "exceeds_seed_spread": abs(mean_b - mean_a) > max(std_a, std_b) if len(a) > 1 else None})
    return metrics


def _signed(value: float, percent: bool) -> str:
    return f"{100 * value:+.1f}" if percent else f"{value:+.3f}"


def comparison_markdown(title: str, a: str, b: str, metrics: list[dict], seeds: int) -> str:
    """One pair's table: a row per metric."""
    percent = {key: p for key, _, p in COLUMNS}
    names = {key: name for key, name, _ in COLUMNS}
    verdicts = {True: "**yes**", False: "no", None: "n/a (one seed)"}
    lines = [f"**{title}** ({seeds} seed{'s' if seeds > 1 else ''}; `{a}` vs `{b}`)", "",
             f"| metric | {a} | {b} | {b} − {a}, per seed | exceeds seed spread? |", "|---|---:|---:|---:|---|"]
    for m in metrics:
        p = percent[m["metric"]]
        lines.append(f"| {names[m['metric']]} | {cell(m['a_mean'], p)} ± {cell(m['a_std'], p)} "
                     f"| {cell(m['b_mean'], p)} ± {cell(m['b_std'], p)} "
                     f"| {_signed(m['diff_mean'], p)} ± {cell(m['diff_std'], p)} "
                     f"| {verdicts[m['exceeds_seed_spread']]} |")
    return "\n".join(lines)


def summary_markdown(results: list[dict]) -> str:
    """All pairs in one table: per metric, the difference of the means (b - a) and, in brackets, the seed spread it is
    set against; in bold where it exceeds that spread."""
    percent = {key: p for key, _, p in COLUMNS}
    lines = ["| comparison (b − a) | " + " | ".join(name for _, name, _ in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for pair in results:
        cells = []
        for m in pair["metrics"]:
            p = percent[m["metric"]]
            text = f"{_signed(m['b_mean'] - m['a_mean'], p)} (±{cell(max(m['a_std'], m['b_std']), p)})"
            cells.append(f"**{text}**" if m["exceeds_seed_spread"] else text)
        lines.append(f"| {pair['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_of(out: Path, model: str, seeds: list[int]) -> list[dict]:
    """results rows (rlq.report's) of one model over the seeds."""
    rows = []
    for seed in seeds:
        path = out / f"seed{seed}" / f"{model}.eval.json"
        if not path.is_file():
            raise ReportError(f"'{path}' does not exist: is the {model} run of seed {seed} finished?")
        try:
            evaluation = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ReportError(f"'{path}' is not JSON ({error}): expected evaluate.py --json output") from error
        rows.append(row_from_evaluation(model, seed, evaluation, path))
    return rows


@dataclass
class Args:
    """Compare the fidelity runs (scripts/fidelity.sh): for each pair, mean ± std over seeds and the per-seed difference."""

    out: tyro.conf.Positional[Path]
    """The folder scripts/fidelity.sh wrote (holding seed<S>/<model>.eval.json)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """The training seeds to read."""


def main(argv: list[str] | None = None) -> str:
    args = tyro.cli(Args, args=argv, prog="python -m rlq.fidelity")
    try:
        results, tables = [], []
        for a, b, title in PAIRS:
            metrics = compare(rows_of(args.out, a, list(args.seeds)), rows_of(args.out, b, list(args.seeds)))
            results.append({"a": a, "b": b, "title": title, "seeds": list(args.seeds), "metrics": metrics})
            tables.append(comparison_markdown(title, a, b, metrics, len(args.seeds)))
    except ReportError as error:
        raise SystemExit(f"error: {error}") from error
    text = ("Clothes-changing (CC) protocol on the synthetic target test set; top-1 and mAP in percent; mean ± sample "
            "std over seeds. A difference exceeds the seed spread when the two means are further apart than the larger "
            "of the two standard deviations.\n\n" + summary_markdown(results) + "\n\n" + "\n\n".join(tables))
    write_text_atomic(args.out / "fidelity.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(args.out / "fidelity.md", text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    with ends_cleanly():
        main()
