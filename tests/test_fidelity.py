"""rlq.fidelity: paired comparisons over seeds, the seed-spread verdict, and its errors."""

from __future__ import annotations

import json
import statistics

import pytest

from rlq import fidelity


def _evaluation(cc_top1, cc_map=0.2, leak_f1=0.7, consistency=0.9, mix_top1=0.1):
    return {"cc": {"top1": cc_top1, "mAP": cc_map}, "degraded": {"mix": {"cc": {"top1": mix_top1}}},
            "diagnostics": {"clothes_leakage": {"f1": leak_f1}, "lq_consistency": {"mix": consistency}}}


def _write(out, model, seed, **numbers):
    path = out / f"seed{seed}" / f"{model}.eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_evaluation(**numbers)))


def test_comparison_against_statistics_and_the_spread_verdict(tmp_path):
    a_top1, b_top1 = [0.30, 0.34, 0.32], [0.40, 0.45, 0.41]      # far apart: exceeds the spread
    a_map, b_map = [0.20, 0.25, 0.22], [0.21, 0.24, 0.23]        # within it
    for seed, ta, tb, ma, mb in zip((1, 2, 3), a_top1, b_top1, a_map, b_map):
        _write(tmp_path, "base", seed, cc_top1=ta, cc_map=ma)
        _write(tmp_path, "base_bf16", seed, cc_top1=tb, cc_map=mb)
    metrics = {m["metric"]: m for m in fidelity.compare(fidelity.rows_of(tmp_path, "base", [1, 2, 3]),
                                                        fidelity.rows_of(tmp_path, "base_bf16", [1, 2, 3]))}
    top1 = metrics["cc_top1"]
    assert top1["a_mean"] == pytest.approx(statistics.mean(a_top1)) and top1["b_std"] == pytest.approx(statistics.stdev(b_top1))
    differences = [b - a for a, b in zip(a_top1, b_top1)]
    assert (top1["diff_mean"], top1["diff_std"]) == pytest.approx((statistics.mean(differences), statistics.stdev(differences)))
    assert top1["exceeds_seed_spread"] and not metrics["cc_mAP"]["exceeds_seed_spread"]
    # identical sides: a zero difference never exceeds anything
    assert not metrics["clothes_leakage_f1"]["exceeds_seed_spread"] and metrics["clothes_leakage_f1"]["diff_mean"] == 0
    table = fidelity.comparison_markdown("t", "base", "base_bf16", list(metrics.values()), 3)
    assert "| CC top-1 | 32.0 ± 2.0 | 42.0 ± 2.6 | +10.0 ± 1.0 | **yes** |" in table
    assert "| CC mAP | 22.3 ± 2.5 | 22.7 ± 1.5 | +0.3 ± 1.2 | no |" in table


def test_report_writes_every_pair(tmp_path):
    for model in {m for a, b, _ in fidelity.PAIRS for m in (a, b)}:
        for seed in (1, 2):
            _write(tmp_path, model, seed, cc_top1=0.3 + 0.01 * seed)
    text = fidelity.main([str(tmp_path), "--seeds", "1", "2"])
    written = json.loads((tmp_path / "fidelity.json").read_text())
    assert [(p["a"], p["b"]) for p in written] == [(a, b) for a, b, _ in fidelity.PAIRS]
    assert text.count("exceeds seed spread?") == len(fidelity.PAIRS)
    assert (tmp_path / "fidelity.md").read_text() == text + "\n"


def test_missing_run_and_unpaired_seeds_are_clear_errors(tmp_path):
    _write(tmp_path, "rlq", 1, cc_top1=0.3)
    with pytest.raises(SystemExit, match=r"error: '.*seed1/rlq_idle.eval.json' does not exist: is the rlq_idle run of seed 1"):
        fidelity.main([str(tmp_path), "--seeds", "1"])
    (tmp_path / "seed1" / "rlq.eval.json").write_text("{not json")
    with pytest.raises(fidelity.ReportError, match=r"rlq.eval.json' is not JSON"):
        fidelity.rows_of(tmp_path, "rlq", [1])
    rows = [{"seed": 1, **{k: 0.1 for k, _, _ in fidelity.COLUMNS}}]
    with pytest.raises(fidelity.ReportError, match=r"different seeds: \[1\] vs \[2\]"):
        fidelity.compare(rows, [{**rows[0], "seed": 2}])


def test_one_seed_has_no_spread_to_exceed(tmp_path):
    _write(tmp_path, "base", 1, cc_top1=0.3)
    _write(tmp_path, "base_bf16", 1, cc_top1=0.5)
    metrics = fidelity.compare(fidelity.rows_of(tmp_path, "base", [1]), fidelity.rows_of(tmp_path, "base_bf16", [1]))
    assert all(m["exceeds_seed_spread"] is None for m in metrics)
    table = fidelity.comparison_markdown("t", "base", "base_bf16", metrics, 1)
    assert "(1 seed;" in table and "| CC top-1 | 30.0 ± 0.0 | 50.0 ± 0.0 | +20.0 ± 0.0 | n/a (one seed) |" in table


def test_summary_has_one_row_per_pair_with_the_difference_and_its_spread(tmp_path):
    for model in {m for a, b, _ in fidelity.PAIRS for m in (a, b)}:
        for seed, top1 in zip((1, 2, 3), (0.30, 0.34, 0.32)):
            _write(tmp_path, model, seed, cc_top1=top1 + (0.10 if model == "rlq_idle" else 0.0))
    fidelity.main([str(tmp_path), "--seeds", "1", "2", "3"])
    summary = fidelity.summary_markdown(json.loads((tmp_path / "fidelity.json").read_text()))
    rows = summary.splitlines()[2:]
    assert len(rows) == len(fidelity.PAIRS)
    # rlq_idle is 10 points above rlq in every seed, the spread 2.0: bold; the other pairs are equal
    assert rows[0].split(" | ")[1] == "**+10.0 (±2.0)**"
    assert rows[1].split(" | ")[1] == "+0.0 (±2.0)"
