"""Dataset parsers for the real on-disk layouts, and the dataset summary CLI.

Every image becomes a `Sample(path, pid, camid, clothes_id, ...)`. Training
identities and clothes are relabelled to 0..N-1 in sorted order of their raw
keys; test identities keep their raw value, and test clothes are relabelled
jointly over the query and gallery sets. Labels come from file NAMES (never
from the full path, so a directory called `my_c1_cache` cannot change them);
only PRCC and LaST keep the identity in a folder name, and there we read the
immediate parent folder and nothing above it.

    python -m rlq.data --dataset ltcc --root /data/LTCC_ReID
    python -m rlq.data --dataset synthetic --print-json
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np

from rlq.attributes import AttributeFileError, attribute_coverage
from rlq.files import ends_cleanly
from rlq.images import ImageReadError, load_image
from rlq.options import formerly
from rlq.samples import Sample

# Files a dataset parser takes as samples: every layout we read names its images .png/.jpg/.jpeg.
SAMPLE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Images in other formats: not samples, but counted and named in the summary (`skipped_table`),
# since a dataset converted to one of these by accident would otherwise just lose images.
OTHER_IMAGE_EXTENSIONS = (".bmp", ".gif", ".tif", ".tiff", ".webp", ".jp2", ".j2k", ".heic", ".heif", ".avif",
                          ".ppm", ".pgm", ".pbm", ".pnm")
# What folder listings without a naming scheme (`rlq.ranking.list_images`) take as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
DATASETS = ("ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external")


class DatasetLayoutError(ValueError):
    """The folder given as a dataset root does not look like that dataset."""


@dataclass(frozen=True)
class Evaluation:
    """One retrieval protocol run: `query_split` against `gallery_split`."""

    name: str
    query_split: str
    gallery_split: str
    protocol: Literal["standard", "cc", "sc"]


@dataclass
class ReIDDataset:
    """A parsed dataset: splits of samples plus what training and evaluation need."""

    name: str
    root: Path
    splits: dict[str, list[Sample]]
    evaluations: list[Evaluation]
    headline: str  # name of the evaluation whose top-1 picks the best checkpoint
    val_splits: dict[str, list[Sample]] = field(default_factory=dict)
    val_evaluations: list[Evaluation] = field(default_factory=list)
    # split name ("val/<split>" for validation splits) -> paths of the files in its folders that look like
    # images in a format the parser does not read (`OTHER_IMAGE_EXTENSIONS`); splits with none are absent.
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def train(self) -> list[Sample]:
        return self.splits["train"]

    @property
    def num_train_pids(self) -> int:
        return 1 + max(s.pid for s in self.train)

    @property
    def num_train_clothes(self) -> int:
        return 1 + max(s.clothes_id for s in self.train)

    @property
    def pid2clothes(self) -> np.ndarray:
        """[num_train_pids, num_train_clothes] 0/1 matrix: which clothes each identity wears."""
        matrix = np.zeros((self.num_train_pids, self.num_train_clothes), dtype=np.uint8)
        for s in self.train:
            matrix[s.pid, s.clothes_id] = 1
        return matrix


# --------------------------------------------------------------------------- helpers


def _layout_error(dataset: str, root: Path, expected: str, problem: str) -> DatasetLayoutError:
    if root.is_dir():
        entries = sorted(os.listdir(root))
        shown = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)" if len(entries) > 12 else "")
        found = f"it contains: {shown or '(nothing)'}"
    else:
        found = "it does not exist" if not root.exists() else "it is not a directory"
    return DatasetLayoutError(
        f"{dataset}: '{root}' does not match the expected layout ({problem}).\n"
        f"  expected: {expected}\n"
        f"  found: {found}"
    )


def _find_root(dataset: str, root: Path, folder_name: str, required: tuple[str, ...], expected: str) -> Path:
    """Accept either the dataset folder itself or its parent (e.g. `.../LTCC_ReID` or `...`)."""
    root = Path(root).expanduser()
    for candidate in (root, root / folder_name):
        if all((candidate / r).exists() for r in required):
            return candidate
    missing = [r for r in required if not (root / r).exists()]
    raise _layout_error(dataset, root, expected, f"missing {', '.join(missing)}")


def is_macos_metadata(name: str) -> bool:
    """macOS Finder files: `._<name>` AppleDouble files (which keep the image's extension) and `.DS_Store`."""
    return name.startswith("._") or name == ".DS_Store"


def _files_with(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files directly inside `folder` whose names end in `extensions` (macOS metadata never), sorted by name."""
    return sorted(
        (Path(e.path) for e in os.scandir(folder)
         if e.is_file() and e.name.lower().endswith(extensions) and not is_macos_metadata(e.name)),
        key=lambda p: p.name,
    )


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (non-image files are not samples)."""
    return _files_with(folder, SAMPLE_EXTENSIONS)


def _skipped_files(splits: dict[str, list[Path]]) -> dict[str, list[str]]:
    """split -> the files in other image formats directly inside its folders (`ReIDDataset.skipped`)."""
    found = {split: [str(p) for folder in folders if folder.is_dir() for p in _files_with(folder, OTHER_IMAGE_EXTENSIONS)]
             for split, folders in splits.items()}
    return {split: paths for split, paths in found.items() if paths}


def _subfolders(folder: Path) -> list[Path]:
    return sorted((Path(e.path) for e in os.scandir(folder) if e.is_dir()), key=lambda p: p.name)


def _match(pattern: re.Pattern, path: Path, dataset: str, expected: str) -> re.Match:
    m = pattern.match(path.name)
    if m is None:
        raise DatasetLayoutError(f"{dataset}: cannot parse the file name '{path}': expected {expected}")
    return m


@dataclass(frozen=True)
class _Raw:
    """A parsed image before relabelling: raw identity and raw clothes key."""

    path: Path
    raw_pid: int
    pid_key: str
    camid: int
    clothes_key: tuple
    key: str


def _relabel_train(raws: list[_Raw]) -> list[Sample]:
    pid_map = {p: i for i, p in enumerate(sorted({r.raw_pid for r in raws}))}
    clothes_map = {c: i for i, c in enumerate(sorted({r.clothes_key for r in raws}))}
    return [
        Sample(str(r.path), pid_map[r.raw_pid], r.camid, clothes_map[r.clothes_key], r.key, r.pid_key)
        for r in raws
    ]


def _relabel_test(*sets: list[_Raw]) -> list[list[Sample]]:
    """Test identities keep their raw value; clothes are relabelled jointly over all sets."""
    clothes_map = {c: i for i, c in enumerate(sorted({r.clothes_key for raws in sets for r in raws}))}
    return [
        [Sample(str(r.path), r.raw_pid, r.camid, clothes_map[r.clothes_key], r.key, r.pid_key) for r in raws]
        for raws in sets
    ]


def _nonempty(dataset: str, folder: Path, raws: list, expected: str) -> list:
    if not raws:
        raise DatasetLayoutError(f"{dataset}: no images found in '{folder}': expected {expected}")
    return raws


# --------------------------------------------------------------------------- LTCC

_LTCC_NAME = re.compile(r"^(\d+)_(\d+)_c(\d+)_(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)
_LTCC_EXPECTED = "<root>/{train,query,test}/PPP_C_cX_FFFFFF.png (root may also be the parent of LTCC_ReID/)"


def _ltcc_split(folder: Path, split: str) -> list[_Raw]:
    raws = []
    for path in _image_files(folder):
        pid, clothes, cam, _ = _match(_LTCC_NAME, path, "ltcc", "PPP_C_cX_FFFFFF.png, e.g. 001_1_c11_015833.png").groups()[:4]
        key = path.stem if split == "train" else f"{folder.name}/{path.stem}"
        raws.append(_Raw(path, int(pid), pid, int(cam) - 1, (int(pid), int(clothes)), key))
    return _nonempty("ltcc", folder, raws, _LTCC_EXPECTED)


def read_ltcc(root: Path) -> ReIDDataset:
    root = _find_root("ltcc", root, "LTCC_ReID", ("train", "query", "test"), _LTCC_EXPECTED)
    query, gallery = _relabel_test(_ltcc_split(root / "query", "query"), _ltcc_split(root / "test", "test"))
    return ReIDDataset(
        name="ltcc",
        root=root,
        splits={"train": _relabel_train(_ltcc_split(root / "train", "train")), "query": query, "gallery": gallery},
        evaluations=[
            Evaluation("standard", "query", "gallery", "standard"),
            Evaluation("cc", "query", "gallery", "cc"),
            Evaluation("sc", "query", "gallery", "sc"),
        ],
        headline="cc",
        skipped=_skipped_files({"train": [root / "train"], "query": [root / "query"], "gallery": [root / "test"]}),
    )


# --------------------------------------------------------------------------- PRCC

_PRCC_TRAIN_NAME = re.compile(r"^([ABC])_cropped_rgb(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_PRCC_TEST_NAME = re.compile(r"^cropped_rgb(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_PRCC_CAMERAS = {"A": 0, "B": 1, "C": 2}
_PRCC_EXPECTED = (
    "<root>/rgb/{train,val}/<pid>/{A|B|C}_cropped_rgbNNN.jpg and <root>/rgb/test/{A|B|C}/<pid>/cropped_rgbNNN.jpg "
    "(root may also be the parent of prcc/)"
)


def _prcc_pid(folder: Path) -> int:
    if not folder.name.isdigit():
        raise DatasetLayoutError(f"prcc: identity folder '{folder}' is not a number: expected {_PRCC_EXPECTED}")
    return int(folder.name)


def _prcc_clothes(pid: int, camera: str) -> tuple[int, int]:
    # Cameras A and B see the same outfit; camera C sees another one.
    return (pid, 0 if camera in "AB" else 1)


def _prcc_by_identity(folder: Path) -> list[_Raw]:
    raws = []
    for pid_folder in _subfolders(folder):
        pid = _prcc_pid(pid_folder)
        for path in _image_files(pid_folder):
            camera = _match(_PRCC_TRAIN_NAME, path, "prcc", "{A|B|C}_cropped_rgbNNN.jpg").group(1).upper()
            key = f"{pid_folder.name}_{path.stem}"
            raws.append(_Raw(path, pid, pid_folder.name, _PRCC_CAMERAS[camera], _prcc_clothes(pid, camera), key))
    return _nonempty("prcc", folder, raws, _PRCC_EXPECTED)


def _prcc_test(folder: Path) -> dict[str, list[_Raw]]:
    by_camera = {}
    for camera in "ABC":
        camera_folder = folder / camera
        if not camera_folder.is_dir():
            raise _layout_error("prcc", folder, _PRCC_EXPECTED, f"missing camera folder {camera}/")
        raws = []
        for pid_folder in _subfolders(camera_folder):
            pid = _prcc_pid(pid_folder)
            for path in _image_files(pid_folder):
                _match(_PRCC_TEST_NAME, path, "prcc", "cropped_rgbNNN.jpg")
                key = f"{camera}/{pid_folder.name}_{path.stem}"
                raws.append(_Raw(path, pid, pid_folder.name, _PRCC_CAMERAS[camera], _prcc_clothes(pid, camera), key))
        by_camera[camera] = _nonempty("prcc", camera_folder, raws, _PRCC_EXPECTED)
    return by_camera


def _prcc_query_sets(by_camera: dict[str, list[_Raw]]) -> dict[str, list[Sample]]:
    """Gallery = camera A; same-clothes query = camera B; clothes-changing query = camera C."""
    gallery, query_same, query_diff = _relabel_test(by_camera["A"], by_camera["B"], by_camera["C"])
    return {"query_same": query_same, "query_diff": query_diff, "gallery": gallery}


def _split_val_by_camera(raws: list[_Raw]) -> dict[str, list[_Raw]]:
    return {camera: [r for r in raws if r.camid == index] for camera, index in _PRCC_CAMERAS.items()}


_PRCC_EVALUATIONS = [
    Evaluation("sc", "query_same", "gallery", "standard"),
    Evaluation("cc", "query_diff", "gallery", "standard"),
]


def read_prcc(root: Path) -> ReIDDataset:
    root = _find_root("prcc", root, "prcc", ("rgb/train", "rgb/test"), _PRCC_EXPECTED)
    rgb = root / "rgb"
    splits = {"train": _relabel_train(_prcc_by_identity(rgb / "train"))} | _prcc_query_sets(_prcc_test(rgb / "test"))
    val_splits, val_evaluations = {}, []
    if (rgb / "val").is_dir():
        # PRCC's validation images share the training identities; split them by camera like the test set.
        val_splits = _prcc_query_sets(_split_val_by_camera(_prcc_by_identity(rgb / "val")))
        val_evaluations = _PRCC_EVALUATIONS
    return ReIDDataset("prcc", root, splits, _PRCC_EVALUATIONS, "cc", val_splits, val_evaluations, _prcc_skipped(rgb))


def _prcc_skipped(rgb: Path) -> dict[str, list[str]]:
    """Skipped files per split: train and val by identity folder, test (and val) by camera as the query sets split them."""
    identity_folders = {name: _subfolders(rgb / name) if (rgb / name).is_dir() else [] for name in ("train", "val")}
    test = {split: _subfolders(rgb / "test" / camera) if (rgb / "test" / camera).is_dir() else []
            for split, camera in (("gallery", "A"), ("query_same", "B"), ("query_diff", "C"))}
    return _skipped_files({"train": identity_folders["train"], **test, "val": identity_folders["val"]})


# --------------------------------------------------------------------------- Celeb-reID

_CELEB_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_CELEB_EXPECTED = "<root>/{train,query,gallery}/{pid}_{index}_{k}.jpg (root may also be the parent of Celeb-reID/)"


def _celeb_split(folder: Path, dataset: str) -> list[_Raw]:
    raws = []
    for path in _image_files(folder):
        pid, index, _ = _match(_CELEB_NAME, path, dataset, "{pid}_{index}_{k}.jpg, e.g. 103_15_0.jpg").groups()[:3]
        # No cameras: the authors use the first digit of `index` as a pseudo camera (kept for comparable numbers).
        # No clothes labels: every image is its own clothes class.
        raws.append(_Raw(path, int(pid), pid, int(index[0]), (folder.name, path.name), path.stem))
    return _nonempty(dataset, folder, raws, _CELEB_EXPECTED)


def read_celeb(root: Path, name: str = "celeb") -> ReIDDataset:
    root = _find_root(name, root, "Celeb-reID", ("train", "query", "gallery"), _CELEB_EXPECTED)
    query, gallery = _relabel_test(_celeb_split(root / "query", name), _celeb_split(root / "gallery", name))
    return ReIDDataset(
        name=name,
        root=root,
        splits={"train": _relabel_train(_celeb_split(root / "train", name)), "query": query, "gallery": gallery},
        evaluations=[Evaluation("standard", "query", "gallery", "standard")],
        headline="standard",
        skipped=_skipped_files({split: [root / split] for split in ("train", "query", "gallery")}),
    )


# --------------------------------------------------------------------------- LaST

_LAST_NAME = re.compile(r"^(-?\d+)_.*\.(jpg|jpeg|png)$", re.IGNORECASE)
_LAST_EXPECTED = (
    "<root>/train/<pid>/*.jpg, <root>/{val,test}/query/*.jpg and <root>/{val,test}/gallery/<pid>/*.jpg, "
    "file names '_'-separated with the zero-padded pid first (root may also be the parent of last/)"
)


def _last_image(path: Path, pid_folder: str | None) -> tuple[int, str, str] | None:
    """(pid, pid text, attribute key) of a LaST image; None for distractors (pid -1)."""
    pid_text = _match(_LAST_NAME, path, "last", "<pid>_..._<k>.jpg, e.g. 000002_000_00009_0134_01_004.jpg").group(1)
    if int(pid_text) == -1:
        return None
    key = f"{pid_folder}_{path.stem}" if pid_folder is not None else path.stem
    return int(pid_text), pid_text, key


def _last_train(folder: Path) -> list[_Raw]:
    raws = []
    for pid_folder in _subfolders(folder):
        for path in _image_files(pid_folder):
            parsed = _last_image(path, pid_folder.name)
            if parsed is not None:
                pid, pid_text, key = parsed
                outfit = path.stem.split("_")[-1]
                raws.append(_Raw(path, pid, pid_text, 0, (pid_text, outfit), key))
    return _nonempty("last", folder, raws, _LAST_EXPECTED)


def _last_test(folder: Path) -> dict[str, list[Sample]]:
    """Test conventions: no clothes labels (clothes = pid) and a unique camera per image, so nothing is junk."""
    files = [(path, None) for path in _image_files(folder / "query")]
    num_query = len(files)
    files += [(path, d.name) for d in _subfolders(folder / "gallery") for path in _image_files(d)]
    query, gallery = [], []
    for index, (path, pid_folder) in enumerate(files):
        parsed = _last_image(path, pid_folder)
        if parsed is not None:
            pid, pid_text, key = parsed
            (query if index < num_query else gallery).append(Sample(str(path), pid, index, pid, key, pid_text))
    _nonempty("last", folder / "query", query, _LAST_EXPECTED)
    _nonempty("last", folder / "gallery", gallery, _LAST_EXPECTED)
    return {"query": query, "gallery": gallery}


def read_last(root: Path) -> ReIDDataset:
    required = ("train", "test/query", "test/gallery")
    root = _find_root("last", root, "last", required, _LAST_EXPECTED)
    evaluations = [Evaluation("standard", "query", "gallery", "standard")]
    has_val = (root / "val/query").is_dir() and (root / "val/gallery").is_dir()
    return ReIDDataset(
        name="last",
        root=root,
        splits={"train": _relabel_train(_last_train(root / "train"))} | _last_test(root / "test"),
        evaluations=evaluations,
        headline="standard",
        val_splits=_last_test(root / "val") if has_val else {},
        val_evaluations=evaluations if has_val else [],
        skipped=_last_skipped(root, has_val),
    )


def _last_skipped(root: Path, has_val: bool) -> dict[str, list[str]]:
    folders = {"train": _subfolders(root / "train")}
    for prefix, parent in (("", root / "test"), *((("val/", root / "val"),) if has_val else ())):
        folders[f"{prefix}query"] = [parent / "query"]
        folders[f"{prefix}gallery"] = _subfolders(parent / "gallery")
    return _skipped_files(folders)


# --------------------------------------------------------------------------- DeepChange

_DEEPCHANGE_NAME = re.compile(r"^[pP](\d+)_[cC](\d+)_(\d{8})_(\d{6})_(\d+)_bbox\.(jpg|jpeg|png)$")
_DEEPCHANGE_EXPECTED = (
    "<root>/{train-set,test-set-query,test-set-gallery,val-set-query,val-set-gallery}/ with list files "
    "<root>/<folder>-bbox.txt of lines '<file name>,<tracklet id>'; file names pNNNN_cCC_YYYYMMDD_HHMMSS_NNNNNN_bbox.jpg "
    "(root may also be the parent of DeepChangeDataset/)"
)


def _deepchange_split(root: Path, folder_name: str) -> list[_Raw]:
    folder, list_file = root / folder_name, root / f"{folder_name}-bbox.txt"
    if not list_file.is_file():
        raise _layout_error("deepchange", root, _DEEPCHANGE_EXPECTED, f"missing list file {list_file.name}")
    tracklets = {}
    for line_number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, tracklet = line.strip().rpartition(",")
        if not name or not tracklet.strip().lstrip("-").isdigit():
            raise DatasetLayoutError(
                f"deepchange: line {line_number} of '{list_file}' is '{line}': expected '<file name>,<tracklet id>'"
            )
        tracklets[name.strip()] = int(tracklet)
    on_disk = {p.name: p for p in _image_files(folder)}
    for what, names in (("listed in '%s' but missing from '%s'" % (list_file.name, folder), tracklets.keys() - on_disk.keys()),
                        ("in '%s' but not listed in '%s'" % (folder, list_file.name), on_disk.keys() - tracklets.keys())):
        if names:
            first = ", ".join(sorted(names)[:5])
            raise DatasetLayoutError(f"deepchange: {len(names)} images {what}: {first}")
    raws = []
    for name in sorted(tracklets):
        path = on_disk[name]
        pid, _, date = _match(_DEEPCHANGE_NAME, path, "deepchange", "pNNNN_cCC_YYYYMMDD_HHMMSS_NNNNNN_bbox.jpg").groups()[:3]
        # One outfit per person per day; the camera slot holds the tracklet (same pid + tracklet = junk).
        raws.append(_Raw(path, int(pid), name.split("_")[0], tracklets[name], (int(pid), date), path.stem))
    return _nonempty("deepchange", folder, raws, _DEEPCHANGE_EXPECTED)


def read_deepchange(root: Path) -> ReIDDataset:
    required = ("train-set", "test-set-query", "test-set-gallery")
    root = _find_root("deepchange", root, "DeepChangeDataset", required, _DEEPCHANGE_EXPECTED)
    query, gallery = _relabel_test(_deepchange_split(root, "test-set-query"), _deepchange_split(root, "test-set-gallery"))
    evaluations = [Evaluation("standard", "query", "gallery", "standard")]
    val_splits, val_evaluations = {}, []
    if (root / "val-set-query").is_dir() and (root / "val-set-gallery").is_dir():
        val_query, val_gallery = _relabel_test(_deepchange_split(root, "val-set-query"), _deepchange_split(root, "val-set-gallery"))
        val_splits, val_evaluations = {"query": val_query, "gallery": val_gallery}, evaluations
    return ReIDDataset(
        name="deepchange",
        root=root,
        splits={"train": _relabel_train(_deepchange_split(root, "train-set")), "query": query, "gallery": gallery},
        evaluations=evaluations,
        headline="standard",
        val_splits=val_splits,
        val_evaluations=val_evaluations,
        skipped=_skipped_files({"train": [root / "train-set"], "query": [root / "test-set-query"], "gallery": [root / "test-set-gallery"],
                                "val/query": [root / "val-set-query"], "val/gallery": [root / "val-set-gallery"]}),
    )


# --------------------------------------------------------------------------- entry point

READERS: dict[str, Callable[[Path], ReIDDataset]] = {
    "ltcc": read_ltcc,
    "prcc": read_prcc,
    "celeb": read_celeb,
    "last": read_last,
    "deepchange": read_deepchange,
}


def load_dataset(name: str, root: str | Path | None = None) -> ReIDDataset:
    """Parse dataset `name` from `root`.

    `synthetic` is the generated clothes-changing set read as LTCC (its target
    part) and `synthetic-external` its Celeb-reID-layout part; with no root,
    both are generated into a cache directory on first use.
    """
    name = name.lower()
    if name in ("synthetic", "synthetic-external"):
        from rlq.synthetic import ensure_synthetic

        base = ensure_synthetic(Path(root) if root is not None else None)
        if name == "synthetic":
            return dataclasses.replace(read_ltcc(base / "target"), name=name)
        return read_celeb(base / "external", name=name)
    if name not in READERS:
        raise DatasetLayoutError(f"unknown dataset '{name}': expected one of {', '.join(DATASETS)}")
    if root is None:
        raise DatasetLayoutError(f"dataset '{name}' needs --root: the folder you obtained from the dataset's authors")
    return READERS[name](Path(root))


def split_summary(samples: list[Sample]) -> dict[str, int]:
    return {
        "images": len(samples),
        "ids": len({s.pid for s in samples}),
        "cameras": len({s.camid for s in samples}),
        "clothes": len({s.clothes_id for s in samples}),
    }


def summary(dataset: ReIDDataset) -> dict:
    """JSON-friendly summary: images, identities, cameras and clothes of every split."""
    result = {"dataset": dataset.name, "root": str(dataset.root), "splits": {k: split_summary(v) for k, v in dataset.splits.items()}}
    if dataset.val_splits:
        result["val_splits"] = {k: split_summary(v) for k, v in dataset.val_splits.items()}
    if dataset.skipped:
        result["skipped"] = {split: skipped_summary(paths) for split, paths in dataset.skipped.items()}
    return result


def skipped_summary(paths: list[str], examples: int = 3) -> dict:
    """{"files": count, "extensions": {".webp": count, ...} (most first), "examples": the first few paths}."""
    counts: dict[str, int] = {}
    for path in paths:
        extension = Path(path).suffix.lower()
        counts[extension] = counts.get(extension, 0) + 1
    by_count = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return {"files": len(paths), "extensions": by_count, "examples": sorted(paths)[:examples]}


def skipped_line(dataset: ReIDDataset) -> str | None:
    """The summary's line about files in formats the parser does not read, or None if there are none.

    skipped 3 files in formats the ltcc parser does not read: .webp (2), .bmp (1); train 2, query 1; e.g. <path>, <path>
    """
    if not dataset.skipped:
        return None
    total = skipped_summary([p for paths in dataset.skipped.values() for p in paths])
    extensions = ", ".join(f"{extension} ({count})" for extension, count in total["extensions"].items())
    per_split = ", ".join(f"{split} {len(paths)}" for split, paths in dataset.skipped.items())
    return (f"skipped {total['files']} files in formats the {dataset.name} parser does not read: {extensions}; "
            f"{per_split}; e.g. {', '.join(total['examples'])}")


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain fixed-width text table (used for every summary we print)."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _decode_problem(path: str) -> str | None:
    """Why the training reader (`rlq.images.load_image`) refuses `path`, or None if it reads it.

    The full decode and RGB conversion run here, so a truncated file or one that opens but
    cannot be converted fails at the check, not in a loader worker hours later.
    """
    try:
        load_image(path)
        return None
    except ImageReadError as error:
        return error.reason
    except Exception as error:  # anything else PIL raises for a broken file is a refusal too
        return f"{type(error).__name__}: {error}"


def unreadable_images(samples: list[Sample], workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of every image of `samples` that cannot be decoded, each file decoded once (threads)."""
    paths = sorted({s.path for s in samples})
    with ThreadPoolExecutor(workers or min(32, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(_decode_problem, paths))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def unreadable_report(problems: list[tuple[str, str]], limit: int = 20) -> str:
    lines = [f"  {path}: {reason}" for path, reason in problems[:limit]]
    more = [f"  ... and {len(problems) - limit} more"] if len(problems) > limit else []
    return "\n".join([f"{len(problems)} unreadable image(s); fix or remove them (or skip this check with --no-check-images):",
                      *lines, *more])


VAL_EVALUATIONS_HELD_OUT = [Evaluation("cc", "query", "gallery", "cc")]


def check_training_identities(dataset: ReIDDataset) -> ReIDDataset:
    """Refuse a training set that cannot teach anything: with one identity every identity loss is zero."""
    if dataset.num_train_pids < 2:
        raise DatasetLayoutError(f"the training split of {dataset.name} ({dataset.root}) has {dataset.num_train_pids} "
                                 "identity: with one class every identity loss is zero and nothing is learnt; "
                                 "expected at least 2 identities")
    return dataset


def hold_out_identities(dataset: ReIDDataset, num_ids: int, seed: int) -> ReIDDataset:
    """A validation split made of `num_ids` training identities, which leave the training set (LTCC has none).

    The identities are drawn (deterministically for `seed`) among those with at least two outfits. Each
    gives one randomly chosen outfit as queries and its other outfits as gallery, so the split runs the
    clothes-changing protocol; a query with no other-outfit gallery image from another camera (nothing
    to find under that protocol) is left out. The remaining training identities and outfits are
    relabelled 0..n-1 in their previous order. `num_ids` 0 returns the dataset as it is.
    """
    if num_ids == 0:
        return dataset
    if dataset.val_evaluations or dataset.headline != "cc":
        raise DatasetLayoutError(f"--val-ids: {dataset.name} has its own validation split or no clothes-changing protocol; "
                                 "it is meant for LTCC (use --select-on val with the dataset's own split)")
    outfits: dict[int, set[int]] = {}
    for s in dataset.train:
        outfits.setdefault(s.pid, set()).add(s.clothes_id)
    candidates = sorted(pid for pid, owned in outfits.items() if len(owned) > 1)
    if not 0 < num_ids < len(candidates):
        raise DatasetLayoutError(f"--val-ids {num_ids}: {dataset.name} has {len(candidates)} training identities with "
                                 "two or more outfits; hold out at least 1 and fewer than that")
    rng = np.random.default_rng([seed, num_ids])
    held_out = set(rng.choice(candidates, size=num_ids, replace=False).tolist())
    query, gallery = [], []
    for pid in sorted(held_out):
        images = [s for s in dataset.train if s.pid == pid]
        query_outfit = rng.choice(sorted(outfits[pid]))
        gallery += [s for s in images if s.clothes_id != query_outfit]
        cameras = {s.camid for s in images if s.clothes_id != query_outfit}
        query += [s for s in images if s.clothes_id == query_outfit and cameras - {s.camid}]
    kept = [s for s in dataset.train if s.pid not in held_out]
    pid_map = {p: i for i, p in enumerate(sorted({s.pid for s in kept}))}
    clothes_map = {c: i for i, c in enumerate(sorted({s.clothes_id for s in kept}))}
    train = [dataclasses.replace(s, pid=pid_map[s.pid], clothes_id=clothes_map[s.clothes_id]) for s in kept]
    return dataclasses.replace(dataset, splits=dataset.splits | {"train": train},
                               val_splits={"query": query, "gallery": gallery}, val_evaluations=VAL_EVALUATIONS_HELD_OUT)


def summary_table(dataset: ReIDDataset) -> str:
    info = summary(dataset)
    groups = [("", info["splits"])] + ([("val/", info["val_splits"])] if "val_splits" in info else [])
    rows = [[prefix + split, s["images"], s["ids"], s["cameras"], s["clothes"]] for prefix, splits in groups for split, s in splits.items()]
    table = f"{dataset.name} ({dataset.root})\n" + format_table(["split", "images", "ids", "cameras", "clothes"], rows)
    skipped = skipped_line(dataset)
    return table if skipped is None else f"{table}\n{skipped}"


@dataclass
class SummaryArgs:
    """Print a summary of a dataset: images, identities, cameras and clothes per split."""

    dataset: Literal["ltcc", "prcc", "celeb", "last", "deepchange", "synthetic", "synthetic-external"]
    """Which dataset layout to read."""
    root: Path | None = None
    """Dataset folder (e.g. /data/LTCC_ReID). Optional for the synthetic datasets (generated into a cache)."""
    print_json: Annotated[bool, formerly("--json", "--print-json")] = False
    """Print the summary as JSON instead of a table."""
    gender_csv: Path | None = None
    """Gender CSV in the authors' format (Category,ID,Gender): report its coverage of the training identities."""
    pose_csv: Path | None = None
    """Pose-cluster CSV in the authors' format (Category,Image,<columns>): report its coverage of training images."""
    pose_column: str = "R_LA_15"
    """Which pose-cluster column to read."""
    check_images: bool = False
    """Decode every image of --splits (in parallel) and list each unreadable one with its reason; exit status 1 if any."""
    splits: tuple[str, ...] = ()
    """Splits whose images --check-images decodes (e.g. train query gallery); default: all, validation splits included."""


def main(args: SummaryArgs) -> None:
    dataset = load_dataset(args.dataset, args.root)
    info = summary(dataset)
    coverage = attribute_coverage(dataset.train, args.gender_csv, args.pose_csv, args.pose_column)
    if coverage:
        info["attributes"] = coverage
    if args.print_json:
        print(json.dumps(info, indent=2))
        return
    print(summary_table(dataset))
    for name, c in coverage.items():
        print(f"{name}: {c['covered']}/{c['total']} training {c['unit']} covered by {c['file']}")
    if args.check_images:
        check_split_images(dataset, args.splits)


def check_split_images(dataset: ReIDDataset, splits: tuple[str, ...]) -> None:
    """--check-images: decode the images of `splits` (all by default), print what is unreadable, raise if anything is."""
    available = dataset.splits | {f"val/{name}": samples for name, samples in dataset.val_splits.items()}
    unknown = [name for name in splits if name not in available]
    if unknown:
        raise DatasetLayoutError(f"--splits {' '.join(unknown)}: {dataset.name} has the splits {', '.join(available)}")
    samples = [s for name in (splits or available) for s in available[name]]
    problems = unreadable_images(samples)
    if problems:
        raise DatasetLayoutError(unreadable_report(problems))
    print(f"all {len({s.path for s in samples})} images decode")


if __name__ == "__main__":
    import sys

    import tyro

    with ends_cleanly():
        try:
            main(tyro.cli(SummaryArgs, prog="python -m rlq.data"))
        except (DatasetLayoutError, AttributeFileError) as error:
            sys.exit(f"error: {error}")
