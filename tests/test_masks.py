"""Clothes masks from LIP parsing, the bit-field mask files, the faulty rule and size buckets."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlq.data import Sample, load_dataset
from rlq.masks import (
    MaskInputError,
    decode_masks,
    encode_masks,
    faulty_keys,
    read_key_list,
    read_masks,
    read_parsing,
    region_is_faulty,
    size_bucket,
    size_csv_name,
    size_row,
    write_mask_png,
)

import preprocess_masks  # a top-level script; conftest.py puts the repository root on sys.path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference-csv"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/data/reference-csv is not beside this clone")


def sample(key: str, path: str = "unused.png") -> Sample:
    return Sample(path, 0, 0, 0, key, "000")


# --------------------------------------------------------------------------- label sets and the bit field


def test_masks_of_every_lip_label_follow_the_spec():
    labels = np.arange(20, dtype=np.uint8).reshape(4, 5)  # pixel i holds LIP id i
    masks = decode_masks(encode_masks(labels))
    assert {name: np.flatnonzero(mask).tolist() for name, mask in masks.items()} == {
        "tops": [5, 7, 10],
        "pants": [9, 12],
        "clothes": [1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19],
        "silhouette": list(range(1, 20)),
        "head": [1, 2, 4, 13],
    }
    # Bits: 1 tops, 2 pants, 4 clothes, 8 silhouette, 16 head.
    ids = np.array([0, 5, 9, 1, 2, 14], dtype=np.uint8)  # background, upper-clothes, pants, hat, hair, left-arm
    assert encode_masks(ids).tolist() == [0, 1 + 4 + 8, 2 + 4 + 8, 4 + 8 + 16, 8 + 16, 8]


def test_bit_field_png_round_trip_and_resize(tmp_path):
    labels = np.random.default_rng(0).integers(0, 20, (37, 23)).astype(np.uint8)
    expected = decode_masks(encode_masks(labels))
    write_mask_png(tmp_path / "query" / "001_1_c11_015833.png", encode_masks(labels))
    masks = read_masks(tmp_path, sample("query/001_1_c11_015833"))
    assert all(masks[name].dtype == bool and np.array_equal(masks[name], expected[name]) for name in expected)
    doubled = read_masks(tmp_path, sample("query/001_1_c11_015833"), size=(46, 74))  # (width, height)
    for name, mask in expected.items():
        assert np.array_equal(doubled[name], mask.repeat(2, axis=0).repeat(2, axis=1))
    with pytest.raises(FileNotFoundError, match="no mask for image 'train/x'.*train/x.png"):
        read_masks(tmp_path, sample("train/x"))


# --------------------------------------------------------------------------- parsing files


def test_score_maps_are_argmaxed_and_label_maps_read_as_they_are(tmp_path):
    scores = np.random.default_rng(1).random((6, 5, 20)).astype(np.float32)
    np.save(tmp_path / "scores.npy", scores)
    assert np.array_equal(read_parsing(tmp_path / "scores.npy"), scores.argmax(axis=-1))
    np.save(tmp_path / "bad.npy", scores[..., :19])
    with pytest.raises(MaskInputError, match=r"bad.npy' has shape \(6, 5, 19\): expected SCHP scores H x W x 20"):
        read_parsing(tmp_path / "bad.npy")

    labels = np.array([[0, 5, 19], [9, 12, 2]], dtype=np.uint8)
    palette = Image.fromarray(labels)
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])  # SCHP saves palette PNGs
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_parsing(tmp_path / "palette.png"), labels)
    Image.fromarray(np.full((2, 3), 25, np.uint8)).save(tmp_path / "out_of_range.png")
    with pytest.raises(MaskInputError, match="holds label 25: expected LIP ids 0..19"):
        read_parsing(tmp_path / "out_of_range.png")
    Image.new("RGB", (3, 2)).save(tmp_path / "colour.png")
    with pytest.raises(MaskInputError, match="is a RGB image: expected a single-channel LIP label map"):
        read_parsing(tmp_path / "colour.png")
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    with pytest.raises(MaskInputError, match="cannot read the parsing file '.*garbage.png'"):
        read_parsing(tmp_path / "garbage.png")


# --------------------------------------------------------------------------- faulty rule


def blocks(*boxes: tuple[int, int, int, int], shape=(40, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for top, bottom, left, right in boxes:
        mask[top:bottom, left:right] = True
    return mask


def test_faulty_rule():
    silhouette = blocks((0, 40, 0, 20))  # 800 pixels
    assert not region_is_faulty(blocks((5, 21, 0, 20), (38, 39, 0, 2)), silhouette)  # one piece and a 2-pixel speck
    assert region_is_faulty(blocks((5, 8, 0, 10)), silhouette)  # 30 pixels < 5% of 800
    assert not region_is_faulty(blocks((5, 9, 0, 10)), silhouette)  # 40 pixels: exactly 5% is enough
    assert region_is_faulty(blocks(), silhouette)
    assert region_is_faulty(blocks(), blocks())  # nobody parsed at all
    assert region_is_faulty(blocks((0, 10, 0, 10), (30, 36, 0, 10)), silhouette)  # pieces of 100 and 60 pixels
    assert not region_is_faulty(blocks((0, 10, 0, 10), (30, 32, 0, 12)), silhouette)  # 24 < 20% of 124 pixels
    assert not region_is_faulty(blocks((0, 10, 0, 10), (10, 16, 10, 20)), silhouette)  # touching corners: one piece
    assert region_is_faulty(blocks((5, 21, 0, 20)), silhouette, min_fraction=0.5)


# --------------------------------------------------------------------------- size buckets


def test_size_buckets_by_height():
    heights = [1, 31, 32, 63, 64, 127, 128, 255, 256, 1000]
    assert [size_bucket(h) for h in heights] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert size_row("train", "001_1_c11_015833.png", 64) == ["train", "001_1_c11_015833.png", 0, 0, 1, 0, 0]


def test_size_csv_names(tmp_path):
    assert size_csv_name("ltcc", tmp_path, tmp_path / "test" / "001_1_c11_015833.png") == ("test", "001_1_c11_015833.png")
    assert size_csv_name("prcc", tmp_path, tmp_path / "rgb/train/092/A_cropped_rgb001.jpg") == ("train", "092/A_cropped_rgb001.jpg")
    assert size_csv_name("prcc", tmp_path, tmp_path / "rgb/test/A/001/cropped_rgb001.jpg") == ("test", "A/001/cropped_rgb001.jpg")
    assert size_csv_name("last", tmp_path, tmp_path / "test/gallery/000002/x.jpg") == ("test", "gallery/000002/x.jpg")


@needs_reference
@pytest.mark.parametrize("name, folder, reference", [("ltcc", "LTCC_ReID", "LTCC_Size.csv"), ("prcc", "prcc", "PRCC_Size.csv")])
def test_size_names_match_the_authors_files(tmp_path, name, folder, reference):
    with (REFERENCE / reference).open(newline="") as f:
        rows = [(r["Category"], r["Image"]) for r in csv.DictReader(f)][::20]  # every split stays represented
    root = tmp_path / folder
    for category, image in rows:  # an empty-file tree with real names; PRCC keeps its images under rgb/
        path = root / ("rgb" if name == "prcc" else "") / category / image
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    ds = load_dataset(name, root)
    ours = [size_csv_name(name, ds.root, s.path) for split in (ds.splits, ds.val_splits) for v in split.values() for s in v]
    assert sorted(ours) == sorted(rows)


@needs_reference
def test_reference_faulty_lists_read():
    keys = read_key_list(REFERENCE / "LTCC_Pant_faulty.head.csv")
    assert len(keys) == 40 and keys[:2] == ["000_2_c8_001135", "001_1_c11_015833"]


# --------------------------------------------------------------------------- the script end to end


def person(height: int, width: int, tops: str = "one", pants: bool = True) -> np.ndarray:
    """A LIP label map: hair, face, arms, upper-clothes (one piece, split, or none), pants or skirt-less legs."""
    labels = np.zeros((height, width), dtype=np.uint8)
    h = height // 10
    labels[0 : h, 2 : width - 2] = 2  # hair
    labels[h : 2 * h, 2 : width - 2] = 13  # face
    labels[2 * h : 5 * h, 0 : width] = 14  # arms behind the torso
    if tops == "one":
        labels[2 * h : 5 * h, 2 : width - 2] = 5
    elif tops == "split":  # "upper-clothes" found on the chest and again near the feet
        labels[2 * h : 4 * h, 2 : width - 2] = 5
        labels[9 * h : 10 * h, 2 : width - 2] = 7
    labels[5 * h : 9 * h, 2 : width - 2] = 9 if pants else 16
    return labels


@pytest.fixture
def masks_tree(tmp_path):
    """Five LTCC train images (heights 30..300) and one query image, with label-map PNGs and one score map."""
    root, parsing = tmp_path / "LTCC_ReID", tmp_path / "parsing"
    images = {
        "train/000_1_c1_000001.png": (30, "one", True),
        "train/000_1_c2_000002.png": (64, "split", True),
        "train/001_1_c1_000003.png": (100, "one", False),
        "train/001_2_c3_000004.png": (255, "none", True),
        "train/002_1_c4_000005.png": (300, "one", True),
        "query/002_2_c5_000006.png": (128, "split", False),
    }
    for rel, (height, tops, pants) in images.items():
        width = max(12, height // 3)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (90, 90, 90)).save(root / rel)
        labels = person(height, width, tops, pants)
        target = parsing / Path(rel).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("000004.png"):  # a raw SCHP score map instead of a label PNG
            np.save(target.with_suffix(".npy"), np.eye(20, dtype=np.float32)[labels])
        else:
            Image.fromarray(labels).save(target)
    (root / "test").mkdir()
    Image.new("RGB", (20, 60)).save(root / "test" / "003_1_c1_000007.png")
    return root, parsing


def run_masks(root, parsing, out, **overrides) -> None:
    preprocess_masks.main(preprocess_masks.Args(**(dict(dataset="ltcc", root=root, parsing=parsing, output=out, workers=1) | overrides)))


def test_end_to_end_on_a_tiny_tree(masks_tree, tmp_path):
    root, parsing = masks_tree
    out = tmp_path / "masks"
    run_masks(root, parsing, out)
    assert (out / "faulty_tops.txt").read_text() == "000_1_c2_000002\n001_2_c3_000004\n"
    assert (out / "faulty_pants.txt").read_text() == "001_1_c1_000003\n"
    assert faulty_keys(out) == {"000_1_c2_000002", "001_2_c3_000004", "001_1_c1_000003"}
    assert (out / "sizes.csv").read_text() == (
        "Category,Image,<32,32-64,64-128,128-256,>256\n"
        "train,000_1_c1_000001.png,1,0,0,0,0\n"
        "train,000_1_c2_000002.png,0,0,1,0,0\n"
        "train,001_1_c1_000003.png,0,0,1,0,0\n"
        "train,001_2_c3_000004.png,0,0,0,1,0\n"
        "train,002_1_c4_000005.png,0,0,0,0,1\n"
    )
    assert sorted(p.name for p in out.glob("*.png")) == [
        "000_1_c1_000001.png", "000_1_c2_000002.png", "001_1_c1_000003.png", "001_2_c3_000004.png", "002_1_c4_000005.png",
    ]  # fmt: skip
    ds = load_dataset("ltcc", root)
    by_key = {s.key: s for s in ds.train}
    masks = read_masks(out, by_key["001_2_c3_000004"])  # from the score map
    labels = person(255, 85, "none", True)
    assert masks["head"].shape == (255, 85)
    assert np.array_equal(masks["head"], np.isin(labels, [2, 13])) and not masks["tops"].any()
    assert np.array_equal(masks["pants"], labels == 9) and np.array_equal(masks["silhouette"], labels > 0)

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run_masks(root, parsing, out, workers=2)  # again, through the worker pool: same bytes, nothing left over
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    (parsing / "train" / "002_1_c4_000005.png").write_bytes(b"truncated")
    with pytest.raises(MaskInputError, match=r"image '.*train/002_1_c4_000005.png': cannot read the parsing file '.*parsing/train/002_1_c4_000005.png'"):
        run_masks(root, parsing, out, workers=2)
    assert (out / "sizes.csv").read_bytes() == before[out / "sizes.csv"]  # the lists and the CSV are written last


def test_other_splits_and_missing_parsing(masks_tree, tmp_path):
    root, parsing = masks_tree
    out = tmp_path / "masks"
    with pytest.raises(MaskInputError, match=r"1 of 7 images have no parsing file \(first: image '.*test/003_1_c1_000007.png' -> expected '.*parsing/test/003_1_c1_000007.png' or '.*parsing/test/003_1_c1_000007.npy'\)"):
        run_masks(root, parsing, out, splits=("train", "query", "gallery"))
    assert not out.exists()  # nothing is written before every parsing file is found
    run_masks(root, parsing, out, splits=("train", "query", "train"))
    assert (out / "query" / "002_2_c5_000006.png").is_file()
    assert (out / "faulty_pants.txt").read_text() == "001_1_c1_000003\nquery/002_2_c5_000006\n"
    sizes = (out / "sizes.csv").read_text().splitlines()
    assert len(sizes) == 1 + 6 and sizes[-1] == "query,002_2_c5_000006.png,0,0,0,1,0"


def test_synthetic_dataset(synthetic_root, tmp_path):
    base = synthetic_root
    out = tmp_path / "masks"
    preprocess_masks.main(preprocess_masks.Args(dataset="synthetic", root=base, parsing=base / "target" / "parsing", output=out, workers=2))
    train = load_dataset("synthetic", base).train
    with (out / "sizes.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["Image"] for r in rows] == [Path(s.path).name for s in train]
    assert all(sum(int(r[b]) for b in ("<32", "32-64", "64-128", "128-256", ">256")) == 1 for r in rows)
    assert faulty_keys(out) <= {s.key for s in train}
    s = train[0]
    labels = np.asarray(Image.open(base / "target" / "parsing" / "train" / f"{s.key}.png"))
    masks = read_masks(out, s)
    assert np.array_equal(masks["tops"], np.isin(labels, [5, 7, 10])) and np.array_equal(masks["silhouette"], labels != 0)
