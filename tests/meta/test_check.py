"""check_vjp / assert_vjp: sharpness, negative tests, and what the report says."""

from __future__ import annotations

import numpy as np
import pytest

import reference as R
from oracles import GradientMismatch, assert_vjp, check_vjp


def _x(seed=0, shape=(4, 6)):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("seed", range(3))
def test_flags_a_vjp_scaled_by_one_plus_1e6_and_passes_the_exact_one(seed):
    x = _x(seed)
    assert check_vjp(R.softmax, R.softmax_vjp, (x,)).ok
    scaled = check_vjp(R.softmax, lambda g, x: R.softmax_vjp(g, x) * (1 + 1e-6), (x,))
    assert not scaled.ok
    assert scaled.failed_inputs == ["x"]


def test_single_element_off_by_1e5_is_flagged_and_located():
    x, W, b = _x(1, (3, 5)), _x(2, (5, 4)), _x(3, (4,))

    def vjp(g, x, W, b):
        dx, dW, db = R.affine_vjp(g, x, W, b)
        dW = dW.copy()
        dW[2, 1] *= 1 + 1e-5
        return dx, dW, db

    report = check_vjp(R.affine, vjp, (x, W, b))
    assert report.failed_inputs == ["W"]
    worst = report.input("W").worst[0]
    assert worst.index == (2, 1) and not worst.passed
    assert "[2, 1]" in str(report)


# Known-wrong derivations (issue 3's list): each must fail, naming the wrong input.
def _softmax_diagonal_only(g, x):
    a = R.softmax(x)
    return g * a * (1 - a)


def _affine_missing_transpose(g, x, W, b):
    dx, dW, db = R.affine_vjp(g, x, W, b)
    return g @ W, dW, db  # G W instead of G W^T (W square, so it runs)


def _squared_error_missing_2(g, p, t):
    dp, dt = R.squared_error_vjp(g, p, t)
    return dp / 2, dt / 2


LABELS = np.array([0, 3, 1, 2, 1])


def _ce_mean_missing_1_over_n(g, z):
    return R.cross_entropy_vjp(g, z, LABELS, reduction="sum")


NEGATIVE = {
    "softmax Jacobian diagonal only": (R.softmax, _softmax_diagonal_only, lambda: (_x(4),), "x"),
    "affine dX = G W": (
        R.affine,
        _affine_missing_transpose,
        lambda: (_x(5, (3, 4)), _x(6, (4, 4)), _x(7, (4,))),
        "x",
    ),
    "squared error missing its 2": (
        R.squared_error,
        _squared_error_missing_2,
        lambda: (_x(8, (3, 2)), _x(9, (3, 2))),
        "pred",
    ),
    "mean CE missing 1/N": (
        lambda z: R.cross_entropy(z, LABELS, reduction="mean"),
        _ce_mean_missing_1_over_n,
        lambda: (_x(10, (5, 4)),),
        "z",
    ),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_known_wrong_derivations_fail_and_name_the_wrong_input(name):
    fn, vjp, make, wrong = NEGATIVE[name]
    report = check_vjp(fn, vjp, make())
    assert not report.ok
    assert wrong in report.failed_inputs
    assert f"gradient of {wrong}" in str(report)
    with pytest.raises(GradientMismatch) as info:
        assert_vjp(fn, vjp, make())
    assert info.value.report.failed_inputs == report.failed_inputs
    assert str(info.value) == str(info.value.report)


def test_gradient_mismatch_is_an_assertion_error():
    assert issubclass(GradientMismatch, AssertionError)


def test_assert_vjp_returns_the_report_when_it_passes():
    report = assert_vjp(R.tanh, R.tanh_vjp, (_x(11),))
    assert report.ok and report.failed_inputs == []
    assert "OK" in str(report)


def test_report_lists_errors_per_input_and_worst_elements_first():
    x = _x(12, (3, 4))

    def vjp(g, x):
        d = R.tanh_vjp(g, x).copy()
        d[0, 1] += 1e-3
        d[2, 3] += 1e-1
        return d

    report = check_vjp(R.tanh, vjp, (x,))
    r = report.input("x")
    assert r.max_abs_error == pytest.approx(1e-1, rel=1e-6)
    assert [e.index for e in r.worst if not e.passed] == [(2, 3), (0, 1)]
    text = str(report)
    assert text.index("[2, 3]") < text.index("[0, 1]")
    assert "2 of 12 elements of the gradient of x disagree with numeric" in text
    for e in r.worst[:2]:
        assert e.tolerance < 1e-9  # the tolerance applied is the numerics' own, tiny


def test_random_cotangent_is_seeded_and_reproducible():
    x = _x(13)
    a = check_vjp(R.softmax, R.softmax_vjp, (x,), seed=7)
    b = check_vjp(R.softmax, R.softmax_vjp, (x,), seed=7)
    assert a.input("x").max_abs_error == b.input("x").max_abs_error
    assert "seed 7" in str(a)


def test_vjp_writing_into_its_cotangent_is_a_problem_even_when_values_are_right():
    x = _x(14)

    def vjp(g, x):
        g[x <= 0] = 0.0
        return g

    report = check_vjp(R.relu, vjp, (x,))
    assert not report.ok
    assert any("modified its argument cotangent in place" in p for p in report.problems)


def test_rtol_and_atol_widen_the_tolerance_as_documented():
    x = _x(15)
    wrong = lambda g, x: R.tanh_vjp(g, x) * (1 + 1e-6)  # noqa: E731
    assert not check_vjp(R.tanh, wrong, (x,)).ok
    assert check_vjp(R.tanh, wrong, (x,), rtol=2e-6).ok
    assert check_vjp(R.tanh, wrong, (x,), atol=1e-5).ok


def test_complex_step_oracle_through_check_vjp():
    x = _x(16, (3, 4))
    report = check_vjp(R.softmax, R.softmax_vjp, (x,), against=("numeric", "complex"))
    assert report.ok and set(report.input("x").checks) == {"numeric", "complex"}
    assert report.input("x").checks["complex"].max_rel_error < 1e-13
    wrong = check_vjp(
        R.softmax, lambda g, x: R.softmax_vjp(g, x) * (1 + 1e-10), (x,), against="complex"
    )
    assert not wrong.ok and wrong.failed_inputs == ["x"]


def test_noise_in_fn_is_not_taken_for_a_kink():
    """A sawtooth of rounding-like noise: its one-sided jumps grow as the step shrinks."""

    def noisy(x):
        return np.sin(x) + 1e-2 * np.modf(x * 1e9)[0]

    report = check_vjp(noisy, lambda g, x: g * np.cos(x) * 3, (np.array([0.3, 0.6]),))
    assert not report.ok
    # No element is taken to sit at a kink (the note on loosely judged elements may
    # name kinks among its possible causes).
    assert report.inputs[0].checks["numeric"].kinks == 0
    assert not any("sit at a kink" in n for n in report.notes)


@pytest.mark.parametrize(
    "fn, vjp",
    [
        (lambda x: x, lambda g, x: g),
        (lambda x: x.reshape(2, 3), lambda g, x: g.reshape(6)),
        (lambda x: x[::2], lambda g, x: np.stack([g, np.zeros(3)], axis=1).reshape(6)),
    ],
    ids=["identity", "reshape", "strided view"],
)
def test_functions_returning_views_of_their_input(fn, vjp):
    """fn gets fresh copies: an output that aliases the input must not move with the next step."""
    x = _x(17, (6,))
    assert check_vjp(fn, vjp, (x,)).ok
    wrong = check_vjp(fn, lambda g, x: vjp(g, x) * (1 + 1e-6), (x,))
    assert not wrong.ok


def test_fn_writing_into_its_input_is_a_problem():
    def double_in_place(x):
        x *= 2.0
        return x

    report = check_vjp(double_in_place, lambda g, x: 2 * g, (_x(18, (4,)),))
    assert not report.ok
    assert any("fn modified its argument x in place" in p for p in report.problems)
