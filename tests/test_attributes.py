"""Attribute CSVs: the authors' formats as published, attached to parsed datasets."""

import csv
from pathlib import Path

import pytest

from rlq.attributes import (
    AttributeFileError,
    attach_attributes,
    identity_key,
    pose_columns,
    read_gender_csv,
    read_pose_csv,
)
from rlq.data import load_dataset

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference-csv"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/data/reference-csv is not beside this clone")


def touch_all(root: Path, relative_paths) -> None:
    for rel in relative_paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def size_rows(name: str) -> list[dict[str, str]]:
    with (REFERENCE / name).open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ltcc_tree(tmp_path_factory):
    """An empty-file LTCC tree with the real file names (listed in the authors' size CSV)."""
    root = tmp_path_factory.mktemp("ltcc") / "LTCC_ReID"
    touch_all(root, (f"{r['Category']}/{r['Image']}" for r in size_rows("LTCC_Size.csv")))
    return root


def test_identity_key_normalises_padding_and_prefix():
    assert identity_key("000") == identity_key("0") == identity_key("p0000") == "0"
    assert identity_key("092") == "92" and identity_key("p0003") == "3"


@needs_reference
def test_reference_ltcc_files_cover_the_real_training_set(ltcc_tree):
    ds = load_dataset("ltcc", ltcc_tree)
    assert (len(ds.train), ds.num_train_pids, ds.num_train_clothes) == (9576, 77, 256)
    assert (len(ds.splits["query"]), len(ds.splits["gallery"])) == (493, 7050)
    gender = read_gender_csv(REFERENCE / "LTCC_Gender.csv")
    pose = read_pose_csv(REFERENCE / "LTCC_Pose_Cluster.csv", "R_LA_15")
    train = attach_attributes(ds.train, gender=gender, pose=pose)
    assert all(s.gender in (0, 1) for s in train)
    assert {s.pose for s in train} <= set(range(16)) and len({s.pose for s in train}) == 16
    by_key = {s.key: s for s in train}
    assert by_key["000_1_c10_001003"].pose == 10 and by_key["000_1_c10_001003"].gender == 1
    # Test-split pose keys (`query/...`, `test/...`) are the keys our parser gives query and gallery images.
    test_pose = read_pose_csv(REFERENCE / "LTCC_TEST_Pose_Cluster.csv", "R_LA_15")
    assert test_pose.keys() == {s.key for s in ds.splits["query"] + ds.splits["gallery"]}


@needs_reference
def test_reference_pose_csv_has_every_variant():
    columns = pose_columns(REFERENCE / "LTCC_Pose_Cluster.csv")
    assert len(columns) == 48 and columns[:3] == ["R_LA_5", "R_LAC_5", "R_A_5"] and columns[-1] == "N_A_40"
    for column in ("R_LA_5", "N_LAC_40"):
        k = int(column.rsplit("_", 1)[1])
        assert set(read_pose_csv(REFERENCE / "LTCC_Pose_Cluster.csv", column).values()) <= set(range(k + 1))


@needs_reference
def test_reference_prcc_files_match_prcc_keys(tmp_path):
    rows = size_rows("PRCC_Size.csv")
    # Size keys are `pid/name` for train and val, `camera/pid/name` for test.
    touch_all(tmp_path / "rgb", (f"{r['Category']}/{r['Image']}" for r in rows))
    ds = load_dataset("prcc", tmp_path)
    assert (len(ds.train), ds.num_train_pids, ds.num_train_clothes) == (17896, 150, 300)
    assert {k: len(v) for k, v in ds.splits.items() if k != "train"} == {"query_same": 3873, "query_diff": 3543, "gallery": 3384}
    assert len({s.pid for s in ds.splits["gallery"]}) == 71
    assert sum(len(v) for v in ds.val_splits.values()) == 5002
    train = attach_attributes(ds.train, gender=read_gender_csv(REFERENCE / "PRCC_Gender.csv"))
    assert {s.gender for s in train} == {0, 1}
    test_keys = {s.key for name in ("query_same", "query_diff", "gallery") for s in ds.splits[name]}
    head = read_pose_csv(REFERENCE / "PRCC_TEST_Pose_Cluster.head.csv", "R_LA_15")
    assert len(head) == 20 and head.keys() <= test_keys
    faulty = (REFERENCE / "PRCC_Pant_faulty.head.csv").read_text().split()
    assert set(faulty) <= {s.key for s in ds.train + [s for v in ds.val_splits.values() for s in v]}


@needs_reference
def test_reference_celeb_and_deepchange_gender():
    rows = size_rows("Celeb-reID_Size.csv")
    train_ids = {r["Image"].split("_")[0] for r in rows if r["Category"] == "train"}
    gender = read_gender_csv(REFERENCE / "Celeb-reID_Gender.csv")
    assert len(train_ids) == 632 and {identity_key(i) for i in train_ids} <= gender.keys()
    deepchange = read_gender_csv(REFERENCE / "DeepChange_Gender.csv")
    assert len(deepchange) == 450 and deepchange[identity_key("p0003")] == 1
    assert len(read_gender_csv(REFERENCE / "LTCC_test_Gender.csv")) == 75


@pytest.fixture
def small_ltcc(tmp_path):
    touch_all(tmp_path, [
        "train/000_1_c1_000001.png", "train/000_2_c2_000002.png", "train/007_1_c1_000003.png",
        "query/001_1_c1_000004.png", "test/001_2_c2_000005.png",
    ])
    return load_dataset("ltcc", tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_rows_are_errors_unless_zero_requested(small_ltcc, tmp_path):
    gender = read_gender_csv(write(tmp_path / "g.csv", "Category,ID,Gender\ntrain,000,1\n"))
    with pytest.raises(AttributeFileError, match=r"1 training identities missing from .*g\.csv \(first: 007\)"):
        attach_attributes(small_ltcc.train, gender=gender, gender_source=str(tmp_path / "g.csv"))
    pose = read_pose_csv(write(tmp_path / "p.csv", "Category,Image,R_LA_5\ntrain,000_1_c1_000001,3.0\n"), "R_LA_5")
    with pytest.raises(AttributeFileError, match=r"2 training images missing .*first: 000_2_c2_000002, 007_1_c1_000003"):
        attach_attributes(small_ltcc.train, pose=pose)
    filled = {s.key: s for s in attach_attributes(small_ltcc.train, gender=gender, pose=pose, missing="zero")}
    assert (filled["000_1_c1_000001"].gender, filled["000_1_c1_000001"].pose) == (1, 3)
    assert (filled["007_1_c1_000003"].gender, filled["007_1_c1_000003"].pose) == (0, 0)


def test_malformed_files(tmp_path):
    with pytest.raises(AttributeFileError, match="no column 'R_LA_15': it has R_LA_5"):
        read_pose_csv(write(tmp_path / "a.csv", "Category,Image,R_LA_5\ntrain,x,1.0\n"), "R_LA_15")
    with pytest.raises(AttributeFileError, match=r"line 3: R_LA_5 is '6.0': expected a label in 0..5"):
        read_pose_csv(write(tmp_path / "b.csv", "Category,Image,R_LA_5\ntrain,x,1.0\ntrain,y,6.0\n"), "R_LA_5")
    with pytest.raises(AttributeFileError, match=r"line 2: R_LA_5 is '2.5'"):
        read_pose_csv(write(tmp_path / "c.csv", "Category,Image,R_LA_5\ntrain,x,2.5\n"), "R_LA_5")
    with pytest.raises(AttributeFileError, match="twice with different labels"):
        read_pose_csv(write(tmp_path / "d.csv", "Category,Image,R_LA_5\ntrain,x,1\ntrain,x,2\n"), "R_LA_5")
    with pytest.raises(AttributeFileError, match="expected 1 \\(male\\) or 0 \\(female\\)"):
        read_gender_csv(write(tmp_path / "e.csv", "Category,ID,Gender\ntrain,000,M\n"))
    with pytest.raises(AttributeFileError, match="expected a header starting with Category,ID,Gender"):
        read_gender_csv(write(tmp_path / "f.csv", "id,gender\n000,1\n"))
    with pytest.raises(AttributeFileError, match="does not exist"):
        read_gender_csv(tmp_path / "none.csv")
