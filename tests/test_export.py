"""ONNX export: the file, run by onnxruntime, gives the PyTorch retrieval feature at any batch size."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from authors_format import AuthorsModel

from rlq.checkpoint import load_checkpoint, model_from_checkpoint
from rlq.export import main


def _run(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == ["features"]
    return session.run(None, {"images": images.numpy()})[0]


@pytest.mark.parametrize("flip_sum", [True, False])
def test_our_checkpoint_exports_the_retrieval_feature(tiny_run, tmp_path, flip_sum):
    out = main(["--checkpoint", str(tiny_run / "best.pt"), "--output", str(tmp_path / "model.onnx")] + ([] if flip_sum else ["--no-flip-sum"]))
    checkpoint = load_checkpoint(tiny_run / "best.pt")
    model = model_from_checkpoint(checkpoint, tiny_run / "best.pt").eval()
    for batch in (1, 5):  # the batch axis is dynamic
        images = torch.randn(batch, 3, *checkpoint["input_size"])
        with torch.no_grad():
            expected = model.retrieval_features(images) if flip_sum else F.normalize(model.embed(images), dim=1)
        got = _run(out, images)
        assert got.shape == (batch, 2 * model.feature_dim)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    flipped = _run(out, images.flip(3))
    assert np.allclose(flipped, got, atol=1e-5) == flip_sum  # the flip-summed feature is mirror-invariant


def test_the_authors_checkpoint_exports_their_feature(tmp_path):
    theirs = AuthorsModel("rlq", 18)
    out = main(["--checkpoint", str(theirs.save(tmp_path / "rlq.pth.tar")), "--output", str(tmp_path / "theirs.onnx")])
    images = torch.randn(2, 3, 384, 192)  # the authors' input size, which their files imply
    with torch.no_grad():
        expected = theirs.features(images)
    np.testing.assert_allclose(_run(out, images), expected.numpy(), atol=1e-5, rtol=0)


def test_a_file_that_is_no_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="error: .*model.pt"):
        main(["--checkpoint", str(bad), "--output", str(tmp_path / "x.onnx")])
    assert not (tmp_path / "x.onnx").exists()


# --- --format safetensors: a folder to share ---------------------------------------------------------------------


def _export_folder(checkpoint, out) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--format", "safetensors", "--output", str(out)]


def test_the_folder_holds_the_retrieval_weights_and_how_the_model_was_made(small_checkpoint, tmp_path):
    import json

    from safetensors.torch import load_file

    from rlq.model import retrieval_state_dict

    folder = main(_export_folder(small_checkpoint, tmp_path / "exported"))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    source = load_checkpoint(small_checkpoint)
    model = model_from_checkpoint(source, small_checkpoint)
    weights = load_file(folder / "model.safetensors")
    expected = retrieval_state_dict(model)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    assert not any("classifier" in k for k in weights)  # no heads, and no optimizer: model weights alone
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("arch", "backbone", "arch_kwargs", "input_size", "feature_dim")} == {
        "arch": "base", "backbone": "resnet18", "arch_kwargs": {"split_after": "layer2"}, "input_size": [64, 32],
        "feature_dim": 2 * model.feature_dim}
    assert config["normalisation"]["mean"] == [0.485, 0.456, 0.406] and config["normalisation"]["std"] == [0.229, 0.224, 0.225]
    assert config["provenance"] == {k: source[k] for k in ("dataset", "config", "version", "epoch", "best")}


def test_the_folder_loads_without_its_heads_and_features_match(small_checkpoint, tmp_path):
    folder = main(_export_folder(small_checkpoint, tmp_path / "exported"))
    images = torch.randn(3, 3, 64, 32)
    source = model_from_checkpoint(load_checkpoint(small_checkpoint), small_checkpoint).eval()
    exported = model_from_checkpoint(load_checkpoint(folder), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported.retrieval_features(images), source.retrieval_features(images), atol=0, rtol=0)


def test_an_export_never_writes_over_files_or_its_input(small_checkpoint, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="error: --output '.*taken' is a folder that holds files: expected a new or empty folder"):
        main(_export_folder(small_checkpoint, taken))
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_export_folder(small_checkpoint, empty)) == empty and (empty / "model.safetensors").is_file()
    with pytest.raises(SystemExit, match="error: --output '.*empty' is --checkpoint '.*empty', an input"):
        main(["--checkpoint", str(empty), "--format", "safetensors", "--output", str(empty)])
    with pytest.raises(SystemExit, match="error: --output '.*' lies inside --checkpoint '.*empty', an input"):
        main(_export_folder(empty, empty / "again"))
    with pytest.raises(SystemExit, match="error: --no-flip-sum and --opset are ONNX options"):
        main(_export_folder(small_checkpoint, tmp_path / "new") + ["--opset", "18"])
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]  # no temporary folder left behind
