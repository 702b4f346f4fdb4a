"""Every reference case triangulated three ways, and the report command that prints it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oracles import check_vjp
from oracles.verify.cases import reference_cases
from oracles.verify.cli import main

CASES = reference_cases(include_mlp=False)


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_every_case_agrees_with_numeric_torch_and_jax(case):
    report = check_vjp(
        case.fn,
        case.vjp,
        case.inputs,
        against=("numeric", "torch", "jax"),
        torch_fn=case.torch_fn,
        jax_fn=case.jax_fn,
        names=case.names,
    )
    assert report.ok, str(report)
    assert report.agreements and all(a.agree for a in report.agreements), str(report)
    for r in report.inputs:
        assert set(r.checks) == {"numeric", "torch", "jax"}


def test_report_command_lists_every_op_with_a_verdict(capsys):
    status = main(["report", "--no-mlp", "--oracles", "numeric"])
    out = capsys.readouterr().out
    assert status == 0
    for op in (
        "tanh",
        "sigmoid",
        "relu",
        "softmax",
        "log_softmax",
        "cross_entropy",
        "squared_error",
        "affine",
    ):
        assert f"\n{op} " in out
    assert "ALL DERIVATIONS VERIFIED" in out


def test_required_backend_that_cannot_be_imported_fails_the_run(tmp_path):
    """ORACLES_REQUIRE_BACKENDS turns a missing torch into a failed run, not skips."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed (simulated)')\n")
    env = dict(os.environ, ORACLES_REQUIRE_BACKENDS="torch,jax", PYTHONPATH=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--co",
            "tests/meta/test_check.py",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert (
        "ORACLES_REQUIRE_BACKENDS requires backends that cannot be imported: torch"
        in run.stderr + run.stdout
    )


def test_missing_backend_error_names_the_extra(monkeypatch):
    import numpy as np

    import oracles
    import reference as R

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(oracles.BackendUnavailable, match=r"backprop-oracles\[torch\]"):
        check_vjp(R.tanh, R.tanh_vjp, (np.ones(2),), against="torch", torch_fn=lambda x: x)
