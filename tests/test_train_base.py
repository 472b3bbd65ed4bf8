"""End-to-end tests of train_base.py on the synthetic dataset (tiny CPU runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_RUN, launch_two_cpu_processes

import evaluate
import rlq
import train_base
from rlq import training
from rlq.checkpoint import load_checkpoint
from train_base import Config, NonFiniteLoss, main


def test_run_writes_checkpoints_and_metrics(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert (tiny_run / "best.pt").is_file() and (tiny_run / "last.pt").is_file()
    assert [e["epoch"] for e in metrics["evaluations"]] == [0, 1]
    for evaluation in metrics["evaluations"]:
        assert set(evaluation["results"]) == {"standard", "cc", "sc"}
        assert all(0 <= evaluation["results"][name][m] <= 1 for name in ("standard", "cc", "sc") for m in ("top1", "mAP"))
    # The best is the highest CC top-1 (tie: mAP), and its top-1 and mAP come from one evaluation.
    by_key = max(metrics["evaluations"], key=lambda e: (e["results"]["cc"]["top1"], e["results"]["cc"]["mAP"]))
    best = metrics["best"]
    assert best["epoch"] == by_key["epoch"]
    assert (best["top1"], best["mAP"]) == (by_key["results"]["cc"]["top1"], by_key["results"]["cc"]["mAP"])
    assert "cal" not in metrics["train"][0] and "cal" in metrics["train"][1]  # CAL from --cal-start-epoch 1


def test_loss_decreases(tiny_run):
    train = json.loads((tiny_run / "metrics.json").read_text())["train"]
    # The identity terms are in every epoch (the CAL terms join in epoch 1), averaged over each epoch's steps.
    first, last = (train[i]["id_f1"] + train[i]["id_f2"] for i in (0, -1))
    assert math.isfinite(first) and last < first


def test_checkpoint_tells_how_it_was_made(tiny_run):
    best, last = load_checkpoint(tiny_run / "best.pt"), load_checkpoint(tiny_run / "last.pt")
    for checkpoint in (best, last):
        assert checkpoint["config"]["backbone"] == "resnet18" and checkpoint["config"]["epochs"] == 2
        assert checkpoint["arch"] == "base" and checkpoint["backbone"] == "resnet18"
        assert checkpoint["classes"] == {"num_pids": 30, "num_clothes": 92, "num_original_clothes": 92}
        assert checkpoint["version"]["rlq"] == rlq.__version__
        assert checkpoint["input_size"] == [TINY_RUN["height"], TINY_RUN["width"]]
        assert checkpoint["config"]["mixed_precision"] == "auto" and checkpoint["mixed_precision"] == "no"  # auto on CPU: fp32
    assert last["epoch"] == 2 and "optimizer" in last and "rng" in last
    assert "optimizer" not in best  # best.pt is for evaluation: no training state


def without_timings(metrics_json) -> dict:
    """metrics.json without the pass times and peak memory, which no two runs share."""
    metrics = json.loads(metrics_json.read_text())
    for entries in metrics.values():
        for entry in entries if isinstance(entries, list) else []:
            entry.pop("seconds", None)
            entry.pop("peak_gpu_mib", None)
    return metrics


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a.float(), b.float(), rtol=0, atol=1e-6), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint write."""


def test_resume_continues_exactly(tiny_run, synthetic_root, tmp_path, monkeypatch):
    real_save = training.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == "last.pt":
            raise Killed

    monkeypatch.setattr(training, "save_atomic", save_then_die)
    with pytest.raises(Killed):
        main(Config(root=synthetic_root, output=tmp_path, **TINY_RUN))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    monkeypatch.setattr(training, "save_atomic", real_save)

    main(Config(root=synthetic_root, output=tmp_path, resume=tmp_path, **TINY_RUN))
    resumed, straight = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tiny_run / "last.pt")
    for key in ("model", "clothes_classifier", "optimizer", "clothes_optimizer", "scheduler", "epoch", "best"):
        _assert_same_tensors(resumed[key], straight[key], key)
    assert without_timings(tmp_path / "metrics.json") == without_timings(tiny_run / "metrics.json")


@pytest.mark.parametrize(("log_every", "where"), [(1, "step 0:"), (2, r"steps 0-1 \(window means\):")])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch, log_every, where):
    real_kl, calls = train_base.softened_kl, []

    def kl_turning_nan(*args, **kwargs):
        # Finite for the whole first epoch, NaN from the first step of the second.
        calls.append(None)
        value = real_kl(*args, **kwargs)
        return value * float("nan") if len(calls) > TINY_RUN["max_steps_per_epoch"] else value

    monkeypatch.setattr(train_base, "softened_kl", kl_turning_nan)
    # The terms are read back every --log-every steps: the error names the window the NaN fell in.
    with pytest.raises(NonFiniteLoss, match=rf"epoch 1, {where} .*kl=nan"):
        main(Config(root=synthetic_root, output=tmp_path, **(TINY_RUN | {"eval_every": 10, "log_every": log_every})))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_two_process_training_matches_its_checkpoint(synthetic_root, tmp_path):
    """DDP (model and clothes classifier), sharded evaluation and per-rank RNG states, on 2 CPU processes.

    The evaluation during training must give the numbers evaluate.py gives on the saved checkpoint
    (every process evaluates with rank 0's BatchNorm statistics, which the checkpoint holds).
    """
    options = TINY_RUN | {"epochs": 1, "max_steps_per_epoch": 2, "cal_start_epoch": 0}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if k != "pretrained"] + ["--no-pretrained"]
    launch_two_cpu_processes("train_base.py", "--root", str(synthetic_root), "--output", str(tmp_path), *flags)
    last = load_checkpoint(tmp_path / "last.pt")
    assert len(last["rng"]) == 2 and not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])  # seed + rank
    assert "cal" in last["history"]["train"][0]
    results = evaluate.main(evaluate.Args(checkpoint=tmp_path / "best.pt", root=synthetic_root, num_workers=0))
    for name, metrics in last["best"]["results"].items():
        assert metrics == pytest.approx(results[name], abs=1e-6), name


def test_compiled_training_writes_a_plain_checkpoint(synthetic_root, tmp_path):
    """--compile compiles in place: the same state_dict keys, an ordinary best.pt, the same first losses."""
    options = TINY_RUN | {"epochs": 1, "max_steps_per_epoch": 2, "cal_start_epoch": 0, "log_every": 1}
    main(Config(root=synthetic_root, output=tmp_path / "plain", **options))
    main(Config(root=synthetic_root, output=tmp_path / "compiled", compile=True, **options))
    plain, compiled = (load_checkpoint(tmp_path / name / "last.pt") for name in ("plain", "compiled"))
    assert list(compiled["model"]) == list(plain["model"])
    for key, value in plain["history"]["train"][0].items():
        if key == "seconds":  # the compiled pass includes its compilation
            continue
        assert compiled["history"]["train"][0][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    assert evaluate.main(evaluate.Args(checkpoint=tmp_path / "compiled" / "best.pt", root=synthetic_root, num_workers=0))["cc"]
