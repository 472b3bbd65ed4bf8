"""Files: atomic writes (an interrupted run leaves the previous file or the new one, never half of one), the
clean-up of what killed writes leave behind, and CSV reading with errors that name the file."""

from __future__ import annotations

import csv
import ctypes
import errno
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(Exception):
    """A write failed because its disk (or the user's quota) is full; the message names the file and the space."""


def _size(num_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return ""


def disk_full(path: Path, needed: int | None, written: int) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    need = f"{_size(needed)}" if needed is not None else f"more than the {_size(written)} it got"
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written in its place"
    return DiskFullError(f"the disk is full: writing '{path}' needs {need}, {_size(free)} free there; {kept}: "
                         "free some space and run again")


@contextmanager
def atomic_output(path: Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` and move it onto `path` only if the block succeeds.

    The rename is atomic on one file system, so readers (and re-runs after a
    crash) never see a half-written file. The temporary name carries the pid so
    two processes never share one. A full disk raises `DiskFullError` (with `size`,
    the bytes to be written, when the caller knows them), and `path` keeps its
    previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.errno not in FULL_DISK:
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise disk_full(path, size, written) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    write_bytes_atomic(path, data)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    with atomic_output(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


@contextmanager
def ends_cleanly(where: Callable[[], str | None] = lambda: "interrupted: run the same command again") -> Iterator[None]:
    """Around a script's main: Ctrl-C (SIGINT), SIGTERM and a full disk end it with one line, not a traceback.

    SIGTERM raises the KeyboardInterrupt of Ctrl-C, so both stop the same way: `stopped: <where()>` on stderr
    (where() says where the script was and how to go on; None: say nothing, as a launch's other processes do)
    and exit status 130. A full disk: `error: the disk is full: ...`, exit status 1.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        line = where()
        if line:
            print(f"{_close_progress_bars()}stopped: {line}", file=sys.stderr)
        sys.exit(130)
    except DiskFullError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        if error.errno not in FULL_DISK:
            raise
        sys.exit(f"error: the disk is full: cannot write '{error.filename or 'an output file'}' ({error.strerror}): "
                 "free some space and run again")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then stop as they would have: a group of writes that must agree
    (last.pt, metrics.json and what the stop line says last.pt holds) is never cut between its parts."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    received: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python
    if received:
        raise KeyboardInterrupt


def _close_progress_bars() -> str:
    """Close the progress bars the interrupt left open; a newline to start the next line on, when there were any."""
    tqdm = sys.modules.get("tqdm")
    bars = list(getattr(getattr(tqdm, "tqdm", None), "_instances", []))
    for bar in bars:
        bar.close()
    return "\n" if bars else ""


def write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A CSV with '\\n' line ends (like the authors' files), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


TMP_SUFFIX = ".tmp"
# `.NAME.PID.tmp` (atomic_output) and `.NAME.tmp-PID` (rlq.synthetic's dataset folder being built).
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.tmp|tmp-(?P<pid2>\d+))$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files and folders that killed writes left in `folder` (their process is gone)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for entry in Path(folder).iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or _alive(int(match["pid"] or match["pid2"])):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def die_with_parent() -> None:
    """In a worker process: be killed (SIGTERM) when the parent dies, even by SIGKILL (Linux; elsewhere a no-op), and
    leave Ctrl-C to the parent, which stops the pool (a worker's own KeyboardInterrupt would print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def read_json_file(path: Path, kind: type, error: type[Exception], expected: str):
    """The JSON value of `path`, which must be of `kind` (list, dict); anything else raises `error` naming the file and
    `expected` (what the file should hold)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as decode_error:
        raise error(f"'{path}' is not valid JSON ({decode_error}): expected {expected}") from None
    if not isinstance(content, kind):
        raise error(f"'{path}' holds a JSON {type(content).__name__}: expected {expected}")
    return content


def read_csv_rows(path: Path, error: type[Exception]) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a UTF-8 CSV (with or without a byte-order mark); other encodings raise `error` naming the file."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError as decode_error:
        raise error(f"'{path}' is not UTF-8 text ({decode_error.reason} at byte {decode_error.start}): save it as "
                    "CSV UTF-8 (a byte-order mark is fine)") from None
