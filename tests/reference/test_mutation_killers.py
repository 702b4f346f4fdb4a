"""Tests written to kill mutants of the backward functions that the rest of the suite let live.

``python benchmarks/mutation.py`` runs mutmut on the hand-written VJPs; each
test here names the behaviour a surviving mutant changed. Mutants that
change nothing observable (equivalent mutants) are listed, with the reason,
in ``benchmarks/mutation.py``'s ``EQUIVALENT``.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import reference as R
from oracles import assert_vjp
from reference import mlp
from reference._validation import InvalidInput

RNG = np.random.default_rng(31)


# --- reference.mlp.backward: the default cotangent of the scalar loss is 1 -----------------------


def test_backward_default_cotangent_is_one():
    X = RNG.uniform(0, 1, size=(5, 6))
    y = np.array([0, 2, 1, 2, 0])
    params = mlp.init_params((6, 4, 3), seed=2)
    _, cache = mlp.forward(params, X, y)
    default = mlp.backward(params, cache)
    explicit = mlp.backward(params, cache, g=1.0)
    for d, e in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(d, e)
    # And that is the plain gradient of the loss (loss_and_grads relies on it).
    _, grads = mlp.loss_and_grads(params, X, y)
    assert_vjp(
        lambda *p: mlp.mlp_loss(X, y, *p),
        lambda g, *p: tuple(float(g) * d for d in grads),
        params,
    )


# --- bad arguments are refused with messages that name the rule ----------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: R.cross_entropy_vjp(1.0, np.zeros((2, 3)), np.array([0, 1]), reduction="avg"),
            r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'",
        ),
        (
            lambda: R.squared_error_vjp(1.0, np.zeros(3), np.zeros(3), reduction="avg"),
            r"reduction must be one of \('sum', 'mean', 'batch_mean', 'none'\), got 'avg'",
        ),
        (
            lambda: R.squared_error_vjp(1.0, np.zeros((2, 3)), np.zeros((3, 2))),
            r"pred and target must have the same shape, got \(2, 3\) and \(3, 2\)",
        ),
    ],
    ids=["ce_reduction", "se_reduction", "se_shapes"],
)
def test_vjp_argument_errors_name_the_rule(call, match):
    with pytest.raises(InvalidInput, match=match):
        call()


# --- dtypes: the VJPs return what the forward computes in ----------------------------------------


@pytest.mark.parametrize("g", [Fraction(1, 3), Decimal("0.25"), 2, np.float32(0.5), True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_vjp_is_float64_for_any_numeric_cotangent(g, reduction):
    z = RNG.normal(size=(3, 4))
    t = np.array([0, 3, 1])
    d = R.cross_entropy_vjp(g, z, t, reduction=reduction)
    assert d.dtype == np.float64
    np.testing.assert_allclose(
        d, float(g) * R.cross_entropy_vjp(1.0, z, t, reduction=reduction), rtol=1e-15
    )


def test_cross_entropy_vjp_none_reduction_with_a_list_of_fractions():
    z = RNG.normal(size=(2, 3))
    t = np.array([2, 0])
    d = R.cross_entropy_vjp([Fraction(1, 2), Fraction(3, 2)], z, t, reduction="none")
    assert d.dtype == np.float64
    np.testing.assert_allclose(d, R.cross_entropy_vjp(np.array([0.5, 1.5]), z, t, reduction="none"))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float64])
def test_squared_error_vjp_computes_in_float64_like_its_forward(dtype):
    # float32 (or int) on both sides: the difference is taken in float64, as
    # the forward does, not rounded to float32 first. (Promoting either pred
    # or target is enough for that, so no single mutant breaks it; this pins
    # the contract the pair of promotions provides.)
    p = (RNG.normal(size=(3, 2)) * 1e3).astype(dtype)
    t = (RNG.normal(size=(3, 2)) * 1e3).astype(dtype)
    assert np.asarray(R.squared_error(p, t)).dtype == np.float64
    dp, dt = R.squared_error_vjp(1.0, p, t)
    assert dp.dtype == dt.dtype == np.float64
    exact = 2.0 * (p.astype(np.float64) - t.astype(np.float64))
    np.testing.assert_array_equal(dp, exact)
    np.testing.assert_array_equal(dt, -exact)


@pytest.mark.parametrize("which", ["pred", "target"])
def test_squared_error_vjp_keeps_complex_inputs_complex(which):
    # The forward keeps complex inputs complex (result_type(x, float64)); the
    # VJP of the polynomial must too (the complex-step oracle relies on it),
    # not drop the imaginary part.
    p = RNG.normal(size=(2, 3))
    t = RNG.normal(size=(2, 3))
    if which == "pred":
        p = p + 1j * RNG.normal(size=p.shape)
    else:
        t = t + 1j * RNG.normal(size=t.shape)
    assert np.iscomplexobj(R.squared_error(p, t))
    dp, dt = R.squared_error_vjp(1.0, p, t)
    np.testing.assert_allclose(dp, 2.0 * (p - t), rtol=1e-15)
    np.testing.assert_allclose(dt, -2.0 * (p - t), rtol=1e-15)
