"""The verdict does not depend on the units (issue 13, item 3).

Every construction here is ``f(x) = S_out * g(x / S_in)`` (its VJP scaled to
match) for output scales ``S_out`` from ``1e-12`` to ``1e12`` and input
scales ``S_in`` from ``1e-9`` to ``1e9``: the same function in other units.
The claims, at several sizes and seeds:

* a correct VJP or JVP never fails, at any scale;
* a planted relative error is caught at every scale, and the smallest
  relative error caught is the same within 10x as at unit scale;
* an element's tolerance is its own: tiny gradients next to huge ones
  (``exp`` over ``[-30, 30]``, gradients of ``1e12 .. 1e14`` next to one of
  ``1.6``) are judged on their own size;
* the steps follow the scale on which the function varies
  (``tanh(x / 1e-9)``: the correct VJP passes and a zero VJP fails).
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as R
from oracles import check_jvp, check_vjp
from oracles.numerics.directional import directional
from oracles.numerics.ladder import partials
from oracles.numerics.objective import ScalarObjective, element_scales

# (output scale, input scale): the corners of the range and a few in between.
SCALES = [
    (1e-12, 1e-9),
    (1e-12, 1e9),
    (1e12, 1e-9),
    (1e12, 1e9),
    (1e-6, 1e3),
    (1e6, 1e-3),
    (1.0, 1.0),
]


def _ops(rng, n):
    """``{name: (g, vjp of g, x)}``: smooth ops at unit scale, ``n`` elements or so."""
    rows = max(1, n // 5)
    return {
        "sin": (np.sin, lambda c, x: c * np.cos(x), rng.normal(size=n)),
        "softmax": (R.softmax, R.softmax_vjp, rng.normal(size=(rows, 5)) * 3),
        "exp": (np.exp, lambda c, x: c * np.exp(x), rng.normal(size=n)),
        "cubic_sum": (
            lambda x: np.sum(x**3 - x),
            lambda c, x: c * (3 * x**2 - 1),
            rng.normal(size=n),
        ),
    }


def _scaled(g, vjp, s_out, s_in):
    def fn(x):
        return s_out * np.asarray(g(x / s_in))

    def fn_vjp(c, x):
        return np.asarray(vjp(c, x / s_in)) * (s_out / s_in)

    return fn, fn_vjp


def _planted(vjp, j, rel):
    def wrong(c, x):
        d = np.array(vjp(c, x), dtype=np.float64, copy=True)
        d.reshape(-1)[j] *= 1.0 + rel
        return d

    return wrong


def _typical(g, vjp, x):
    """The element of median gradient magnitude (cotangent of seed 0, the checks' default)."""
    cot = np.random.default_rng(0).standard_normal(np.shape(g(x)))
    grad = np.abs(np.asarray(vjp(cot, x))).ravel()
    return int(np.argsort(grad, kind="stable")[grad.size // 2])


def _failed_at(report):
    return [e.index for r in report.inputs for e in r.worst if not e.passed]


def _agrees(report):
    """Every element agreed with the numeric oracle (no false alarm).

    Where gradients span 26 orders of magnitude (``exp`` over ``[-30, 30]``)
    the report's one-number summary of sensitivity (a quantile of absolute
    thresholds over the median magnitude) can call the run inconclusive
    although every element was judged to its own relative precision; the
    claim here is about the verdicts of the elements.
    """
    return report.status != "failed" and all(
        c.n_failed == 0 for r in report.inputs for c in r.checks.values()
    )


@pytest.mark.parametrize("s_out, s_in", SCALES)
@pytest.mark.parametrize("name", ["sin", "softmax", "exp", "cubic_sum"])
@pytest.mark.parametrize("seed", [0, 1])
def test_correct_passes_and_a_1e6_error_is_named_at_every_scale(name, s_out, s_in, seed):
    g, vjp, x0 = _ops(np.random.default_rng(seed), 15)[name]
    fn, fn_vjp = _scaled(g, vjp, s_out, s_in)
    x = x0 * s_in
    right = check_vjp(fn, fn_vjp, (x,))
    assert right.status == "passed", str(right)
    j = _typical(g, vjp, x0)
    wrong = check_vjp(fn, _planted(fn_vjp, j, 1e-6), (x,))
    assert wrong.status == "failed", str(wrong)
    assert _failed_at(wrong) == [tuple(int(i) for i in np.unravel_index(j, x.shape))]


def _smallest_caught(fn, vjp, x, j, mode):
    caught = None
    for rel in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        if check_vjp(fn, _planted(vjp, j, rel), (x,), mode=mode).status != "failed":
            break
        caught = rel
    return caught


@pytest.mark.parametrize("name, n, mode", [("sin", 12, "auto"), ("softmax", 60, "exhaustive")])
def test_the_smallest_error_caught_is_the_same_within_10x_at_every_scale(name, n, mode):
    g, vjp, x0 = _ops(np.random.default_rng(3), n)[name]
    j = _typical(g, vjp, x0)
    unit = _smallest_caught(*_scaled(g, vjp, 1.0, 1.0), x0, j, mode)
    assert unit is not None and unit <= 1e-7
    for s_out, s_in in SCALES[:4]:
        fn, fn_vjp = _scaled(g, vjp, s_out, s_in)
        there = _smallest_caught(fn, fn_vjp, x0 * s_in, j, mode)
        assert there is not None and unit / 10 <= there <= unit * 10, (s_out, s_in, there, unit)


@pytest.mark.parametrize("s_out, s_in", SCALES)
def test_jvp_at_every_scale(s_out, s_in):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4)) * 2 * s_in

    def fn(z):
        return s_out * R.softmax(z / s_in)

    def jvp(t, z):
        a = R.softmax(z / s_in)
        v = t / s_in
        return s_out * a * (v - np.sum(a * v, axis=-1, keepdims=True))

    assert check_jvp(fn, jvp, (x,)).status == "passed"
    assert check_jvp(fn, lambda t, z: jvp(t, z) * (1 + 1e-6), (x,)).status == "failed"


@pytest.mark.parametrize("n", [25, 61])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exp_over_minus_30_to_30_judges_the_tiny_gradients_on_their_own(n, seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-30.0, 30.0, size=n))
    x[:3] = [-30.0, -27.5, -29.0]  # gradients of 1e-13 .. 1e-12
    assert _agrees(check_vjp(np.exp, lambda c, x: c * np.exp(x), (x,)))
    for j in (0, 1, 2):
        wrong = check_vjp(np.exp, _planted(lambda c, x: c * np.exp(x), j, 1e-6), (x,))
        assert wrong.status == "failed" and _failed_at(wrong) == [(j,)], str(wrong)


@pytest.mark.parametrize("rel", [1.0, 1e-6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_huge_gradients_elsewhere_do_not_widen_an_elements_tolerance(rel, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=9)
    scale = np.array([1e12, 1e13, 1e14, 1e13, 1.0, 1e12, 1.0, 1e14, 1.0])

    def fn(x):
        return scale * np.sin(x)

    def vjp(c, x):
        return c * scale * np.cos(x)

    assert check_vjp(fn, vjp, (x,)).status == "passed"
    for j in (4, 6, 8):
        wrong = check_vjp(fn, _planted(vjp, j, rel), (x,))
        assert wrong.status == "failed" and _failed_at(wrong) == [(j,)], str(wrong)


@pytest.mark.parametrize("width", [1e-9, 1e-6, 1e6])
@pytest.mark.parametrize("seed", [0, 1])
def test_steps_follow_the_scale_on_which_fn_varies(width, seed):
    x = np.random.default_rng(seed).normal(size=(2, 5)) * width

    def fn(x):
        return np.tanh(x / width)

    def vjp(c, x):
        return c * (1.0 - np.tanh(x / width) ** 2) / width

    assert check_vjp(fn, vjp, (x,)).status == "passed"
    assert check_vjp(fn, lambda c, x: 0.0 * x, (x,)).status == "failed"
    assert check_vjp(fn, _planted(vjp, 3, 1e-6), (x,)).status == "failed"


@pytest.mark.parametrize("s_out, s_in", SCALES)
def test_numeric_estimates_scale_with_the_units(s_out, s_in):
    """Per element and along directions: the relative accuracy is the same in any units."""
    rng = np.random.default_rng(11)
    x0 = rng.normal(size=8)
    c = rng.standard_normal(8)
    obj = ScalarObjective(lambda x: s_out * np.sin(x / s_in), [x0 * s_in], c)
    est = partials(obj, [(0, j) for j in range(8)])
    true = c * s_out * np.cos(x0) / s_in
    assert np.all(np.abs(est.value - true) <= est.error)
    assert np.all(est.error <= 1e-9 * np.abs(true))
    u = rng.choice([-1.0, 1.0], size=8)
    d = directional(obj, [(u,)])
    assert abs(d.value[0] - true @ u) <= d.error[0] <= 1e-9 * np.sum(np.abs(true))


def test_element_scales_follow_each_input():
    big, tiny = np.array([3e9, -1e9, 0.0]), np.array([2e-9, 0.0])
    s_big, s_tiny, s_zero = element_scales([big, tiny, np.zeros(2)])
    assert s_big[0] == 3e9 and s_big[2] == pytest.approx(np.sqrt(np.mean(big**2)))
    assert s_tiny[1] == pytest.approx(np.sqrt(2e-18))
    assert np.all(s_zero == s_big[2])  # an all-zero input borrows the largest scale


# --- mode fast: its projections step every input in that input's units ---------------------


@pytest.mark.parametrize("s_out, s_in", [*SCALES, (1.0, 1e15), (1e-3, 1e30)])
@pytest.mark.parametrize("name, n", [("sin", 300), ("softmax", 2000)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_mode_catches_1e8_at_every_input_scale(name, n, s_out, s_in, seed):
    # Steps of at most 1/8 on inputs of scale 1e9 moved fn by rounding only: every
    # measurement was inconclusive (a correct VJP, and one off by 1e-3).
    g, vjp, x0 = _ops(np.random.default_rng(seed), n)[name]
    fn, fn_vjp = _scaled(g, vjp, s_out, s_in)
    x = x0 * s_in
    right = check_vjp(fn, fn_vjp, (x,), mode="fast", seed=seed)
    assert right.status == "passed", str(right)
    j = _typical(g, vjp, x0)
    wrong = check_vjp(fn, _planted(fn_vjp, j, 1e-8), (x,), mode="fast", seed=seed)
    assert wrong.status == "failed", str(wrong)
    assert tuple(int(i) for i in np.unravel_index(j, x.shape)) in _failed_at(wrong)


def _two_inputs(s_a, s_b, seed, wrong=None):
    """``f(a, b)``: ``sin(a / s_a + w) tanh(b_0 / s_b)`` and ``cos(b / s_b * v)``, and its VJP."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=300) * s_a, rng.normal(size=200) * s_b
    w, v = rng.normal(size=300), rng.normal(size=200)

    def fn(a, b):
        return np.concatenate([np.sin(a / s_a + w) * np.tanh(b[:1] / s_b), np.cos(b / s_b * v)])

    def fn_vjp(c, a, b):
        t = np.tanh(b[0] / s_b)
        ga = c[:300] * np.cos(a / s_a + w) / s_a * t
        gb = -c[300:] * np.sin(b / s_b * v) * v / s_b
        gb[0] += np.sum(c[:300] * np.sin(a / s_a + w)) * (1 - t * t) / s_b
        if wrong == "a":
            ga[7] *= 1 + 1e-7
        if wrong == "b":
            gb[11] *= 1 + 1e-7
        return ga, gb

    return fn, fn_vjp, (a, b)


@pytest.mark.parametrize("s_a, s_b", [(1e9, 1e-3), (1e-3, 1e9), (1e12, 1.0), (1e20, 1e-20)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["fast", "exhaustive"])
def test_inputs_of_very_different_scales_are_judged_each_in_its_own(s_a, s_b, seed, mode):
    # One step for an input of scale 1e-3 beside one of 1e9 (mode fast stepped both in
    # the same units) lost the large one's errors of 1e-7: they passed.
    fn, fn_vjp, xs = _two_inputs(s_a, s_b, seed)
    right = check_vjp(fn, fn_vjp, xs, mode=mode, seed=seed)
    assert right.status == "passed", str(right)
    for wrong, index in (("a", (7,)), ("b", (11,))):
        fn, bad_vjp, xs = _two_inputs(s_a, s_b, seed, wrong)
        report = check_vjp(fn, bad_vjp, xs, mode=mode, seed=seed)
        assert report.status == "failed", str(report)
        assert index in _failed_at(report), str(report)
