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
    out = main(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "model.onnx")] + ([] if flip_sum else ["--no-flip-sum"]))
    model = model_from_checkpoint(load_checkpoint(tiny_run / "best.pt"), tiny_run / "best.pt").eval()
    for batch in (1, 5):  # the batch axis is dynamic
        images = torch.randn(batch, 3, 64, 32)
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
    out = main(["--checkpoint", str(theirs.save(tmp_path / "rlq.pth.tar")), "--out", str(tmp_path / "theirs.onnx")])
    images = torch.randn(2, 3, 384, 192)  # the authors' input size, which their files imply
    with torch.no_grad():
        expected = theirs.features(images)
    np.testing.assert_allclose(_run(out, images), expected.numpy(), atol=1e-5, rtol=0)


def test_a_file_that_is_no_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="error: .*model.pt"):
        main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")])
    assert not (tmp_path / "x.onnx").exists()
