"""Low-quality evaluation: deterministic degraded query/gallery, query-size buckets and the sample sheet."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

import evaluate
from evaluate import Args
from rlq.data import load_dataset
from rlq.lowquality import Degrade, SizeBucketError, split_seed
from rlq.masks import SIZE_BUCKETS, SIZE_HEADER, size_csv_name, size_row
from rlq.transforms import load_image


@pytest.fixture(scope="module")
def dataset(synthetic_root):
    return load_dataset("synthetic", synthetic_root)


@pytest.fixture(scope="module")
def size_csv(dataset, tmp_path_factory):
    """The authors' size CSV format for every query and gallery image, bucketed by its real height."""
    path = tmp_path_factory.mktemp("sizes") / "sizes.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SIZE_HEADER)
        for split in ("query", "gallery"):
            for s in dataset.splits[split]:
                writer.writerow(size_row(*size_csv_name(dataset.name, dataset.root, s.path), Image.open(s.path).height))
    return path


def test_degradation_depends_only_on_the_image_index_and_split(dataset):
    img = load_image(dataset.splits["query"][0].path)
    for kind in ("pixelate", "motion", "gaussian", "mix"):
        degrade = Degrade(kind, "synthetic", split_seed("query"))
        first, again = degrade(img, 3), degrade(img, 3)
        assert first.tobytes() == again.tobytes() and first.size == again.size
    blur = Degrade("gaussian", "synthetic", split_seed("query"))
    assert blur(img, 3).tobytes() != img.tobytes()
    assert {blur(img, i).tobytes() for i in range(6)} != {blur(img, 3).tobytes()}  # another index, other parameters
    assert split_seed("query") != split_seed("gallery")


def test_degraded_evaluation_is_deterministic_and_differs_from_clean(tiny_run, synthetic_root, dataset, size_csv, tmp_path):
    args = dict(checkpoint=tiny_run / "best.pt", root=synthetic_root, num_workers=0, batch_size=128, size_buckets=size_csv,
                degrade=("motion", "mix"))
    first = evaluate.main(Args(**args, lq_samples=3, lq_samples_path=tmp_path / "lq.png"))
    second = evaluate.main(Args(**args))
    assert first == second  # every number, degraded and per bucket, twice the same
    assert set(first["degraded"]) == {"motion", "mix"}
    for kind in first["degraded"]:
        assert first["degraded"][kind].keys() == {"standard", "cc", "sc"}
        assert first["degraded"][kind]["standard"]["mAP"] != first["standard"]["mAP"]

    # Size buckets partition the queries: every query counted in exactly its own bucket.
    heights = [Image.open(s.path).height for s in dataset.splits["query"]]
    expected = {b: sum(1 for h in heights if size_row("", "", h)[2 + i]) for i, b in enumerate(SIZE_BUCKETS)}
    for condition in ("clean", "motion", "mix"):
        for protocol, buckets in first["size_buckets"][condition].items():
            counts = {b: m["num_valid_queries"] + m["num_skipped_queries"] for b, m in buckets.items()}
            assert counts == {b: n for b, n in expected.items() if n}, (condition, protocol)
            assert sum(counts.values()) == len(dataset.splits["query"])

    sheet = Image.open(tmp_path / "lq.png")
    assert sheet.width == 4 * (96 + 4) and sheet.height == 14 + 3 * (192 + 4)  # 3 rows of HQ, pixelate, motion, gaussian


def test_size_csv_missing_a_query_is_a_clear_error(tiny_run, synthetic_root, dataset, size_csv, tmp_path):
    lines = size_csv.read_text().splitlines(keepends=True)
    short = tmp_path / "sizes.csv"
    short.write_text("".join(lines[:1] + lines[2:]))
    category, image = lines[1].split(",")[:2]
    with pytest.raises(SizeBucketError, match=f"1 query images missing from the size CSV .*first: {category}/{image}"):
        evaluate.main(Args(checkpoint=tiny_run / "best.pt", root=synthetic_root, num_workers=0, size_buckets=short))
