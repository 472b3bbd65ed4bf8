"""One command-line style: every command a user runs takes a documented tyro dataclass, and the same option name means
the same thing everywhere (the place a command writes is --output; renamed options keep taking their former names).

Each command runs here as its `__main__` with --help, in this process (starting ~20 Pythons with torch would take a
minute): the test sees the help a user sees and the dataclass that the command hands to tyro.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import runpy
import sys

import pytest
import tyro
from conftest import REPO

# What a user runs -> the file that runs as __main__.
COMMANDS = {
    "train_base.py": "train_base.py",
    "train_cgal.py": "train_cgal.py",
    "train_rlq.py": "train_rlq.py",
    "evaluate.py": "evaluate.py",
    "preprocess_pose.py": "preprocess_pose.py",
    "preprocess_masks.py": "preprocess_masks.py",
    "python -m rlq.data": "rlq/data.py",
    "python -m rlq.seeds": "rlq/seeds.py",
    "python -m rlq.reproduce": "rlq/reproduce.py",
    "python -m rlq.report": "rlq/report.py",
    "python -m rlq.fidelity": "rlq/fidelity.py",
    "python -m rlq.export": "rlq/export.py",
    "python -m rlq.synthetic": "rlq/synthetic.py",
    "benchmarks/bench_data.py": "benchmarks/bench_data.py",
    "benchmarks/bench_eval.py": "benchmarks/bench_eval.py",
    "benchmarks/bench_extract.py": "benchmarks/bench_extract.py",
    "benchmarks/bench_rerank.py": "benchmarks/bench_rerank.py",
    "benchmarks/bench_train.py": "benchmarks/bench_train.py",
    "scripts/gpu_check.sh": "benchmarks/gpu_check.py",
    "scripts/convert_authors_checkpoint.py": "scripts/convert_authors_checkpoint.py",
}


def run_help(script: str, monkeypatch, capsys) -> tuple[str, type]:
    """`script --help` as its __main__: the help printed, and the dataclass the script handed to tyro.cli."""
    handed = []
    cli = tyro.cli

    def recording_cli(cls, *args, **kwargs):
        handed.append(cls)
        return cli(cls, *args, **kwargs)

    monkeypatch.setattr(tyro, "cli", recording_cli)
    monkeypatch.setenv("COLUMNS", "250")  # every option's names on one line
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the benchmarks import each other as scripts
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert exit_.value.code in (0, None)
    assert len(handed) == 1, f"{script} called tyro.cli {len(handed)} times"
    return capsys.readouterr().out, handed[0]


def undocumented_fields(script: str, cls: type) -> list[str]:
    """The fields of a script's dataclass without a docstring under them (the help tyro shows for the option)."""
    tree = ast.parse((REPO / script).read_text())
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls.__name__).body
    documented = {statement.target.id for statement, following in zip(body, body[1:])
                  if isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr)
                  and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in documented]


def shown_names(help_text: str) -> list[str]:
    """The first name of every option in the help (tyro lists an option's other names after it), in either of tyro's
    layouts: in boxes (`│ --name`) or plain (`  --name`); descriptions are indented further."""
    return re.findall(r"^(?:│ |  )(--?[a-z][\w-]*)", help_text, flags=re.MULTILINE)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_a_documented_tyro_dataclass(command, monkeypatch, capsys):
    text, cls = run_help(COMMANDS[command], monkeypatch, capsys)
    assert dataclasses.is_dataclass(cls)
    assert text.startswith("usage: ")
    assert inspect.getdoc(cls).splitlines()[0] in text  # the class docstring is the description
    assert undocumented_fields(COMMANDS[command], cls) == []
    assert shown_names(text)[0] == "-h"  # the options as tyro lists them


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_documents_out_as_an_option_name(command, monkeypatch, capsys):
    """--out, the former name of --output in several commands, is at most shown after it."""
    text, _ = run_help(COMMANDS[command], monkeypatch, capsys)
    usage = text.splitlines()[0]
    assert "--out" not in shown_names(text) and "--out " not in usage


def parse(module: str, cls_name: str, argv: list[str], monkeypatch):
    """tyro's parse of `argv` by the dataclass `cls_name` of a command's module."""
    for folder in ("benchmarks", "scripts"):  # their modules import each other as top-level modules, as scripts do
        monkeypatch.syspath_prepend(str(REPO / folder))
    return tyro.cli(getattr(importlib.import_module(module), cls_name), args=argv)


# (module, its dataclass, the options it needs besides, the former name, the name now, the field)
RENAMED = [
    ("preprocess_pose", "Args", ["--dataset", "ltcc", "--keypoints", "k.json"], "--out", "--output", "output"),
    ("preprocess_masks", "Args", ["--dataset", "ltcc", "--parsing", "p"], "--out", "--output", "output"),
    ("rlq.synthetic", "Args", [], "--out", "--output", "output"),
    ("rlq.seeds", "Args", ["seed1.json"], "--out", "--output", "output"),
    ("rlq.reproduce", "Args", ["ltcc", "--root", "data"], "--out", "--output", "output"),
    ("convert_authors_checkpoint", "Args", ["--checkpoint", "a.pth.tar"], "--out", "--output", "output"),
    ("rlq.export", "Args", ["--checkpoint", "best.pt"], "--out", "--output", "output"),
    ("convert_authors_checkpoint", "Args", ["--output", "b.pt"], "--src", "--checkpoint", "checkpoint"),
    ("gpu_check", "Args", [], "--work", "--output", "output"),
    ("bench_data", "Args", [], "--images", "--crops", "crops"),
    ("bench_extract", "Args", [], "--workers", "--num-workers", "num_workers"),
]


@pytest.mark.parametrize(("module", "cls_name", "needed", "former", "now", "field"), RENAMED,
                         ids=[f"{module} {former}" for module, _, _, former, *_ in RENAMED])
def test_a_renamed_option_still_takes_its_former_name(module, cls_name, needed, former, now, field, monkeypatch):
    value = "7" if field in ("crops", "num_workers") else "somewhere"
    by_former = getattr(parse(module, cls_name, [*needed, former, value], monkeypatch), field)
    assert by_former == getattr(parse(module, cls_name, [*needed, now, value], monkeypatch), field)
    assert str(by_former) == value


def test_print_json_still_takes_json(monkeypatch):
    for former, now in (("--json", "--print-json"), ("--no-json", "--no-print-json")):
        by_former = parse("rlq.data", "SummaryArgs", ["--dataset", "ltcc", former], monkeypatch)
        assert by_former == parse("rlq.data", "SummaryArgs", ["--dataset", "ltcc", now], monkeypatch)
    assert parse("rlq.data", "SummaryArgs", ["--dataset", "ltcc", "--json"], monkeypatch).print_json


def test_positional_outputs_are_named_as_in_their_messages(monkeypatch, capsys):
    """rlq.report's OUT and rlq.seeds' RUN are named in the usage line as their error lines name them, not PATH."""
    assert "usage: python -m rlq.report [-h] [OPTIONS] OUT" in run_help("rlq/report.py", monkeypatch, capsys)[0]
    assert "RUN [RUN ...] --output PATH" in run_help("rlq/seeds.py", monkeypatch, capsys)[0]
