"""Every reference case triangulated three ways, and the report command that prints it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
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


# --- exit status, the JSON file, global state ----------------------------------------------------


def _with_cases(monkeypatch, cases):
    import oracles.verify.cases

    monkeypatch.setattr(oracles.verify.cases, "reference_cases", lambda **kwargs: list(cases))


def test_report_exit_status_is_1_when_a_derivation_fails_and_0_when_all_pass(monkeypatch, capsys):
    right = CASES[0]

    def one_percent_off(*args):
        grads = right.vjp(*args)
        return tuple(1.01 * g for g in grads) if isinstance(grads, tuple) else 1.01 * grads

    wrong = dataclasses.replace(right, variant="planted error", vjp=one_percent_off)
    _with_cases(monkeypatch, [right, wrong])
    assert main(["report", "--oracles", "numeric"]) == 1
    captured = capsys.readouterr()
    assert "1 CASE(S) FAILED: 2 cases" in captured.out
    assert "FAIL (" in captured.out
    _with_cases(monkeypatch, [right])
    assert main(["report", "--oracles", "numeric"]) == 0
    assert "ALL DERIVATIONS VERIFIED: 1 cases" in capsys.readouterr().out


def test_report_json_replaces_a_planted_symlink_instead_of_following_it(
    tmp_path, monkeypatch, capsys
):
    _with_cases(monkeypatch, CASES[:2])
    outside = tmp_path / "outside.json"
    outside.write_text("not yours")
    path = tmp_path / "results" / "report.json"
    path.parent.mkdir()
    os.symlink(outside, path)
    assert main(["report", "--oracles", "numeric", "--json", str(path)]) == 0
    assert f"results written to {path}" in capsys.readouterr().out
    assert outside.read_text() == "not yours"
    assert not path.is_symlink() and path.is_file()
    written = json.loads(path.read_text())
    assert written["oracles"] == ["numeric"] and {r["op"] for r in written["rows"]} == {
        c.op for c in CASES[:2]
    }
    assert os.listdir(path.parent) == ["report.json"]  # no temporary file left behind


def _global_state():
    import jax
    import torch

    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what is checked)
    return {
        "torch rng": torch.get_rng_state().numpy().tobytes(),
        "numpy rng": (np_state[0], np_state[1].tobytes(), *np_state[2:]),
        "numpy errstate": np.geterr(),
        "warnings.filters": list(warnings.filters),
        "torch default dtype": torch.get_default_dtype(),
        "torch grad mode": torch.is_grad_enabled(),
        "jax x64": jax.config.read("jax_enable_x64"),
    }


@pytest.mark.torch
@pytest.mark.jax
def test_report_command_changes_no_global_state(monkeypatch, capsys):
    """After ``report`` every global is as it was: generators, error state, warning filters.

    The torch and jax oracles on a few cases (the full set with them takes
    ~10 s), and the full ``--no-mlp`` set with the numeric oracle. The warning
    filters are compared from the second run on: the first may be the one that
    imports the modules torch loads lazily (sympy adds a filter on import).
    """
    few = [c for c in CASES if c.op in ("tanh", "softmax", "cross_entropy", "affine")][:4]
    before = _global_state()
    with monkeypatch.context() as m:
        _with_cases(m, few)
        assert main(["report", "--oracles", "numeric,torch,jax"]) == 0
    after = _global_state()
    assert [n for n in before if after[n] != before[n] and n != "warnings.filters"] == []
    assert main(["report", "--no-mlp", "--oracles", "numeric"]) == 0
    with monkeypatch.context() as m:
        _with_cases(m, few[:2])
        assert main(["report", "--oracles", "jax,torch", "--seed", "3"]) == 0
    capsys.readouterr()
    final = _global_state()
    assert [name for name in after if final[name] != after[name]] == []


@pytest.mark.jax
def test_first_import_of_jax_leaves_numpy_random_state_as_it_was():
    """jax's first import draws from NumPy's global generator; the application restores it.

    In a new process: in this one jax is already imported.
    """
    code = (
        "import numpy as np\n"
        "s = np.random.get_state()\n"
        "from oracles.verify.cli import _import_jax\n"
        "_import_jax()\n"
        "t = np.random.get_state()\n"
        "assert (s[1] == t[1]).all() and s[2:] == t[2:], 'np.random moved'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
