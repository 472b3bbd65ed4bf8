"""Pose vectors, AlphaPose matching, KMeans pose clusters and the pose-cluster CSV."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlq.attributes import pose_columns, read_pose_csv
from rlq.data import Sample, load_dataset
from rlq.pose import (
    BODY_LINES,
    VARIANTS,
    ClusteringError,
    KeypointFileError,
    PoseRecord,
    column_names,
    match_records,
    pose_vectors,
    read_alphapose,
    write_pose_csv,
)

import preprocess_pose  # a top-level script; conftest.py puts the repository root on sys.path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference-csv"

# A standing person in a 64 x 128 image (COCO-17 order: nose, eyes, ears, shoulders, elbows, wrists, hips, knees,
# ankles). No body line points near 180 degrees, where noise would flip its angle to -180.
STANDING = np.array(
    [[32, 12], [30, 10], [34, 10], [28, 14], [36, 14], [24, 26], [40, 30], [22, 48], [42, 48], [21, 66], [43, 66],
     [27, 70], [37, 70], [26, 95], [38, 95], [26, 120], [38, 120]], dtype=np.float64,
)  # fmt: skip
ARMS_UP = STANDING.copy()
ARMS_UP[[7, 8, 9, 10]] = [[20, 12], [44, 12], [19, -2], [45, -2]]


def alphapose_record(image_id: str, xy: np.ndarray, score: float = 2.0) -> dict:
    keypoints = np.concatenate([xy, np.full((17, 1), 0.9)], axis=1).ravel().tolist()
    return {"image_id": image_id, "category_id": 1, "keypoints": keypoints, "score": score}


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


# --------------------------------------------------------------------------- pose vectors


def test_vectors_of_a_hand_made_skeleton_in_both_frames():
    # Width 100 and height 200 scale both axes by 1.92: truncating before scaling matters (10.7 -> 10 -> 19.2 -> 19,
    # while 10.7 * 1.92 = 20.5 would give 20).
    xy = STANDING.copy()
    xy[0], xy[1] = [10.7, 20.3], [30.2, 5.9]
    xy[5], xy[7] = [50.0, 40.0], [50.0, 80.0]  # left shoulder straight above the left elbow
    v = pose_vectors(xy[None], np.array([[100, 200]]))

    # Line (0, 1) in the R frame: nose (19, 38), left eye (57, 9) -> delta (-38, 29).
    assert v["R_LA"][0, 0] == pytest.approx(math.sqrt(38**2 + 29**2))
    assert v["R_LA"][0, 13] == pytest.approx(math.degrees(math.atan2(29, -38)))  # 142.65 degrees
    assert v["R_LAC"][0, :4].tolist() == [19, 38, 57, 9]
    # In the N frame nothing is truncated: (0.107, 0.1015) - (0.302, 0.0295).
    dx, dy = 0.107 - 0.302, 0.1015 - 0.0295
    assert v["N_LA"][0, 0] == pytest.approx(math.hypot(dx, dy))
    assert v["N_A"][0, 0] == pytest.approx(math.degrees(math.atan2(dy, dx)))
    assert v["N_LAC"][0, :4] == pytest.approx([0.107, 0.1015, 0.302, 0.0295])
    # y points down: the shoulder (a) above the elbow (b) gives y_a - y_b < 0, i.e. -90 degrees.
    line = BODY_LINES.index((5, 7))
    assert v["R_A"][0, line] == pytest.approx(-90.0) and v["N_A"][0, line] == pytest.approx(-90.0)
    assert v["R_LA"][0, line] == 153 - 76  # trunc(80 * 1.92) - trunc(40 * 1.92), not 40 * 1.92 = 76.8
    assert v["N_LA"][0, line] == pytest.approx(0.2)


def test_vector_layout_against_a_plain_loop():
    xy = STANDING + np.linspace(0.3, 0.9, 34).reshape(17, 2)
    width, height = 70, 150
    v = pose_vectors(xy[None], np.array([[width, height]]))
    r = [(int(int(x) * 192 / width), int(int(y) * 384 / height)) for x, y in xy]
    n = [(x / width, y / height) for x, y in xy]
    for frame, points in (("R", r), ("N", n)):
        lengths = [math.dist(points[a], points[b]) for a, b in BODY_LINES]
        angles = [math.degrees(math.atan2(points[a][1] - points[b][1], points[a][0] - points[b][0])) for a, b in BODY_LINES]
        coords = [c for p in points for c in p]
        assert v[f"{frame}_LA"][0] == pytest.approx(lengths + angles)
        assert v[f"{frame}_A"][0] == pytest.approx(angles)
        assert v[f"{frame}_LAC"][0] == pytest.approx(coords + lengths + angles)
    assert {k: a.shape[1] for k, a in v.items()} == {"R_LA": 26, "R_LAC": 60, "R_A": 13, "N_LA": 26, "N_LAC": 60, "N_A": 13}


def test_column_order_is_the_authors():
    names = [c for _, _, c in column_names(["N_A", "R_LA"], [10, 5])]
    assert names == ["R_LA_5", "N_A_5", "R_LA_10", "N_A_10"]
    full = [c for _, _, c in column_names(VARIANTS, [5, 10])]
    assert full == ["R_LA_5", "R_LAC_5", "R_A_5", "N_LA_5", "N_LAC_5", "N_A_5", "R_LA_10", "R_LAC_10", "R_A_10", "N_LA_10", "N_LAC_10", "N_A_10"]


# --------------------------------------------------------------------------- reading and matching records


def samples_at(root: Path, *relative: str) -> list[Sample]:
    return [Sample(str(root / rel), 0, 0, 0, Path(rel).stem, "0") for rel in relative]


def test_highest_scoring_record_wins_and_ids_may_be_paths(tmp_path):
    samples = samples_at(tmp_path, "train/a.png", "train/b.png", "query/c.png")
    records = [
        PoseRecord("a.png", np.zeros((17, 3)), 1.5),
        PoseRecord("a.png", np.ones((17, 3)), 2.5),
        PoseRecord("train/a.png", np.zeros((17, 3)), 0.5),
        PoseRecord("/elsewhere/LTCC_ReID/train/b.png", np.ones((17, 3)), 1.0),
        PoseRecord("b.png", np.zeros((17, 3)), 1.0),  # a tie keeps the first record
        PoseRecord("d.png", np.zeros((17, 3)), 9.0),
    ]
    best, unmatched = match_records(records, samples, tmp_path)
    assert sorted(best) == [0, 1]
    assert best[0].score == 2.5 and best[0].keypoints[0, 0] == 1
    assert best[1].image_id == "/elsewhere/LTCC_ReID/train/b.png"
    assert unmatched == ["d.png"]


def test_repeated_file_names_need_relative_paths(tmp_path):
    samples = samples_at(tmp_path, "rgb/train/092/A_cropped_rgb001.jpg", "rgb/train/093/A_cropped_rgb001.jpg")
    best, _ = match_records([PoseRecord("093/A_cropped_rgb001.jpg", np.zeros((17, 3)), 1.0)], samples, tmp_path)
    assert list(best) == [1]
    with pytest.raises(KeypointFileError, match="matches 2 images"):
        match_records([PoseRecord("A_cropped_rgb001.jpg", np.zeros((17, 3)), 1.0)], samples, tmp_path)


def test_keypoint_file_errors_name_the_file_and_the_format(tmp_path):
    with pytest.raises(KeypointFileError, match="missing.json' does not exist"):
        read_alphapose(tmp_path / "missing.json")
    short = alphapose_record("a.png", STANDING)
    short["keypoints"] = short["keypoints"][:50]
    with pytest.raises(KeypointFileError, match=r"short.json' record 1 \(a.png\) has keypoints 50 values: expected 51"):
        read_alphapose(write_json(tmp_path / "short.json", [alphapose_record("a.png", STANDING), short]))
    nan = alphapose_record("b.png", STANDING)
    nan["keypoints"][4] = float("nan")
    with pytest.raises(KeypointFileError, match=r"record 0 \(b.png\) has keypoint value nan at 4: expected 51 numbers"):
        read_alphapose(write_json(tmp_path / "nan.json", [nan]))
    with pytest.raises(KeypointFileError, match="holds a JSON dict: expected a JSON list"):
        read_alphapose(write_json(tmp_path / "dict.json", {"a.png": []}))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(KeypointFileError, match="broken.json' is not valid JSON"):
        read_alphapose(tmp_path / "broken.json")


# --------------------------------------------------------------------------- the CSV


def test_csv_round_trips_through_the_attribute_reader(tmp_path):
    path = tmp_path / "pose.csv"
    write_pose_csv(path, [("train", "000_1_c1_000001"), ("train", "000_1_c1_000002")], {"R_LA_5": [3, 0], "N_A_5": [5, 1]})
    assert path.read_text() == "Category,Image,R_LA_5,N_A_5\ntrain,000_1_c1_000001,3.0,5.0\ntrain,000_1_c1_000002,0.0,1.0\n"
    assert read_pose_csv(path, "R_LA_5") == {"000_1_c1_000001": 3, "000_1_c1_000002": 0}
    assert pose_columns(path) == ["R_LA_5", "N_A_5"]


@pytest.mark.skipif(not (REFERENCE / "LTCC_Pose_Cluster.csv").is_file(), reason="../shared/data/reference-csv is not beside this clone")
def test_reference_pose_csv_survives_our_writer(tmp_path):
    reference = REFERENCE / "LTCC_Pose_Cluster.csv"
    with reference.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = pose_columns(reference)
    out = tmp_path / "copy.csv"
    write_pose_csv(out, [(r["Category"], r["Image"]) for r in rows], {c: [int(float(r[c])) for r in rows] for c in columns})
    assert pose_columns(out) == columns
    for column in ("R_LA_5", "R_LA_15", "N_A_40"):  # each read takes a while; the byte check below covers every column
        assert read_pose_csv(out, column) == read_pose_csv(reference, column)
    assert out.read_bytes() == reference.read_bytes()  # same float format, row order and line ends


# --------------------------------------------------------------------------- the script end to end


def save_image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path)


@pytest.fixture
def pose_tree(tmp_path):
    """A tiny LTCC tree: 24 train images in two obvious pose groups (4 without a person), 3 query images."""
    root = tmp_path / "LTCC_ReID"
    rng = np.random.default_rng(0)
    records, groups = [], {}
    for i in range(24):
        name = f"{i % 4:03d}_1_c{1 + i % 3}_{i:06d}.png"
        width = 64 + 2 * (i % 5)  # varying widths make the R-frame scaling non-trivial
        save_image(root / "train" / name, (width, 128))
        if i % 6 == 5:
            continue  # no person detected
        group = i % 2
        groups[Path(name).stem] = group
        xy = (ARMS_UP if group else STANDING) + rng.normal(0, 0.3, (17, 2))
        records.append(alphapose_record(name, xy, score=2.0))
        if i % 7 == 0:  # a second, weaker detection of a bystander in a wild pose
            records.append(alphapose_record(name, rng.uniform(0, 60, (17, 2)), score=0.5))
    for i in range(3):
        name = f"{i:03d}_2_c5_{100 + i:06d}.png"
        save_image(root / "query" / name, (64, 128))
        records.append(alphapose_record(f"query/{name}", ARMS_UP if i else STANDING))
    save_image(root / "test" / "000_2_c6_000200.png", (64, 128))
    records.append(alphapose_record("test/000_2_c6_000200.png", STANDING))
    keypoints = write_json(tmp_path / "alphapose.json", records)
    return root, keypoints, groups


def run_pose(root, keypoints, out, **overrides) -> None:
    args = dict(dataset="ltcc", keypoints=(keypoints,), output=out, root=root, variants=("R_LA", "R_A", "N_LA"), ks=(3, 2))
    preprocess_pose.main(preprocess_pose.Args(**(args | overrides)))


def test_clusters_label_skeletons_1_to_k_and_the_rest_0(pose_tree, tmp_path, capsys):
    root, keypoints, groups = pose_tree
    out = tmp_path / "pose.csv"
    run_pose(root, keypoints, out)
    assert pose_columns(out) == ["R_LA_2", "R_A_2", "N_LA_2", "R_LA_3", "R_A_3", "N_LA_3"]
    train_keys = [s.key for s in load_dataset("ltcc", root).train]
    for column in pose_columns(out):
        labels = read_pose_csv(out, column)
        assert list(labels) == train_keys
        k = int(column.rsplit("_", 1)[1])
        assert all((labels[key] == 0) == (key not in groups) for key in train_keys)
        assert {labels[key] for key in groups} == set(range(1, k + 1))
    # Two clusters find the two pose groups exactly (the bystanders' lower score kept them out).
    for column in ("R_LA_2", "R_A_2", "N_LA_2"):
        labels = read_pose_csv(out, column)
        assert len({(labels[key], group) for key, group in groups.items()}) == 2
    printed = capsys.readouterr().out
    assert "skeletons: train 20/24 images" in printed
    assert "4 extra detections" in printed
    assert "4 records name images outside the train split(s)" in printed


def test_same_seed_same_bytes_and_other_splits_use_the_train_fit(pose_tree, tmp_path):
    root, keypoints, _ = pose_tree
    first, second, query = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "query.csv"
    run_pose(root, keypoints, first)
    run_pose(root, keypoints, second)
    assert first.read_bytes() == second.read_bytes()
    run_pose(root, keypoints, query, split="query")
    labels = read_pose_csv(query, "R_A_2")
    assert list(labels) == ["query/000_2_c5_000100", "query/001_2_c5_000101", "query/002_2_c5_000102"]
    assert query.read_text().splitlines()[1].startswith("query,query/000_2_c5_000100,")
    # The standing query person falls in the standing training cluster, the arms-up ones in the other.
    train = read_pose_csv(first, "R_A_2")
    standing, arms_up = train["000_1_c1_000000"], train["001_1_c2_000001"]
    assert [labels[k] for k in labels] == [standing, arms_up, arms_up]


def test_errors_leave_no_output(pose_tree, tmp_path):
    root, keypoints, _ = pose_tree
    out = tmp_path / "pose.csv"
    with pytest.raises(ClusteringError, match="K = 21 clusters asked for, but only 20 train images have a skeleton"):
        run_pose(root, keypoints, out, ks=(5, 21))
    no_train = write_json(tmp_path / "query_only.json", [alphapose_record("query/000_2_c5_000100.png", STANDING)])
    with pytest.raises(ClusteringError, match="no train image has a skeleton"):
        run_pose(root, no_train, out)
    assert not out.exists() and list(tmp_path.glob(".pose.csv*")) == []


def test_figures(pose_tree, tmp_path):
    root, keypoints, _ = pose_tree
    figures = tmp_path / "figures"
    run_pose(root, keypoints, tmp_path / "pose.csv", variants=("R_LA",), ks=(2,), figures=figures)
    assert sorted(p.relative_to(figures).as_posix() for p in figures.rglob("*.png")) == [
        "R_LA_2/cluster_00.png", "R_LA_2/cluster_01.png", "R_LA_2/cluster_02.png", "inertia_R_LA.png",
    ]  # fmt: skip
    with Image.open(figures / "R_LA_2" / "cluster_00.png") as grid:
        assert grid.size == (4 * 64, 20 + 128)  # the 4 images without a person fill one row


# --------------------------------------------------------------------------- on the generated dataset


def test_synthetic_dataset(synthetic_root, tmp_path):
    base = synthetic_root
    out = tmp_path / "pose.csv"
    preprocess_pose.main(preprocess_pose.Args(dataset="synthetic", root=base, keypoints=(base / "target" / "keypoints.json",), output=out, ks=(5, 15)))
    train = load_dataset("synthetic", base).train
    detected = {Path(r["image_id"]).stem for r in json.loads((base / "target" / "keypoints.json").read_text())}
    labels = read_pose_csv(out, "R_LA_15")
    assert list(labels) == [s.key for s in train]
    assert all((labels[s.key] == 0) == (s.key not in detected) for s in train)
    assert {labels[k] for k in detected if k in labels} == set(range(1, 16))
