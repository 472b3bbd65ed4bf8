"""scripts/gpu_check.sh: its CPU form runs every check and reports each; it installs what is missing from local wheels only.

The GPU form runs the same code at the paper's sizes: what the CPU form cannot show (speed, GPU memory) is what the
check is for, and README "Speed" holds what a GPU printed (docs/speed.md the details).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

EVERY_CHECK = ["data", "train_base.py", "train_cgal.py", "train_rlq.py", "train_rlq.py, 2 processes", "bench_train.py",
               "bench_extract.py", "bench_data.py", "bench_eval.py", "bench_rerank.py"]


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One `bash scripts/gpu_check.sh --device cpu --tiny` run: (the process, its work folder, its report folder)."""
    folder = tmp_path_factory.mktemp("gpu_check")
    work, reports = folder / "work", folder / "reports"
    command = ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--output", str(work),
               "--report-dir", str(reports)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=os.environ | {"PY": sys.executable})
    yield done, work, reports
    for run in work.glob("train_*"):  # checkpoints: keep the disk free for the rest of the suite
        for checkpoint in run.glob("*.pt"):
            checkpoint.unlink()


def test_the_cpu_form_runs_every_check_and_reports_each(tiny_check):
    done, work, reports = tiny_check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((reports / "gpu_check.json").read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert list(rows) == EVERY_CHECK
    assert all(row["status"] == "passed" for row in rows.values()), {k: r["figure"] for k, r in rows.items()}
    assert report["failed"] == [] and report["machine"]["torch"] and report["machine"]["date"]

    markdown = (reports / "gpu_check.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert [line.split(" | ")[0][2:] for line in table] == EVERY_CHECK
    assert markdown in done.stdout  # printed at the end

    for script in ("train_base.py", "train_cgal.py", "train_rlq.py", "train_rlq.py, 2 processes"):
        details = rows[script]["details"]
        assert details["resume"] == {"continued": True, "why": ""}, script
        assert all(r["steps"] == details["steps_per_epoch"] and r["steps_per_s"] > 0 for r in details["rates"].values()), script
    assert set(rows["train_rlq.py"]["details"]["rates"]) == {"cap", "tad"}
    assert rows["train_rlq.py, 2 processes"]["details"]["processes"] == 2
    assert "--teacher none" not in rows["train_rlq.py"]["details"]["command"]  # the train_base.py check's checkpoint
    evaluation = rows["train_cgal.py"]["details"]["evaluation"]
    assert evaluation["headline"] == "CC" and 0 <= evaluation["reranked_top1"] <= 1 and 0 <= evaluation["mix_top1"] <= 1

    assert rows["bench_train.py"]["details"]["first_step_losses_off"] == []
    assert rows["bench_eval.py"]["details"]["failures"] == 0
    assert all(r["max_difference"] < 1e-4 for r in rows["bench_rerank.py"]["details"]["sizes"].values() if "max_difference" in r)
    assert rows["bench_data.py"]["details"]["need_from"].startswith("our measured steps")  # bench_train.py's rates
    # No GPU: the GPU targets are shown but not judged.
    assert rows["bench_train.py"]["met"] == "-" and rows["bench_train.py"]["target"] == "cal >= 1.7x, rlq epoch >= 1.9x"


def test_a_resume_that_restarted_is_not_taken_for_one_that_continued():
    first = {"epoch": 2, "history": {"train": [{"epoch": 0, "total": 5.0}, {"epoch": 1, "total": 4.0}]}}
    continued = {"epoch": 3, "history": {"train": first["history"]["train"] + [{"epoch": 2, "total": 3.0}], "evaluations": []}}
    assert gpu_check.resume_continued(first, continued, said_resumed=True) == {"continued": True, "why": ""}
    restarted = {"epoch": 3, "history": {"train": [{"epoch": 0, "total": 5.1}, {"epoch": 1, "total": 4.0}, {"epoch": 2, "total": 3.0}]}}
    assert gpu_check.resume_continued(first, restarted, said_resumed=True) == {
        "continued": False, "why": "the train history of epochs 0-1 changed"}
    assert not gpu_check.resume_continued(first, continued, said_resumed=False)["continued"]


def test_a_failing_check_does_not_stop_the_others_and_the_status_says_so(tmp_path, monkeypatch):
    calls = []

    def failing_run(ctx, row, factor):
        calls.append(row.check)
        raise gpu_check.CheckFailed("train_base.py exited with 1: error: something named")

    def buggy(ctx, row, factor):
        calls.append(row.check)
        raise KeyError("rates")

    def fine(ctx, row, factor):
        calls.append(row.check)
        row.figure = "4.0 steps/s"

    monkeypatch.setattr(gpu_check, "CHECKS", {"data": fine, "train_base.py": failing_run, "bench_eval.py": buggy,
                                              "bench_rerank.py": fine})
    report = gpu_check.main(["--device", "cpu", "--tiny", "--output", str(tmp_path / "work")])
    assert calls == ["data", "train_base.py", "bench_eval.py", "bench_rerank.py"]
    assert report["failed"] == ["train_base.py", "bench_eval.py"]
    rows = {row["check"]: row for row in report["rows"]}
    assert rows["train_base.py"]["figure"] == "train_base.py exited with 1: error: something named"
    assert rows["bench_eval.py"]["figure"] == "KeyError: 'rates'"
    assert rows["bench_rerank.py"]["status"] == "passed"
    markdown = (tmp_path / "work" / "gpu_check.md").read_text()
    assert "2 check(s) failed: train_base.py, bench_eval.py." in markdown
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--output",
                           str(tmp_path / "work")], capture_output=True, text=True)
    assert done.returncode == 2 and "--output" in done.stderr and "exists" in done.stderr  # one check, one folder


def test_a_run_that_hangs_is_ended_with_everything_it_started(tmp_path):
    ctx = gpu_check.Context(gpu_check.parse_args(["--device", "cpu", "--tiny", "--output", str(tmp_path / "w")]))
    ctx.logs.mkdir(parents=True)
    child = tmp_path / "child.pid"
    with pytest.raises(gpu_check.CheckFailed, match=r"^hang did not finish in 1 s \(log: .*01-hang.log\)$"):
        ctx.run("hang", ["bash", "-c", f"sleep 60 & echo $! > {child}; wait"], timeout=1)
    time.sleep(0.2)
    pid = int(child.read_text())
    try:
        os.kill(pid, 0)
        gone = Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # killed, not yet reaped
    except ProcessLookupError:
        gone = True
    assert gone, "the hung run's own child is still running"


def test_a_failed_run_is_named_by_its_error_line(tmp_path):
    ctx = gpu_check.Context(gpu_check.parse_args(["--device", "cpu", "--tiny", "--output", str(tmp_path / "w")]))
    ctx.logs.mkdir(parents=True)
    with pytest.raises(gpu_check.CheckFailed, match=r"^bad exited with 1: error: --batch-size 6: expected a multiple"):
        ctx.run("bad", [sys.executable, "train_base.py", "--batch-size", "6", "--output", str(tmp_path / "run")], timeout=120)


def test_the_budget_trims_the_checks_still_to_run(tmp_path):
    ctx = gpu_check.Context(gpu_check.parse_args(["--device", "cpu", "--tiny", "--output", str(tmp_path / "w")]))
    planned = sum(ctx.sizes.planned[c] for c in ("train_base.py", "bench_train.py"))
    ctx.deadline = time.perf_counter() + planned / 2
    assert ctx.factor(["train_base.py", "bench_train.py"]) == pytest.approx(0.5, abs=0.02)
    ctx.deadline = time.perf_counter() + 10 * planned
    assert ctx.factor(["train_base.py", "bench_train.py"]) == 1.0  # never more than the planned sizes
    ctx.deadline = time.perf_counter() - 60
    assert ctx.factor(["train_base.py"]) == 0.2  # over budget: the smallest sizes, never a check left out


def test_rerank_goes_up_to_the_largest_size_its_share_of_the_budget_allows(tmp_path, monkeypatch):
    """Each next size's time is predicted from the last (start-up + re-ranking x (N / N_last)^2); the first that would
    not fit is not started, and the row says which size was reached."""
    clock = [0.0]
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: clock[0])
    ctx = gpu_check.Context(gpu_check.parse_args(["--device", "cpu", "--tiny", "--output", str(tmp_path / "w")]))
    ctx.sizes.rerank_sizes = ["1000x9000", "2000x18000", "4000x36000"]
    ctx.sizes.planned["bench_rerank.py"] = 100.0
    ran = []

    def fake_bench(ctx, name, arguments, timeout):
        size = arguments[arguments.index("--sizes") + 1]
        n = sum(int(v) for v in size.split("x"))
        seconds = 1e-7 * n * n  # 10 s, 40 s, 160 s
        clock[0] += 2.0 + seconds  # plus the processes' start-up
        ran.append(size)
        return {size: {"ours": {"seconds": seconds, "peak_gib": 0.1}, "dense_needs_gib": 99.0}}

    monkeypatch.setattr(gpu_check, "bench", fake_bench)
    row = gpu_check.Row("bench_rerank.py")
    gpu_check.check_bench_rerank(ctx, row, factor=1.0)
    assert ran == ["1000x9000", "2000x18000"]  # 12 s + 42 s done; the next would take 2 + 160 s, past the 100 s share
    assert row.details["stopped_before"] == {"size": "4000x36000", "predicted_seconds": 162.0}
    assert row.figure.startswith("largest 2000 x 18000: 40.0 s") and row.status == "passed"


@pytest.mark.parametrize("sizes", ["gpu", "tiny"])
def test_every_command_of_both_forms_is_one_its_script_accepts(sizes, tmp_path):
    """The GPU form runs only where a GPU is: its arguments are checked here against the scripts' own parsers."""
    import tyro

    import bench_data
    import bench_eval
    import bench_extract
    import bench_train
    import train_base
    import train_cgal
    import train_rlq

    ctx = gpu_check.Context(gpu_check.parse_args(["--device", "cpu", "--tiny", "--output", str(tmp_path / "w")]))
    ctx.sizes = gpu_check.gpu_sizes() if sizes == "gpu" else gpu_check.tiny_sizes()
    parsers = {"bench_train.py": bench_train.parse_args, "bench_extract.py": bench_extract.parse_args,
               "bench_data.py": bench_data.parse_args, "bench_eval.py": bench_eval.parse_args}
    assert set(ctx.sizes.bench) == set(parsers)
    for factor in (0.2, 1.0):
        for name, parse in parsers.items():
            args = parse([*ctx.sizes.bench[name](factor), "--json", str(tmp_path / "out.json")])
            assert args.json == tmp_path / "out.json", name
        for script, config in (("train_base.py", train_base.Config), ("train_cgal.py", train_cgal.Config),
                               ("train_rlq.py", train_rlq.Config)):
            flags = gpu_check.training_flags(ctx, script, 4, tmp_path / "run")
            cfg = tyro.cli(config, args=[*flags, "--epochs", "2"])
            assert (cfg.backbone, cfg.height, cfg.batch_size, cfg.max_steps_per_epoch) == (
                ctx.sizes.backbone, ctx.sizes.height, ctx.sizes.batch_size, 4)
            # the defaults a user gets: the speed options are never set
            assert (cfg.mixed_precision, cfg.augment_on, cfg.compile) == ("auto", "auto", False), script
            if script != "train_base.py":
                assert cfg.masks == tmp_path / "w" / "masks"  # CAP with the recolouring, as the paper trains
            if ctx.sizes.num_workers is None:
                assert cfg.num_workers == config.__dataclass_fields__["num_workers"].default  # the scripts' default
    if sizes == "gpu":
        eval_args = bench_eval.parse_args(ctx.sizes.bench["bench_eval.py"](1.0))
        assert (eval_args.queries, eval_args.gallery, eval_args.dim) == (10176, 125353, 8192)  # LaST's test set
        assert ctx.sizes.rerank_sizes[-1] == "10176x125353"


def _wheel_of(distribution: str, folder: Path) -> Path:
    """A wheel file of an installed pure-Python distribution: its files, as a wheel's zip holds them."""
    dist = importlib.metadata.distribution(distribution)
    path = folder / f"{distribution}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for file in dist.files:
            if not str(file).startswith(".."):  # console scripts live outside site-packages
                wheel.write(dist.locate_file(file), str(file))
    return path


def test_the_wrapper_installs_missing_packages_from_local_wheels_only(tmp_path):
    """A Python without tyro and its needs (a bare venv stands in for the GPU machine): they come from the wheels."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / "bin" / "python"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("tyro", "typeguard", "docstring_parser", "typing_extensions"):
        _wheel_of(name, wheels)
    script = str(REPO / "scripts" / "gpu_check.sh")
    env = os.environ | {"PY": str(bare), "RLQ_WHEELS": str(wheels), "PIP_NO_INDEX": "1"}
    done = subprocess.run(["bash", script, "--device", "cpu", "--tiny"], capture_output=True, text=True, env=env)
    # The bare venv has no torch, which no wheel brings: one error line that names what is still missing, and tyro,
    # typeguard and docstring-parser are no longer among them.
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {bare} cannot import: torch torchvision timm")
    missing = done.stderr.split("cannot import: ")[1].split(".")[0].split()
    assert not {"tyro", "typeguard", "docstring_parser"} & set(missing)
    assert "installed" in done.stdout and "tyro-" in done.stdout
    site = Path(done.stdout.split(" into ")[1].split()[0])
    assert site.name.startswith("rlq-gpu-check-site.") and not site.exists()  # a temporary folder, removed at exit

    env["RLQ_WHEELS"] = str(tmp_path / "none")
    done = subprocess.run(["bash", script, "--device", "cpu", "--tiny"], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "tyro typeguard docstring_parser" in done.stderr
    assert "bash scripts/fetch_wheels.sh" in done.stderr
