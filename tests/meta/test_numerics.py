"""The numeric oracle itself: closed-form gradients, honest error estimates, kinks, hard points."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracles import check_jvp, check_layer, check_vjp, numeric_vjp
from oracles import strategies as ost
from oracles.numerics.ladder import partials
from oracles.numerics.objective import ScalarObjective

CLOSED_FORMS = {
    "cubic": (lambda x: x**3 - 2 * x, lambda x: 3 * x**2 - 2),
    "quintic": (lambda x: 0.1 * x**5 + x**2, lambda x: 0.5 * x**4 + 2 * x),
    "exp": (np.exp, np.exp),
    "sin": (np.sin, np.cos),
    "log1p_sq": (lambda x: np.log1p(x * x), lambda x: 2 * x / (1 + x * x)),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@given(x=ost.arrays(ost.shapes(max_dims=2, max_side=5), scale=st.sampled_from([0.5, 1.0, 2.0])))
def test_numeric_vjp_matches_closed_forms_to_1e10(name, x):
    f, df = CLOSED_FORMS[name]
    c = np.linspace(-1.5, 2.0, x.size).reshape(x.shape)
    (g,) = numeric_vjp(f, (x,), c)
    exact = c * df(x)
    np.testing.assert_allclose(g, exact, rtol=1e-10, atol=1e-10 * max(1.0, np.max(np.abs(exact))))


def test_numeric_vjp_several_inputs_and_a_product():
    a, b = np.array([1.5, -2.0, 0.25]), np.array([0.5, 3.0, -1.0])
    ga, gb = numeric_vjp(lambda a, b: a * b + a**2, (a, b), np.ones(3))
    np.testing.assert_allclose(ga, b + 2 * a, rtol=1e-11)
    np.testing.assert_allclose(gb, a, rtol=1e-11)


def test_numeric_vjp_returns_float64_for_float32_inputs_and_leaves_them_alone():
    x = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    before = x.copy()
    (g,) = numeric_vjp(np.sin, (x,), np.ones(3))
    assert g.dtype == np.float64
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(g, np.cos(x.astype(np.float64)), rtol=1e-10)


@pytest.mark.parametrize(
    "f, df, x",
    [
        (np.tanh, lambda x: 1 - np.tanh(x) ** 2, np.array([0.3, -1.2, 2.5])),
        (np.exp, np.exp, np.array([-3.0, 0.0, 4.0])),
        (lambda x: np.log(x), lambda x: 1 / x, np.array([1e-3, 1.0, 1e3])),
        (lambda x: np.sin(x - 1e6), lambda x: np.cos(x - 1e6), np.array([1e6 + 0.5, 1e6 - 1.0])),
    ],
)
def test_error_estimates_are_honest(f, df, x):
    """The actual error never exceeds the estimate; the estimate stays small."""
    c = np.ones_like(x)
    obj = ScalarObjective(f, [x], c)
    est = partials(obj, [(0, j) for j in range(x.size)])
    actual = np.abs(est.value - df(x))
    assert np.all(actual <= est.error), (actual, est.error)
    assert np.all(est.error <= 1e-6 * np.maximum(np.abs(df(x)), 1.0))


def test_steps_divide_by_the_step_actually_taken_far_from_zero():
    """At x = 1e6 + frac the rounding of x +- t would cost 1e-5 relative without it."""
    x = np.array([1e6 + 0.1234567])
    (g,) = numeric_vjp(lambda x: 3.0 * x, (x,), np.ones(1))
    assert abs(g[0] - 3.0) < 1e-8


def test_kink_is_detected_with_both_one_sided_slopes():
    x = np.array([0.0, 1.0, -1.0])
    obj = ScalarObjective(np.abs, [x], np.ones(3))
    est = partials(obj, [(0, 0), (0, 1), (0, 2)])
    assert est.kink.tolist() == [True, False, False]
    assert sorted([est.left[0], est.right[0]]) == pytest.approx([-1.0, 1.0])


def test_smooth_points_with_large_curvature_are_not_kinks():
    x = np.array([0.0, 0.1, 3.0])
    obj = ScalarObjective(lambda x: np.exp(5 * x), [x], np.ones(3))
    est = partials(obj, [(0, j) for j in range(3)])
    assert not est.kink.any()


def test_perturbed_points_outside_the_domain_use_the_remaining_steps():
    x = np.array([1e-3])  # the largest step 1/8 leaves the domain of sqrt
    with np.errstate(invalid="raise"):
        (g,) = numeric_vjp(np.sqrt, (x,), np.ones(1))
    assert g[0] == pytest.approx(0.5 / np.sqrt(1e-3), rel=1e-8)


# --- an fn that writes into and returns one buffer (issue 13, item 5) ---------------------------


def _buffered(f, shape):
    """``f`` computed into one buffer that every call overwrites and returns."""
    buf = np.empty(shape)

    def fn(x):
        return f(x, out=buf)

    return fn


def test_scalar_objective_copies_what_fn_returns():
    x = np.array([0.3, -1.2, 2.0])
    fn = _buffered(np.sin, x.shape)
    obj = ScalarObjective(fn, [x], np.ones(3))
    first = obj.output([x + 1.0])
    obj.output([x - 1.0])
    np.testing.assert_array_equal(first, np.sin(x + 1.0))
    np.testing.assert_array_equal(obj.base_output, np.sin(x))


@pytest.mark.parametrize("n", [5, 80])
def test_numerics_on_a_reused_buffer_without_the_pipeline(n):
    """The objective and the exhaustive screen copy outputs on their own (no Guarded wrapper)."""
    from oracles.numerics.exhaustive import exhaustive_partials

    x = np.linspace(-2.0, 2.0, n)
    c = np.linspace(0.5, 1.5, n)
    fn = _buffered(np.sin, x.shape)
    est = partials(ScalarObjective(fn, [x], c), [(0, j) for j in range(n)])
    np.testing.assert_allclose(est.value, c * np.cos(x), rtol=1e-9)
    res, _ = exhaustive_partials(ScalarObjective(fn, [x], c), [c * np.cos(x)], [(0, np.arange(n))])
    np.testing.assert_allclose(res[0]["value"], c * np.cos(x), rtol=1e-8)
    assert np.all(np.abs(res[0]["value"] - c * np.cos(x)) <= res[0]["error"])


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("n", [6, 200])
def test_check_vjp_on_a_reused_buffer(mode, n):
    x = np.random.default_rng(n).normal(size=n)
    fn = _buffered(np.sin, x.shape)
    assert check_vjp(fn, lambda g, x: g * np.cos(x), (x,), mode=mode).status == "passed"
    assert check_vjp(fn, lambda g, x: 0.0 * g, (x,), mode=mode).status == "failed"
    assert check_vjp(fn, lambda g, x: g * np.cos(x) * (1 + 1e-6), (x,), mode=mode).status == (
        "failed"
    )


def test_check_jvp_on_a_reused_buffer():
    x = np.random.default_rng(3).normal(size=7)
    fn = _buffered(np.exp, x.shape)
    assert check_jvp(fn, lambda t, x: np.exp(x) * t, (x,)).status == "passed"
    assert check_jvp(fn, lambda t, x: 0.0 * t, (x,)).status == "failed"


class _BufferedTanh:
    """A layer whose forward writes into one output buffer and returns it."""

    def __init__(self, shape):
        self.out = np.empty(shape)

    def forward(self, x):
        np.tanh(x, out=self.out)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out**2)


class _BufferedTanhWrong(_BufferedTanh):
    def backward(self, dout):
        return dout * (1.0 - self.out)


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
def test_check_layer_on_a_reused_buffer(mode):
    x = np.random.default_rng(4).normal(size=(3, 4))
    assert check_layer(_BufferedTanh(x.shape), (x,), mode=mode).status == "passed"
    assert check_layer(_BufferedTanhWrong(x.shape), (x,), mode=mode).status == "failed"
