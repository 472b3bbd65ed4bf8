"""Dataset parsers on tiny fake trees in the real layouts, and the summary CLI."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import run_here

from rlq.data import DatasetLayoutError, load_dataset, summary


def touch(root: Path, *relative: str) -> None:
    for rel in relative:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def by_name(samples):
    return {Path(s.path).name: s for s in samples}


# --------------------------------------------------------------------------- LTCC


@pytest.fixture
def ltcc_root(tmp_path):
    # The parent directory name looks like a camera/clothes token on purpose: labels must come from file names.
    root = tmp_path / "my_1_c9_cache" / "LTCC_ReID"
    touch(
        root,
        "train/005_1_c2_000010.png",
        "train/005_2_c5_000011.png",
        "train/000_1_c1_000001.png",
        "train/000_1_c3_000002.png",
        "train/000_3_c1_000003.png",
        "query/001_1_c11_015833.png",
        "query/002_1_c4_000100.png",
        "test/001_1_c4_015861.png",
        "test/001_2_c11_015900.png",
        "test/002_1_c12_000200.png",
        "test/002_2_c4_000201.png",
        "test/notes.txt",  # not an image: not a sample
    )
    return root


def test_ltcc_relabels_train_and_keeps_test_pids(ltcc_root):
    ds = load_dataset("ltcc", ltcc_root)
    train = by_name(ds.train)
    # Train pids sorted by raw key: 000 -> 0, 005 -> 1. Clothes sorted by (pid, outfit): (0,1),(0,3),(5,1),(5,2).
    assert [(train[n].pid, train[n].clothes_id, train[n].camid) for n in sorted(train)] == [
        (0, 0, 0), (0, 0, 2), (0, 1, 0), (1, 2, 1), (1, 3, 4)
    ]
    assert train["000_1_c1_000001.png"].key == "000_1_c1_000001"
    assert train["000_1_c1_000001.png"].pid_key == "000"
    assert ds.num_train_pids == 2 and ds.num_train_clothes == 4
    np.testing.assert_array_equal(ds.pid2clothes, [[1, 1, 0, 0], [0, 0, 1, 1]])

    query, gallery = by_name(ds.splits["query"]), by_name(ds.splits["gallery"])
    assert query["001_1_c11_015833.png"].pid == 1 and query["001_1_c11_015833.png"].camid == 10
    assert query["001_1_c11_015833.png"].key == "query/001_1_c11_015833"
    assert gallery["002_1_c12_000200.png"].key == "test/002_1_c12_000200"
    # Test clothes relabelled jointly over query + gallery: (1,1),(1,2),(2,1),(2,2) -> 0..3.
    assert query["001_1_c11_015833.png"].clothes_id == gallery["001_1_c4_015861.png"].clothes_id == 0
    assert gallery["001_2_c11_015900.png"].clothes_id == 1
    assert query["002_1_c4_000100.png"].clothes_id == gallery["002_1_c12_000200.png"].clothes_id == 2
    assert gallery["002_2_c4_000201.png"].clothes_id == 3
    assert len(ds.splits["gallery"]) == 4
    assert {e.name: e.protocol for e in ds.evaluations} == {"standard": "standard", "cc": "cc", "sc": "sc"}
    assert ds.headline == "cc"


def test_ltcc_accepts_parent_folder(ltcc_root):
    assert load_dataset("ltcc", ltcc_root.parent).root == ltcc_root


def test_ltcc_wrong_root_names_expected_layout(tmp_path):
    touch(tmp_path, "images/a.png", "labels.csv")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("ltcc", tmp_path)
    message = str(err.value)
    assert "{train,query,test}/PPP_C_cX_FFFFFF.png" in message
    assert "images" in message and "labels.csv" in message and "missing train, query, test" in message


def test_ltcc_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset("ltcc", tmp_path / "nope")


def test_ltcc_bad_file_name_is_named(ltcc_root):
    touch(ltcc_root, "train/005-1-c2.png")
    with pytest.raises(DatasetLayoutError, match=r"005-1-c2\.png.*PPP_C_cX_FFFFFF"):
        load_dataset("ltcc", ltcc_root)


def test_ltcc_empty_split_is_an_error(tmp_path):
    touch(tmp_path, "train/000_1_c1_000001.png", "test/001_1_c2_000002.png")
    (tmp_path / "query").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images found in .*query"):
        load_dataset("ltcc", tmp_path)


def test_unknown_dataset_and_missing_root():
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        load_dataset("market", "/tmp")
    with pytest.raises(ValueError, match="needs --root"):
        load_dataset("ltcc", None)


# --------------------------------------------------------------------------- PRCC


@pytest.fixture
def prcc_root(tmp_path):
    root = tmp_path / "prcc"
    touch(
        root,
        "rgb/train/092/A_cropped_rgb001.jpg",
        "rgb/train/092/B_cropped_rgb118.jpg",
        "rgb/train/092/C_cropped_rgb004.jpg",
        "rgb/train/095/A_cropped_rgb001.jpg",
        "rgb/train/095/C_cropped_rgb002.jpg",
        "rgb/val/092/A_cropped_rgb031.jpg",
        "rgb/val/092/B_cropped_rgb032.jpg",
        "rgb/val/092/C_cropped_rgb033.jpg",
        "rgb/test/A/001/cropped_rgb001.jpg",
        "rgb/test/A/002/cropped_rgb001.jpg",
        "rgb/test/B/001/cropped_rgb002.jpg",
        "rgb/test/C/001/cropped_rgb003.jpg",
        "rgb/test/C/002/cropped_rgb004.jpg",
    )
    return root


def test_prcc_cameras_clothes_and_query_sets(prcc_root):
    ds = load_dataset("prcc", prcc_root.parent)
    train = {(Path(s.path).parent.name, Path(s.path).name): s for s in ds.train}
    a, b, c = train["092", "A_cropped_rgb001.jpg"], train["092", "B_cropped_rgb118.jpg"], train["092", "C_cropped_rgb004.jpg"]
    assert (a.camid, b.camid, c.camid) == (0, 1, 2)
    assert a.clothes_id == b.clothes_id != c.clothes_id  # A and B share an outfit, C is another
    assert a.pid == 0 and train["095", "A_cropped_rgb001.jpg"].pid == 1
    assert a.key == "092_A_cropped_rgb001" and a.pid_key == "092"
    assert ds.num_train_clothes == 4

    assert set(ds.splits) == {"train", "query_same", "query_diff", "gallery"}
    assert {s.camid for s in ds.splits["gallery"]} == {0}
    assert {s.camid for s in ds.splits["query_same"]} == {1}
    assert {s.camid for s in ds.splits["query_diff"]} == {2}
    assert sorted(s.pid for s in ds.splits["query_diff"]) == [1, 2]  # test pids keep raw values
    g1 = next(s for s in ds.splits["gallery"] if s.pid == 1)
    assert g1.key == "A/001_cropped_rgb001"
    assert ds.splits["query_same"][0].clothes_id == g1.clothes_id
    assert all(q.clothes_id != g.clothes_id for q in ds.splits["query_diff"] for g in ds.splits["gallery"])
    assert {(e.name, e.query_split) for e in ds.evaluations} == {("sc", "query_same"), ("cc", "query_diff")}
    assert {k: len(v) for k, v in ds.val_splits.items()} == {"query_same": 1, "query_diff": 1, "gallery": 1}


def test_prcc_bad_names(prcc_root):
    touch(prcc_root, "rgb/test/C/003/rgb005.jpg")
    with pytest.raises(DatasetLayoutError, match=r"rgb005\.jpg.*cropped_rgbNNN"):
        load_dataset("prcc", prcc_root)
    touch(prcc_root, "rgb/train/abc/A_cropped_rgb001.jpg")
    with pytest.raises(DatasetLayoutError, match="identity folder .*abc"):
        load_dataset("prcc", prcc_root)


# --------------------------------------------------------------------------- Celeb-reID


def test_celeb_pseudo_camera_and_one_clothes_per_image(tmp_path):
    touch(
        tmp_path,
        "train/103_15_0.jpg",
        "train/103_16_0.jpg",
        "train/7_2_1.jpg",
        "query/112_15_0.jpg",
        "gallery/112_16_0.jpg",
        "gallery/112_23_0.jpg",
        "gallery/100_12_0.jpg",
    )
    ds = load_dataset("celeb", tmp_path)
    train = by_name(ds.train)
    assert train["7_2_1.jpg"].pid == 0 and train["103_15_0.jpg"].pid == 1
    assert ds.num_train_clothes == 3 and len({s.clothes_id for s in ds.train}) == 3
    assert train["103_15_0.jpg"].camid == 1 and train["7_2_1.jpg"].camid == 2
    gallery = by_name(ds.splits["gallery"])
    # Same pid and same leading digit of `index` -> same pseudo camera -> junk under the standard protocol.
    assert gallery["112_16_0.jpg"].camid == ds.splits["query"][0].camid == 1
    assert gallery["112_23_0.jpg"].camid == 2
    clothes = [s.clothes_id for s in ds.splits["query"] + ds.splits["gallery"]]
    assert len(set(clothes)) == len(clothes)
    assert train["103_15_0.jpg"].pid_key == "103" and train["103_15_0.jpg"].key == "103_15_0"


# --------------------------------------------------------------------------- LaST


def test_last_train_clothes_and_test_conventions(tmp_path):
    touch(
        tmp_path,
        "last/train/000002/000002_000_00009_0134_01_004.jpg",
        "last/train/000002/000002_000_00010_0135_01_004.jpg",
        "last/train/000002/000002_001_00011_0136_02_007.jpg",
        "last/train/000010/000010_000_00001_0001_01_000.jpg",
        "last/test/query/005000_000_00001_0001_01_000.jpg",
        "last/test/gallery/005000/005000_001_00002_0002_01_003.jpg",
        "last/test/gallery/005001/005001_000_00003_0003_01_000.jpg",
        "last/test/gallery/-1/-1_000_00004_0004_01_000.jpg",
        "last/val/query/005100_000_00001_0001_01_000.jpg",
        "last/val/gallery/005100/005100_001_00002_0002_01_003.jpg",
    )
    ds = load_dataset("last", tmp_path)
    train = by_name(ds.train)
    assert train["000002_000_00009_0134_01_004.jpg"].clothes_id == train["000002_000_00010_0135_01_004.jpg"].clothes_id
    assert train["000002_001_00011_0136_02_007.jpg"].clothes_id != train["000002_000_00009_0134_01_004.jpg"].clothes_id
    assert train["000010_000_00001_0001_01_000.jpg"].pid == 1
    assert train["000002_000_00009_0134_01_004.jpg"].key == "000002_000002_000_00009_0134_01_004"
    assert ds.num_train_clothes == 3
    query, gallery = ds.splits["query"], ds.splits["gallery"]
    assert len(gallery) == 2  # the pid -1 distractor is junk
    assert [s.pid for s in query] == [5000] and sorted(s.pid for s in gallery) == [5000, 5001]
    assert all(s.clothes_id == s.pid for s in query + gallery)
    camids = [s.camid for s in query + gallery]
    assert len(set(camids)) == len(camids)  # a running index: nothing is junk
    assert set(ds.val_splits) == {"query", "gallery"}


def test_last_missing_test_folder(tmp_path):
    touch(tmp_path, "train/000002/000002_000_00009_0134_01_004.jpg")
    with pytest.raises(DatasetLayoutError, match="missing test/query, test/gallery"):
        load_dataset("last", tmp_path)


# --------------------------------------------------------------------------- DeepChange


def write_deepchange(root: Path, folder: str, rows: list[tuple[str, int]]) -> None:
    touch(root, *(f"{folder}/{name}" for name, _ in rows))
    (root / f"{folder}-bbox.txt").write_text("".join(f"{n},{t}\n" for n, t in rows))


@pytest.fixture
def deepchange_root(tmp_path):
    root = tmp_path / "DeepChangeDataset"
    write_deepchange(root, "train-set", [
        ("p0003_c1_20200601_101010_000001_bbox.jpg", 7),
        ("p0003_c2_20200601_111010_000002_bbox.jpg", 7),
        ("p0003_c2_20200702_111010_000003_bbox.jpg", 9),
        ("p0010_c4_20200601_101010_000004_bbox.jpg", 1),
    ])
    write_deepchange(root, "test-set-query", [("p0500_c1_20200601_101010_000005_bbox.jpg", 3)])
    write_deepchange(root, "test-set-gallery", [
        ("p0500_c2_20200601_121010_000006_bbox.jpg", 3),
        ("p0500_c3_20200803_121010_000007_bbox.jpg", 4),
    ])
    return root


def test_deepchange_tracklets_and_daily_outfits(deepchange_root):
    ds = load_dataset("deepchange", deepchange_root.parent)
    train = by_name(ds.train)
    a, b, c = (train[f"p0003_{s}_bbox.jpg"] for s in ("c1_20200601_101010_000001", "c2_20200601_111010_000002", "c2_20200702_111010_000003"))
    assert a.clothes_id == b.clothes_id != c.clothes_id  # one outfit per person per day
    assert (a.camid, c.camid) == (7, 9)  # the camera slot holds the tracklet id
    assert a.pid == 0 and train["p0010_c4_20200601_101010_000004_bbox.jpg"].pid == 1
    assert a.pid_key == "p0003" and a.key == "p0003_c1_20200601_101010_000001_bbox"
    query, gallery = ds.splits["query"], ds.splits["gallery"]
    assert query[0].pid == 500 and query[0].camid == 3
    assert query[0].clothes_id == gallery[0].clothes_id != gallery[1].clothes_id
    assert ds.val_splits == {}


def test_deepchange_list_and_folder_must_agree(deepchange_root):
    touch(deepchange_root, "test-set-gallery/p0500_c3_20200803_121010_000099_bbox.jpg")
    with pytest.raises(DatasetLayoutError, match="1 images in .*not listed.*000099"):
        load_dataset("deepchange", deepchange_root)
    (deepchange_root / "test-set-gallery/p0500_c3_20200803_121010_000099_bbox.jpg").unlink()
    (deepchange_root / "test-set-query/p0500_c1_20200601_101010_000005_bbox.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="1 images listed in 'test-set-query-bbox.txt' but missing"):
        load_dataset("deepchange", deepchange_root)


def test_deepchange_bad_list_line(deepchange_root):
    (deepchange_root / "test-set-query-bbox.txt").write_text("p0500_c1_20200601_101010_000005_bbox.jpg\n")
    with pytest.raises(DatasetLayoutError, match="line 1 of .*test-set-query-bbox.txt"):
        load_dataset("deepchange", deepchange_root)


# --------------------------------------------------------------------------- summary CLI


def test_summary_counts(ltcc_root):
    info = summary(load_dataset("ltcc", ltcc_root))
    assert info["splits"] == {
        "train": {"images": 5, "ids": 2, "cameras": 4, "clothes": 4},
        "query": {"images": 2, "ids": 2, "cameras": 2, "clothes": 2},
        "gallery": {"images": 4, "ids": 2, "cameras": 3, "clothes": 4},
    }


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_here("-m", "rlq.data", *args)


def test_cli_json_and_table(prcc_root, tmp_path):
    result = run_cli("--dataset", "prcc", "--root", str(prcc_root), "--print-json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["dataset"] == "prcc"
    assert list(info["splits"]) == ["train", "query_same", "query_diff", "gallery"]
    assert info["splits"]["train"] == {"images": 5, "ids": 2, "cameras": 3, "clothes": 4}
    assert info["val_splits"]["gallery"]["images"] == 1

    gender = tmp_path / "gender.csv"
    gender.write_text("Category,ID,Gender\ntrain,092,1\n")
    result = run_cli("--dataset", "prcc", "--root", str(prcc_root), "--gender-csv", str(gender))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["split", "images", "ids", "cameras", "clothes"]
    assert lines[3].split() == ["train", "5", "2", "3", "4"]
    assert "gender: 1/2 training identities covered" in result.stdout


def test_cli_bad_root_is_one_clear_error(tmp_path):
    result = run_cli("--dataset", "celeb", "--root", str(tmp_path))
    assert result.returncode != 0
    assert "{train,query,gallery}/{pid}_{index}_{k}.jpg" in result.stderr
    assert "Traceback" not in result.stderr
