"""Cluster 2D skeletons into pose classes and write the authors' pose-cluster CSV.

Reads AlphaPose results (COCO-17 keypoints; keep the highest-scoring person per
image), builds the pose vectors of `rlq.pose` for every variant, fits KMeans on
the training images that have a skeleton for every K, and writes
`Category,Image,R_LA_5,R_LAC_5,...` with labels 1..K (0 = no skeleton).

    python preprocess_pose.py --dataset ltcc --root /data/LTCC_ReID \\
        --keypoints alphapose/train.json --output LTCC_Pose_Cluster.csv --figures pose_figures
    # analysis of a test split: fit on train, label the query images
    python preprocess_pose.py --dataset ltcc --root /data/LTCC_ReID --split query \\
        --keypoints alphapose/train.json alphapose/query.json --output LTCC_QUERY_Pose_Cluster.csv
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from rlq.attributes import num_clusters
from rlq.data import DatasetLayoutError, Sample, format_table, load_dataset
from rlq.files import ends_cleanly
from rlq.options import OptionError, at_least, check_outputs_apart, formerly, output_file, output_folder
from rlq.pose import (
    DEFAULT_KS,
    VARIANTS,
    ClusteringError,
    KeypointFileError,
    PoseRecord,
    check_cluster_counts,
    cluster_labels,
    column_names,
    draw_image_grid,
    draw_line_plot,
    fit_kmeans,
    image_size,
    match_records,
    pose_vectors,
    read_alphapose,
    write_pose_csv,
)

Variant = Literal["R_LA", "R_LAC", "R_A", "N_LA", "N_LAC", "N_A"]
GRID_MEMBERS = 16  # random members shown per cluster


@dataclass
class Args:
    """Cluster AlphaPose skeletons into pose classes (the pose labels of CGAL/CAP) and write the pose-cluster CSV."""

    dataset: Literal["ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external"]
    """Which dataset layout to read."""
    keypoints: tuple[Path, ...]
    """AlphaPose results JSON file(s), e.g. one per split folder. Records match images by file name, or by path relative to the dataset root where names repeat (PRCC)."""
    output: Annotated[Path, formerly("--out", "--output")]
    """Pose-cluster CSV to write (Category,Image,<variant>_<K>,...)."""
    root: Path | None = None
    """Dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic datasets."""
    variants: tuple[Variant, ...] = VARIANTS
    """Pose-vector variants (R = 192x384 integer frame, N = normalised; LA = lengths + angles, A = angles, LAC = coordinates + LA)."""
    ks: tuple[int, ...] = DEFAULT_KS
    """Numbers of clusters K."""
    split: str = "train"
    """Split to label. KMeans is always fitted on train; another split (query, gallery, ...) is for analysis."""
    seed: int = 0
    """KMeans random_state."""
    n_init: int = 10
    """KMeans restarts (best inertia kept)."""
    figures: Path | None = None
    """If given, write inertia-vs-K plots per variant and a grid of random members per cluster here."""


def read_records(paths: tuple[Path, ...]) -> list[PoseRecord]:
    if not paths:
        raise KeypointFileError("no keypoint file given: pass --keypoints with one or more AlphaPose results files")
    return [record for path in paths for record in read_alphapose(path)]


def skeleton_arrays(samples: list[Sample], matched: dict[int, PoseRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the samples with a skeleton, their keypoints [N, 17, 2] and image sizes [N, 2]."""
    indices = np.array(sorted(matched), dtype=np.int64)
    xy = np.stack([matched[i].keypoints[:, :2] for i in indices]) if len(indices) else np.zeros((0, 17, 2))
    sizes = np.array([readable_size(samples[i].path) for i in indices], dtype=np.float64).reshape(-1, 2)
    return indices, xy, sizes


def readable_size(path: str) -> tuple[int, int]:
    """(width, height) of an image, which scales its skeleton; an unreadable image is an error naming it."""
    try:
        return image_size(path)
    except OSError as error:
        raise DatasetLayoutError(f"cannot read the image '{path}' (its size scales the skeleton): {error}; "
                                 "`python -m rlq.data --check-images` lists every unreadable image") from None


def print_report(labels: dict[str, np.ndarray], inertias: dict[tuple[str, int], float]) -> None:
    variants = [v for v in VARIANTS if any(key[0] == v for key in inertias)]
    ks = sorted({k for _, k in inertias})
    rows = [[k, *(f"{inertias[v, k]:.6g}" for v in variants)] for k in ks]
    print("\nKMeans inertia on the training skeletons\n" + format_table(["K", *variants], rows))
    rows = []
    for column, values in labels.items():
        sizes = np.bincount(values, minlength=num_clusters(column) + 1)
        rows.append([column, sizes[0], sizes[1:].min(), sizes[1:].max(), " ".join(map(str, sizes[1:]))])
    print("\nCluster sizes\n" + format_table(["column", "no skeleton", "smallest", "largest", "sizes of clusters 1..K"], rows))


def write_figures(
    folder: Path, samples: list[Sample], labels: dict[str, np.ndarray], inertias: dict[tuple[str, int], float], seed: int
) -> None:
    """Inertia-vs-K plot per variant, and per column a folder of member grids (cluster_00 = no skeleton)."""
    folder.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        ks = sorted(k for v, k in inertias if v == variant)
        if ks:
            plot = draw_line_plot(ks, [inertias[variant, k] for k in ks], f"{variant}: KMeans inertia", "K", "inertia")
            plot.save(folder / f"inertia_{variant}.png")
    for column, values in labels.items():
        rng = np.random.default_rng(seed)  # same members on every run
        (folder / column).mkdir(exist_ok=True)
        for label in np.unique(values):
            members = np.flatnonzero(values == label)
            shown = np.sort(rng.choice(members, size=min(GRID_MEMBERS, len(members)), replace=False))
            title = f"{column}: " + ("no skeleton" if label == 0 else f"cluster {label}") + f" ({len(members)} images)"
            grid = draw_image_grid([samples[i].path for i in shown], title)
            grid.save(folder / column / f"cluster_{label:02d}.png")


def main(args: Args) -> None:
    at_least(1, n_init=args.n_init)
    output_file(args.output, "--output")
    output_folder(args.figures, "--figures")
    check_outputs_apart({"--output": args.output, "--figures": args.figures}, {"--keypoints": args.keypoints, "--root": args.root})
    dataset = load_dataset(args.dataset, args.root)
    if args.split not in dataset.splits:
        raise DatasetLayoutError(f"{dataset.name} has no split '{args.split}': expected one of {', '.join(dataset.splits)}")
    train, target = dataset.splits["train"], dataset.splits[args.split]
    # Train always comes first: KMeans is fitted there; `offset` is where the labelled split starts.
    samples, offset = (train, 0) if args.split == "train" else (train + target, len(train))
    columns = column_names(args.variants, args.ks)

    records = read_records(args.keypoints)
    matched, unmatched = match_records(records, samples, dataset.root)
    indices, xy, sizes = skeleton_arrays(samples, matched)
    in_train = indices < len(train)
    in_target = (indices >= offset) & (indices < offset + len(target))
    print(f"{len(records)} AlphaPose records from {len(args.keypoints)} file(s)")
    found = f"train {in_train.sum()}/{len(train)} images"
    if offset:
        found += f", {args.split} {in_target.sum()}/{len(target)}"
    print(f"skeletons: {found}")
    several = len(records) - len(unmatched) - len(matched)
    if several:
        print(f"{several} extra detections on images with several people: kept the highest-scoring one")
    if unmatched:
        splits = "train" if offset == 0 else f"train and {args.split}"
        print(f"{len(unmatched)} records name images outside the {splits} split(s), ignored (first: {', '.join(unmatched[:3])})")
    check_cluster_counts(int(in_train.sum()), args.ks, "train")

    vectors = pose_vectors(xy, sizes)
    has_skeleton = np.zeros(len(samples), dtype=bool)
    has_skeleton[indices] = True
    has_skeleton = has_skeleton[offset : offset + len(target)]
    labels, inertias = {}, {}
    for variant, k, column in columns:
        model = fit_kmeans(vectors[variant][in_train], k, args.seed, args.n_init)
        inertias[variant, k] = float(model.inertia_)
        labels[column] = cluster_labels(model, vectors[variant][in_target], has_skeleton)

    write_pose_csv(args.output, [(args.split, s.key) for s in target], labels)
    print_report(labels, inertias)
    print(f"\nwrote {args.output} ({len(target)} rows, {len(labels)} columns)")
    if args.figures is not None:
        write_figures(args.figures, target, labels, inertias, args.seed)
        print(f"wrote figures to {args.figures}")


if __name__ == "__main__":
    import tyro

    with ends_cleanly():
        try:
            main(tyro.cli(Args))
        except (DatasetLayoutError, KeypointFileError, ClusteringError, OptionError) as error:
            sys.exit(f"error: {error}")
