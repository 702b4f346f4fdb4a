"""The edge of float64: forwards at +-1e308 are finite, correct and silent; overflow is reported.

"Silent" is proven with NumPy's floating-point flags raising (overflow,
divide-by-zero, invalid) and warnings turned into errors. Underflow is left
ignored, as NumPy does by default: ``exp(-1e308)`` rounding to 0 is the
correctly rounded result, not an error.

When a derivative genuinely overflows (``exp`` near 709.78, a cotangent that
pushes ``<c, f>`` past 1.8e308), check_vjp returns a failing report with a
note, or raises UserFunctionError: never a crash, never a pass.
"""

from __future__ import annotations

import importlib
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oracles import check_vjp
from oracles.errors import UserFunctionError

# reference/__init__ re-exports the functions under the module names: import the modules.
act = importlib.import_module("reference.activations")
sm = importlib.import_module("reference.softmax")
losses = importlib.import_module("reference.losses")

BIG = 1e308
MAX = float(np.finfo(np.float64).max)


@contextmanager
def _silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            yield


EXTREMES = np.array(
    [-MAX, -BIG, -1e300, -1e10, -800.0, -1.0, 0.0, 1.0, 800.0, 1e10, 1e300, BIG, MAX]
)


def test_sigmoid_and_its_vjp_at_the_float64_limit():
    with _silent():
        s = act.sigmoid(EXTREMES)
        ds = act.sigmoid_vjp(np.ones_like(EXTREMES), EXTREMES)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ds))
    assert s[EXTREMES >= 800].tolist() == [1.0] * 5 and s[EXTREMES <= -800].tolist() == [0.0] * 5
    assert s[6] == 0.5 and ds[6] == 0.25
    assert np.all(ds[np.abs(EXTREMES) >= 800] == 0.0)


ROWS = np.array(
    [
        [BIG, -BIG, 0.0],  # spread 2e308: x - max(x) leaves the float64 range
        [MAX, -MAX, 0.0],
        [BIG, BIG, BIG],
        [-BIG, -BIG, -BIG],
        [BIG, 1e307, -1.0],
        [-BIG, 0.0, 1.0],
    ]
)


def test_softmax_and_log_softmax_at_the_float64_limit():
    with _silent():
        a = sm.softmax(ROWS)
        la = sm.log_softmax(ROWS)
        da = sm.softmax_vjp(np.ones_like(ROWS), ROWS)
        dla = sm.log_softmax_vjp(np.ones_like(ROWS), ROWS)
    expected = np.array([[1, 0, 0], [1, 0, 0], [1 / 3] * 3, [1 / 3] * 3, [1, 0, 0]])
    np.testing.assert_allclose(a[:5], expected, atol=1e-15)
    np.testing.assert_allclose(a[5], [0.0, 1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-15)
    assert np.all(np.isfinite(da)) and np.all(np.isfinite(dla))
    # log_softmax: finite wherever the true value is representable, -inf only where it is
    # below -1.8e308 (x_i - max(x) = -2e308 in the first two rows).
    assert la[0].tolist() == [0.0, -np.inf, -BIG]
    assert la[1].tolist() == [0.0, -np.inf, -MAX]
    np.testing.assert_allclose(la[2], -np.log(3.0), rtol=1e-15)
    assert la[4].tolist() == [0.0, 1e307 - BIG, -1.0 - BIG]
    assert la[5][0] == -BIG  # -1e308 - 1 - log1p(1/e), rounded


@settings(max_examples=60)
@given(
    z=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(2, 5)),
        elements=st.floats(-8e307, 8e307) | st.sampled_from([8e307, -8e307, 0.0, 1e300, -1e300]),
    ),
    data=st.data(),
)
@example(z=np.array([[8e307, -8e307]]), data=None)
def test_forwards_are_finite_and_silent_for_logits_up_to_8e307(z, data):
    """Spread at most 1.6e308: every true output is representable, so every output is finite."""
    labels = (
        np.zeros(z.shape[0], dtype=np.int64)
        if data is None
        else data.draw(hnp.arrays(np.int64, z.shape[0], elements=st.integers(0, z.shape[1] - 1)))
    )
    probs = np.full(z.shape, 1.0 / z.shape[1])
    with _silent():
        a = sm.softmax(z)
        la = sm.log_softmax(z)
        losses_per_row = losses.cross_entropy(z, labels, reduction="none")
        mean = losses.cross_entropy(z, labels, reduction="mean")
        soft = losses.cross_entropy(z, probs, reduction="none")
        grad = losses.cross_entropy_vjp(1.0, z, labels, reduction="mean")
        grad_soft = losses.cross_entropy_vjp(np.ones(z.shape[0]), z, probs, reduction="none")
    for out in (a, la, losses_per_row, mean, soft, grad, grad_soft):
        assert np.all(np.isfinite(out))
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, rtol=1e-14)
    assert np.all(la <= 0.0) and np.all(losses_per_row >= 0.0)
    # The loss of a row is -log_softmax at its label; exact to rounding at this scale.
    expected = -la[np.arange(z.shape[0]), labels]
    np.testing.assert_allclose(losses_per_row, expected, rtol=1e-15)
    np.testing.assert_allclose(mean, np.sum(expected / z.shape[0]), rtol=1e-14)
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=1e-15)


def test_cross_entropy_at_plus_minus_1e308():
    z = np.array([[BIG, 0.0], [BIG, 0.0], [BIG, -BIG], [MAX, -MAX]])
    with _silent():
        per_row = losses.cross_entropy(z, np.array([1, 1, 0, 0]), reduction="none")
        # Two losses of 1e308: their sum overflows, their mean does not.
        mean = losses.cross_entropy(z[:2], np.array([1, 1]), reduction="mean")
        grad = losses.cross_entropy_vjp(1.0, z, np.array([1, 1, 0, 0]), reduction="mean")
    assert per_row.tolist() == [BIG, BIG, 0.0, 0.0]
    assert mean == BIG
    assert grad.tolist() == [[0.25, -0.25], [0.25, -0.25], [0.0, 0.0], [0.0, 0.0]]


def test_a_loss_beyond_the_float64_range_is_inf_not_nan():
    z = np.array([[BIG, -BIG]])  # true loss at label 1: 2e308
    with _silent(), np.errstate(over="ignore"):
        loss = losses.cross_entropy(z, np.array([1]), reduction="sum")
    assert loss == np.inf


# --- a derivative that overflows: a report, not a crash, not a pass --------------------------


@pytest.mark.parametrize("x0", [700.0, 709.0, 709.7, 709.78])
def test_a_wrong_vjp_of_exp_near_overflow_never_passes(x0):
    """exp(x0) is finite; exp(x0 + 0.125) is inf from 709.66 on. A vjp off by 2x must fail."""
    x = np.array([x0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numerics.py's own (see issue 9 report)
        wrong = check_vjp(np.exp, lambda g, x: 0.5 * g * np.exp(x), (x,), direction=np.ones(1))
        right = check_vjp(np.exp, lambda g, x: g * np.exp(x), (x,), direction=np.ones(1))
    assert not wrong.ok
    text = str(right)
    if not right.ok:  # then it says why: the oracle could not judge this element
        assert "error estimate is not finite" in text or "NaN or inf at perturbed points" in text


@pytest.mark.parametrize(
    ("fn", "vjp", "x0", "cot"),
    [
        pytest.param(np.exp, lambda g, x: g * np.exp(x), 709.7, 2.0, id="cotangent*exp overflows"),
        pytest.param(lambda x: 1e308 * x**3, lambda g, x: g * 3e308 * x**2, 1.0, 1.0,
                     id="1e308*x**3: f finite, f' = 3e308"),
        pytest.param(lambda x: 1e308 * x**3, lambda g, x: g * 1e308 * x**2, 1.0, 1.0,
                     id="finite wrong vjp of an overflowing derivative"),
    ],
)  # fmt: skip
def test_a_genuinely_overflowing_derivative_is_reported_not_passed(fn, vjp, x0, cot):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            report = check_vjp(fn, vjp, (np.array([x0]),), direction=np.array([cot]))
        except UserFunctionError as exc:
            assert "NaN or inf" in str(exc)
            return
    assert not report.ok
    assert "NaN or inf" in str(report) or "not finite" in str(report)


def test_fn_overflowing_at_the_point_is_a_clear_error():
    with pytest.raises(UserFunctionError, match="NaN or inf at the evaluation point"):
        with np.errstate(over="ignore"):
            check_vjp(np.exp, lambda g, x: g * np.exp(x), (np.array([710.0]),))
