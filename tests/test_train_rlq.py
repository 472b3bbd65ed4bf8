"""train_rlq.py: the TAD step, a tiny TAD + CAP run on the synthetic dataset, exact resume between phases, ablations."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import TINY_RUN
from test_train_base import Killed, _assert_same_tensors, without_timings

import train_rlq
from rlq import training
from rlq.checkpoint import load_checkpoint
from rlq.model import build_model
from train_rlq import Config, main, tad_terms

TAD_TERMS = {"mse_f1_hq", "mse_f1_lq", "mse_f2_hq", "mse_f2_lq", "kl_o2", "kl_o1", "total"}
CAP_TERMS = {"id_f1", "id_f2", "pose", "gender", "kl", "disentangle_f2", "triplet", "total",
             "pose_accuracy", "gender_accuracy"}  # the heads' training accuracies are logged beside the losses
ADVERSARIAL_TERMS = {"clothes_discriminator", "cal", "clothes_accuracy_within_id"}
# TINY_RUN's budget for each phase: 2 epochs of at most 3 TAD steps and 3 CAP steps.
RLQ_RUN = TINY_RUN | {"external_dataset": "synthetic-external"}


def _kl(logits, target, tau=0.8, factor=0.64):
    """factor * tau^2 * sum_ij p_ij (log p_ij - log q_ij) / (B * C), written out."""
    p = torch.softmax(target / tau, dim=1)
    q = torch.softmax(logits / tau, dim=1)
    return factor * tau**2 * (p * (p.log() - q.log())).sum() / logits.numel()


def _mse(a, b):
    return ((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()


def test_tad_step_distils_into_both_branches_and_leaves_the_teacher_and_pose_branch_alone():
    torch.manual_seed(0)
    student = build_model("rlq", 7, "resnet18", pretrained=False)
    teacher = build_model("base", 5, "resnet18", pretrained=False).eval().requires_grad_(False)
    grad_modes = []
    teacher.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x_hq, x_lq = torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32)

    # The expected terms, from the same (training-mode) forward passes written out by hand.
    with torch.no_grad():
        t = teacher(x_hq)
        s = student(torch.cat([x_hq, x_lq]), attributes=False)
    expected = {
        "mse_f1_hq": _mse(s.f1[:4], t.f1), "mse_f1_lq": _mse(s.f1[4:], t.f1),
        "mse_f2_hq": _mse(s.f2[:4], t.f2), "mse_f2_lq": _mse(s.f2[4:], t.f2),
        "kl_o2": _kl(s.id_logits_f2[4:], s.id_logits_f2[:4]), "kl_o1": _kl(s.id_logits_f1[4:], s.id_logits_f1[:4]),
    }
    expected["total"] = sum(expected.values())
    grad_modes.clear()

    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    terms = tad_terms(student, teacher, x_hq, x_lq, Accelerator(cpu=True))
    assert grad_modes == [False]  # the teacher ran under no_grad
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name
    optimizer.zero_grad()
    terms["total"].backward()
    for branch in ("cal_branch", "id_branch", "cal_neck", "id_neck", "cal_classifier", "id_classifier", "shared"):
        grads = [p.grad for p in getattr(student, branch).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, branch
    for unused in ("pose_branch", "pose_neck", "pose_classifier", "gender_classifier"):
        assert all(p.grad is None for p in getattr(student, unused).parameters()), unused
    pose_before = {k: v.clone() for k, v in student.pose_branch.state_dict().items()}
    optimizer.step()
    _assert_same_tensors(student.pose_branch.state_dict(), pose_before, "pose branch (weights and BatchNorm statistics)")
    _assert_same_tensors(teacher.state_dict(), teacher_before, "teacher")
    assert all(p.grad is None for p in teacher.parameters())

    without_teacher = tad_terms(student, None, x_hq, x_lq, Accelerator(cpu=True))
    assert without_teacher.keys() == {"kl_o2", "kl_o1", "total"}


def _run(synthetic_root, attribute_files, tiny_run, output, **options):
    gender_csv, pose_csv = attribute_files
    return main(Config(teacher=tiny_run / "last.pt", root=synthetic_root, output=output, gender_csv=gender_csv, pose_csv=pose_csv,
                       **(RLQ_RUN | options)))


@pytest.fixture(scope="module")
def rlq_run(synthetic_root, attribute_files, tiny_run, tmp_path_factory):
    output = tmp_path_factory.mktemp("rlq")
    _run(synthetic_root, attribute_files, tiny_run, output)
    yield output
    shutil.rmtree(output, ignore_errors=True)  # its checkpoints are large: CI's disk is not


def test_run_alternates_tad_and_cap_evaluates_and_checkpoints(rlq_run):
    metrics = json.loads((rlq_run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["tad"]] == [0, 1] and [e["epoch"] for e in metrics["train"]] == [0, 1]
    assert all(set(e) - {"epoch", "steps", "lr", "seconds"} == TAD_TERMS and e["steps"] == 3 for e in metrics["tad"])
    assert set(metrics["train"][1]) - {"epoch", "steps", "lr", "seconds"} == CAP_TERMS | ADVERSARIAL_TERMS
    assert all(e["seconds"] > 0 and "peak_gpu_mib" not in e for e in metrics["tad"] + metrics["train"])  # wall time per pass
    assert [e["epoch"] for e in metrics["evaluations"]] == [0, 1]
    last = load_checkpoint(rlq_run / "last.pt")
    assert last["epoch"] == 2 and last["phase"] == "cap" and last["arch"] == "rlq"
    assert (rlq_run / "best.pt").is_file() and "phase" not in load_checkpoint(rlq_run / "best.pt")
    tensorboard = list((rlq_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert tensorboard, "no TensorBoard log"


def test_resume_after_a_tad_phase_continues_with_that_epochs_cap_phase(rlq_run, synthetic_root, attribute_files, tiny_run,
                                                                      tmp_path, monkeypatch):
    real_save = training.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == "last.pt" and obj["phase"] == "tad" and obj["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(training, "save_atomic", save_then_die)
    with pytest.raises(Killed):
        _run(synthetic_root, attribute_files, tiny_run, tmp_path)
    monkeypatch.setattr(training, "save_atomic", real_save)
    killed = load_checkpoint(tmp_path / "last.pt")
    assert (killed["epoch"], killed["phase"]) == (1, "tad") and len(killed["history"]["tad"]) == 2

    _run(synthetic_root, attribute_files, tiny_run, tmp_path, resume=tmp_path)
    resumed, straight = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(rlq_run / "last.pt")
    for key in ("model", "clothes_classifier", "optimizer", "clothes_optimizer", "scheduler", "epoch", "best", "phase"):
        _assert_same_tensors(resumed[key], straight[key], key)
    assert without_timings(tmp_path / "metrics.json") == without_timings(rlq_run / "metrics.json")


@pytest.mark.parametrize(("switches", "tad", "cap"), [
    ({"teacher": "none"}, {"kl_o2", "kl_o1", "total"}, CAP_TERMS),
    ({"tad_model": "base", "gender_csv": None, "pose_csv": None}, TAD_TERMS, {"id_f1", "id_f2", "kl", "triplet", "total"}),
    ({"attributes": ("pose",)}, TAD_TERMS, CAP_TERMS - {"gender", "gender_accuracy"}),
])
def test_ablation_switches_choose_the_loss_terms(synthetic_root, attribute_files, tiny_run, tmp_path, monkeypatch, switches, tad, cap):
    monkeypatch.setattr(train_rlq, "evaluate_and_select", lambda *args, best, **kwargs: (best, False))
    gender_csv, pose_csv = attribute_files
    options = RLQ_RUN | {"epochs": 1, "max_steps_per_epoch": 1, "cal_start_epoch": 5}
    config = dict(teacher=tiny_run / "last.pt", root=synthetic_root, output=tmp_path, gender_csv=gender_csv, pose_csv=pose_csv)
    main(Config(**(config | options | switches)))
    history = load_checkpoint(tmp_path / "last.pt")["history"]
    assert set(history["tad"][0]) - {"epoch", "steps", "lr", "seconds"} == tad
    assert set(history["train"][0]) - {"epoch", "steps", "lr", "seconds"} == cap


def test_base_student_refuses_attribute_files(synthetic_root, attribute_files, tiny_run, tmp_path):
    with pytest.raises(ValueError, match="--tad-model base predicts no attributes"):
        _run(synthetic_root, attribute_files, tiny_run, tmp_path, tad_model="base")


@pytest.mark.parametrize("adam_steps_idle_parameters", [False, True])
def test_idle_parameters_in_a_tad_step_move_only_as_adam_moves_zero_gradients(adam_steps_idle_parameters):
    """A CAP step, then a TAD step: the pose branch and the attribute heads get no gradient in TAD. Under PyTorch < 2.0
    (the option) zero_grad left them zero gradients and Adam stepped them: checked against Adam written out by hand."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train

    from rlq.training import adam

    args = argparse.Namespace(backbone="resnet18", height=64, width=32, batch_size=8, num_pids=6, clothes_per_pid=2)
    device, accelerator = torch.device("cpu"), Accelerator(cpu=True)
    model, clothes_classifier, teacher = bench_train.make_models(args, "tad", device, torch.contiguous_format)
    lr, weight_decay = 3.5e-4, 5e-4
    optimizer, clothes_optimizer = adam(model.parameters(), lr, weight_decay), adam(clothes_classifier.parameters(), lr, weight_decay)
    cfg = train_rlq.Config(teacher="none", adam_steps_idle_parameters=adam_steps_idle_parameters)
    pid2clothes = bench_train.pid2clothes_matrix(args, device)
    train_rlq.cap_step(cfg, True, bench_train.make_batches(args, "cap", device)[0], model, clothes_classifier, optimizer,
                       clothes_optimizer, pid2clothes, accelerator)

    idle = {name: p for name, p in model.named_parameters()
            if name.startswith(("pose_branch.", "pose_neck.", "pose_classifier.", "gender_classifier."))}
    assert len(idle) > 10
    before = {name: (p.detach().clone(), *(optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq", "step")))
              for name, p in idle.items()}
    used = dict(model.named_parameters())["id_classifier.weight"].detach().clone()
    train_rlq.tad_step(bench_train.make_batches(args, "tad", device)[0], model, teacher, optimizer, accelerator,
                       cfg.adam_steps_idle_parameters)
    assert not torch.equal(dict(model.named_parameters())["id_classifier.weight"], used)  # the step did happen

    beta1, beta2 = optimizer.param_groups[0]["betas"]
    eps = optimizer.param_groups[0]["eps"]
    moved = [name for name, p in idle.items() if not torch.equal(p.detach(), before[name][0])]
    assert len(moved) > len(idle) // 2 if adam_steps_idle_parameters else moved == [], moved
    for name, p in idle.items():
        weight, exp_avg, exp_avg_sq, step = before[name]
        if not adam_steps_idle_parameters:
            assert torch.equal(p.detach(), weight), name  # no gradient: Adam leaves it alone
            continue
        gradient = weight_decay * weight  # a zero gradient plus Adam's coupled weight decay
        exp_avg = beta1 * exp_avg + (1 - beta1) * gradient
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * gradient**2
        t = float(step) + 1
        expected = weight - lr * (exp_avg / (1 - beta1**t)) / ((exp_avg_sq / (1 - beta2**t)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-8, msg=name)
