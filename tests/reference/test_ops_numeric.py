"""Every reference derivation against the error-aware numeric oracle, on random shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, example, given
from hypothesis import strategies as st

import reference as R
from oracles import assert_vjp, check_vjp
from oracles import strategies as ost

SMALL = ost.shapes(min_dims=1, max_dims=3, max_side=6)


def _never_fails(fn, vjp, inputs, **options):
    """A correct derivation never fails; where the point is degenerate it may be unresolved.

    At a stationary or saturated point (every gradient ~0, a relu input at 0 only) the check
    says "inconclusive" instead of passing vacuously: such an example is discarded, so
    Hypothesis keeps looking for points where a passing verdict means something.
    """
    report = check_vjp(fn, vjp, inputs, **options)
    assert report.status != "failed", str(report)
    assume(report.status == "passed")
    return report


@given(x=ost.arrays(SMALL), op=st.sampled_from(["tanh", "sigmoid", "relu"]))
@example(x=np.array([0.0, -0.0, 1e-300, -2.0]), op="relu")
@example(x=np.array([[25.0, -40.0], [700.0, -700.0]]), op="sigmoid")
@example(x=np.array([19.0, -19.0, 3.0]), op="tanh")
def test_activations(x, op):
    fn, vjp = getattr(R, op), getattr(R, f"{op}_vjp")
    _never_fails(fn, vjp, (x,))


@given(data=st.data(), x=ost.logits(SMALL), log=st.booleans())
@example(data=None, x=np.array([[1e6 + 1.0, 1e6, 1e6 - 2.0]]), log=True)
@example(data=None, x=np.array([[500.0, -500.0, 0.0, 3.0]]), log=False)
def test_softmax_family(data, x, log):
    axis = -1 if data is None else data.draw(ost.axes(x.ndim), label="axis")
    fn = R.log_softmax if log else R.softmax
    vjp = R.log_softmax_vjp if log else R.softmax_vjp
    _never_fails(lambda z: fn(z, axis=axis), lambda g, z: vjp(g, z, axis=axis), (x,))


@given(
    pair=ost.logits_and_targets(ost.shapes(min_dims=1, max_dims=3, max_side=6), normalized=None),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_cross_entropy(pair, reduction):
    z, t = pair
    _never_fails(
        lambda a: R.cross_entropy(a, t, reduction=reduction),
        lambda g, a: R.cross_entropy_vjp(g, a, t, reduction=reduction),
        (z,),
    )


@given(
    data=st.data(),
    shape=ost.shapes(min_dims=1, max_dims=3, max_side=6),
    reduction=st.sampled_from(["sum", "mean", "batch_mean", "none"]),
    half=st.booleans(),
)
def test_squared_error(data, shape, reduction, half):
    p = data.draw(ost.arrays(shape), label="pred")
    t = data.draw(ost.arrays(shape), label="target")
    _never_fails(
        lambda a, b: R.squared_error(a, b, reduction=reduction, half=half),
        lambda g, a, b: R.squared_error_vjp(g, a, b, reduction=reduction, half=half),
        (p, t),
    )


@given(xWb=ost.affine_inputs())
def test_affine(xWb):
    _never_fails(R.affine, R.affine_vjp, xWb)


def test_float32_inputs_are_checked_in_float64():
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    report = assert_vjp(R.softmax, R.softmax_vjp, (x,))
    assert any("float32" in n and "float64" in n for n in report.notes)
