"""evaluate.py: one vs two processes, saved features, visualisation and checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import launch_two_cpu_processes, run_here

import evaluate
from evaluate import Args
from rlq.checkpoint import CheckpointError, load_checkpoint
from rlq.data import load_dataset
from rlq.launch import LaunchError, check_launch


def _assert_close_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-6), name


def test_two_processes_give_the_same_numbers_and_every_feature(tiny_run, synthetic_root, tmp_path):
    checkpoint = tiny_run / "best.pt"
    single = evaluate.main(Args(checkpoint=checkpoint, root=synthetic_root, num_workers=0, batch_size=64,
                                save_features=tmp_path / "one.pt", visualize=2, visualize_dir=tmp_path / "vis"))
    single.pop("diagnostics")  # the protocols' metrics only (tests/test_diagnostics.py checks the diagnostics)
    # The same numbers as the evaluation during training that picked best.pt.
    _assert_close_metrics(single, load_checkpoint(checkpoint)["best"]["results"])
    assert len(list((tmp_path / "vis").glob("cc_query*.png"))) == 2

    # 73 queries and 435 gallery images in batches of 50 per process: the last batches are padded.
    launch_two_cpu_processes("evaluate.py", "--checkpoint", str(checkpoint), "--root", str(synthetic_root), "--num-workers", "0",
                          "--batch-size", "50", "--json", str(tmp_path / "two.json"), "--save-features", str(tmp_path / "two.pt"))
    two_metrics = json.loads((tmp_path / "two.json").read_text())
    two_metrics.pop("diagnostics")
    _assert_close_metrics(two_metrics, single)

    dataset = load_dataset("synthetic", synthetic_root)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert set(two) == {"query", "gallery"}
    for split in two:
        assert two[split]["paths"] == [s.path for s in dataset.splits[split]]  # every image once, in dataset order
        assert torch.equal(two[split]["pids"], torch.tensor([s.pid for s in dataset.splits[split]]))
        assert torch.allclose(two[split]["features"], one[split]["features"], atol=1e-5)


@pytest.fixture
def edited_checkpoint(tiny_run, tmp_path):
    """Write a copy of best.pt with some entries replaced; returns its path."""

    def edit(**entries) -> Path:
        checkpoint = load_checkpoint(tiny_run / "best.pt") | entries
        path = tmp_path / "edited.pt"
        torch.save(checkpoint, path)
        return path

    return edit


def test_checkpoint_of_another_architecture_lists_the_keys(edited_checkpoint, synthetic_root):
    path = edited_checkpoint(arch="cal", arch_kwargs={})
    with pytest.raises(CheckpointError) as error:
        evaluate.main(Args(checkpoint=path, root=synthetic_root, num_workers=0))
    message = str(error.value)
    assert str(path) in message
    assert "missing from the checkpoint" in message and "backbone.conv1.weight" in message
    assert "unexpected in the checkpoint" in message and "shared.conv1.weight" in message


def test_checkpoint_with_another_class_count_lists_the_shapes(edited_checkpoint, tiny_run, synthetic_root):
    classes = load_checkpoint(tiny_run / "best.pt")["classes"] | {"num_pids": 7}
    with pytest.raises(CheckpointError, match=r"cal_classifier\.weight: checkpoint 30x1024, model 7x1024"):
        evaluate.main(Args(checkpoint=edited_checkpoint(classes=classes), root=synthetic_root, num_workers=0))


def test_truncated_checkpoint_is_a_clear_error_naming_the_file(tiny_run, tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes((tiny_run / "best.pt").read_bytes()[:100_000])
    result = run_here("evaluate.py", "--checkpoint", str(path))
    assert result.returncode != 0
    assert f"error: cannot read checkpoint '{path}'" in result.stderr and "truncated" in result.stderr
    assert "Traceback" not in result.stderr


def test_processes_outside_one_group_are_refused(monkeypatch):
    # What a launcher's second process sees when Accelerate did not join the processes into one group.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="ACCELERATE_USE_CPU=true"):
        check_launch(Accelerator())


def test_single_shot_gallery_protocol_through_evaluate(tiny_run, synthetic_root):
    options = dict(checkpoint=tiny_run / "best.pt", root=synthetic_root, num_workers=0)
    whole = evaluate.main(Args(**options))
    single = evaluate.main(Args(gallery_protocol="single-shot", **options))
    assert set(single) == set(whole)
    for name in ("standard", "cc", "sc"):
        assert 0 <= single[name]["mAP"] <= 1
    assert single["standard"]["mAP"] != whole["standard"]["mAP"]  # another gallery, another number


def test_rerank_prints_beside_the_plain_metrics_what_rlq_rerank_gives(tiny_run, synthetic_root, tmp_path, capsys):
    from rlq.metrics import evaluate as rank
    from rlq.rerank import rerank

    results = evaluate.main(Args(checkpoint=tiny_run / "best.pt", root=synthetic_root, num_workers=0, rerank=True,
                                 rerank_k1=10, rerank_k2=3, save_features=tmp_path / "features.pt"))
    assert "re-ranked (k-reciprocal, k1 10, k2 3, lambda 0.3)" in capsys.readouterr().out
    assert set(results["reranked"]) == {"standard", "cc", "sc"}
    dump = torch.load(tmp_path / "features.pt")
    query, gallery = dump["query"], dump["gallery"]
    reranking = rerank(query["features"], gallery["features"], k1=10, k2=3)
    direct = rank(query["features"], gallery["features"], query["pids"], gallery["pids"], query["camids"], gallery["camids"],
                  query["clothes"], gallery["clothes"], protocol="cc", similarity=reranking.similarities)
    assert results["reranked"]["cc"] == pytest.approx(direct)
    assert results["reranked"]["cc"] != results["cc"]
