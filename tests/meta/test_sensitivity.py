"""The sensitivity of each input: what this very run could have caught, stated honestly.

``report.input(name).sensitivity`` claims the smallest relative error that a
typical element would have caught: one of the median magnitude ``m``, so an
absolute error of ``e m`` (9 elements in 10: the thresholds vary from element
to element). Each claim is tested the only way that means anything: plant
errors in the ten elements nearest the median magnitude, once just above the
stated figure (at least 8 of them must be caught) and once at a tenth of it
(at most 3 may be: the figure is at most 10x pessimistic for most elements;
elements whose thresholds are far below the others', such as outputs near
0 with little rounding, do catch less). The constructions
cover several functions, sizes, input and output scales, seeds, inputs of
one check, and the oracles (numeric, torch, taylor).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference as R
from oracles import check_vjp
from oracles._guards import own_stream
from oracles.report import Coverage


def _tanh_case(rng, n):
    x = rng.normal(size=(n, 7))
    return np.tanh, lambda g, x: g * (1 - np.tanh(x) ** 2), (x,)


def _exp_case(rng, n):
    x = rng.uniform(-2, 2, size=(n,))
    return np.exp, lambda g, x: g * np.exp(x), (x,)


def _scaled_sin_case(scale):
    def make(rng, n):
        x = rng.normal(size=(n, 3))
        return (
            lambda x: scale * np.sin(x),
            lambda g, x: scale * g * np.cos(x),
            (x,),
        )

    return make


def _affine_tanh_case(rng, n):
    x, W, b = rng.normal(size=(n, 6)), rng.normal(size=(6, 4)), rng.normal(size=4)

    def fn(x, W, b):
        return np.tanh(x @ W + b)

    def vjp(g, x, W, b):
        d = g * (1 - np.tanh(x @ W + b) ** 2)
        return d @ W.T, x.T @ d, d.sum(axis=0)

    return fn, vjp, (x, W, b)


def _softmax_case(rng, n):
    x = 3.0 * rng.normal(size=(n, 5))
    return R.softmax, R.softmax_vjp, (x,)


def _cross_entropy_case(rng, n):
    z = rng.normal(size=(n, 4))
    y = rng.dirichlet(np.ones(4), size=n)

    def fn(z, y):
        return R.cross_entropy(z, y, reduction="mean")

    def vjp(g, z, y):
        return R.cross_entropy_vjp(g, z, y, reduction="mean"), -g * R.log_softmax(z) / n

    return fn, vjp, (z, y)


CASES = {
    "tanh": _tanh_case,
    "exp": _exp_case,
    "sin x 1e-6": _scaled_sin_case(1e-6),
    "sin x 1e4": _scaled_sin_case(1e4),
    "affine-tanh": _affine_tanh_case,
    "softmax": _softmax_case,
    "cross-entropy": _cross_entropy_case,
}


def _planted(vjp, k, js, rel):
    """``vjp`` with elements ``js`` of input ``k``'s gradient times ``1 + rel`` (linear in g)."""

    def wrong(g, *xs):
        out = vjp(g, *xs)
        many = isinstance(out, tuple)
        out = [np.array(o, dtype=np.float64, copy=True) for o in (out if many else (out,))]
        out[k].reshape(-1)[js] *= 1 + np.asarray(rel)
        return tuple(out) if many else out[0]

    return wrong


#: Elements planted at once, nearest the median magnitude (each is compared on its own).
N_TYPICAL = 10


def _typical(fn, vjp, xs, k, seed):
    """``(elements, m, magnitudes)``: the elements nearest the median magnitude m of input k.

    At the check's own cotangent; a relative error e in a typical element is
    an absolute error of e m, planted as the relative error e m / |a_j|.
    """
    g = own_stream(seed, "direction").standard_normal(np.shape(fn(*xs)))
    out = vjp(g, *xs)
    a = np.abs(np.asarray(out[k] if isinstance(out, tuple) else out)).reshape(-1)
    m = float(np.median(a[a > 1e-12 * a.max()]))
    js = np.argsort(np.abs(a - m))[: min(N_TYPICAL, a.size)]
    return js, m, a[js]


def _caught(report, k, js):
    """How many of the planted elements ``js`` of input ``k`` the report flags."""
    flagged = {e.index for e in report.inputs[k].worst if not e.passed}
    shape = report.inputs[k].shape
    return sum(tuple(int(i) for i in np.unravel_index(j, shape)) in flagged for j in js)


def _assert_honest(fn, vjp, xs, *, seed=0, **options):
    """The stated figure is what 9 typical elements in 10 catch, and at most 10x pessimistic."""
    report = check_vjp(fn, vjp, xs, seed=seed, **options)
    assert report.status == "passed", str(report)
    for k, ir in enumerate(report.inputs):
        s = ir.sensitivity
        assert 0 < s < 1e-3, str(report)
        js, m, a = _typical(fn, vjp, xs, k, seed)
        above = check_vjp(fn, _planted(vjp, k, js, 1.5 * s * m / a), xs, seed=seed, **options)
        assert above.failed_inputs == [ir.name], str(above)
        n = _caught(above, k, js)
        assert n >= 0.8 * len(js), f"{ir.name}: {n} of {len(js)} caught at 1.5 x {s:.3g}"
        assert above.inputs[k].checks[above.oracles[0]].n_failed <= len(js)
        # At most 10x pessimistic for elements of the median's size: in a small input
        # whose magnitudes span 55x (exp of 3 values in [-2, 2]) no one figure is within
        # 10x of every element's threshold, which grows with the element.
        near = js[(a >= m / 4) & (a <= 4 * m)]
        planted = s / 10 * m / a[(a >= m / 4) & (a <= 4 * m)]
        below = check_vjp(fn, _planted(vjp, k, near, planted), xs, seed=seed, **options)
        n = _caught(below, k, near) if below.status == "failed" else 0
        assert n <= 0.3 * len(near), f"{ir.name}: {n} of {len(near)} caught at {s / 10:.3g}"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [3, 40])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_stated_sensitivity_is_caught_above_and_at_most_10x_pessimistic(case, n, seed):
    fn, vjp, xs = CASES[case](np.random.default_rng(100 + seed), n)
    _assert_honest(fn, vjp, xs, seed=seed)


@pytest.mark.parametrize("offset", [1e3, 1e6])
def test_sensitivity_is_honest_for_shift_invariant_functions_at_large_offsets(offset):
    x = np.random.default_rng(3).normal(size=(6, 5)) + offset
    _assert_honest(R.log_softmax, R.log_softmax_vjp, (x,))


@pytest.mark.parametrize("seed", [0, 1])
def test_sensitivity_of_the_taylor_oracle_is_honest(seed):
    x = np.random.default_rng(seed).normal(size=(4, 3))
    report = check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,), against="taylor", seed=seed)
    assert report.status == "passed", str(report)
    s = report.input("x").sensitivity
    # One projection per input: an element's threshold is the resolution over |d_j|.
    assert 1e-12 < s < 1e-3
    for j in range(x.size):
        wrong = _planted(lambda g, x: g * np.cos(x), 0, [j], 1.0)
        assert check_vjp(np.sin, wrong, (x,), against="taylor", seed=seed).status == "failed"


@pytest.mark.torch
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sensitivity_against_torch_is_rounding_level_and_honest(seed):
    import torch

    x = np.random.default_rng(seed).normal(size=(5, 4))
    fn, vjp = R.softmax, R.softmax_vjp
    options = {"against": "torch", "torch_fn": lambda t: torch.softmax(t, dim=-1)}
    report = check_vjp(fn, vjp, (x,), seed=seed, **options)
    assert report.input("x").sensitivity < 1e-11, str(report)
    _assert_honest(fn, vjp, (x,), seed=seed, **options)


@pytest.mark.torch
def test_the_sharpest_oracle_decides_each_elements_figure():
    import torch

    x = np.random.default_rng(4).normal(size=(4, 5))
    numeric = check_vjp(R.softmax, R.softmax_vjp, (x,))
    both = check_vjp(
        R.softmax,
        R.softmax_vjp,
        (x,),
        against=("numeric", "torch"),
        torch_fn=lambda t: torch.softmax(t, dim=-1),
    )
    assert both.input("x").sensitivity <= numeric.input("x").sensitivity / 10


def test_tolerances_the_caller_chose_enter_the_figure_but_not_the_status():
    x = np.random.default_rng(5).normal(size=(6, 3))
    report = check_vjp(np.tanh, lambda g, x: g * (1 - np.tanh(x) ** 2), (x,), rtol=1e-2)
    cov = report.input("x").coverage
    assert cov.relative >= 1e-2 > cov.own
    assert report.status == "passed", "a tolerance the caller chose is not a reason to doubt"


def test_text_names_the_input_the_figure_and_the_exceptions():
    x = np.random.default_rng(6).normal(size=(5, 4))
    report = check_vjp(np.tanh, lambda g, x: g * (1 - np.tanh(x) ** 2), (x,))
    text = str(report)
    assert "catches relative errors >= " in text and " in x" in text
    cov = Coverage(relative=3e-10, own=3e-10, elements=100, loose=12, loose_relative=1e-4)
    text = "catches relative errors >= 3e-10 in W1 (12 elements: >= 1e-4 only)"
    assert cov.describe("W1") == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(3e-10, "3e-10"), (2.01e-10, "3e-10"), (9.99e-7, "1e-6"), (1e-3, "1e-3")],
)
def test_the_figure_is_rounded_up_never_claimed_sharper(value, text):
    cov = Coverage(relative=value, own=value, elements=1)
    assert cov.describe("x") == f"catches relative errors >= {text} in x"


def test_an_input_fn_ignores_is_checked_absolutely_and_not_doubted():
    x, y = np.random.default_rng(7).normal(size=(2, 4, 3))
    report = check_vjp(lambda x, y: np.sin(x), lambda g, x, y: (g * np.cos(x), 0 * y), (x, y))
    assert report.status == "passed", str(report)
    cov = report.input("y").coverage
    assert cov.exact_zero and math.isnan(report.input("y").sensitivity)
    assert "does not depend on it" in cov.describe("y")
    wrong = check_vjp(lambda x, y: np.sin(x), lambda g, x, y: (g * np.cos(x), 1e-9 * y), (x, y))
    assert wrong.failed_inputs == ["y"]


def test_kinks_are_counted_apart_from_the_figure():
    x = np.array([-1.0, 0.0, 0.0, 0.5, 2.0, -0.3])
    report = check_vjp(R.relu, R.relu_vjp, (x,))
    assert report.status == "passed", str(report)
    cov = report.input("x").coverage
    assert cov.kinks == 2 and "at kinks" in cov.describe("x")


def test_json_carries_the_sensitivity():
    x = np.random.default_rng(8).normal(size=(3, 3))
    d = check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,)).to_dict()
    entry = d["inputs"][0]
    assert entry["sensitivity"] == pytest.approx(entry["coverage"]["relative"])
    assert 0 < entry["sensitivity"] < 1e-6
