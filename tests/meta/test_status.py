"""The three-valued verdict: passed, failed, or inconclusive when the check could not have failed.

A check that cannot fail is worse than none in a CI guard, so a run that
could not have caught a relative error of ``resolve`` (default 1e-3) in some
input is never ``ok``: an all-zero cotangent, tangent or HVP vector (issue
13, item 8) whatever the derivation; a reference of about 0 everywhere
although the function is not constant (a normalized output with an all-ones
cotangent; saturation); elements judged only loosely. ``assert_*`` raise
:class:`GradientMismatch` on failed and :class:`InconclusiveCheck` on
inconclusive, and the report says what to do instead.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import reference as R
from oracles import (
    GradientMismatch,
    InconclusiveCheck,
    InvalidArgument,
    InvalidArgumentType,
    assert_hvp,
    assert_jvp,
    assert_layer,
    assert_vjp,
    check_hvp,
    check_jvp,
    check_layer,
    check_vjp,
)
from oracles.report import STATUSES

SHAPES = [(1,), (7,), (3, 4), (2, 3, 5)]


def _sin_vjps():
    return {
        "right": lambda g, x: g * np.cos(x),
        "wrong factor": lambda g, x: 2 * g * np.cos(x),
        "wrong formula": lambda g, x: g * np.sin(x),
        "zero": lambda g, x: 0 * g * x,
    }


# --- the status and the exceptions ---------------------------------------------------------------


def test_each_status_its_ok_and_its_exception():
    x = np.random.default_rng(0).normal(size=(3, 4))
    passed = check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,))
    failed = check_vjp(np.sin, lambda g, x: g * np.sin(x), (x,))
    vacuous = check_vjp(np.sin, lambda g, x: g * np.sin(x), (x,), direction=np.zeros((3, 4)))
    assert [passed.status, failed.status, vacuous.status] == list(STATUSES)
    assert (passed.ok, failed.ok, vacuous.ok) == (True, False, False)
    assert assert_vjp(np.sin, lambda g, x: g * np.cos(x), (x,)).status == "passed"
    with pytest.raises(GradientMismatch) as exc:
        assert_vjp(np.sin, lambda g, x: g * np.sin(x), (x,))
    assert exc.value.report.status == "failed"
    with pytest.raises(InconclusiveCheck) as exc:
        assert_vjp(np.sin, lambda g, x: g * np.sin(x), (x,), direction=np.zeros((3, 4)))
    assert exc.value.report.status == "inconclusive"
    assert not isinstance(exc.value, GradientMismatch)
    assert isinstance(exc.value, AssertionError)
    assert str(exc.value) == str(exc.value.report)


def test_inconclusive_report_says_why_and_what_to_do_instead():
    x = np.random.default_rng(1).normal(size=(4,))
    report = check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), direction=np.zeros(4))
    text = str(report)
    assert text.startswith("check_vjp: INCONCLUSIVE: x: the cotangent is all zero")
    assert "What to do instead:" in text and "direction=None" in text
    assert report.advice and report.inconclusive
    d = report.to_dict()
    assert d["status"] == "inconclusive" and d["ok"] is False
    assert d["inconclusive"] == report.inconclusive and d["advice"] == report.advice
    json.dumps(d)


def test_failed_takes_precedence_over_inconclusive():
    # The cotangent is zero, but this vjp returns something anyway: that is a finding.
    x = np.random.default_rng(2).normal(size=(5,))
    report = check_vjp(np.sin, lambda g, x: np.cos(x), (x,), direction=np.zeros(5))
    assert report.status == "failed"
    assert report.inconclusive, "the reason is still recorded"


# --- issue 13, item 8: an all-zero direction never passes ----------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(_sin_vjps()))
def test_all_zero_cotangent_is_never_ok(name, shape):
    x = np.random.default_rng(3).normal(size=shape)
    vjp = _sin_vjps()[name]
    report = check_vjp(np.sin, vjp, (x,), direction=np.zeros(shape))
    assert report.status == "inconclusive" and not report.ok, str(report)
    with pytest.raises(InconclusiveCheck):
        assert_vjp(np.sin, vjp, (x,), direction=np.zeros(shape))


@pytest.mark.parametrize("mode", ["exhaustive", "fast", "ladder"])
def test_all_zero_cotangent_is_never_ok_in_any_mode(mode):
    x = np.random.default_rng(4).normal(size=(50,))
    for vjp in _sin_vjps().values():
        report = check_vjp(np.sin, vjp, (x,), direction=np.zeros(50), mode=mode)
        assert report.status == "inconclusive", str(report)


@pytest.mark.parametrize("seed", range(3))
def test_all_zero_cotangent_of_a_scalar_loss_with_several_inputs(seed):
    rng = np.random.default_rng(seed)
    p, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    for vjp in (R.squared_error_vjp, lambda g, p, t: (0 * p, 0 * t)):
        report = check_vjp(R.squared_error, vjp, (p, t), direction=np.array(0.0))
        assert report.status == "inconclusive", str(report)
        assert len(report.inconclusive) == 2  # both inputs named


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_all_zero_tangent_is_never_ok(shape):
    x = np.random.default_rng(5).normal(size=shape)
    for jvp in (lambda t, x: np.cos(x) * t, lambda t, x: np.sin(x) * t, lambda t, x: 0 * t):
        report = check_jvp(np.sin, jvp, (x,), direction=np.zeros(shape))
        assert report.status == "inconclusive", str(report)
        with pytest.raises(InconclusiveCheck):
            assert_jvp(np.sin, jvp, (x,), direction=np.zeros(shape))


def test_a_zero_tangent_for_one_input_leaves_its_part_of_the_jvp_unchecked():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 3, 4))

    def right(t, x, y):
        return t[0] * y + x * t[1]

    def forgets_y(t, x, y):
        return t[0] * y  # wrong, but only in how it depends on y's tangent

    direction = (rng.normal(size=(3, 4)), np.zeros((3, 4)))
    for jvp in (right, forgets_y):
        report = check_jvp(np.multiply, jvp, (x, y), direction=direction, names=("x", "y"))
        assert report.status == "inconclusive", str(report)
        assert "tangents[1] for y is all zero" in report.verdict
    assert check_jvp(np.multiply, forgets_y, (x, y)).status == "failed"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_all_zero_hvp_vector_is_never_ok(shape):
    x = np.random.default_rng(7).normal(size=shape)

    def fn(x):
        return np.sum(x**3)

    def grad(x):
        return 3 * x**2

    for hvp in (lambda v, x: 6 * x * v, lambda v, x: 3 * x * v, lambda v, x: 0 * v):
        report = check_hvp(fn, hvp, (x,), grad=grad, direction=np.zeros(shape))
        assert report.status == "inconclusive", str(report)
        with pytest.raises(InconclusiveCheck):
            assert_hvp(fn, hvp, (x,), grad=grad, direction=np.zeros(shape))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0), (2, 0, 5)], ids=str)
def test_empty_inputs_compare_nothing_and_are_never_ok(shape):
    """Zero elements to compare: no derivative, right or wrong, could have failed."""
    x = np.zeros(shape)

    def fn(x):
        return np.tanh(x)

    for vjp in (lambda g, x: g * (1 - np.tanh(x) ** 2), lambda g, x: 5 * g):
        for mode in ("exhaustive", "fast"):
            report = check_vjp(fn, vjp, (x,), mode=mode)
            assert report.status == "inconclusive", str(report)
            assert "nothing to compare" in report.inconclusive[0]
    assert check_jvp(fn, lambda t, x: 5 * t, (x,)).status == "inconclusive"
    hvp = check_hvp(lambda x: np.sum(x**2), lambda v, x: 3 * v, (x,), grad=lambda x: 2 * x)
    assert hvp.status == "inconclusive"
    # One empty input among others is no reason to doubt the rest.
    y = np.random.default_rng(0).normal(size=3)
    report = check_vjp(
        lambda x, y: np.tanh(y) * (1 + x.sum()),
        lambda g, x, y: (np.full(x.shape, np.sum(g * np.tanh(y))), g * (1 - np.tanh(y) ** 2)),
        (x, y),
    )
    assert report.status == "passed", str(report)


class _Scale:
    def __init__(self, w):
        self.w = w

    def forward(self, x):
        self.x = x
        return self.w * x

    def backward(self, dout):
        self.dw = dout * self.x
        return dout * self.w


def test_all_zero_dout_of_a_layer_is_never_ok():
    rng = np.random.default_rng(8)
    layer, x = _Scale(rng.normal(size=4)), rng.normal(size=4)
    report = check_layer(layer, (x,), direction=np.zeros(4))
    assert report.status == "inconclusive", str(report)
    with pytest.raises(InconclusiveCheck):
        assert_layer(layer, (x,), direction=np.zeros(4))
    assert check_layer(layer, (x,)).status == "passed"


# --- a reference of about 0 everywhere although fn is not constant -------------------------------


def _batchnorm(x):
    mu, var = x.mean(axis=0), x.var(axis=0)
    return (x - mu) / np.sqrt(var + 1e-5)


def _batchnorm_vjp(g, x):
    s = np.sqrt(x.var(axis=0) + 1e-5)
    xh = (x - x.mean(axis=0)) / s
    return (g - g.mean(axis=0) - xh * (g * xh).mean(axis=0)) / s


BATCHNORM_VJPS = {
    "right": _batchnorm_vjp,
    "zero": lambda g, x: np.zeros_like(x),
    "drops the variance term": lambda g, x: (g - g.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5),
}


@pytest.mark.parametrize("shape", [(8, 5), (16, 3), (4, 2)], ids=str)
@pytest.mark.parametrize("name", list(BATCHNORM_VJPS))
def test_batchnorm_with_an_all_ones_cotangent_is_inconclusive(name, shape):
    x = np.random.default_rng(9).normal(size=shape) * 3 + 1
    vjp = BATCHNORM_VJPS[name]
    report = check_vjp(_batchnorm, vjp, (x,), direction=np.ones(shape))
    assert report.status == "inconclusive", str(report)
    assert "all-ones cotangent" in report.verdict
    assert any("direction=None" in a for a in report.advice)
    assert math.isinf(report.input("x").sensitivity)
    random = check_vjp(_batchnorm, vjp, (x,))
    assert random.status == ("passed" if name == "right" else "failed"), str(random)


@pytest.mark.torch
def test_batchnorm_with_an_all_ones_cotangent_is_inconclusive_against_torch_too():
    import torch

    def torch_bn(t):
        return (t - t.mean(0)) / torch.sqrt(t.var(0, unbiased=False) + 1e-5)

    x = np.random.default_rng(10).normal(size=(8, 5))
    for vjp in BATCHNORM_VJPS.values():
        report = check_vjp(
            _batchnorm, vjp, (x,), direction=np.ones((8, 5)), against="torch", torch_fn=torch_bn
        )
        assert report.status == "inconclusive", str(report)


@pytest.mark.parametrize("offset", [25.0, 40.0])
def test_saturated_points_are_inconclusive_and_say_to_move(offset):
    x = np.random.default_rng(11).normal(size=(4, 3)) + offset
    for vjp in (R.tanh_vjp, lambda g, x: g * (1 - np.tanh(x))):
        report = check_vjp(R.tanh, vjp, (x,))
        assert report.status == "inconclusive", str(report)
        assert any("another point" in a for a in report.advice)


def test_an_input_fn_does_not_use_is_not_a_reason_to_doubt():
    x, y = np.random.default_rng(12).normal(size=(2, 5))
    report = check_vjp(lambda x, y: np.sin(x), lambda g, x, y: (g * np.cos(x), 0 * y), (x, y))
    assert report.status == "passed", str(report)


# --- loosely judged elements ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("amplitude", [1e-3, 1e-2])
def test_a_function_too_noisy_to_resolve_never_passes(amplitude, seed):
    # A ripple of this amplitude at frequency 1e9 limits any central difference
    # at steps above 1e-9 to about amplitude^(2/3) relative, and its own
    # derivative (1e9 x amplitude) is what steps below would see: g cos(x)
    # cannot be confirmed to 1e-3, whichever way the numerics go.
    x = np.random.default_rng(seed).normal(size=6)

    def fn(x):
        return np.sin(x) + amplitude * np.sin(1e9 * x)

    for vjp in (lambda g, x: g * np.cos(x), lambda g, x: 1.001 * g * np.cos(x)):
        report = check_vjp(fn, vjp, (x,))
        assert report.status != "passed", str(report)
        if report.status == "inconclusive":
            assert any("torch" in a for a in report.advice)


def test_resolve_is_the_bar_every_input_must_clear():
    x = np.random.default_rng(14).normal(size=(3, 3))
    right = (np.sin, lambda g, x: g * np.cos(x), (x,))
    report = check_vjp(*right)
    s = report.input("x").coverage.own
    assert check_vjp(*right, resolve=s * 2).status == "passed"
    strict = check_vjp(*right, resolve=s / 2)
    assert strict.status == "inconclusive" and "resolve=" in strict.verdict
    assert strict.resolve == s / 2
    zero = np.zeros((3, 3))
    assert check_vjp(*right, direction=zero, resolve=math.inf).status == "passed"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, InvalidArgument),
        (-1e-3, InvalidArgument),
        (math.nan, InvalidArgument),
        (True, InvalidArgumentType),
        ("1e-3", InvalidArgumentType),
        ([1e-3], InvalidArgumentType),
    ],
)
def test_bad_resolve_is_refused_naming_it(value, error):
    x = np.ones(2)
    with pytest.raises(error, match="resolve"):
        check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), resolve=value)
    with pytest.raises(error, match="resolve"):
        check_jvp(np.sin, lambda t, x: np.cos(x) * t, (x,), resolve=value)


# --- the pytest plugin fails an inconclusive check with the readable report ---------------------

pytest_plugins = ["pytester"]


@pytest.mark.slow
def test_the_plugin_fails_an_inconclusive_check_readably(pytester):
    pytester.makepyfile(
        test_vacuous="""
        import numpy as np

        def test_zero_cotangent(gradcheck):
            x = np.linspace(-1.0, 1.0, 5)
            gradcheck.vjp(np.sin, lambda g, x: g * np.cos(x), (x,), direction=np.zeros(5))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "check_vjp: INCONCLUSIVE: x: the cotangent is all zero*",
            "*What to do instead:*",
            "test_vacuous.py:*: InconclusiveCheck",
        ]
    )
    assert "Traceback" not in result.stdout.str()
