"""Folder ranking (evaluate.py --query-dir/--gallery-dir, rlq.ranking) on synthetic images, with an authors' checkpoint."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from authors_format import AuthorsModel
from PIL import Image

import evaluate
from evaluate import Args
from rlq.ranking import RankingError, list_images

pytestmark = pytest.mark.filterwarnings("ignore:authors' checkpoint .* has no gender head:UserWarning")


def spread(paths: list[Path], count: int) -> list[Path]:
    """`count` of `paths`, evenly spaced from the first (different people, whatever the split's size)."""
    assert len(paths) >= count
    return paths[:: len(paths) // count][:count]


@pytest.fixture
def folders(synthetic_root, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """query/ (3 images of different sizes and formats, one in a subfolder) and gallery/ (an exact copy of each query,
    nested, among 6 other images of other sizes, and a text file); returns the folders and {query: its copy}."""
    ltcc = synthetic_root / "target" / "LTCC_ReID"
    queries, others = spread(sorted((ltcc / "query").glob("*.png")), 3), spread(sorted((ltcc / "test").glob("*.png")), 6)
    query_dir, gallery_dir = tmp_path / "query", tmp_path / "gallery"
    query_files = [query_dir / "a.png", query_dir / "b.jpg", query_dir / "sub" / "c.png"]
    for source, target, size in zip(queries, query_files, [None, (40, 90), (200, 410)]):
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(source).convert("RGB")
        (image if size is None else image.resize(size)).save(target)
    copies = {}
    for i, query in enumerate(query_files):
        copy = gallery_dir / f"person{i}" / "day1" / f"copy_{query.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(query, copy)
        copies[str(query)] = str(copy)
    for i, source in enumerate(others):
        Image.open(source).convert("RGB").resize((30 + 20 * i, 70 + 30 * i)).save(gallery_dir / f"other{i}.png")
    (gallery_dir / "notes.txt").write_text("not an image")
    return query_dir, gallery_dir, copies


def test_each_query_finds_its_copy_first(folders, tmp_path):
    query_dir, gallery_dir, copies = folders
    checkpoint = AuthorsModel("rlq").save(tmp_path / "rlq.pth.tar")  # 384x192 input, as the authors' models
    out = tmp_path / "ranking"
    result = evaluate.main(Args(checkpoint=checkpoint, query_dir=query_dir, gallery_dir=gallery_dir, top_k=4, ranking_dir=out,
                                save_features=tmp_path / "features.pt", batch_size=4, num_workers=0))
    assert result == {}

    with (out / "ranking.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["query", "rank", "gallery", "similarity"]
    assert len(rows) == 3 * 4
    gallery = list_images(gallery_dir)
    assert len(gallery) == 9  # recursive, the text file left out
    for query, copy in copies.items():
        ranked = [row for row in rows if row["query"] == query]
        assert [int(row["rank"]) for row in ranked] == [1, 2, 3, 4]
        assert ranked[0]["gallery"] == copy and float(ranked[0]["similarity"]) == pytest.approx(1.0, abs=1e-4)
        scores = [float(row["similarity"]) for row in ranked]
        assert scores == sorted(scores, reverse=True) and scores[1] < scores[0] - 1e-4
        assert {row["gallery"] for row in ranked} <= set(gallery)

    strips = sorted(out.glob("*.png"))
    assert [p.name for p in strips] == ["00000_a.png", "00001_b.png", "00002_c.png"]
    assert all(Image.open(p).size == Image.open(strips[0]).size for p in strips)
    assert Image.open(strips[0]).width == 5 * (64 + 2 * 4 + 8)  # the query and 4 gallery tiles

    features = torch.load(tmp_path / "features.pt")
    assert features["query"]["paths"] == list(copies) and features["gallery"]["paths"] == gallery
    assert features["query"]["features"].shape == (3, 2048) and features["gallery"]["features"].shape == (9, 2048)
    torch.testing.assert_close(features["query"]["features"].norm(dim=1), torch.ones(3))


def test_folder_errors(folders, tmp_path):
    query_dir, _, _ = folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(RankingError, match=rf"'{tmp_path / 'empty'}' holds no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(RankingError, match="is not a folder"):
        list_images(tmp_path / "missing")
    checkpoint = AuthorsModel("cal").save(tmp_path / "cal.pth.tar")
    with pytest.raises(RankingError, match="--query-dir and --gallery-dir go together"):
        evaluate.main(Args(checkpoint=checkpoint, query_dir=query_dir, num_workers=0))
