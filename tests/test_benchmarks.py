"""The benchmarks, run once on CPU at tiny sizes (nothing here is timed).

bench_train.py: its reference is the same network and losses as the scripts' steps, and our path (bf16
autocast, multi-tensor Adam, losses read back per window) changes the losses only within bf16 rounding.
bench_data.py: the worker arithmetic. bench_extract.py: our extraction gives a plain forward's features.
bench_rerank.py: our re-ranking and its dense reference agree.
"""

from __future__ import annotations

import sys

import pytest
from accelerate.state import AcceleratorState

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmarks import each other as scripts do
import bench_train  # noqa: E402

TINY = ["--device", "cpu", "--backbone", "resnet18", "--height", "32", "--width", "16", "--batch-size", "8",
        "--steps", "1", "--warmup", "1"]
OPTIMISED = {"total", "clothes_discriminator", "id_f1", "id_f2", "kl", "triplet", "cal", "pose", "gender", "disentangle_f2",
             "mse_f1_hq", "mse_f1_lq", "mse_f2_hq", "mse_f2_lq", "kl_o1", "kl_o2"}


@pytest.fixture
def fresh_accelerate_state():
    """The benchmark's Accelerator picks its own precision: start and leave Accelerate's process-wide state clean."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _first_steps(tmp_path, precision: str) -> dict:
    out = tmp_path / f"{precision}.json"
    results = bench_train.main([*TINY, "--mixed-precision", precision, "--json", str(out)])
    assert out.is_file()
    return results


def test_fp32_fast_path_gives_the_reference_losses(tmp_path, fresh_accelerate_state):
    results = _first_steps(tmp_path, "no")
    assert set(results) == {*bench_train.STAGES, "rlq epoch"}
    for stage in bench_train.STAGES:
        reference, ours = results[stage]["reference"]["first_step"], results[stage]["ours"]["first_step"]
        assert OPTIMISED & set(ours) == set(reference), stage  # the same terms, nothing left out
        for name, value in reference.items():
            assert ours[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (stage, name)
        assert results[stage]["ours"]["images_per_s"] > 0 and results[stage]["ratio"] > 0
    epoch = results["rlq epoch"]
    expected = {path: 631 * results["tad"][path]["seconds_per_step"] + 299 * results["cap"][path]["seconds_per_step"]
                for path in ("reference", "ours")}
    assert epoch["ratio"] == pytest.approx(expected["reference"] / expected["ours"])


def test_bf16_fast_path_matches_fp32_within_bf16_tolerance(tmp_path, fresh_accelerate_state):
    results = _first_steps(tmp_path, "bf16")
    for stage in bench_train.STAGES:
        reference, ours = results[stage]["reference"]["first_step"], results[stage]["ours"]["first_step"]
        for name, value in reference.items():
            # bf16 keeps 8 bits of mantissa: about 0.4% per rounding, a few percent through a network.
            assert ours[name] == pytest.approx(value, rel=0.05, abs=0.02), (stage, name)


def test_bench_data_counts_the_workers_each_pipeline_needs(tmp_path):
    import bench_data

    report = bench_data.main(["--crops", "48", "--batches", "2", "--workers", "1", "--batch-size", "8",
                              "--height", "64", "--width", "32", "--folder", str(tmp_path)])
    assert set(report) == {f"{p} ({a})" for p in ("base", "cap", "tad") for a in ("workers", "device")} | {"eval (workers)"}
    for name, row in report.items():
        assert row["items_per_s"][1] > 0 and row["per_worker"] == row["items_per_s"][1]
        if name.startswith("eval"):
            assert row["need"] is None and row["workers"] is None
        else:  # the assumed 1,600 images/s, in the pipeline's items
            assert row["need"] == pytest.approx(1600 / {"base": 1, "cap": 2, "tad": 3}[name.split()[0]])
            assert row["workers"] == -(-row["need"] // row["per_worker"])


def test_bench_extract_features_match_a_plain_fp32_forward(fresh_accelerate_state):
    import bench_extract

    result = bench_extract.main(["--images", "16", "--crops", "16", "--num-workers", "0", "--batch-size", "8",
                                 "--reference-batch-size", "4", "--repeats", "1"])
    assert result["min_cosine"] > 0.9999  # fp32 on CPU: the same features, batched differently
    assert result["ours"] > 0 and result["end_to_end"] > 0


def test_bench_rerank_runs_both_paths_in_their_own_processes_and_they_agree():
    import bench_rerank

    report = bench_rerank.main(["--sizes", "40x200", "--dim", "32", "--ids", "20"])
    row = report["40x200"]
    assert row["ours"]["seconds"] > 0 and row["dense"]["seconds"] > 0 and row["ours"]["peak_gib"] >= 0
    assert row["max_difference"] < 1e-5
