"""What the user's code returns: every misbehaviour gets a clear report or UserFunctionError.

``vjp`` returning the wrong number of gradients, a wrong shape, None, a
string or dict, NaN/inf, or raising; ``fn`` returning NaN/inf, None, a tuple,
complex or non-numeric values, at the evaluation point or only at perturbed
points. Never a bare traceback from inside the library: the error is a
:class:`UserFunctionError` whose message names the function, the input and
what was expected, and whose ``__cause__`` is the user's own exception.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import check_vjp
from oracles.errors import UserFunctionError

A = np.array([0.5, 1.5])
B = np.array([[1.0, -2.0, 0.25]])


def f2(a, b):
    return a * np.sum(b)


def f2_vjp(g, a, b):
    return g * np.sum(b), np.full(b.shape, np.sum(g * a))


def test_the_two_input_case_is_right():
    assert check_vjp(f2, f2_vjp, (A, B)).ok


# (id, vjp, fragments the message must contain)
BAD_VJPS = [
    ("one gradient for two inputs", lambda g, a, b: g * np.sum(b),
     ["vjp returned a single ndarray", "2 inputs", "tuple of 2 gradients"]),
    ("three gradients", lambda g, a, b: (g, g, g),
     ["vjp returned 3 gradients", "2 inputs (a, b)"]),
    ("empty tuple", lambda g, a, b: (), ["vjp returned 0 gradients"]),
    ("wrong shape", lambda g, a, b: (g, np.zeros(3)),
     ["gradient of b", "shape (3,)", "expected (1, 3)"]),
    ("broadcastable shape", lambda g, a, b: (g, np.zeros((1, 1))),
     ["gradient of b", "shape (1, 1)", "expected (1, 3)"]),
    ("transposed", lambda g, a, b: (g, np.zeros((3, 1))), ["gradient of b", "(3, 1)"]),
    ("first gradient wrong shape", lambda g, a, b: (g[:1], np.zeros(B.shape)),
     ["gradient of a", "shape (1,)", "expected (2,)"]),
    ("None for one input", lambda g, a, b: (g, None),
     ["vjp returned None as the gradient of b", "zeros of shape (1, 3)"]),
    ("None", lambda g, a, b: None, ["vjp returned a single NoneType", "tuple of 2"]),
    ("a string", lambda g, a, b: (g, "0.0"), ["gradient of b", "dtype <U3", "real numbers"]),
    ("a dict", lambda g, a, b: {"a": g, "b": g}, ["vjp returned a single dict"]),
    ("a dict as one gradient", lambda g, a, b: (g, {}), ["gradient of b", "dtype object"]),
    ("complex", lambda g, a, b: (g + 0j, np.zeros(B.shape)), ["gradient of a", "complex128"]),
    ("boolean", lambda g, a, b: (g > 0, np.zeros(B.shape)), ["gradient of a", "dtype bool"]),
]  # fmt: skip


@pytest.mark.parametrize(("vjp", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in BAD_VJPS])
def test_a_vjp_that_returns_the_wrong_thing_is_named(vjp, fragments):
    with pytest.raises(UserFunctionError) as info:
        check_vjp(f2, vjp, (A, B))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("vjp", "exc_type"),
    [
        pytest.param(lambda g, a, b: (1 / 0, b), ZeroDivisionError, id="raises"),
        pytest.param(lambda g, a, b: (g @ np.ones((3, 3)), b), ValueError, id="bad matmul"),
        pytest.param(lambda g, a, b: (g, b[5]), IndexError, id="index"),
        pytest.param(lambda g, a, b: (g, b.nonexistent), AttributeError, id="attribute"),
    ],
)
def test_a_vjp_that_raises_is_named_and_chained(vjp, exc_type):
    with pytest.raises(UserFunctionError, match=rf"^vjp raised {exc_type.__name__}") as info:
        check_vjp(f2, vjp, (A, B))
    assert isinstance(info.value.__cause__, exc_type)
    # The user's own frame is in the chained traceback: the lambda above.
    tb = info.value.__cause__.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_filename == __file__


@settings(max_examples=20)
@given(
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.integers(0, 1),
    scale=st.sampled_from([1.0, 1e-300, 1e300]),
)
def test_nan_or_inf_from_vjp_fails_the_element_never_agrees(bad, where, scale):
    def vjp(g, x):
        out = g * np.cos(x) * scale
        out[where] = bad
        return out

    report = check_vjp(lambda x: np.sin(x) * scale, vjp, (A,))
    assert not report.ok
    failing = [e.index for e in report.inputs[0].checks["numeric"].worst if not e.passed]
    assert (where,) in failing
    if scale == 1.0:  # at 1e300 numerics.py's noise model overflows: see issue 9's report
        assert failing == [(where,)]
    assert "vjp returned NaN or inf in the gradient of x" in str(report)


# --- fn's output ---------------------------------------------------------------------------

# (id, fn, fragments): misbehaviour at the evaluation point
BAD_FNS = [
    ("None", lambda x: None, ["fn returned None at the evaluation point", "forget to return"]),
    ("tuple", lambda x: (x, x), ["fn returned a tuple of 2", "one array"]),
    ("list of arrays", lambda x: [x, x], ["fn returned a list of 2"]),
    ("a string", lambda x: "1.0", ["fn returned str", "not a real numeric array"]),
    ("a dict", lambda x: {"y": x}, ["fn returned dict", "not a real numeric array"]),
    ("complex", lambda x: x + 1j, ["fn returned complex values", "real-valued"]),
    ("NaN", lambda x: x * np.nan, ["fn returned NaN or inf at the evaluation point"]),
    ("inf", lambda x: np.where(x > 1, np.inf, x), ["NaN or inf at the evaluation point"]),
]  # fmt: skip


@pytest.mark.parametrize(("fn", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in BAD_FNS])
def test_fn_that_returns_something_unusable_at_the_point(fn, fragments):
    with pytest.raises(UserFunctionError) as info:
        check_vjp(fn, lambda g, x: g, (A,))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_fn_that_raises_at_the_point_is_chained():
    def fn(x):
        return x @ np.ones((3, 3))

    with pytest.raises(UserFunctionError, match="^fn raised ValueError: matmul") as info:
        check_vjp(fn, lambda g, x: g, (A,))
    assert isinstance(info.value.__cause__, ValueError)


X0 = np.array([0.3, 0.7])


def _only_at_the_point(value):
    """sin(x) at X0 exactly; ``value(x)`` anywhere else (a perturbed point)."""

    def fn(x):
        return np.sin(x) if np.array_equal(x, X0) else value(x)

    return fn


def _raise(x):
    raise ArithmeticError("domain")


@pytest.mark.parametrize(
    ("fn", "fragments", "cause"),
    [
        pytest.param(_only_at_the_point(_raise), ["fn raised ArithmeticError at a perturbed point",
                     "x[0] = 0.", " instead of 0.3", "domain"], ArithmeticError, id="raises"),
        pytest.param(_only_at_the_point(lambda x: "s"), ["fn returned str", "at a perturbed point"],
                     None, id="string"),
        pytest.param(_only_at_the_point(lambda x: None), ["fn returned None at a perturbed point"],
                     None, id="None"),
        pytest.param(_only_at_the_point(lambda x: np.zeros(3)), ["fn returned shape (3,) at a "
                     "perturbed point", "but (2,) at the evaluation point"], None, id="shape"),
        pytest.param(_only_at_the_point(lambda x: x + 0j), ["complex", "at a perturbed point"],
                     None, id="complex"),
    ],
)  # fmt: skip
def test_fn_misbehaving_only_at_perturbed_points_names_the_point(fn, fragments, cause):
    with pytest.raises(UserFunctionError) as info:
        check_vjp(fn, lambda g, x: g * np.cos(x), (X0,))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    if cause is not None:
        assert isinstance(info.value.__cause__, cause)


def test_nan_at_every_perturbed_point_is_never_agreement():
    def fn(x):
        return np.where(x == X0, np.sin(x), np.nan)

    report = check_vjp(fn, lambda g, x: g * np.cos(x), (X0,))
    assert not report.ok
    assert report.inputs[0].checks["numeric"].n_failed == 2
    assert "fn returned NaN or inf at perturbed points for 2 element(s)" in str(report)


@pytest.mark.parametrize("radius", [1e-6, 1e-4])
def test_nan_outside_a_small_neighbourhood_is_reported_and_only_finite_steps_count(radius):
    """The derivative exists (sin inside |x - x0| <= radius); the steps that leave it are dropped.

    The verdict comes from the small finite steps alone: the right VJP
    passes, one off by a relative 1e-5 fails, and the report says NaN was
    met.
    """

    def fn(x):
        return np.where(np.abs(x - X0) <= radius, np.sin(x), np.nan)

    report = check_vjp(fn, lambda g, x: g * np.cos(x), (X0,))
    assert report.ok, str(report)
    assert "fn returned NaN or inf at perturbed points for 2 element(s)" in str(report)
    wrong = check_vjp(fn, lambda g, x: g * np.cos(x) * (1 + 1e-5), (X0,))
    assert not wrong.ok


@pytest.mark.parametrize("x0", [1e-3, 1e-2, 1.0])
def test_sqrt_near_zero_passes_although_large_steps_leave_the_domain(x0):
    x = np.array([x0, 2 * x0])
    report = check_vjp(np.sqrt, lambda g, x: g * 0.5 / np.sqrt(x), (x,))
    assert report.ok, str(report)
    assert not check_vjp(np.sqrt, lambda g, x: g / np.sqrt(x), (x,)).ok


@pytest.mark.torch
def test_torch_fn_that_raises_or_leaves_the_graph_is_named():
    import torch

    with pytest.raises(UserFunctionError, match="torch_fn raised RuntimeError") as info:
        check_vjp(np.sin, lambda g, x: g * np.cos(x), (A,), against="torch",
                  torch_fn=lambda x: torch.from_numpy(np.sin(x.numpy())))  # fmt: skip
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.jax
def test_jax_fn_that_leaves_the_trace_is_named():
    with pytest.raises(UserFunctionError, match="jax_fn raised Tracer") as info:
        check_vjp(np.sin, lambda g, x: g * np.cos(x), (A,), against="jax",
                  jax_fn=lambda x: np.sin(np.asarray(x)))  # fmt: skip
    assert info.value.__cause__ is not None
