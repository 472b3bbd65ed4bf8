"""rlq.report: the quickstart's results rows, mean +- std over seeds, and the attribute chance level."""

from __future__ import annotations

import json
import statistics

import pytest

from rlq import report


def _evaluation(cc_top1, cc_map, leak_f1, consistency, mix_top1):
    return {
        "standard": {"top1": 0.9, "mAP": 0.5},
        "cc": {"top1": cc_top1, "mAP": cc_map},
        "degraded": {"mix": {"cc": {"top1": mix_top1, "mAP": 0.1}}},
        "diagnostics": {"clothes_leakage": {"f1": leak_f1, "f2": 0.9, "feature": 0.8}, "lq_consistency": {"mix": consistency}},
    }


def _write_runs(out, values):
    for (model, seed), numbers in values.items():
        path = out / f"seed{seed}" / f"{model}.eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_evaluation(*numbers)))


def test_rows_and_mean_std_over_seeds(tmp_path):
    values = {(m, s): (0.1 * s + i / 100, 0.05 * s, 0.6 + 0.01 * s, 0.9 - 0.01 * s, 0.02 * s + i / 100)
              for i, m in enumerate(report.MODELS) for s in (1, 2, 3)}
    _write_runs(tmp_path, values)
    rows = report.collect(tmp_path, [1, 2, 3])
    assert len(rows) == 12 and {r["model"] for r in rows} == set(report.MODELS)
    base_seed2 = next(r for r in rows if r["model"] == "base" and r["seed"] == 2)
    assert base_seed2 == pytest.approx({"model": "base", "seed": 2, "cc_top1": 0.21, "cc_mAP": 0.1, "clothes_leakage_f1": 0.62,
                                        "lq_consistency_mix": 0.88, "mix_cc_top1": 0.05})
    table = report.results_markdown(rows)
    # mean +- sample std of the RLQ CC top-1 over the three seeds, in percent
    rlq = [values["rlq", s][0] for s in (1, 2, 3)]
    expected = f"{100 * statistics.mean(rlq):.1f} ± {100 * statistics.stdev(rlq):.1f}"
    rlq_summary = next(line for line in table.splitlines() if line.startswith("| **RLQ"))
    assert rlq_summary.split(" | ")[2] == expected
    assert "mean ± std (3)" in rlq_summary
    assert len(table.splitlines()) == 2 + 12 + 4


def test_single_seed_has_no_summary_rows(tmp_path):
    _write_runs(tmp_path, {(m, 5): (0.1, 0.1, 0.7, 0.9, 0.05) for m in report.MODELS})
    table = report.results_markdown(report.collect(tmp_path, [5]))
    assert "mean" not in table and len(table.splitlines()) == 2 + 4


def test_mean_std_against_statistics():
    values = [0.1, 0.4, 0.25, 0.3]
    assert report.mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert report.mean_std([0.3]) == (0.3, 0.0)


def test_missing_or_incomplete_evaluation_is_a_clear_error(tmp_path):
    with pytest.raises(report.ReportError, match=r"seed1/base_no_cal.eval.json' does not exist"):
        report.collect(tmp_path, [1])
    incomplete = _evaluation(0.1, 0.1, 0.7, 0.9, 0.05)
    del incomplete["degraded"]
    with pytest.raises(report.ReportError, match="lacks 'degraded'.*--degrade mix"):
        report.row_from_evaluation("base", 1, incomplete, tmp_path / "x.json")


def test_majority_rate():
    assert report.majority_rate([1, 0, 1, 1, 2]) == 0.6
    assert report.majority_rate([3]) == 1.0
