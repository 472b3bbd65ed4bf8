"""Clothes masks from human parsing, faulty-mask lists and resolution buckets.

The clothes-recolouring augmentation needs, per training image, where the tops,
the pants and the whole outfit are. `preprocess_masks.py` derives them from
SCHP human parsing (LIP labels) and writes, under its output folder:

- `<out>/<Sample.key>.png` — one single-channel 8-bit PNG per image, the size
  of the parsing map, whose pixel value is a bit field (`MASK_BITS`):
  bit 0 tops, bit 1 pants, bit 2 whole clothes, bit 3 silhouette, bit 4 head.
  Keys containing '/' (test splits, e.g. `query/001_1_c11_015833`) become
  subfolders. `read_masks` decodes one back into boolean masks.
- `<out>/faulty_tops.txt`, `<out>/faulty_pants.txt` — the authors' format: no
  header, one image key per line, sorted. The recolouring falls back to the
  whole-clothes mask with a single colour for an image on either list
  (`faulty_keys`). The rule is `region_is_faulty`.
- `<out>/sizes.csv` — `Category,Image,<32,32-64,64-128,128-256,>256`, one-hot
  per image, bucketed by image HEIGHT in pixels (`size_bucket`).

Every file is written atomically (`rlq.files.atomic_output`), so an interrupted run
leaves either the previous file or the new one, never a partial one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rlq.data import Sample
from rlq.files import atomic_output, write_text_atomic

NUM_LIP_LABELS = 20
# LIP ids of each mask (data.md section 4); the silhouette is every label but background.
LABEL_SETS: dict[str, tuple[int, ...]] = {
    "tops": (5, 7, 10),
    "pants": (9, 12),
    "clothes": (1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19),
    "silhouette": tuple(range(1, NUM_LIP_LABELS)),
    "head": (1, 2, 4, 13),
}
MASK_BITS: dict[str, int] = {"tops": 0, "pants": 1, "clothes": 2, "silhouette": 3, "head": 4}


def _bits_of_label() -> np.ndarray:
    """Lookup table LIP id -> bit field, so encoding a whole map is one fancy-indexing pass."""
    table = np.zeros(NUM_LIP_LABELS, dtype=np.uint8)
    for name, labels in LABEL_SETS.items():
        table[list(labels)] |= np.uint8(1 << MASK_BITS[name])
    return table


BITS_OF_LABEL = _bits_of_label()

SIZE_BUCKETS = ("<32", "32-64", "64-128", "128-256", ">256")
SIZE_EDGES = (32, 64, 128, 256)  # a bucket holds heights in [lower edge, upper edge)
SIZE_HEADER = ("Category", "Image") + SIZE_BUCKETS
FAULTY_FILES = {"tops": "faulty_tops.txt", "pants": "faulty_pants.txt"}
SIZES_FILE = "sizes.csv"

# Faulty rule defaults (see `region_is_faulty`).
MIN_REGION_FRACTION = 0.05
MAX_SECOND_PIECE_FRACTION = 0.2

# PRCC keeps its images under `<root>/rgb/`; the size CSV names them relative to the split folders below it.
_IMAGE_FOLDERS = {"prcc": "rgb"}


class MaskInputError(ValueError):
    """A human-parsing file or an image is missing, unreadable, or not what the masks need."""


# --------------------------------------------------------------------------- writing files




# --------------------------------------------------------------------------- parsing maps


def parsing_candidates(parsing_dir: Path, dataset_root: Path, image_path: str | Path) -> tuple[Path, Path]:
    """The parsing files that may hold image `<dataset_root>/<rel>.<ext>`: `<parsing_dir>/<rel>.png` then `.npy`."""
    rel = Path(os.path.relpath(image_path, dataset_root)).with_suffix("")
    return Path(parsing_dir) / f"{rel}.png", Path(parsing_dir) / f"{rel}.npy"


def find_parsing(parsing_dir: Path, dataset_root: Path, image_path: str | Path) -> Path | None:
    """The label-map PNG if present (cheaper to read), else the score-map `.npy`, else None."""
    return next((p for p in parsing_candidates(parsing_dir, dataset_root, image_path) if p.is_file()), None)


def read_parsing(path: Path) -> np.ndarray:
    """LIP label map [H, W] (uint8, ids 0..19) from a label PNG or an SCHP score map `.npy` [H, W, 20]."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            scores = np.load(path)
            if scores.ndim != 3 or scores.shape[-1] != NUM_LIP_LABELS:
                raise MaskInputError(f"'{path}' has shape {scores.shape}: expected SCHP scores H x W x {NUM_LIP_LABELS}")
            labels = scores.argmax(axis=-1).astype(np.uint8)
        else:
            with Image.open(path) as image:
                if image.mode not in ("L", "P"):
                    raise MaskInputError(f"'{path}' is a {image.mode} image: expected a single-channel LIP label map (mode L or P)")
                labels = np.asarray(image, dtype=np.uint8)
    except MaskInputError:
        raise
    except (OSError, ValueError) as error:
        raise MaskInputError(f"cannot read the parsing file '{path}': {error}") from error
    if labels.size and labels.max() >= NUM_LIP_LABELS:
        raise MaskInputError(f"'{path}' holds label {labels.max()}: expected LIP ids 0..{NUM_LIP_LABELS - 1}")
    return labels


# --------------------------------------------------------------------------- masks


def encode_masks(labels: np.ndarray) -> np.ndarray:
    """LIP label map [H, W] -> bit-field map [H, W] uint8 (bit `MASK_BITS[name]` set where mask `name` is)."""
    return BITS_OF_LABEL[labels]


def decode_masks(bits: np.ndarray) -> dict[str, np.ndarray]:
    """Bit-field map -> {"tops", "pants", "clothes", "silhouette", "head"} boolean masks."""
    return {name: (bits & np.uint8(1 << bit)) != 0 for name, bit in MASK_BITS.items()}


def mask_path(masks_dir: Path, sample: Sample) -> Path:
    return Path(masks_dir) / f"{sample.key}.png"


def write_mask_png(path: Path, bits: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        Image.fromarray(bits.astype(np.uint8)).save(tmp, format="PNG")


def read_masks(masks_dir: Path, sample: Sample, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks of `sample` written by preprocess_masks.py.

    `size` is (width, height) like `PIL.Image.size`; the bit field is resized
    nearest-neighbour before decoding, so every mask stays exactly a union of
    parsing labels.
    """
    path = mask_path(masks_dir, sample)
    if not path.is_file():
        raise FileNotFoundError(f"no mask for image '{sample.key}' ({sample.path}): expected '{path}' (run preprocess_masks.py)")
    with Image.open(path) as image:
        if size is not None and image.size != tuple(size):
            image = image.resize(tuple(size), Image.Resampling.NEAREST)
        return decode_masks(np.asarray(image, dtype=np.uint8))


# --------------------------------------------------------------------------- faulty rule


def region_is_faulty(
    region: np.ndarray,
    silhouette: np.ndarray,
    min_fraction: float = MIN_REGION_FRACTION,
    max_second_piece: float = MAX_SECOND_PIECE_FRACTION,
) -> bool:
    """Whether a tops or pants mask is too poor to recolour on its own.

    Faulty when the region
    - is empty or covers less than `min_fraction` of the silhouette (the parser
      missed the garment, or it is hidden), or
    - falls apart: besides its largest 8-connected piece, another piece holds at
      least `max_second_piece` of the region (e.g. "tops" found both on the
      chest and on the legs). Specks below that share are ignored, so parsing
      noise alone does not make a mask faulty.
    """
    area = int(region.sum())
    if area == 0 or area < min_fraction * int(silhouette.sum()):
        return True
    pieces, count = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return False
    second_largest = np.sort(np.bincount(pieces.ravel())[1:])[-2]
    return bool(second_largest >= max_second_piece * area)


# --------------------------------------------------------------------------- size buckets


def size_bucket(height: int) -> int:
    """Index into `SIZE_BUCKETS` of an image `height` pixels tall: <32, [32,64), [64,128), [128,256), >=256."""
    return int(np.searchsorted(SIZE_EDGES, height, side="right"))


def size_row(category: str, image: str, height: int) -> list[object]:
    """One `sizes.csv` row: category, image, then the one-hot bucket."""
    one_hot = [0] * len(SIZE_BUCKETS)
    one_hot[size_bucket(height)] = 1
    return [category, image, *one_hot]


def size_csv_name(dataset_name: str, dataset_root: Path, image_path: str | Path) -> tuple[str, str]:
    """(Category, Image) of the authors' size CSV: the split folder and the path below it.

    LTCC `train/001_1_c11_015833.png` -> ("train", "001_1_c11_015833.png"); PRCC
    `rgb/test/A/001/cropped_rgb001.jpg` -> ("test", "A/001/cropped_rgb001.jpg").
    """
    rel = Path(os.path.relpath(image_path, dataset_root))
    folder = _IMAGE_FOLDERS.get(dataset_name)
    if folder is not None and rel.parts[0] == folder:
        rel = Path(*rel.parts[1:])
    return rel.parts[0], "/".join(rel.parts[1:])


# --------------------------------------------------------------------------- key lists


def write_key_list(path: Path, keys: Sequence[str]) -> None:
    """Authors' list format: no header, one key per line, sorted."""
    write_text_atomic(path, "".join(f"{key}\n" for key in sorted(keys)))


def read_key_list(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def faulty_keys(masks_dir: Path) -> set[str]:
    """Keys on either faulty list: these images are recoloured with one colour over the whole-clothes mask."""
    return {key for name in FAULTY_FILES.values() for key in read_key_list(Path(masks_dir) / name)}
