"""The seed table: its arithmetic on recorded results, and where its numbers come from."""

from __future__ import annotations

import json
import statistics

import pytest

from rlq.seeds import SeedTableError, main, read_run

RECORDED = {  # evaluate.py JSON of four seeds (fractions), CC and standard protocols
    "seed1": {"cc": {"top1": 0.441, "mAP": 0.205}, "standard": {"top1": 0.70, "mAP": 0.35}},
    "seed2": {"cc": {"top1": 0.464, "mAP": 0.219}, "standard": {"top1": 0.72, "mAP": 0.36}},
    "seed3": {"cc": {"top1": 0.464, "mAP": 0.221}, "standard": {"top1": 0.71, "mAP": 0.34}},
    "seed4": {"cc": {"top1": 0.426, "mAP": 0.230}, "standard": {"top1": 0.69, "mAP": 0.37}},
}


def _write(tmp_path):
    paths = []
    for name, results in RECORDED.items():
        path = tmp_path / name / "test.json"
        path.parent.mkdir()
        path.write_text(json.dumps(results))
        paths.append(path)
    return paths


def test_table_arithmetic_on_recorded_results(tmp_path, capsys):
    paths = _write(tmp_path)
    table = main([*map(str, paths), "--evaluation", "cc", "--output", str(tmp_path / "seeds")])
    top1 = [0.441, 0.464, 0.464, 0.426]
    maps = [0.205, 0.219, 0.221, 0.230]
    summary = table["summary"]
    assert summary["runs"] == 4
    assert summary["top1"]["mean"] == pytest.approx(sum(top1) / 4)
    assert summary["top1"]["std"] == pytest.approx(statistics.stdev(top1))  # sample std (n - 1)
    assert summary["mAP"]["mean"] == pytest.approx(sum(maps) / 4)
    # Best two by top-1, tie broken by mAP: seed3 (46.4 / 22.1) then seed2 (46.4 / 21.9); each keeps its own mAP.
    assert summary["best_two"]["runs"] == [str(paths[2]), str(paths[1])]
    assert summary["best_two"]["top1"] == pytest.approx(0.464)
    assert summary["best_two"]["mAP"] == pytest.approx((0.221 + 0.219) / 2)
    text = (tmp_path / "seeds.md").read_text()
    assert "| **mean ± std (4 runs)** | 44.9 ± 1.9 | 21.9 ± 1.0 |" in text
    assert "mean of the best two (the paper's convention" in text and "| 46.4 | 22.0 |" in text
    assert json.loads((tmp_path / "seeds.json").read_text()) == json.loads(json.dumps(table))
    assert "44.9 ± 1.9" in capsys.readouterr().out


def test_run_folder_rows_come_from_the_best_evaluation_picked_on_test(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    best = {"epoch": 19, "evaluation": "cc", "top1": 0.4, "mAP": 0.2, "results": {"cc": {"top1": 0.4, "mAP": 0.2}}}
    metrics = {"best": best, "evaluations": [{"epoch": 9, "split": "test"}, {"epoch": 19, "split": "test"}]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert read_run(run, "cc") == {"run": str(run), "top1": 0.4, "mAP": 0.2}
    metrics["evaluations"][1]["split"] = "val"
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SeedTableError, match="picked its best checkpoint on the val split.*evaluate.py --checkpoint"):
        read_run(run, "cc")


def test_missing_evaluation_is_a_clear_error(tmp_path, capsys):
    paths = _write(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(paths[0]), "--evaluation", "sc", "--output", str(tmp_path / "t")])
    assert exit_info.value.code == 1
    assert "error: " in capsys.readouterr().err and not (tmp_path / "t.md").exists()
