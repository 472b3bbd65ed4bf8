"""Atomic file writes: an interrupted run leaves the previous file or the new one, never half of one."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` and move it onto `path` only if the block succeeds.

    The rename is atomic on one file system, so readers (and re-runs after a
    crash) never see a half-written file. The temporary name carries the pid so
    two processes never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A CSV with '\\n' line ends (like the authors' files), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
