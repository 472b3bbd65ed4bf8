"""Bad inputs a user can cause: one `error: ...` line, exit status 1, nothing on disk changed; and work never lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, run_here

from rlq.attributes import AttributeFileError, read_gender_csv
from rlq.checkpoint import load_checkpoint
from rlq.data import load_dataset
from rlq.files import remove_stale_temporaries

TINY_FLAGS = ["--no-pretrained", "--backbone", "resnet18", "--height", "32", "--width", "16", "--batch-size", "16",
              "--epochs", "1", "--max-steps-per-epoch", "1", "--num-workers", "0", "--eval-batch-size", "64"]


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with exit status 1 and its stderr ends in one `error: ` line holding every fragment."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in line, line
    return line


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def broken_ltcc(synthetic_root, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A copy of the synthetic target set (LTCC layout) with one truncated training image and one query that is not an image."""
    root = tmp_path_factory.mktemp("broken") / "LTCC_ReID"
    shutil.copytree(synthetic_root / "target" / "LTCC_ReID", root)
    train_image = sorted((root / "train").glob("*.png"))[5]
    train_image.write_bytes(train_image.read_bytes()[:200])
    query_image = sorted((root / "query").glob("*.png"))[3]
    query_image.write_bytes(b"this is no image")
    return root, [train_image, query_image]


# --- 1. unreadable images: found before any work --------------------------------------------------------------------


def test_check_images_lists_every_unreadable_image(broken_ltcc):
    root, broken = broken_ltcc
    result = run_here("-m", "rlq.data", "--dataset", "ltcc", "--root", str(root), "--check-images")
    assert result.returncode == 1
    assert "2 unreadable image(s)" in result.stderr
    for path in broken:
        assert str(path) in result.stderr


def test_training_stops_before_training_on_unreadable_images(broken_ltcc, tmp_path):
    root, broken = broken_ltcc
    result = run_here("train_base.py", "--dataset", "ltcc", "--root", str(root), "--output", str(tmp_path / "run"), *TINY_FLAGS)
    assert result.returncode == 1 and "2 unreadable image(s)" in result.stderr and str(broken[0]) in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_folder_ranking_skips_an_unreadable_file_with_a_warning(tiny_run, synthetic_root, tmp_path):
    import evaluate

    queries = sorted((synthetic_root / "target" / "LTCC_ReID" / "query").glob("*.png"))[:2]
    gallery = sorted((synthetic_root / "target" / "LTCC_ReID" / "test").glob("*.png"))[:5]
    (tmp_path / "q").mkdir()
    (tmp_path / "g").mkdir()
    for path in queries:
        shutil.copy(path, tmp_path / "q")
    for path in gallery:
        shutil.copy(path, tmp_path / "g")
    (tmp_path / "g" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match=r"gallery: skipping 1 unreadable image\(s\):\n  .*broken.png"):
        evaluate.main(evaluate.Args(checkpoint=tiny_run / "best.pt", query_dir=tmp_path / "q", gallery_dir=tmp_path / "g",
                                    ranking_dir=tmp_path / "ranking", num_workers=0))
    assert "broken.png" not in (tmp_path / "ranking" / "ranking.csv").read_text()


# --- 2. one error line for what a user can get wrong ----------------------------------------------------------------


def test_resume_from_a_best_pt(tiny_run, synthetic_root, tmp_path):
    result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(tmp_path / "run"),
                      "--resume", str(tiny_run / "best.pt"), *TINY_FLAGS)
    one_error_line(result, "best.pt", "holds no training state", "last.pt")


def test_dataset_summary_without_root():
    one_error_line(run_here("-m", "rlq.data", "--dataset", "ltcc"), "needs --root")


def test_output_that_is_a_file(synthetic_root, tmp_path):
    output = tmp_path / "run"
    output.write_text("my notes")
    result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output), *TINY_FLAGS)
    one_error_line(result, f"--output '{output}' is a file")
    assert output.read_text() == "my notes"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output(synthetic_root, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    output.chmod(0o500)
    try:
        result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output), *TINY_FLAGS)
        one_error_line(result, "cannot write to --output")
    finally:
        output.chmod(0o700)


def test_checkpoint_that_gives_nan_features(tiny_run, synthetic_root, tmp_path):
    checkpoint = load_checkpoint(tiny_run / "best.pt")
    checkpoint["model"] = {k: v * float("nan") if k.endswith("conv1.weight") else v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, tmp_path / "nan.pt")
    result = run_here("evaluate.py", "--checkpoint", str(tmp_path / "nan.pt"), "--root", str(synthetic_root), "--num-workers", "0")
    one_error_line(result, "nan.pt", "non-finite features", "diverged")


@pytest.mark.parametrize("option", ["--checkpoint", "--teacher"])
def test_a_random_file_as_checkpoint_or_teacher(synthetic_root, attribute_files, tmp_path, option):
    junk = tmp_path / "model.pt"
    junk.write_bytes(os.urandom(3000))
    gender, pose = attribute_files
    if option == "--checkpoint":
        result = run_here("evaluate.py", "--checkpoint", str(junk), "--root", str(synthetic_root))
    else:
        result = run_here("train_rlq.py", "--teacher", str(junk), "--dataset", "synthetic", "--root", str(synthetic_root),
                          "--external-dataset", "synthetic-external", "--gender-csv", str(gender), "--pose-csv", str(pose),
                          "--output", str(tmp_path / "run"), *TINY_FLAGS)
    line = one_error_line(result, "model.pt", "not a checkpoint")
    assert len(line) < 400 and "weights_only" not in line  # not torch's page-long explanation


# --- 3. attribute CSV encodings -------------------------------------------------------------------------------------


def test_gender_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "gender.csv"
    path.write_text("Category,ID,Gender\ntrain,001,1\ntrain,002,0\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_gender_csv(path) == {"1": 1, "2": 0}


def test_gender_csv_in_utf16_names_the_file_and_the_encoding(synthetic_root, attribute_files, tmp_path):
    path = tmp_path / "gender16.csv"
    path.write_text("Category,ID,Gender\ntrain,001,1\n", encoding="utf-16")
    with pytest.raises(AttributeFileError, match=r"gender16.csv' is not UTF-8 text .* save it as CSV UTF-8"):
        read_gender_csv(path)
    result = run_here("train_cgal.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--gender-csv", str(path),
                      "--pose-csv", str(attribute_files[1]), "--output", str(tmp_path / "run"), *TINY_FLAGS)
    one_error_line(result, "gender16.csv", "not UTF-8")


# --- 4. another run's folder ----------------------------------------------------------------------------------------


def test_a_new_run_does_not_overwrite_another_runs_checkpoints(tiny_run, synthetic_root, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(tiny_run, output)
    before = snapshot(output)
    result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output), *TINY_FLAGS)
    one_error_line(result, "holds another run's last.pt", f"--resume {output}", "--overwrite")
    assert snapshot(output) == before
    done = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output), "--overwrite",
                    *TINY_FLAGS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(output / "last.pt")["epoch"] == 1


# --- 5. an honest resume --------------------------------------------------------------------------------------------


def test_resume_applies_a_new_learning_rate_schedule_and_records_it(synthetic_root, tmp_path):
    from train_base import Config, main

    options = TINY_RUN | {"epochs": 2, "eval_every": 10, "milestones": (1,), "gamma": 0.5}
    main(Config(root=synthetic_root, output=tmp_path, **(options | {"epochs": 1})))
    main(Config(root=synthetic_root, output=tmp_path, resume=tmp_path, **(options | {"lr": 1e-3, "weight_decay": 1e-4})))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["config"]["lr"] == 1e-3 and last["config"]["weight_decay"] == 1e-4
    # Epoch 1 trained at the new rate, halved at milestone 1 as the new schedule says (the old one would give 1.75e-4).
    assert last["history"]["train"][1]["lr"] == pytest.approx(1e-3 * 0.5)
    groups = last["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == 1e-4 and g["initial_lr"] == 1e-3 for g in groups)
    assert last["clothes_optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert last["history"]["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2], "lr": [3.5e-4, 1e-3],
                                                                  "weight_decay": [5e-4, 1e-4]}}]


def test_resume_refuses_options_the_checkpoint_contradicts(tiny_run, synthetic_root, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(tiny_run, output)
    before = snapshot(output)
    flags = list(TINY_FLAGS)
    flags[flags.index("--height") + 1] = "96"
    result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--output", str(output),
                      "--resume", str(output), *flags)
    one_error_line(result, f"was trained with other --height ({TINY_RUN['height']})", "start a new run")
    assert snapshot(output) == before


# --- 6. the NaN guard keeps a good checkpoint; last.pt before the evaluation; masks at start ------------------------


def test_diverged_weights_are_never_written(synthetic_root, tmp_path):
    from train_base import Config, NonFiniteLoss, main

    main(Config(root=synthetic_root, output=tmp_path, **(TINY_RUN | {"epochs": 1, "eval_every": 10})))
    good = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(NonFiniteLoss, match=r"(weights diverged in epoch 1|diverging loss in epoch 1|non-finite loss in epoch 1)"):
        main(Config(root=synthetic_root, output=tmp_path, resume=tmp_path, **(TINY_RUN | {"epochs": 3, "lr": 1e12, "eval_every": 10})))
    assert (tmp_path / "last.pt").read_bytes() == good
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_a_failing_evaluation_loses_no_training_and_a_resume_evaluates_that_epoch(synthetic_root, tmp_path, monkeypatch):
    from train_base import Config, main

    def broken(*args, **kwargs):
        raise OSError("query image unreadable")

    options = TINY_RUN | {"epochs": 1}
    with monkeypatch.context() as patch:
        patch.setattr("train_base.evaluate_and_select", broken)
        with pytest.raises(OSError):
            main(Config(root=synthetic_root, output=tmp_path, **options))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1 and last["evaluation_pending"] and last["history"]["evaluations"] == []
    main(Config(root=synthetic_root, output=tmp_path, resume=tmp_path, **options))
    last = load_checkpoint(tmp_path / "last.pt")
    assert [e["epoch"] for e in last["history"]["evaluations"]] == [0] and not last["evaluation_pending"]
    assert (tmp_path / "best.pt").is_file()


def test_incomplete_masks_are_found_before_training(synthetic_root, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "faulty_tops.txt").write_text("")
    (masks / "faulty_pants.txt").write_text("")
    result = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--masks", str(masks),
                      "--output", str(tmp_path / "run"), *TINY_FLAGS)
    training_images = len(load_dataset("synthetic", synthetic_root).train)
    one_error_line(result, f"--masks '{masks}' lacks the masks of {training_images} of {training_images} training images",
                   "preprocess_masks.py")
    missing = run_here("train_base.py", "--dataset", "synthetic", "--root", str(synthetic_root), "--masks", str(tmp_path / "nowhere"),
                       "--output", str(tmp_path / "run"), *TINY_FLAGS)
    one_error_line(missing, "is not a folder", "preprocess_masks.py")


# --- 7. what killed processes leave behind --------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".last.pt.{dead}.tmp"
    stale_folder = tmp_path / f".synthetic.tmp-{dead}"
    live_file = tmp_path / f".best.pt.{alive}.tmp"
    stale_file.write_bytes(b"half a checkpoint")
    (stale_folder / "images").mkdir(parents=True)
    live_file.write_bytes(b"being written")
    (tmp_path / ".hidden.tmp").write_text("not ours")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale_file, stale_folder])
    assert live_file.exists() and (tmp_path / ".hidden.tmp").exists()


def test_a_training_run_clears_the_temporaries_of_a_killed_one(synthetic_root, tmp_path):
    from train_base import Config, main

    stale = tmp_path / f".last.pt.{_dead_pid()}.tmp"
    stale.write_bytes(b"x" * 1000)
    main(Config(root=synthetic_root, output=tmp_path, **(TINY_RUN | {"epochs": 1, "eval_every": 10})))
    assert not stale.exists() and not list(tmp_path.glob(".*.tmp"))


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, signal, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from rlq.files import die_with_parent\n"
        "pool = ProcessPoolExecutor(2, mp_context=get_context('fork'), initializer=die_with_parent)\n"
        "futures = [pool.submit(time.sleep, 60) for _ in range(2)]\n"
        "time.sleep(1)\n"
        "print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    workers = [int(p) for p in result.stdout.split()]
    assert len(workers) == 2
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(p) for p in workers):
        time.sleep(0.2)
    assert not any(_running(p) for p in workers)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False

