"""One run per run folder (an OS lock for the run's life), resumes only of the same script's runs, and degenerate data
named instead of crashed on: a protocol without a valid query, a training set of one identity."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_RUN, run_here
from test_hardening import TINY_FLAGS, one_error_line, snapshot

from rlq.checkpoint import CheckpointError, load_checkpoint
from rlq.training import RUN_LOCK, lock_holder

# --- one run per folder ---------------------------------------------------------------------------------------------


def test_a_folder_in_use_by_another_run_is_refused_with_the_process_that_holds_it(synthetic_root, tmp_path):
    from train_base import Config, main

    output = tmp_path / "run"
    output.mkdir()
    holder = os.open(output / RUN_LOCK, os.O_RDWR | os.O_CREAT)  # this test's process stands in for another run
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    command = " ".join(Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode().split())[:200]
    try:
        with pytest.raises(CheckpointError) as error:
            main(Config(root=synthetic_root, output=output, **TINY_RUN))
    finally:
        os.close(holder)
    assert str(error.value) == (f"--output '{output}' is in use by another run (process {os.getpid()}: {command}): "
                                "one run per folder; wait for it to end, or give this run another --output")
    assert [(p.name, p.stat().st_size) for p in output.iterdir()] == [(RUN_LOCK, 0)]  # nothing of the refused run


def test_the_lock_lives_as_long_as_the_run_and_dies_with_it(synthetic_root, tmp_path):
    """A second run on a busy folder is refused while the first lives, at any point of it; kill -9 frees the folder."""
    output = tmp_path / "run"
    flags = [*TINY_FLAGS, "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output)]
    first = subprocess.Popen([sys.executable, "train_base.py", *flags, "--epochs", "50", "--max-steps-per-epoch", "3"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not ((output / RUN_LOCK).exists() and lock_holder(output / RUN_LOCK).startswith(f"process {first.pid}:")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        for extra in ([], ["--resume", str(output)], ["--overwrite"]):
            line = one_error_line(run_here("train_base.py", *flags, *extra), f"is in use by another run (process {first.pid}:")
            assert line.startswith(f"error: --output '{output}' is in use by another run"), line
        assert first.poll() is None  # the refused runs left the first alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = run_here("train_base.py", *flags, "--overwrite")  # the kernel released the dead run's lock
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(output / "last.pt")["epoch"] == 1


# --- resume only what this script wrote -----------------------------------------------------------------------------


def test_resume_refuses_another_scripts_run_naming_the_script_that_wrote_it(tiny_run, synthetic_root, attribute_files, tmp_path):
    from train_cgal import Config, main

    gender_csv, pose_csv = attribute_files
    before = snapshot(tiny_run)
    with pytest.raises(CheckpointError) as error:
        main(Config(root=synthetic_root, output=tmp_path, resume=tiny_run, gender_csv=gender_csv, pose_csv=pose_csv,
                    **TINY_RUN))
    assert str(error.value) == (f"checkpoint '{tiny_run / 'last.pt'}' was written by train_base.py, not train_cgal.py: resume it with "
                                "train_base.py --resume, or start a new train_cgal.py run (another --output, or --overwrite)")
    assert snapshot(tiny_run) == before and not (tmp_path / "last.pt").exists()


def test_resume_refuses_another_architecture_naming_the_script_that_wrote_it(tiny_run, synthetic_root, tmp_path):
    shutil.copytree(tiny_run, tmp_path / "run")
    line = one_error_line(run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), *TINY_FLAGS,
                                   "--cal-start-epoch", "1", "--model", "cal", "--output", str(tmp_path / "run"), "--resume",
                                   str(tmp_path / "run")))
    assert line == (f"error: checkpoint '{tmp_path / 'run' / 'last.pt'}' (written by train_base.py) was trained with other "
                    "--model (base): a resumed run must keep them; start a new run (--overwrite or another --output) to change them")


# --- degenerate data --------------------------------------------------------------------------------------------------


def test_a_training_set_of_one_identity_is_refused_at_start(synthetic_root, tmp_path):
    root = tmp_path / "LTCC_ReID"
    shutil.copytree(synthetic_root / "target" / "LTCC_ReID", root)
    kept = min(image.name.split("_")[0] for image in (root / "train").iterdir())
    for image in (root / "train").iterdir():
        if image.name.split("_")[0] != kept:
            image.unlink()
    line = one_error_line(run_here("train_base.py", "--dataset", "ltcc", "--root", str(root), *TINY_FLAGS,
                                   "--output", str(tmp_path / "run")))
    assert line == (f"error: the training split of ltcc ({root}) has 1 identity: with one class every identity loss is zero "
                    "and nothing is learnt; expected at least 2 identities")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.fixture(scope="module")
def one_outfit_test_set(synthetic_root, tmp_path_factory) -> Path:
    """The synthetic target set with every test identity in one outfit only: no clothes-changing query is valid."""
    root = tmp_path_factory.mktemp("one_outfit") / "LTCC_ReID"
    shutil.copytree(synthetic_root / "target" / "LTCC_ReID", root)
    first_outfit: dict[str, str] = {}
    for image in sorted((root / "query").iterdir()) + sorted((root / "test").iterdir()):
        pid, outfit = image.name.split("_")[:2]
        if first_outfit.setdefault(pid, outfit) != outfit:
            image.unlink()
    return root


def test_evaluate_names_the_protocol_without_a_valid_query_and_reports_the_others(tiny_run, one_outfit_test_set, tmp_path):
    done = run_here("evaluate.py", "--checkpoint", str(tiny_run / "best.pt"), "--dataset", "ltcc", "--root", str(one_outfit_test_set),
                    "--num-workers", "0", "--degrade", "mix", "--rerank", "--json", str(tmp_path / "eval.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    queries = len(list((one_outfit_test_set / "query").iterdir()))
    line = (f"cc: no valid query: none of the {queries} query images has an image of its identity from another camera in other "
            "clothes in gallery, so this protocol measures nothing here")
    assert done.stdout.count(line) == 1, done.stdout
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["no_valid_query"] == {"cc": line}
    assert "cc" not in results and {"standard", "sc"} <= set(results) and set(results["degraded"]["mix"]) == {"standard", "sc"}
    assert set(results["reranked"]) == {"standard", "sc"}


def test_training_keeps_going_and_resumes_when_the_headline_protocol_has_no_valid_query(one_outfit_test_set, tmp_path):
    from train_base import Config, main

    options = TINY_RUN | {"dataset": "ltcc", "root": one_outfit_test_set, "output": tmp_path}
    best = main(Config(**options))
    assert best["evaluation"] == "standard" and set(best["results"]) == {"standard", "sc"}  # picked on what measures
    main(Config(**(options | {"epochs": 3, "resume": tmp_path})))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 3 and [e["epoch"] for e in last["history"]["evaluations"]] == [0, 1, 2]
    assert all(set(e["no_valid_query"]) == {"cc"} for e in last["history"]["evaluations"])


def test_no_protocol_with_a_valid_query_is_one_error_line(tiny_run, one_outfit_test_set, tmp_path):
    """Each identity's queries and gallery images all from one camera: every gallery match is junk, nothing is good."""
    root = tmp_path / "LTCC_ReID"
    shutil.copytree(one_outfit_test_set, root)
    camera: dict[str, str] = {}
    for image in sorted((root / "query").iterdir()) + sorted((root / "test").iterdir()):
        pid, _, cam = image.name.split("_")[:3]
        if camera.setdefault(pid, cam) != cam:
            image.unlink()
    line = one_error_line(run_here("evaluate.py", "--checkpoint", str(tiny_run / "best.pt"), "--dataset", "ltcc", "--root", str(root),
                                   "--num-workers", "0"))
    assert line.startswith(f"error: no protocol of ltcc ({root}) has a valid query: standard: no valid query"), line


# --- faults end cleanly -------------------------------------------------------------------------------------------------


def _processes_in_session(session: int) -> list[str]:
    done = subprocess.run(["ps", "-s", str(session), "-o", "pid=,args="], capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if line.strip()]


def _train_until_stopped(how: str, flags: list[str], output: Path, after_epoch: int) -> int:
    """Start train_base.py in a session of its own, stop it with `how` once last.pt holds more than `after_epoch` epochs,
    check the one line it ends with, and return the epochs last.pt holds."""
    run_ = subprocess.Popen([sys.executable, "train_base.py", *flags], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240

    def saved_epochs() -> int:  # metrics.json is written with last.pt, and is small to read
        metrics = output / "metrics.json"
        return len(json.loads(metrics.read_text())["train"]) if metrics.is_file() else 0

    while saved_epochs() <= after_epoch:  # stopped mid-run, with a checkpoint to go on from
        assert run_.poll() is None and time.monotonic() < deadline, "the run wrote no checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)
    sent = time.monotonic()
    if how == "SIGINT to the process group (Ctrl-C)":
        os.killpg(run_.pid, signal.SIGINT)
    else:
        run_.send_signal(signal.SIGTERM)
    stderr = run_.communicate(timeout=60)[1]
    assert time.monotonic() - sent < 20 and run_.returncode == 130, (how, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert sum(line.startswith("stopped: ") for line in lines) == 1 and lines[-1].startswith("stopped: interrupted in "), lines[-5:]
    epochs = load_checkpoint(output / "last.pt")["epoch"]
    held = "epoch 0" if epochs == 1 else f"epochs 0-{epochs - 1}"
    assert lines[-1].endswith(f"; {output / 'last.pt'} holds {held}: continue with --resume {output}"), (how, lines[-1])
    time.sleep(0.5)
    assert _processes_in_session(run_.pid) == [], how  # the loader worker went with it
    return epochs


def test_a_signal_ends_a_training_run_with_one_line_saying_how_to_resume(synthetic_root, tmp_path):
    """Ctrl-C stops a run, the resumed run continues it until SIGTERM stops that one, and the next resume finishes it."""
    output = tmp_path / "run"
    flags = [*TINY_FLAGS, "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output), "--num-workers", "1",
             "--max-steps-per-epoch", "2"]
    epochs = _train_until_stopped("SIGINT to the process group (Ctrl-C)", [*flags, "--epochs", "50"], output, after_epoch=0)
    resumed = _train_until_stopped("SIGTERM to the main process", [*flags, "--epochs", "50", "--resume", str(output)], output,
                                   after_epoch=epochs)
    assert resumed > epochs
    done = run_here("train_base.py", *flags, "--epochs", str(resumed + 1), "--resume", str(output))
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(output / "last.pt")["epoch"] == resumed + 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_a_checkpoint_is_written_stops_after_the_writes_and_names_what_they_hold(signum, synthetic_root,
                                                                                               tmp_path, monkeypatch, capsys):
    from train_base import Config, main

    import rlq.training
    from rlq.files import ends_cleanly

    write_json = rlq.training.write_json_atomic
    reached = []

    def signalled_between_last_pt_and_metrics(path, value):  # the moment CI once caught: last.pt renamed, the rest not
        os.kill(os.getpid(), signum)
        reached.append(path.name)  # still running: the signal waits for the writes
        write_json(path, value)

    monkeypatch.setattr(rlq.training, "write_json_atomic", signalled_between_last_pt_and_metrics)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop, ends_cleanly(rlq.training.stopped_message):
        main(Config(root=synthetic_root, output=tmp_path, **(TINY_RUN | {"epochs": 1})))
    assert stop.value.code == 130 and reached == ["metrics.json"] and json.loads((tmp_path / "metrics.json").read_text())
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert capsys.readouterr().err.splitlines()[-1] == (f"stopped: interrupted in {rlq.training.RUN.place()}; "
                                                        f"{tmp_path / 'last.pt'} holds epoch 0: continue with --resume {tmp_path}")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_previous_one(synthetic_root, tmp_path):
    from train_base import Config, main

    from rlq.files import DiskFullError

    main(Config(root=synthetic_root, output=tmp_path, **(TINY_RUN | {"epochs": 1})))
    before = (tmp_path / "last.pt").read_bytes()
    # The next last.pt is written to `.last.pt.<pid>.tmp`, then renamed: make that a file on which every write fails
    # with ENOSPC, as on a full disk.
    (tmp_path / f".last.pt.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(DiskFullError) as error:
        main(Config(root=synthetic_root, output=tmp_path, resume=tmp_path, **(TINY_RUN | {"epochs": 2})))
    message = str(error.value)
    assert message.startswith(f"the disk is full: writing '{tmp_path / 'last.pt'}' needs ") and " MB, " in message, message
    assert message.endswith(" free there; the previous last.pt is intact: free some space and run again"), message
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob(".last.pt.*"))  # no temporary left behind


def test_scripts_turn_a_full_disk_and_signals_into_one_line(capsys):
    import errno

    from rlq.files import DiskFullError, ends_cleanly

    with pytest.raises(SystemExit) as stop, ends_cleanly():
        raise DiskFullError("the disk is full: writing 'x' needs 1.0 MB, 0 bytes free there; nothing was written in its place")
    assert stop.value.code == "error: the disk is full: writing 'x' needs 1.0 MB, 0 bytes free there; nothing was written in its place"
    with pytest.raises(SystemExit) as stop, ends_cleanly():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.json")
    assert stop.value.code == ("error: the disk is full: cannot write '/data/out.json' (No space left on device): "
                               "free some space and run again")
    with pytest.raises(SystemExit) as stop, ends_cleanly(lambda: "interrupted in epoch 3"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert stop.value.code == 130 and capsys.readouterr().err == "stopped: interrupted in epoch 3\n"
    with pytest.raises(PermissionError), ends_cleanly():  # other errors are not disguised
        raise PermissionError(errno.EACCES, "Permission denied", "/root/x")
