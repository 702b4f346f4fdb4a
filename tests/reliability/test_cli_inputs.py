"""Bad input to ``python -m oracles report|mnist``: a usage error up front, before any work.

Exit status 2 (argparse's usage error) with a message naming the option and
the rule, and nothing run: the work functions are replaced by ones that fail
the test if called. Exit status 1 stays "a derivation failed" and 0 "all
verified" (tests/test_report_command.py). One table holds every bad-input
row; the commands run in-process, and one test runs the real
``python -m oracles`` for its exit status.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from oracles._files import open_atomic, output_dir_problem, output_file_problem
from oracles.verify import cli, mnist

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def d(tmp_path):
    """A directory with things to point options at."""
    (tmp_path / "taken.txt").write_text("a file")
    (tmp_path / "dir").mkdir()
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    _write_idx(tmp_path / "few-images.idx", np.zeros((100, 28, 28)))
    _write_idx(tmp_path / "few-labels.idx", np.zeros(100))
    yield tmp_path
    ro.chmod(stat.S_IRWXU)


def _cannot_write(path):
    """The row's 'no permission' path must really refuse files here (root included: /sys)."""
    assert output_file_problem(os.path.join(path, "probe")) is not None, path


# (id, command, argv given the directory d, option named, fragment of the rule)
BAD_INPUTS = [
    ("unknown oracle", "report", lambda d: ["--oracles", "numeric,tensorflow"],
     "--oracles", "'tensorflow' is not one of them"),
    ("oracle repeated", "report", lambda d: ["--oracles", "jax,numeric,jax"],
     "--oracles", "must name each oracle once; jax is repeated"),
    ("oracles empty", "report", lambda d: ["--oracles", ""],
     "--oracles", "must name at least one of numeric, torch, jax"),
    ("oracles only commas", "report", lambda d: ["--oracles", " , "],
     "--oracles", "must name at least one of"),
    ("oracle name empty", "report", lambda d: ["--oracles", "numeric,,torch"],
     "--oracles", "must not contain an empty name"),
    ("oracle case differs", "report", lambda d: ["--oracles", "Numeric"],
     "--oracles", "'Numeric' is not one of them"),
    ("json directory missing", "report", lambda d: ["--json", str(d / "no" / "r.json")],
     "--json", "does not exist"),
    ("json is a directory", "report", lambda d: ["--json", str(d / "dir")],
     "--json", "is a directory"),
    ("json parent is a file", "report", lambda d: ["--json", str(d / "taken.txt" / "r.json")],
     "--json", "is not a directory"),
    ("json in read-only /sys", "report", lambda d: ["--json", "/sys/report.json"],
     "--json", "cannot create files in '/sys'"),
    ("seed negative", "report", lambda d: ["--seed", "-1"], "--seed", "must be >= 0"),
    ("mode unknown", "report", lambda d: ["--mode", "slow"], "--mode", "invalid choice"),
    ("batch size 0", "mnist", lambda d: ["--batch-size", "0"], "--batch-size", "must be >= 1"),
    ("batch size negative", "mnist", lambda d: ["--batch-size", "-8"],
     "--batch-size", "must be >= 1, got -8"),
    ("batch size not an int", "mnist", lambda d: ["--batch-size", "1.5"],
     "--batch-size", "must be an integer"),
    ("epochs -1", "mnist", lambda d: ["--epochs", "-1"], "--epochs", "must be >= 1, got -1"),
    ("epochs 0", "mnist", lambda d: ["--epochs", "0"], "--epochs", "must be >= 1"),
    ("lockstep steps 0", "mnist", lambda d: ["--lockstep-steps", "0"],
     "--lockstep-steps", "must be >= 1"),
    ("hidden 0", "mnist", lambda d: ["--hidden", "0"], "--hidden", "must be >= 1"),
    ("hidden negative", "mnist", lambda d: ["--hidden", "-128"], "--hidden", "must be >= 1"),
    ("seed negative", "mnist", lambda d: ["--seed", "-3"], "--seed", "must be >= 0"),
    ("lr 0", "mnist", lambda d: ["--lr", "0"], "--lr", "must be a finite number > 0"),
    ("lr negative", "mnist", lambda d: ["--lr", "-0.1"], "--lr", "must be a finite number > 0"),
    ("lr nan", "mnist", lambda d: ["--lr", "nan"], "--lr", "must be a finite number > 0"),
    ("lr inf", "mnist", lambda d: ["--lr", "inf"], "--lr", "must be a finite number > 0"),
    ("out is a file", "mnist", lambda d: ["--out", str(d / "taken.txt")],
     "--out", "exists and is not a directory"),
    ("out under a file", "mnist", lambda d: ["--out", str(d / "taken.txt" / "plots")],
     "--out", "exists and is not a directory"),
    ("out in read-only /sys", "mnist", lambda d: ["--out", "/sys/oracles-report"],
     "--out", "cannot create files in '/sys'"),
    ("images without labels", "mnist", lambda d: ["--images", str(d / "few-images.idx")],
     "--images/--labels", "give both files or neither"),
    ("labels without images", "mnist", lambda d: ["--labels", str(d / "few-labels.idx")],
     "--images/--labels", "give both files or neither"),
    ("images missing", "mnist",
     lambda d: ["--images", str(d / "nope.idx"), "--labels", str(d / "few-labels.idx")],
     "--images/--labels", "No such file or directory"),
    ("images are labels", "mnist",
     lambda d: ["--images", str(d / "few-labels.idx"), "--labels", str(d / "few-labels.idx")],
     "--images/--labels", "expected MNIST images of shape (n, 28, 28)"),
    ("images not IDX", "mnist",
     lambda d: ["--images", str(d / "taken.txt"), "--labels", str(d / "few-labels.idx")],
     "--images/--labels", "taken.txt"),
    ("too few digits", "mnist",
     lambda d: ["--images", str(d / "few-images.idx"), "--labels", str(d / "few-labels.idx")],
     "--images/--labels", "must hold at least 10000 digits"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "argv", "option", "rule"),
    [pytest.param(*row[1:], id=f"{row[1]}: {row[0]}") for row in BAD_INPUTS],
)
def test_bad_input_is_a_usage_error_before_any_work(
    d, monkeypatch, capsys, request, command, argv, option, rule
):
    if "/sys" in request.node.callspec.id:
        # A read-only file system refuses even root (a chmod'ed directory would not).
        _cannot_write("/sys")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(cli, "_report_main", no_work)
    for stage in ("train", "lockstep", "gradient_errors"):
        monkeypatch.setattr(mnist, stage, no_work)
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, *argv(d)])
    captured = capsys.readouterr()
    assert exit_.value.code == 2
    assert captured.out == ""
    assert f"error: argument {option}: " in captured.err
    assert rule in captured.err
    assert f"python -m oracles {command}" in captured.err  # the usage line of that command


@pytest.mark.parametrize(
    ("text", "oracles"),
    [
        ("numeric", ("numeric",)),
        (" jax , numeric ", ("jax", "numeric")),
        ("numeric,torch,jax", ("numeric", "torch", "jax")),
    ],
)
def test_good_oracle_lists(monkeypatch, text, oracles):
    seen = []
    monkeypatch.setattr(cli, "_report_main", lambda args: seen.append(args.oracles) or 0)
    assert cli.main(["report", "--oracles", text]) == 0
    assert seen == [oracles]


def test_good_paths_are_accepted(tmp_path, monkeypatch):
    """A new file, an existing file or symlink (replaced later); an --out that does not exist."""
    (tmp_path / "old.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link.json")
    monkeypatch.setattr(cli, "_report_main", lambda args: 0)
    for name in ("new.json", "old.json", "link.json"):
        assert cli.main(["report", "--json", str(tmp_path / name)]) == 0
    assert output_dir_problem(tmp_path / "a" / "b") is None
    assert output_dir_problem(tmp_path) is None
    assert sorted(os.listdir(tmp_path)) == ["link.json", "old.json"]  # the probes left nothing


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), open_atomic(path, "w") as fh:
        fh.write("new, but not all of it")
        raise RuntimeError("half way")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_real_command_exit_status_is_2_for_a_usage_error():
    for argv, message in [
        (["report", "--oracles", "numeric,numeric"], "argument --oracles: must name each"),
        (["mnist", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "oracles", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, run.stderr
        assert message in run.stderr
        assert run.stdout == ""
