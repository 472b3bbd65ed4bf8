"""--log-with: the training scripts log the same metrics and their configuration to every tracker asked for (Accelerate's),
a tracker whose package is missing is one error line before any work, and none logs nowhere."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import TINY_RUN, run_here

from rlq import launch
from rlq.options import OptionError

NOT_LOSSES = ("epoch", "steps", "lr", "seconds", "peak_gpu_mib")


def _tensorboard_scalars(folder) -> dict[str, float]:
    """The last value of every scalar in a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def test_every_tracker_gets_the_run_s_metrics_and_configuration(synthetic_root, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the test extra installs mlflow-skinny")
    import train_base

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database unless told that files will do
    output = tmp_path / "run"
    train_base.main(train_base.Config(root=synthetic_root, output=output, log_with=("tensorboard", "mlflow"),
                                      **TINY_RUN | {"epochs": 1}))

    metrics = json.loads((output / "metrics.json").read_text())
    (evaluation,) = metrics["evaluations"]
    expected = {f"test/{name}/{m}": results[m] for name, results in evaluation["results"].items() for m in ("top1", "mAP")}
    # One window per epoch (3 steps, --log-every 50): the logged means are the epoch's.
    expected |= {f"loss/{term}": value for term, value in metrics["train"][0].items() if term not in NOT_LOSSES}

    (experiment,) = [e for e in mlflow.MlflowClient().search_experiments() if e.name == "train_base"]
    (run,) = mlflow.MlflowClient().search_runs([experiment.experiment_id])
    logged = run.data.metrics
    assert {k: logged[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert run.data.params["backbone"] == "resnet18" and run.data.params["log_with"] == "['tensorboard', 'mlflow']"

    scalars = _tensorboard_scalars(output / "tensorboard" / "train_base")
    assert scalars.keys() == logged.keys()  # the same metrics to each tracker
    assert scalars == pytest.approx(logged, rel=1e-6)  # TensorBoard keeps float32


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_none_logs_nowhere(synthetic_root, tmp_path, monkeypatch):
    import train_base

    monkeypatch.setattr(train_base, "train_one_epoch", lambda *args: ({}, args[-1]))  # the run itself is not the point
    monkeypatch.setattr(train_base, "evaluate_and_select", lambda *args, best, **kwargs: (best, False))
    train_base.main(train_base.Config(root=synthetic_root, output=tmp_path, log_with=("none",), **TINY_RUN | {"epochs": 1}))
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "tensorboard").exists()


def test_a_tracker_not_installed_stops_the_run_before_any_work(synthetic_root, tmp_path, monkeypatch):
    import train_base

    monkeypatch.setattr(launch, "get_available_trackers", lambda: ["tensorboard"])  # as if wandb were not installed
    with pytest.raises(OptionError, match=r"^--log-with wandb needs the package 'wandb': pip install wandb$"):
        train_base.main(train_base.Config(root=synthetic_root, output=tmp_path / "run", log_with=("tensorboard", "wandb"),
                                          **TINY_RUN))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("comet_ml") is not None, reason="comet_ml is installed here")
@pytest.mark.parametrize("script", ["train_base.py", "train_cgal.py", "train_rlq.py"])
def test_each_training_script_says_which_package_a_tracker_needs(script, tmp_path):
    teacher = ["--teacher", "none"] if script == "train_rlq.py" else []
    result = run_here(script, "--dataset", "synthetic", "--output", str(tmp_path / "run"), "--log-with", "tensorboard", "comet_ml",
                      *teacher)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: --log-with comet_ml needs the package 'comet_ml': pip install comet_ml"]
    assert not (tmp_path / "run").exists()


def test_none_goes_alone_and_trackers_are_named_once():
    assert launch.trackers(("tensorboard", "tensorboard")) == ["tensorboard"]
    assert launch.trackers(("none",)) is None
    with pytest.raises(OptionError, match="--log-with none tensorboard: none turns tracking off, so it goes alone"):
        launch.trackers(("none", "tensorboard"))
    with pytest.raises(OptionError, match="--log-with: expected one or more trackers"):
        launch.trackers(())
