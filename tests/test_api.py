"""rlq from Python (rlq.api): FeatureExtractor gives evaluate.py's features for every input type and checkpoint
format; search ranks as a brute-force sort; bad inputs are one error naming the item and what was expected."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from authors_format import AuthorsModel
from PIL import Image

import evaluate
from rlq import FeatureExtractor, ImageInputError, search
from rlq.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from rlq.export import main as export_main
from rlq.images import load_image
from rlq.transforms import EvalTransform


def _random_picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB picture (blocks of colour), unlike any other."""
    blocks = rng.integers(0, 256, (4, 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """query/ and gallery/ of varied files: sizes, PNG and JPEG, gray, RGBA, and a JPEG stored sideways (EXIF)."""
    root = tmp_path_factory.mktemp("api_images")
    rng = np.random.default_rng(0)
    for split, count in (("query", 3), ("gallery", 5)):
        (root / split).mkdir()
        for i in range(count):
            picture = Image.fromarray(_random_picture(rng, int(rng.integers(40, 160)), int(rng.integers(20, 80))))
            if split == "query" and i == 1:
                picture.convert("L").save(root / split / f"{i}.png")
            elif split == "query" and i == 2:
                picture.convert("RGBA").save(root / split / f"{i}.png")
            elif split == "gallery" and i == 3:
                exif = Image.Exif()
                exif[0x0112] = 6  # orientation: the stored picture is turned; readers rotate it upright
                picture.save(root / split / f"{i}.jpg", exif=exif)
            else:
                picture.save(root / split / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture(scope="module", params=["ours", "authors"])
def checkpoint(request, small_checkpoint, tmp_path_factory):
    """A checkpoint in our format (64x32) or the authors' (their 384x192)."""
    if request.param == "ours":
        return small_checkpoint
    return AuthorsModel("cal", 18).save(tmp_path_factory.mktemp("authors") / "cal.pth.tar")  # one branch: half the compute


def _evaluate_features(checkpoint, image_folders, tmp_path) -> dict:
    """evaluate.py --query-dir --gallery-dir --save-features: {query, gallery: {features, paths}}."""
    saved = tmp_path / "features.pt"
    evaluate.main(evaluate.Args(checkpoint=checkpoint, query_dir=image_folders / "query", gallery_dir=image_folders / "gallery",
                                ranking_dir=tmp_path / "ranking", save_features=saved, num_workers=0))
    return torch.load(saved)


def _as(kind: str, paths: list[str], input_size) -> list | torch.Tensor:
    if kind == "paths":
        return paths
    if kind == "pil":
        return [Image.open(p) for p in paths]
    if kind == "numpy":
        return [np.asarray(load_image(p)) for p in paths]
    if kind == "tensor":
        return torch.stack([EvalTransform(*input_size)(load_image(p)) for p in paths])
    raise ValueError(kind)


@pytest.mark.filterwarnings("ignore:authors' checkpoint .* has no gender head")
def test_features_are_evaluate_py_s_for_every_input_type(checkpoint, image_folders, tmp_path):
    saved = _evaluate_features(checkpoint, image_folders, tmp_path)
    extractor = FeatureExtractor(checkpoint, batch_size=3)  # several batches: the order is kept across them
    assert extractor.device == torch.device("cpu") and extractor.precision == "no"  # evaluate.py's on this machine
    for split in ("query", "gallery"):
        paths, expected = saved[split]["paths"], saved[split]["features"]
        for kind in ("paths", "pil", "numpy", "tensor"):
            features = extractor(_as(kind, paths, extractor.input_size))
            assert features.dtype == torch.float32 and features.device.type == "cpu"
            assert features.shape == (len(paths), extractor.feature_dim)
            torch.testing.assert_close(features, expected, atol=1e-6, rtol=0, msg=f"{split}, {kind}")
    mixed = [paths[0], Image.open(paths[1]), np.asarray(load_image(paths[2]))]
    torch.testing.assert_close(extractor(mixed), expected[:3], atol=1e-6, rtol=0)
    assert extractor([]).shape == (0, extractor.feature_dim)


def test_without_flip_the_feature_is_the_image_s_alone(small_checkpoint, image_folders):
    paths = sorted(str(p) for p in (image_folders / "gallery").iterdir())
    extractor = FeatureExtractor(small_checkpoint, flip=False)
    images = _as("tensor", paths, extractor.input_size)
    model = model_from_checkpoint(load_checkpoint(small_checkpoint), small_checkpoint).eval()
    with torch.no_grad():
        expected = F.normalize(model.embed(images), dim=1)
    torch.testing.assert_close(extractor(paths), expected, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:authors' checkpoint .* has no gender head")
def test_an_exported_folder_gives_the_checkpoint_s_features_without_pickle(checkpoint, image_folders, tmp_path, monkeypatch):
    folder = export_main(["--checkpoint", str(checkpoint), "--format", "safetensors", "--output", str(tmp_path / "exported")])
    from_file = FeatureExtractor(checkpoint)

    def no_pickle(*args, **kwargs):
        raise AssertionError("an exported folder must load without pickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    from_folder = FeatureExtractor(folder)
    monkeypatch.undo()
    assert from_folder.input_size == from_file.input_size and from_folder.feature_dim == from_file.feature_dim
    # evaluate.py --checkpoint takes the folder too: every entry point gives the features of the file it came from.
    saved = _evaluate_features(folder, image_folders, tmp_path)
    for split in ("query", "gallery"):
        paths, expected = saved[split]["paths"], from_file(saved[split]["paths"])
        torch.testing.assert_close(from_folder(paths), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(saved[split]["features"], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("damage, named", [
    ("no config", "config.json"),
    ("no weights", "model.safetensors"),
    ("config not JSON", "config.json"),
    ("config without arch", "config.json"),
    ("truncated weights", "model.safetensors"),
])
def test_a_damaged_exported_folder_is_one_error_naming_the_file(small_checkpoint, tmp_path, damage, named):
    folder = export_main(["--checkpoint", str(small_checkpoint), "--format", "safetensors", "--output", str(tmp_path / "m")])
    config, weights = folder / "config.json", folder / "model.safetensors"
    if damage == "no config":
        config.unlink()
    elif damage == "no weights":
        weights.unlink()
    elif damage == "config not JSON":
        config.write_text("{not json")
    elif damage == "config without arch":
        config.write_text(config.read_text().replace('"arch"', '"architecture"'))
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"'{folder / named}'|'{folder}' is a folder without {named}"):
        FeatureExtractor(folder)


def test_bad_inputs_are_one_error_naming_the_item(small_checkpoint, image_folders, tmp_path):
    extractor = FeatureExtractor(small_checkpoint)
    good = str(next((image_folders / "query").iterdir()))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    cases = [
        ([good, str(tmp_path / "missing.jpg")], r"images\[1\]: '.*missing.jpg' does not exist: expected an image file"),
        ([good, good, str(broken)], r"images\[2\]: cannot load image '.*broken.jpg': expected a readable image file"),
        ([np.zeros((64, 32), dtype=np.uint8)], r"images\[0\]: a numpy array of shape \(64, 32\) and dtype uint8: expected H x W x 3 uint8"),
        ([np.zeros((64, 32, 3))], r"images\[0\]: .*dtype float64: expected H x W x 3 uint8"),
        ([good, 42], r"images\[1\]: 42 \(int\): expected a file path, a PIL image or an H x W x 3 uint8 numpy array"),
        (good, r"got str: expected a list of images"),
        (torch.zeros(2, 3, 32, 32), r"shape \[2, 3, 32, 32\]: expected a float tensor \[N, 3, 64, 32\]"),
        (torch.zeros(2, 3, 64, 32, dtype=torch.uint8), r"torch.uint8 tensor .*: expected a float tensor"),
    ]
    for images, message in cases:
        with pytest.raises(ImageInputError, match=message):
            extractor(images)


def test_a_file_that_is_no_checkpoint_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint '.*model.pt'"):
        FeatureExtractor(bad)
    with pytest.raises(CheckpointError, match="'.*' is a folder without config.json"):
        FeatureExtractor(tmp_path)


def test_search_ranks_as_a_brute_force_sort():
    generator = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(6, 16, generator=generator), dim=1)
    gallery = F.normalize(torch.randn(40, 16, generator=generator), dim=1)
    similarity = query @ gallery.T
    order = similarity.argsort(dim=1, descending=True)
    for top_k in (1, 5, 40, 100):
        indices, similarities = search(query, gallery, top_k=top_k)
        k = min(top_k, 40)
        assert torch.equal(indices, order[:, :k])
        torch.testing.assert_close(similarities, similarity.gather(1, order[:, :k]))


def test_reranked_search_ranks_by_rlq_rerank():
    from rlq.rerank import rerank

    generator = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(8, 16, generator=generator), dim=1)
    gallery = F.normalize(torch.randn(50, 16, generator=generator), dim=1)
    expected = rerank(query, gallery, k1=10, k2=3).similarities(slice(0, 8))
    order = expected.argsort(dim=1, descending=True)
    indices, similarities = search(query, gallery, top_k=7, rerank=True, k1=10, k2=3)
    assert torch.equal(indices, order[:, :7])
    torch.testing.assert_close(similarities, expected.gather(1, order[:, :7]))
    with pytest.raises(ValueError, match=r"query features \[8, 16\], gallery features \[50, 15\]"):
        search(query, gallery[:, :15])
