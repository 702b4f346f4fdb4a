"""A user's project, in a temporary directory, checked with the installed package and its plugin.

The project below knows nothing of this repository: it imports ``oracles``
as installed (public API only: the ``gradcheck`` fixture, the strategies,
``GradientMismatch``) and runs in a fresh ``python -m pytest`` process
whose root is the temporary directory, so none of this repository's
``conftest.py`` or configuration applies. A correct layer and VJP pass; a
wrong one fails with the readable report (input name, "disagree", index).
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest

pytest_plugins = ["pytester"]

USER_CODE = '''
"""A learner's hand-written backprop: function style and layer style."""
import numpy as np


def tanh(x):
    return np.tanh(x)


def tanh_vjp(g, x):
    return g * (1.0 - np.tanh(x) ** 2)


def tanh_vjp_wrong(g, x):
    return g * (1.0 - np.tanh(x))  # forgot the square


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class AffineWrongDW(Affine):
    def backward(self, dout):
        dx = super().backward(dout)
        self.dW = self.dW / len(dout)  # a mean that the forward does not take
        return dx
'''

USER_TESTS = '''
import numpy as np
import pytest
from hypothesis import given

from oracles import GradientMismatch
from oracles.strategies import arrays
from mybackprop import Affine, AffineWrongDW, tanh, tanh_vjp, tanh_vjp_wrong

rng = np.random.default_rng(0)
X, W, B = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)


def test_affine_layer(gradcheck):
    report = gradcheck.layer(Affine(W, B), (X,))
    assert [r.name for r in report.inputs] == ["x", "W", "b"]


def test_affine_layer_wrong_dW(gradcheck):
    gradcheck.layer(AffineWrongDW(W, B), (X,))


def test_tanh_vjp(gradcheck):
    gradcheck.vjp(tanh, tanh_vjp, (X,))


def test_tanh_vjp_wrong(gradcheck):
    gradcheck.vjp(tanh, tanh_vjp_wrong, (X,))


def test_wrong_vjp_raises_gradient_mismatch(gradcheck):
    with pytest.raises(GradientMismatch):
        gradcheck.vjp(tanh, tanh_vjp_wrong, (X,))


SEEN = []


@pytest.mark.gradcheck(examples=4)
@given(x=arrays(shape=(2, 3), scale=2.0))
def test_tanh_vjp_any_input(gradcheck, x):
    SEEN.append(x)
    gradcheck.vjp(tanh, tanh_vjp, (x,))


def test_marker_set_the_example_count():
    assert len(SEEN) == 4
'''


def _plugin_args():
    """Load the plugin by its entry point when installed (autoloaded), else by module name.

    ``-p oracles.plugin`` on top of an autoloaded entry point of another name
    would register the module twice, which pytest refuses.
    """
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "oracles.plugin":
            return ["-p", ep.name]
    return ["-p", "oracles.plugin"]


@pytest.fixture
def project(pytester):
    pytester.makepyfile(mybackprop=USER_CODE, test_mybackprop=USER_TESTS)
    return pytester


def _run(project, *args):
    return project.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", *args)


@pytest.mark.slow
def test_correct_code_passes_and_wrong_code_fails_readably(project):
    result = _run(project)
    result.assert_outcomes(passed=5, failed=2)
    out = result.stdout.str()

    # The wrong layer: the parameter named, "disagree", the worst elements with their index.
    result.stdout.fnmatch_lines(
        [
            "*_ test_affine_layer_wrong_dW _*",
            "check_layer: FAILED: 12 of 12 elements of the gradient of W disagree with numeric",
            "*Worst elements*",
        ]
    )
    assert re.search(r"^\s+W\s+\[\d+, \d+\]\s+numeric\s", out, re.MULTILINE), out
    # The wrong function-style VJP: the input named by the function's signature.
    result.stdout.fnmatch_lines(
        [
            "*_ test_tanh_vjp_wrong _*",
            "check_vjp: FAILED: * of 20 elements of the gradient of x disagree with numeric",
        ]
    )
    assert re.search(r"^\s+x\s+\[\d+, \d+\]\s+numeric\s", out, re.MULTILINE), out
    # Where it failed, and no traceback through the checker's own code.
    result.stdout.fnmatch_lines(["test_mybackprop.py:*: GradientMismatch"])
    assert "oracles/check.py" not in out and "def check_vjp" not in out
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(["FAILED test_mybackprop.py::test_affine_layer_wrong_dW - *"])


@pytest.mark.slow
def test_options_reach_the_fixture(project):
    project.makepyfile(
        test_options="""
        def test_options(gradcheck):
            assert gradcheck.against == ("numeric", "torch")
            assert gradcheck.rtol == 1e-3 and gradcheck.atol == 1e-9
        """
    )
    result = _run(
        project, "test_options.py", "--oracles=numeric,torch", "--oracles-rtol=1e-3",
        "--oracles-atol=1e-9",
    )
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_a_wrong_oracle_name_is_a_usage_error(project):
    result = _run(project, "--oracles=numeric,finite-diff")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--oracles must name oracles among numeric, torch, jax*"])
