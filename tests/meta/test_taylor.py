"""The step-free oracles: the Taylor-remainder test and the dot-product test.

``against="taylor"`` judges a derivative by the observed order of
``|f(x + h d) - f(x) - h <g, d>|`` (2 right, 1 wrong), not by a tolerance, at
any scale of the inputs and outputs, including functions that compute in
float32 inside. ``against="dot"`` compares a VJP with a JVP the caller gives,
``<vjp(c), t> = <c, jvp(t)>``, and an HVP with itself, ``<u, H v> = <H u, v>``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference as R
from oracles import InvalidArgument, check_hvp, check_jvp, check_layer, check_vjp
from oracles.numerics.taylor import ORDER_PASS, taylor_test

EPS = float(np.finfo(np.float64).eps)


def _increment(f, x, d, g):
    f0 = f(x)

    def increment(h):
        xh = x + h * d
        fh = f(xh)
        noise = 8 * EPS * float(np.sum(np.abs(fh) + np.abs(f0)))
        return float(np.sum(fh - f0)), float(np.dot(g, xh - x)), noise

    return increment


# --- taylor_test itself -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("x_scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("f_scale", [1e-8, 1.0, 1e8])
def test_order_two_passes_and_order_one_fails_at_every_scale(f_scale, x_scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=5) * x_scale
    d = rng.normal(size=5)

    def f(x):
        return f_scale * np.sin(x / x_scale)

    g = f_scale * np.cos(x / x_scale) / x_scale
    h0 = 0.25 * x_scale
    right = taylor_test(_increment(f, x, d, g), h0=h0)
    assert right.passed and right.order >= ORDER_PASS, right.describe()
    assert abs(right.residual) <= right.resolution
    wrong = taylor_test(_increment(f, x, d, g * (1 + 1e-4)), h0=h0)
    assert not wrong.passed and abs(wrong.order - 1) < 0.3, wrong.describe()
    assert wrong.residual == pytest.approx(-1e-4 * float(g @ d), rel=1e-2)


@pytest.mark.parametrize("seed", range(5))
def test_resolution_is_honest(seed):
    rng = np.random.default_rng(seed)
    x, d = rng.normal(size=8), rng.normal(size=8)
    g = np.cos(x)
    res = taylor_test(_increment(np.sin, x, d, g)).resolution
    direction = d / float(np.dot(d, d))
    above = taylor_test(_increment(np.sin, x, d, g + 3 * res * direction))
    below = taylor_test(_increment(np.sin, x, d, g + res / 30 * direction))
    assert not above.passed and below.passed, (res, above.describe(), below.describe())


def test_a_linear_function_is_exact_to_rounding_and_still_catches_errors():
    x, d = np.arange(4.0), np.ones(4)
    w = np.array([1.0, -2.0, 0.5, 3.0])

    def f(x):
        return w * x

    right = taylor_test(_increment(f, x, d, w))
    assert right.passed and math.isinf(right.order)
    assert "rounding level" in right.describe()
    wrong = taylor_test(_increment(f, x, d, w * 1.01))
    assert not wrong.passed


def test_allowance_passes_a_residual_the_caller_accepts():
    x, d = np.array([0.3, 1.1]), np.array([1.0, -1.0])
    g = np.cos(x) * (1 + 1e-5)
    assert not taylor_test(_increment(np.sin, x, d, g)).passed
    assert taylor_test(_increment(np.sin, x, d, g), allowance=1e-4).passed


# --- against="taylor" ---------------------------------------------------------------------------


def _softmax_rows(seed):
    return (3 * np.random.default_rng(seed).normal(size=(4, 5)),)


TAYLOR_CASES = {
    "tanh": (R.tanh, R.tanh_vjp, lambda s: (np.random.default_rng(s).normal(size=(6,)),)),
    "softmax": (R.softmax, R.softmax_vjp, _softmax_rows),
    "log_softmax at 100": (
        R.log_softmax,
        R.log_softmax_vjp,
        lambda s: (np.random.default_rng(s).normal(size=(3, 4)) + 100.0,),
    ),
    "affine": (
        R.affine,
        R.affine_vjp,
        lambda s: tuple(np.random.default_rng(s).normal(size=n) for n in [(3, 2), (2, 4), (4,)]),
    ),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", list(TAYLOR_CASES))
def test_taylor_oracle_passes_right_vjps_and_fails_wrong_ones_at_the_wrong_input(case, seed):
    fn, vjp, make = TAYLOR_CASES[case]
    xs = make(seed)
    # One projection per input sees a single element through |d_j|: the
    # resolve= bar is set to what such a test can promise.
    report = check_vjp(fn, vjp, xs, against="taylor", seed=seed, resolve=0.05)
    assert report.status == "passed", str(report)
    for k in range(len(xs)):

        def wrong(g, *xs, k=k):
            out = vjp(g, *xs)
            out = list(out) if isinstance(out, tuple) else [out]
            out[k] = out[k] * (1 + 1e-3)
            return tuple(out) if len(out) > 1 else out[0]

        bad = check_vjp(fn, wrong, xs, against="taylor", seed=seed)
        assert bad.status == "failed" and bad.failed_inputs == [report.inputs[k].name], str(bad)
        check = bad.inputs[k].checks["taylor"]
        assert "falls as h:" in check.detail and check.n_checked == 1


@pytest.mark.parametrize("seed", range(3))
def test_taylor_never_passes_a_wrong_vjp_where_it_cannot_resolve_it(seed):
    # Inputs at 1e6 round every intermediate at 1e-10: the remainder's noise
    # floor hides small errors, and the status says so instead of passing.
    x = np.random.default_rng(seed).normal(size=(3, 4)) + 1e6
    right = check_vjp(R.log_softmax, R.log_softmax_vjp, (x,), against="taylor", seed=seed)
    assert right.status != "failed", str(right)
    for factor in (1 + 1e-3, 1.1):
        wrong = check_vjp(
            R.log_softmax,
            lambda g, x, f=factor: R.log_softmax_vjp(g, x) * f,
            (x,),
            against="taylor",
            seed=seed,
        )
        assert wrong.status != "passed", str(wrong)


def test_taylor_report_prints_the_orders_and_the_projection():
    x = np.random.default_rng(1).normal(size=(3, 3))
    report = check_vjp(np.sin, lambda g, x: g * np.cos(x) * 1.01, (x,), against="taylor")
    text = str(report)
    assert "taylor on x: Taylor remainder orders" in text and "<x, d>" in text


def test_taylor_resolves_a_function_that_computes_in_float32():
    x = np.random.default_rng(2).normal(size=(4, 5))

    def f32(x):
        return np.sin(x.astype(np.float32)).astype(np.float64)

    right = check_vjp(f32, lambda g, x: g * np.cos(x), (x,), against="taylor")
    assert right.status != "failed", str(right)
    wrong = check_vjp(f32, lambda g, x: g * np.cos(x) * 1.05, (x,), against="taylor")
    assert wrong.status == "failed", str(wrong)


def test_taylor_with_numeric_and_a_layer():
    class Scale:
        def __init__(self, w):
            self.w = w

        def forward(self, x):
            self.x = x
            return self.w * np.sin(x)

        def backward(self, dout):
            self.dw = dout * np.sin(self.x)
            return dout * self.w * np.cos(self.x)

    rng = np.random.default_rng(3)
    layer, x = Scale(rng.normal(size=4)), rng.normal(size=4)
    report = check_layer(layer, (x,), against=("numeric", "taylor"))
    assert report.status == "passed" and set(report.inputs[0].checks) == {"numeric", "taylor"}


@pytest.mark.parametrize("seed", range(3))
def test_taylor_oracle_of_jvps_and_hvps(seed):
    x = np.random.default_rng(seed).normal(size=(2, 3))
    assert check_jvp(np.tanh, lambda t, x: (1 - np.tanh(x) ** 2) * t, (x,), against="taylor").ok
    bad = check_jvp(np.tanh, lambda t, x: (1 - np.tanh(x)) * t, (x,), against="taylor")
    assert bad.status == "failed"

    def f(x):
        return np.sum(np.sin(x) * x)

    def grad(x):
        return np.cos(x) * x + np.sin(x)

    def hvp(v, x):
        return (2 * np.cos(x) - x * np.sin(x)) * v

    assert check_hvp(f, hvp, (x,), grad=grad, against="taylor", seed=seed).ok
    wrong = check_hvp(f, lambda v, x: hvp(v, x) * 1.01, (x,), grad=grad, against="taylor")
    assert wrong.status == "failed"


# --- against="dot" ------------------------------------------------------------------------------


def _affine_jvp(t, x, W, b):
    tx, tW, tb = t
    return tx @ W + x @ tW + tb


@pytest.mark.parametrize("seed", range(3))
def test_dot_product_test_of_a_vjp_against_its_jvp(seed):
    xs = tuple(np.random.default_rng(seed).normal(size=n) for n in [(3, 2), (2, 4), (4,)])
    report = check_vjp(R.affine, R.affine_vjp, xs, against="dot", jvp=_affine_jvp, seed=seed)
    assert report.status == "passed", str(report)
    assert all(set(r.checks) == {"dot"} for r in report.inputs)

    def wrong_vjp(g, x, W, b):
        dx, dW, db = R.affine_vjp(g, x, W, b)
        return dx, dW, db / 3

    bad = check_vjp(R.affine, wrong_vjp, xs, against="dot", jvp=_affine_jvp, seed=seed)
    assert bad.failed_inputs == ["b"], str(bad)

    def wrong_jvp(t, x, W, b):
        return _affine_jvp(t, x, W, b) + 1e-6 * t[1].sum()

    bad = check_vjp(R.affine, R.affine_vjp, xs, against="dot", jvp=wrong_jvp, seed=seed)
    assert bad.failed_inputs == ["W"], str(bad)


@pytest.mark.parametrize("seed", range(3))
def test_dot_product_test_of_a_jvp_against_its_vjp(seed):
    x = np.random.default_rng(seed).normal(size=(3, 4))

    def jvp(t, x):
        return R.softmax_vjp(t, x)  # softmax's Jacobian is symmetric

    assert check_jvp(R.softmax, jvp, (x,), against="dot", vjp=R.softmax_vjp).ok
    diag = check_jvp(
        R.softmax, lambda t, x: R.softmax(x) * t, (x,), against="dot", vjp=R.softmax_vjp
    )
    assert diag.status == "failed"


def test_dot_symmetry_of_an_hvp_and_what_it_cannot_see():
    x = np.random.default_rng(4).normal(size=5)
    A = np.random.default_rng(5).normal(size=(5, 5))
    A = A + A.T

    def f(x):
        return 0.5 * x @ A @ x

    assert check_hvp(f, lambda v, x: A @ v, (x,), against="dot").ok
    upper = np.triu(A)
    assert check_hvp(f, lambda v, x: upper @ v, (x,), against="dot").status == "failed"
    # Symmetric but twice too large: the symmetry test passes it, the numeric oracle does not.
    assert check_hvp(f, lambda v, x: 2 * A @ v, (x,), against="dot").ok
    twice = check_hvp(f, lambda v, x: 2 * A @ v, (x,), grad=lambda x: A @ x)
    assert twice.status == "failed"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: check_vjp(np.sin, lambda g, x: g, (np.ones(2),), against="dot"), "jvp="),
        (
            lambda: check_vjp(np.sin, lambda g, x: g, (np.ones(2),), jvp=lambda t, x: t),
            "add 'dot' to against",
        ),
        (lambda: check_jvp(np.sin, lambda t, x: t, (np.ones(2),), against="dot"), "vjp="),
        (
            lambda: check_vjp(np.sin, lambda g, x: g, (np.ones(2),), against="dot", jvp=3),
            "jvp must be callable",
        ),
        (
            lambda: check_hvp(np.sum, lambda v, x: v, (np.ones(2),), against="taylor"),
            "taylor oracle of check_hvp",
        ),
    ],
)
def test_bad_step_free_arguments_are_refused(call, match):
    with pytest.raises((InvalidArgument, TypeError), match=match):
        call()
