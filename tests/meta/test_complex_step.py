"""The complex-step oracle: ulp-level agreement with closed forms, honest refusals.

Closed forms are written here independently of the reference VJPs
(``1 / cosh^2`` for tanh, ``e^-x / (1 + e^-x)^2`` for the sigmoid); the
softmax family, cross-entropy, squared error and affine are compared with
the reference VJPs, whose own rounding is at the ulp level on these inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as R
from oracles import numeric_vjp
from oracles.compare import compare
from oracles.errors import InvalidArgument, InvalidArgumentType
from oracles.numerics.complex_step import DEFAULT_STEP, complex_step_reference, complex_step_vjp
from reference import mlp

RNG = np.random.default_rng(20)


def _rel(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _safe_sigmoid(x):
    # Complex-analytic, written directly (reference.sigmoid is too, since its complex branch).
    return 1.0 / (1.0 + np.exp(-x))


# --- agreement with closed forms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "derivative"),
    [
        (np.tanh, lambda x: 1.0 / np.cosh(x) ** 2),
        (_safe_sigmoid, lambda x: np.exp(-x) / (1.0 + np.exp(-x)) ** 2),
        (np.exp, np.exp),
        (np.log1p, lambda x: 1.0 / (1.0 + x)),
        (lambda x: x**3, lambda x: 3.0 * x**2),
    ],
    ids=["tanh", "sigmoid", "exp", "log1p", "cube"],
)
def test_elementwise_closed_forms_to_1e15_relative(fn, derivative):
    x = RNG.uniform(-0.9, 3.0, size=(4, 5))
    c = RNG.standard_normal(x.shape)
    (g,) = complex_step_vjp(fn, (x,), c)
    assert _rel(g, c * derivative(x)) < 1e-15


def test_saturated_tanh_keeps_digits_a_central_difference_cannot_see():
    x = np.array([20.0, -25.0, 300.0])
    (g,) = complex_step_vjp(np.tanh, (x,), np.ones(3))
    exact = 4.0 * np.exp(-2.0 * np.abs(x))  # 1/cosh^2 for |x| >> 1
    assert _rel(g, exact) < 1e-14
    assert g[2] > 0  # ~1e-260: no difference quotient gets this


@pytest.mark.parametrize(
    "scale_offset",
    [(3.0, 0.0), (300.0, 0.0), (1.0, 1e6)],
    ids=["scale3", "scale300", "offset1e6"],
)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_family_matches_the_reference_vjp(log, scale_offset):
    scale, offset = scale_offset
    z = offset + scale * RNG.standard_normal((3, 5))
    c = RNG.standard_normal(z.shape)
    fn, vjp = (R.log_softmax, R.log_softmax_vjp) if log else (R.softmax, R.softmax_vjp)
    refs, method = complex_step_reference(fn, [z], c)
    value, error = refs[0].value, refs[0].error
    right = vjp(c, z)
    assert compare(right, value, error).ok
    # The reference VJPs round at the scale of the cotangent (a * (g - <g, a>)).
    assert np.max(np.abs(value - right)) < 8e-15 * np.max(np.abs(c))
    if scale > 100 and not log:
        # At scale 300 the reference's softmax VJP cancels to exactly 0 at a
        # row's confident entry (true value ~1e-60); the complex step keeps
        # those digits.
        assert np.any((right == 0) & (value != 0))
    assert "complex step" in method


def test_ties_in_a_rows_maximum_are_fine():
    # np.max of complex values orders by real part, then imaginary part; the
    # softmax is invariant to the complex shift that results.
    z = np.array([[1.0, 1.0, 0.0], [2.0, -1.0, 2.0]])
    c = np.array([[0.3, -1.2, 0.5], [1.0, 2.0, -0.7]])
    for fn, vjp in ((R.softmax, R.softmax_vjp), (R.log_softmax, R.log_softmax_vjp)):
        (g,) = complex_step_vjp(fn, (z,), c)
        np.testing.assert_allclose(g, vjp(c, z), rtol=0, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft targets"])
def test_cross_entropy(soft):
    z = 3.0 * RNG.standard_normal((4, 5))
    t = RNG.uniform(0, 1, size=(4, 5)) if soft else RNG.integers(0, 5, size=4)
    (g,) = complex_step_vjp(lambda a: R.cross_entropy(a, t), (z,), np.ones(()))
    right = R.cross_entropy_vjp(1.0, z, t)
    assert np.max(np.abs(g - right)) < 4e-15 * np.max(np.abs(right))


def test_squared_error_and_affine_are_exact_to_rounding():
    p, t = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    dp, dt = complex_step_vjp(R.squared_error, (p, t), np.ones(()))
    rp, rt = R.squared_error_vjp(1.0, p, t)
    np.testing.assert_allclose(dp, rp, rtol=1e-15, atol=0)
    np.testing.assert_allclose(dt, rt, rtol=1e-15, atol=0)
    x, W, b = RNG.standard_normal((4, 5)), RNG.standard_normal((5, 3)), RNG.standard_normal(3)
    c = RNG.standard_normal((4, 3))
    for g, r in zip(
        complex_step_vjp(R.affine, (x, W, b), c), R.affine_vjp(c, x, W, b), strict=True
    ):
        assert np.max(np.abs(g - r)) < 4e-15 * np.max(np.abs(r))


def test_agrees_with_the_numeric_oracle():
    z = 2.0 * RNG.standard_normal((3, 4))
    c = RNG.standard_normal(z.shape)
    (g,) = complex_step_vjp(R.log_softmax, (z,), c)
    (n,) = numeric_vjp(R.log_softmax, (z,), c)
    np.testing.assert_allclose(g, n, rtol=1e-9, atol=1e-12)


# --- error estimates --------------------------------------------------------------------------


def test_error_estimate_is_eps_level_and_covers_the_actual_error():
    x = RNG.uniform(-3.0, 3.0, size=(6, 4))
    c = RNG.standard_normal(x.shape)
    refs, _ = complex_step_reference(np.tanh, [x], c)
    value, error = refs[0].value, refs[0].error
    exact = c / np.cosh(x) ** 2
    assert np.all(np.abs(value - exact) <= error)
    peak = np.max(np.abs(exact)) + np.max(np.abs(c))
    assert np.all(error < 1e-13 * peak)
    assert error.shape == x.shape and value.shape == x.shape


def test_as_a_reference_it_catches_a_1e12_relative_error():
    # Far below what any difference quotient can resolve.
    z = 2.0 * RNG.standard_normal((3, 4))
    c = RNG.standard_normal(z.shape)
    refs, _ = complex_step_reference(R.softmax, [z], c)
    right = R.softmax_vjp(c, z)
    assert compare(right, refs[0].value, refs[0].error).ok
    wrong = right.copy()
    wrong[1, 2] *= 1 + 1e-12
    cmp = compare(wrong, refs[0].value, refs[0].error)
    assert cmp.n_failed == 1 and not cmp.passed[1, 2]


def test_hand_tanh_vjp_underflowing_to_zero_is_not_blamed():
    # tanh_vjp gives 1 - 1 = 0 at |x| = 20 where the truth is 1.7e-17: an
    # error of eps times the cotangent, within the estimate.
    x = np.array([20.0, -21.0, 0.5])
    refs, _ = complex_step_reference(np.tanh, [x], np.ones(3))
    assert compare(R.tanh_vjp(np.ones(3), x), refs[0].value, refs[0].error).ok


# --- refusals: functions that are not complex-safe ------------------------------------------------


def _raises_on_complex(x):
    if np.iscomplexobj(x):
        raise TypeError("this fn takes real arrays only")
    return np.exp(x)


def _abs_inside_but_complex_out(x):
    return np.exp(-np.abs(x)) + 0.0 * x  # complex out for complex in, but |x| is not analytic


def _different_when_complex(x):
    return np.exp(x) + (1.0 if np.iscomplexobj(x) else 0.0)


@pytest.mark.parametrize(
    ("fn", "inputs", "match"),
    [
        (np.abs, (np.array([-1.0, 2.0]),), "returned dtype float64"),
        (R.relu, (np.array([0.0, 1.0, -2.0]),), "not complex-analytic at this point"),
        (np.maximum, (np.array([1.0, 2.0]), np.array([1.0, 0.0])), "not complex-analytic"),
        (_abs_inside_but_complex_out, (np.array([-1.0, 0.5]),), "not complex-analytic"),
        (_raises_on_complex, (np.array([1.0, 2.0]),), "raised TypeError on complex input"),
        (_different_when_complex, (np.array([1.0, 2.0]),), "different value"),
        (
            lambda *p: mlp.mlp_loss(np.ones((2, 4)), np.array([0, 1]), *p),
            mlp.init_params((4, 3, 2)),
            "raised InvalidInput on complex input",
        ),
    ],
    ids=["abs", "relu_at_0", "maximum_tie", "abs_inside", "raises", "real_part", "mlp"],
)
def test_not_complex_safe_functions_are_refused_with_the_reason(fn, inputs, match):
    cot = np.ones(np.shape(fn(*inputs)))
    with pytest.raises(InvalidArgument, match="complex-safe fn") as info:
        complex_step_vjp(fn, tuple(inputs), cot)
    assert match in str(info.value)


def test_relu_away_from_its_kink_is_fine():
    # np.maximum(x + ih, 0) picks the same branch as for x when x != 0.
    x = np.array([-1.0, 0.5, 2.0])
    (g,) = complex_step_vjp(R.relu, (x,), np.ones(3))
    assert g.tolist() == [0.0, 1.0, 1.0]


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "error"),
    [
        (0.0, InvalidArgument),
        (-1e-30, InvalidArgument),
        (1e-3, InvalidArgument),
        (float("nan"), InvalidArgument),
        (True, InvalidArgumentType),
        ("1e-30", InvalidArgumentType),
    ],
)
def test_bad_step_is_rejected_naming_h(h, error):
    with pytest.raises(error, match="h must"):
        complex_step_vjp(np.exp, (np.zeros(2),), np.ones(2), h=h)


def test_inputs_are_not_modified_and_float32_is_evaluated_in_float64():
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    before = x.copy()
    (g,) = complex_step_vjp(np.tanh, (x,), np.ones(5))
    np.testing.assert_array_equal(x, before)
    assert g.dtype == np.float64
    assert _rel(g, 1.0 / np.cosh(x.astype(np.float64)) ** 2) < 1e-15


def test_bare_array_and_default_step():
    (g,) = complex_step_vjp(np.sin, np.array([0.0, 1.0]), np.ones(2))
    np.testing.assert_allclose(g, np.cos([0.0, 1.0]), rtol=1e-15, atol=0)
    assert DEFAULT_STEP == 1e-30


def test_wrong_cotangent_shape_is_reported():
    with pytest.raises(InvalidArgument, match="shape"):
        complex_step_vjp(np.exp, (np.zeros(3),), np.ones(2))
