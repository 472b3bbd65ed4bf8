"""The authors' attribute CSVs: gender per identity and pose cluster per image.

Formats (as the RLQ authors publish them in their repository, folder Scripts/Helper/):
- gender: `Category,ID,Gender`, 1 = male, 0 = female; ID is the raw identity
  text (`000`, `092`, `1`, `p0003`).
- pose clusters: `Category,Image,<variant>_<K>,...`, labels written as floats
  (`3.0`); 0 = no skeleton, 1..K = cluster. `Image` is the key the dataset
  parsers put in `Sample.key`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from rlq.files import read_csv_rows
from rlq.options import OptionError
from rlq.samples import Sample

Missing = Literal["error", "zero"]


class AttributeFileError(ValueError):
    """An attribute file is malformed or does not cover the images it must label."""


def identity_key(text: str) -> str:
    """Compare identities by number, so `000`, `0` and `p0000` name the same person."""
    digits = text.strip().lstrip("pP")
    return str(int(digits)) if digits.isdigit() else text.strip()


def _rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise AttributeFileError(f"attribute file '{path}' does not exist")
    header, rows = read_csv_rows(path, AttributeFileError)
    missing = [c for c in required if c not in header]
    if missing:
        raise AttributeFileError(
            f"'{path}' has columns {header}: expected a header starting with {','.join(required)} (missing {missing})"
        )
    return header, rows


def _put(table: dict[str, int], key: str, value: int, path: Path, line: int) -> None:
    if table.get(key, value) != value:
        raise AttributeFileError(f"'{path}' line {line}: '{key}' appears twice with different labels ({table[key]} and {value})")
    table[key] = value


def read_gender_csv(path: str | Path) -> dict[str, int]:
    """Identity (normalised with `identity_key`) -> gender (1 male, 0 female), for every row of the file."""
    _, rows = _rows(Path(path), ("Category", "ID", "Gender"))
    genders: dict[str, int] = {}
    for line, row in enumerate(rows, 2):
        value = (row["Gender"] or "").strip()
        if value not in ("0", "1", "0.0", "1.0"):
            raise AttributeFileError(f"'{path}' line {line}: Gender is '{value}': expected 1 (male) or 0 (female)")
        _put(genders, identity_key(row["ID"] or ""), int(float(value)), Path(path), line)
    return genders


def pose_columns(path: str | Path) -> list[str]:
    """The label columns of a pose-cluster CSV, e.g. ['R_LA_5', 'R_LAC_5', ...]."""
    header, _ = _rows(Path(path), ("Category", "Image"))
    return [c for c in header if c not in ("Category", "Image")]


def num_clusters(column: str) -> int | None:
    """K of a pose column named `<variant>_<K>` (labels then lie in 0..K), or None if the name has no K."""
    m = re.search(r"_(\d+)$", column)
    return int(m.group(1)) if m else None


def read_pose_csv(path: str | Path, column: str = "R_LA_15") -> dict[str, int]:
    """Image key -> pose-cluster label (0 = no skeleton, 1..K) of one column."""
    path = Path(path)
    header, rows = _rows(path, ("Category", "Image"))
    if column not in header:
        raise AttributeFileError(f"'{path}' has no column '{column}': it has {', '.join(header[2:]) or 'no label columns'}")
    k = num_clusters(column)
    labels: dict[str, int] = {}
    for line, row in enumerate(rows, 2):
        text = (row[column] or "").strip()
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value.is_integer() or value < 0 or (k is not None and value > k):
            bound = f"0..{k}" if k is not None else "a non-negative integer"
            raise AttributeFileError(f"'{path}' line {line}: {column} is '{text}': expected a label in {bound}")
        _put(labels, row["Image"].strip(), int(value), path, line)
    return labels


def _missing_error(what: str, names: list[str], source: str) -> AttributeFileError:
    first = ", ".join(names[:5])
    return AttributeFileError(
        f"{len(names)} training {what} missing from {source} (first: {first}); "
        "fix the file, or ask for label 0 for missing entries explicitly"
    )


def attach_attributes(
    samples: list[Sample],
    gender: dict[str, int] | None = None,
    pose: dict[str, int] | None = None,
    missing: Missing = "error",
    gender_source: str = "the gender file",
    pose_source: str = "the pose file",
) -> list[Sample]:
    """Return `samples` with `gender` (per identity) and `pose` (per image) filled in.

    An identity or image absent from its table is an error naming how many and
    the first few, unless `missing="zero"` asks for label 0.
    """
    if missing not in ("error", "zero"):
        raise ValueError(f"missing must be 'error' or 'zero', got '{missing}'")
    if missing == "error":
        if gender is not None:
            absent = sorted({s.pid_key for s in samples if identity_key(s.pid_key) not in gender})
            if absent:
                raise _missing_error("identities", absent, gender_source)
        if pose is not None:
            absent = sorted({s.key for s in samples if s.key not in pose})
            if absent:
                raise _missing_error("images", absent, pose_source)
    return [
        dataclasses.replace(
            s,
            gender=s.gender if gender is None else gender.get(identity_key(s.pid_key), 0),
            pose=s.pose if pose is None else pose.get(s.key, 0),
        )
        for s in samples
    ]


def attribute_coverage(
    samples: list[Sample], gender_csv: Path | None, pose_csv: Path | None, pose_column: str = "R_LA_15"
) -> dict[str, dict]:
    """How much of a training split the given attribute files cover (for the dataset summary)."""
    coverage = {}
    if gender_csv is not None:
        genders = read_gender_csv(gender_csv)
        ids = {identity_key(s.pid_key) for s in samples}
        coverage["gender"] = {"file": str(gender_csv), "unit": "identities", "total": len(ids), "covered": len(ids & genders.keys())}
    if pose_csv is not None:
        labels = read_pose_csv(pose_csv, pose_column)
        keys = {s.key for s in samples}
        coverage["pose"] = {
            "file": f"{pose_csv} [{pose_column}]",
            "unit": "images",
            "total": len(keys),
            "covered": len(keys & labels.keys()),
        }
    return coverage


def label_training_samples(
    samples: list[Sample],
    attributes: tuple[str, ...],
    gender_csv: Path | None,
    pose_csv: Path | None,
    pose_column: str = "R_LA_15",
    missing: Missing = "error",
) -> list[Sample]:
    """`samples` with the labels the training asks for (`attributes` holds "gender" and/or "pose"), read from their files."""
    if not attributes:
        raise OptionError("--attributes needs gender, pose or both")
    for name, path in (("gender", gender_csv), ("pose", pose_csv)):
        if name in attributes and path is None:
            raise AttributeFileError(f"--attributes {name} needs --{name}-csv")
    gender = read_gender_csv(gender_csv) if "gender" in attributes else None
    pose = read_pose_csv(pose_csv, pose_column) if "pose" in attributes else None
    return attach_attributes(samples, gender, pose, missing, gender_source=f"'{gender_csv}'", pose_source=f"'{pose_csv}' [{pose_column}]")


def num_pose_classes(column: str) -> int:
    """K + 1 pose classes (0 = no skeleton) of a pose column named `<variant>_<K>`."""
    k = num_clusters(column)
    if k is None:
        raise AttributeFileError(f"--pose-column {column}: expected a name ending in _K (e.g. R_LA_15) to size the pose head")
    return k + 1
