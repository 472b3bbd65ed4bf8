"""The step-loop plumbing of the training scripts: the loss log read back per window, the pass timer, Adam, the device
defaults."""

from __future__ import annotations

import time

import pytest
import torch
from accelerate import Accelerator

from rlq.launch import memory_format, mixed_precision
from rlq.training import LossLog, NonFiniteLoss, PassTimer, adam, train_transform
from rlq.transforms import DeferredTrainTransform, TrainTransform


class RecordingAccelerator:
    """An Accelerator whose logs are kept, to see what LossLog reports and when."""

    def __init__(self) -> None:
        self.accelerator = Accelerator(cpu=True)
        self.logged: list[tuple[int, dict]] = []
        self.is_main_process = True

    def reduce(self, tensor, reduction):
        return self.accelerator.reduce(tensor, reduction=reduction)

    def log(self, values, step):
        self.logged.append((step, values))


def _terms(step: int) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(float(step)), "b": torch.tensor(2.0 * step + 1)}


def test_loss_log_reads_back_per_window_and_averages_the_pass():
    accelerator = RecordingAccelerator()
    log = LossLog(accelerator, epoch=3, steps=7, every=3, prefix="loss", desc="test", global_step=10)
    for step in range(7):
        log.add(_terms(step))
    means, global_step = log.close()
    assert global_step == 17
    assert means == pytest.approx({"a": 3.0, "b": 7.0})  # the mean over all 7 steps
    # Windows of 3, 3 and the last 1, logged at the global step that ends each.
    assert [step for step, _ in accelerator.logged] == [13, 16, 17]
    assert accelerator.logged[0][1] == pytest.approx({"loss/a": 1.0, "loss/b": 3.0})
    assert accelerator.logged[2][1] == pytest.approx({"loss/a": 6.0, "loss/b": 13.0})


def test_loss_log_names_the_window_that_held_a_nan():
    log = LossLog(RecordingAccelerator(), epoch=2, steps=10, every=4, prefix="loss", desc="test", global_step=0)
    for step in range(4):
        log.add(_terms(step))
    log.add(_terms(4))
    log.add({"a": torch.tensor(float("nan")), "b": torch.tensor(1.0)})
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, steps 4-5 \(window means\): a=nan, b=5; stopping"):
        log.close()


def test_loss_log_refuses_terms_that_change_within_a_pass():
    log = LossLog(RecordingAccelerator(), epoch=0, steps=2, every=5, prefix="loss", desc="test", global_step=0)
    log.add(_terms(0))
    with pytest.raises(RuntimeError, match="loss terms changed"):
        log.add({"a": torch.tensor(1.0)})


def test_adam_is_multi_tensor_on_cpu_with_the_plain_coupled_weight_decay():
    torch.manual_seed(0)
    plain_params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    ours_params = [torch.nn.Parameter(p.detach().clone()) for p in plain_params]
    plain = torch.optim.Adam(plain_params, lr=0.1, weight_decay=0.05, foreach=False)
    ours = adam(ours_params, 0.1, 0.05)
    assert ours.defaults["foreach"] is True and not ours.defaults["fused"]
    for _ in range(3):
        for params, optimizer in ((plain_params, plain), (ours_params, ours)):
            optimizer.zero_grad()
            (params[0].sum() * 2 + params[1].pow(2).sum()).backward()
            optimizer.step()
    for a, b in zip(plain_params, ours_params):
        torch.testing.assert_close(a, b)


def test_cpu_defaults_are_fp32_nchw_with_augmentation_in_the_workers():
    cpu = torch.device("cpu")
    assert mixed_precision("auto") == ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no")
    assert mixed_precision("fp16") == "fp16"
    assert memory_format(cpu) == torch.contiguous_format and memory_format(torch.device("cuda")) == torch.channels_last
    assert type(train_transform("auto", 64, 32, cpu)) is TrainTransform
    assert type(train_transform("auto", 64, 32, torch.device("cuda"))) is DeferredTrainTransform
    assert type(train_transform("device", 64, 32, cpu)) is DeferredTrainTransform
    assert type(train_transform("workers", 64, 32, torch.device("cuda"))) is TrainTransform


def test_pass_timer_records_the_wall_time_and_no_gpu_memory_on_cpu():
    timer = PassTimer(torch.device("cpu"))
    time.sleep(0.05)
    record = timer.record()
    assert set(record) == {"seconds"} and 0.05 <= record["seconds"] < 5
