"""Pose vectors from 2D skeletons, their KMeans clusters, and the pose-cluster CSV.

A person's pose class is the KMeans cluster of a vector built from 13 body
lines of the COCO-17 skeleton (data.md section 3), in two frames:

- R ("resized"): pixel coordinates truncated to integers, scaled to the
  192 x 384 network input and truncated again, as the authors did;
- N ("normalised"): x / width and y / height.

Variants (the name is `<frame>_<parts>`): LA = 13 lengths + 13 angles (26-d,
R_LA is the final model's), A = 13 angles, LAC = the 34 keypoint coordinates
(x0, y0, x1, y1, ...) followed by LA (60-d). Nothing is standardised, so in
the R frame lengths (pixels) and angles (degrees) weigh as they come.
Angles follow the image convention (y points down): a line (a, b) gets
degrees(atan2(y_a - y_b, x_a - x_b)).

Skeletons come from AlphaPose's standard JSON results: a list of records
`{"image_id": <file name>, "keypoints": [x, y, score] * 17, "score": <float>}`.
Cluster labels are written 1..K; 0 means no skeleton was detected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from sklearn.cluster import KMeans

from rlq.data import Sample
from rlq.files import read_json_file, write_csv_atomic

NUM_KEYPOINTS = 17
BODY_LINES = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (12, 14), (13, 15), (14, 16))
VARIANTS = ("R_LA", "R_LAC", "R_A", "N_LA", "N_LAC", "N_A")  # also the authors' column order within one K
DEFAULT_KS = (5, 10, 15, 20, 25, 30, 35, 40)
R_WIDTH, R_HEIGHT = 192, 384  # the network input size the R frame is scaled to
MAX_ITER = 1000

_RECORD_FORMAT = (
    'a JSON list of AlphaPose records {"image_id": <image file name>, '
    f'"keypoints": {3 * NUM_KEYPOINTS} numbers (x, y, score of the {NUM_KEYPOINTS} COCO keypoints), "score": <number>}}'
)


class KeypointFileError(ValueError):
    """A keypoint file is missing or malformed, or cannot be matched to the dataset."""


class ClusteringError(ValueError):
    """Too few skeletons to cluster into the requested number of classes."""


@dataclass(frozen=True)
class PoseRecord:
    """One detected person: `keypoints` is [17, 3] (x, y, confidence) in image pixels."""

    image_id: str
    keypoints: np.ndarray
    score: float


# --------------------------------------------------------------------------- reading AlphaPose results


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record(item: object, index: int, path: Path) -> PoseRecord:
    where = f"'{path}' record {index}"
    if not isinstance(item, dict):
        raise KeypointFileError(f"{where} is {type(item).__name__}: expected {_RECORD_FORMAT}")
    image_id, keypoints, score = item.get("image_id"), item.get("keypoints"), item.get("score")
    if not isinstance(image_id, str) or not image_id:
        raise KeypointFileError(f"{where} has image_id {image_id!r}: expected the image file name, in {_RECORD_FORMAT}")
    expected = f"expected {3 * NUM_KEYPOINTS} numbers (x, y, score of each COCO keypoint)"
    if not isinstance(keypoints, list) or len(keypoints) != 3 * NUM_KEYPOINTS:
        shown = f"{len(keypoints)} values" if isinstance(keypoints, list) else repr(keypoints)
        raise KeypointFileError(f"{where} ({image_id}) has keypoints {shown}: {expected}")
    bad = [i for i, value in enumerate(keypoints) if not _is_number(value)]
    if bad:
        raise KeypointFileError(f"{where} ({image_id}) has keypoint value {keypoints[bad[0]]!r} at {bad[0]}: {expected}, all finite")
    if not _is_number(score):
        raise KeypointFileError(f"{where} ({image_id}) has score {score!r}: expected a number")
    return PoseRecord(image_id, np.asarray(keypoints, dtype=np.float64).reshape(NUM_KEYPOINTS, 3), float(score))


def read_alphapose(path: Path) -> list[PoseRecord]:
    """All person records of one AlphaPose results file, validated."""
    path = Path(path)
    if not path.is_file():
        raise KeypointFileError(f"keypoint file '{path}' does not exist: expected {_RECORD_FORMAT}")
    items = read_json_file(path, list, KeypointFileError, _RECORD_FORMAT)
    return [_record(item, index, path) for index, item in enumerate(items)]


def _suffixes(parts: Sequence[str]) -> list[str]:
    return ["/".join(parts[i:]) for i in range(len(parts))]


def match_records(
    records: Sequence[PoseRecord], samples: Sequence[Sample], root: Path
) -> tuple[dict[int, PoseRecord], list[str]]:
    """Keep the highest-scoring record of each sample.

    A record names its image by file name or by a path; it matches the sample
    whose path (relative to `root`) ends with the longest trailing part of it,
    so `x.png`, `train/x.png` and `/elsewhere/LTCC_ReID/train/x.png` all work.
    A name shared by several images (PRCC repeats `A_cropped_rgb001.jpg` in
    every identity folder) is an error: such results need relative paths.

    Returns {sample index: record} and the image ids that match no sample.
    """
    index: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        for suffix in _suffixes(Path(os.path.relpath(sample.path, root)).parts):
            index.setdefault(suffix, []).append(i)
    best: dict[int, PoseRecord] = {}
    unmatched = []
    for record in records:
        parts = PurePosixPath(record.image_id.replace("\\", "/")).parts
        hits = next((index[s] for s in _suffixes(parts) if s in index), None)
        if hits is None:
            unmatched.append(record.image_id)
            continue
        if len(hits) > 1:
            names = ", ".join(os.path.relpath(samples[i].path, root) for i in hits[:3])
            raise KeypointFileError(
                f"image_id '{record.image_id}' matches {len(hits)} images ({names}, ...): "
                "run the pose estimator with image ids that are paths relative to the dataset root"
            )
        # Strictly greater: on a tie the first record wins, so the choice does not depend on anything but file order.
        if hits[0] not in best or record.score > best[hits[0]].score:
            best[hits[0]] = record
    return best, unmatched


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header; PIL does not decode the pixels for this."""
    with Image.open(path) as image:
        return image.size


# --------------------------------------------------------------------------- pose vectors


def r_frame(xy: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """[N, 17, 2] pixel coordinates -> integer coordinates in the 192 x 384 frame (truncated before and after scaling)."""
    scale = np.array([R_WIDTH, R_HEIGHT], dtype=np.float64) / sizes[:, None, :]
    return np.trunc(np.trunc(xy) * scale)


def n_frame(xy: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """[N, 17, 2] pixel coordinates -> coordinates normalised by the image width and height."""
    return xy / sizes[:, None, :]


def line_lengths_angles(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and angles (degrees, y down) of the 13 body lines: two [N, 13] arrays."""
    a, b = np.array(BODY_LINES).T
    delta = coords[:, a] - coords[:, b]
    return np.hypot(delta[..., 0], delta[..., 1]), np.degrees(np.arctan2(delta[..., 1], delta[..., 0]))


def pose_vectors(xy: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """All six variants for skeletons `xy` [N, 17, 2] (pixels) of images `sizes` [N, 2] (width, height)."""
    xy, sizes = np.asarray(xy, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    vectors = {}
    for frame, coords in (("R", r_frame(xy, sizes)), ("N", n_frame(xy, sizes))):
        lengths, angles = line_lengths_angles(coords)
        vectors[f"{frame}_LA"] = np.concatenate([lengths, angles], axis=1)
        vectors[f"{frame}_LAC"] = np.concatenate([coords.reshape(len(coords), -1), lengths, angles], axis=1)
        vectors[f"{frame}_A"] = angles
    return vectors


# --------------------------------------------------------------------------- clustering and the CSV


def column_names(variants: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int, str]]:
    """(variant, K, column) in the authors' order: K ascending, then variants in `VARIANTS` order."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown pose variants {unknown}: expected some of {', '.join(VARIANTS)}")
    return [(v, k, f"{v}_{k}") for k in sorted(set(ks)) for v in VARIANTS if v in variants]


def check_cluster_counts(num_skeletons: int, ks: Sequence[int], split: str) -> None:
    """Fail early, with a message that says what to fix, where KMeans would fail or degenerate."""
    if not ks or min(ks) < 1:
        raise ClusteringError(f"numbers of clusters {list(ks)}: expected one or more positive integers")
    if num_skeletons == 0:
        raise ClusteringError(f"no {split} image has a skeleton: check that the keypoint files cover the {split} images")
    if max(ks) > num_skeletons:
        raise ClusteringError(f"K = {max(ks)} clusters asked for, but only {num_skeletons} {split} images have a skeleton")


def fit_kmeans(vectors: np.ndarray, k: int, seed: int, n_init: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=n_init, max_iter=MAX_ITER, random_state=seed).fit(vectors)


def cluster_labels(model: KMeans, vectors: np.ndarray, has_skeleton: np.ndarray) -> np.ndarray:
    """Labels of every image: 1..K for images with a skeleton, 0 for the others."""
    labels = np.zeros(len(has_skeleton), dtype=np.int64)
    labels[has_skeleton] = model.predict(vectors) + 1
    return labels


def write_pose_csv(path: Path, rows: Sequence[tuple[str, str]], columns: dict[str, Sequence[int]]) -> None:
    """`Category,Image,<columns>` with labels written as floats (`3.0`) like the authors' files.

    `rows` are (category, image key) pairs; each column holds one label per row.
    """
    for name, labels in columns.items():
        if len(labels) != len(rows):
            raise ValueError(f"column {name} has {len(labels)} labels for {len(rows)} rows")
    values = [[f"{float(labels[i])}" for labels in columns.values()] for i in range(len(rows))]
    write_csv_atomic(path, ["Category", "Image", *columns], [[c, key, *v] for (c, key), v in zip(rows, values)])


# --------------------------------------------------------------------------- figures (PIL only)


def draw_line_plot(xs: Sequence[float], ys: Sequence[float], title: str, x_label: str, y_label: str) -> Image.Image:
    """A small line plot with ticks at every x and five y ticks."""
    width, height, left, right, top, bottom = 520, 340, 80, 20, 44, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / x_span * (width - left - right), height - bottom - (y - y0) / y_span * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for x in xs:
        px, _ = to_pixel(x, y0)
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px, height - bottom + 6), f"{x:g}", fill="black", anchor="mt")
    for y in np.linspace(y0, y1, 5):
        _, py = to_pixel(x0, y)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((left - 6, py), f"{y:.4g}", fill="black", anchor="rm")
    points = [to_pixel(x, y) for x, y in zip(xs, ys)]
    draw.line(points, fill=(31, 119, 180), width=2)
    for px, py in points:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(31, 119, 180))
    draw.text((width / 2, 8), title, fill="black", anchor="mt")
    draw.text((width / 2, height - 16), x_label, fill="black", anchor="mt")
    draw.text((8, 20), y_label, fill="black")
    return image


def draw_image_grid(paths: Sequence[str | Path], title: str, columns: int = 4, cell: tuple[int, int] = (64, 128)) -> Image.Image:
    """Images `paths` scaled to fit a `cell` (aspect kept, small crops enlarged) in rows of `columns`, under a title."""
    title_height = 20
    rows = max(1, math.ceil(len(paths) / columns))
    grid = Image.new("RGB", (columns * cell[0], title_height + rows * cell[1]), "white")
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            thumb = ImageOps.contain(image.convert("RGB"), cell)
        x = (i % columns) * cell[0] + (cell[0] - thumb.width) // 2
        y = title_height + (i // columns) * cell[1] + (cell[1] - thumb.height) // 2
        grid.paste(thumb, (x, y))
    ImageDraw.Draw(grid).text((4, 4), title, fill="black")
    return grid
