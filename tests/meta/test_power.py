"""The power of the default check: the "Done when" list of issue 6, as tests.

Every test calls :func:`oracles.check_vjp` with its **default** settings (no
``rtol``/``atol``, numeric oracle). Three kinds of claims:

* planted errors are caught: a correct VJP multiplied by ``1 + 1e-6``
  everywhere, or one element multiplied by ``1 + 1e-5``, on several ops and
  the MLP step on real digits, for several seeds; the report points at the
  planted element;
* correct code on the hard cases raises no false alarm: ReLU at exactly 0,
  saturated tanh, logits of scale 500, logits offset by 1e6, float32 inputs,
  a mean over thousands of rows, softmax at scale 300 with tiny gradients,
  ``abs`` and ``np.maximum`` at their kinks (and the report says so);
* a wrong derivation whose gradients are tiny still fails when its error is
  large next to the numeric error.

The published wrong derivations of :mod:`reference.pitfalls` are checked in
``tests/reference/test_pitfalls.py`` (every entry flagged, at the wrong
input); they are not repeated here.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as R
from oracles import check_vjp
from oracles._guards import own_stream
from reference import mlp
from reference.mnist import load_mnist

SEEDS = (0, 1, 2)


def _tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


# --- the ops under test: (fn, vjp, make_inputs(rng)) -------------------------------------------


def _digits(n):
    """``n`` real digits, average-pooled 4x4 to 7x7 = 49 features in [0, 1].

    Pooling keeps the checks fast (the per-element oracle differentiates every
    parameter) while the inputs stay real digits: correlated pixels, many
    exact zeros, a few classes.
    """
    images, labels = load_mnist()
    pooled = images[:n].astype(np.float64).reshape(n, 7, 4, 7, 4).mean(axis=(2, 4)) / 255.0
    return pooled.reshape(n, 49), labels[:n].astype(np.int64)


def _mlp_op(activation, loss, hidden=6, batch=5):
    X, y = _digits(batch)

    def fn(*p):
        return mlp.mlp_loss(X, y, *p, activation=activation, loss=loss)

    def vjp(g, *p):
        return mlp.mlp_loss_vjp(g, X, y, *p, activation=activation, loss=loss)

    def make(rng):
        params = mlp.init_params((49, hidden, 10), seed=int(rng.integers(1 << 30)))
        # Non-zero biases: a few SGD steps away from the initialization.
        for _ in range(2):
            params = mlp.sgd_step(params, vjp(1.0, *params), 0.5)
        return params

    return fn, vjp, make


def _ce(targets_kind):
    def make(rng):
        z = rng.normal(size=(4, 5)) * 3
        if targets_kind == "labels":
            t = rng.integers(0, 5, size=4)
        else:
            t = rng.uniform(0.0, 1.0, size=(4, 5))  # rows do not sum to 1
        return (z, t)

    return make


OPS = {
    "softmax": (R.softmax, R.softmax_vjp, lambda rng: (rng.normal(size=(4, 6)) * 3,)),
    "log_softmax": (R.log_softmax, R.log_softmax_vjp, lambda rng: (rng.normal(size=(4, 6)) * 3,)),
    "tanh": (R.tanh, R.tanh_vjp, lambda rng: (rng.normal(size=(5, 4)) * 2,)),
    "sigmoid": (R.sigmoid, R.sigmoid_vjp, lambda rng: (rng.normal(size=(5, 4)) * 3,)),
    "squared_error": (
        lambda p, t: R.squared_error(p, t, reduction="mean"),
        lambda g, p, t: R.squared_error_vjp(g, p, t, reduction="mean"),
        lambda rng: (rng.normal(size=(4, 3)), rng.normal(size=(4, 3))),
    ),
    "affine": (
        R.affine,
        R.affine_vjp,
        lambda rng: (rng.normal(size=(4, 5)), rng.normal(size=(5, 3)), rng.normal(size=3)),
    ),
    "mlp_tanh_ce": _mlp_op("tanh", "cross_entropy"),
    "mlp_sigmoid_se": _mlp_op("sigmoid", "squared_error"),
}


def _closed_over_targets(make):
    """Cross-entropy: differentiate the logits only, targets closed over."""

    def case(rng):
        z, t = make(rng)
        return (
            lambda a: R.cross_entropy(a, t),
            lambda g, a: R.cross_entropy_vjp(g, a, t),
            (z,),
        )

    return case


def _case(op, seed):
    rng = np.random.default_rng(seed)
    if op.startswith("cross_entropy"):
        return _closed_over_targets(_ce(op.split("/")[1]))(rng)
    fn, vjp, make = OPS[op]
    return fn, vjp, tuple(make(rng))


ALL_OPS = [*OPS, "cross_entropy/labels", "cross_entropy/soft"]


def _scaled_everywhere(vjp, factor):
    def wrong(g, *xs):
        return tuple(d * factor for d in _tuple(vjp(g, *xs)))

    return wrong


def _one_element_off(vjp, input_number, flat, factor):
    def wrong(g, *xs):
        grads = [np.array(d, dtype=np.float64, copy=True) for d in _tuple(vjp(g, *xs))]
        grads[input_number].reshape(-1)[flat] *= factor
        return tuple(grads)

    return wrong


def _pick_element(grads, rng):
    """A random element whose gradient is not negligible within its input.

    "Negligible" is below 1e-3 of the input's largest gradient: an element
    that is exactly 0 cannot be off by a relative amount at all, and one
    that is 1e-9 of its neighbours is judged against the rounding of the
    whole function.
    """
    candidates = [
        (i, j)
        for i, d in enumerate(grads)
        for j in np.flatnonzero(np.abs(d).ravel() >= 1e-3 * np.max(np.abs(d)))
        if np.max(np.abs(d)) > 0
    ]
    return candidates[int(rng.integers(len(candidates)))]


# --- planted errors are caught ------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_correct_vjp_passes(op, seed):
    fn, vjp, inputs = _case(op, seed)
    report = check_vjp(fn, vjp, inputs, seed=seed)
    assert report.ok, str(report)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_relative_1e6_everywhere_is_flagged_in_every_input(op, seed):
    fn, vjp, inputs = _case(op, seed)
    report = check_vjp(fn, _scaled_everywhere(vjp, 1 + 1e-6), inputs, seed=seed)
    assert not report.ok, str(report)
    # Every input whose gradient is not identically 0 is named.
    nonzero = [
        k for k, d in enumerate(_tuple(vjp(np.ones_like(fn(*inputs)), *inputs))) if np.any(d)
    ]
    failed = [k for k, r in enumerate(report.inputs) if not r.ok]
    assert failed == nonzero, str(report)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_single_element_off_by_relative_1e5_is_flagged_at_that_element(op, seed):
    fn, vjp, inputs = _case(op, seed)
    rng = np.random.default_rng(1000 + seed)
    cot = own_stream(seed, "direction").standard_normal(np.shape(fn(*inputs)))
    number, flat = _pick_element(_tuple(vjp(cot, *inputs)), rng)
    wrong = _one_element_off(vjp, number, flat, 1 + 1e-5)
    report = check_vjp(fn, wrong, inputs, seed=seed)
    assert not report.ok, str(report)
    failed = [r for r in report.inputs if not r.ok]
    assert [r.number for r in failed] == [number], str(report)
    (check,) = failed[0].checks.values()
    assert check.n_failed == 1, str(report)
    index = np.unravel_index(flat, inputs[number].shape)
    assert check.worst[0].index == tuple(int(i) for i in index), str(report)


# --- no false alarms on correct code at hard points ---------------------------------------------


def _softmax_ce_labels(z, t):
    return (lambda a: R.cross_entropy(a, t), lambda g, a: R.cross_entropy_vjp(g, a, t), (z,))


def _hard_cases():
    rng = np.random.default_rng(42)
    cases = {}
    x = rng.normal(size=(4, 6))
    x[0, :4] = 0.0
    x[1, 1] = -0.0
    x[2, 2] = 5e-324  # the smallest subnormal: not at the kink, but within any step of it
    cases["relu_exactly_at_0"] = (R.relu, R.relu_vjp, (x,))
    cases["tanh_saturated"] = (
        R.tanh,
        R.tanh_vjp,
        (rng.choice([-1, 1], size=(3, 5)) * rng.uniform(18, 22, size=(3, 5)),),
    )
    cases["sigmoid_saturated"] = (R.sigmoid, R.sigmoid_vjp, (rng.uniform(-40, 40, size=(3, 5)),))
    z500 = rng.normal(size=(4, 5)) * 500
    cases["softmax_scale_500"] = (R.softmax, R.softmax_vjp, (z500,))
    cases["log_softmax_scale_500"] = (R.log_softmax, R.log_softmax_vjp, (z500,))
    cases["ce_labels_scale_500"] = _softmax_ce_labels(z500, rng.integers(0, 5, size=4))
    z6 = 1e6 + rng.normal(size=(3, 5))
    cases["softmax_offset_1e6"] = (R.softmax, R.softmax_vjp, (z6,))
    cases["log_softmax_offset_1e6"] = (R.log_softmax, R.log_softmax_vjp, (z6,))
    cases["ce_labels_offset_1e6"] = _softmax_ce_labels(z6, rng.integers(0, 5, size=3))
    soft = rng.uniform(0, 1, size=(3, 5))
    cases["ce_soft_offset_1e6"] = (
        lambda a: R.cross_entropy(a, soft),
        lambda g, a: R.cross_entropy_vjp(g, a, soft),
        (z6,),
    )
    f32 = np.float32
    cases["tanh_float32"] = (R.tanh, R.tanh_vjp, (rng.normal(size=(3, 4)).astype(f32),))
    cases["softmax_float32"] = (
        R.softmax,
        R.softmax_vjp,
        ((rng.normal(size=(3, 4)) * 3).astype(f32),),
    )
    cases["affine_float32"] = (
        R.affine,
        R.affine_vjp,
        tuple(rng.normal(size=s).astype(f32) for s in ((3, 4), (4, 2), (2,))),
    )
    cases["ce_labels_float32"] = _softmax_ce_labels(
        (rng.normal(size=(3, 4)) * 3).astype(f32), rng.integers(0, 4, size=3)
    )
    # A mean over 2000 rows, some of them confident: gradients from ~1e-4 down to ~1e-8.
    n = 2000
    zm = rng.normal(size=(n, 2)) * rng.uniform(0, 12, size=(n, 1))
    cases["ce_mean_over_2000_rows"] = _softmax_ce_labels(zm, rng.integers(0, 2, size=n))
    pm, tm = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    cases["squared_error_mean_over_2000_rows"] = (
        lambda p, t: R.squared_error(p, t, reduction="mean"),
        lambda g, p, t: R.squared_error_vjp(g, p, t, reduction="mean"),
        (pm, tm),
    )
    return cases


HARD = _hard_cases()


#: Points where every gradient is below what central differences resolve (float64 tanh(x) is
#: exactly 1.0 beyond 19.1; a logit 500 below the max moves the normalizer by 1e-200). A zero
#: gradient passes there too, so the check cannot have failed: it must say "inconclusive".
SATURATED = {"tanh_saturated", "softmax_scale_500"}


@pytest.mark.parametrize("name", sorted(set(HARD) - SATURATED))
def test_no_false_alarm_on_correct_code_at_hard_points(name):
    fn, vjp, inputs = HARD[name]
    report = check_vjp(fn, vjp, inputs)
    assert report.ok, str(report)


@pytest.mark.parametrize("name", sorted(SATURATED))
def test_saturated_points_are_inconclusive_for_right_and_zero_gradients_alike(name):
    fn, vjp, inputs = HARD[name]
    report = check_vjp(fn, vjp, inputs)
    assert report.status == "inconclusive", str(report)
    assert "another point" in str(report) or "autodiff" in str(report)

    def zero(g, *xs):
        return tuple(np.zeros_like(x) for x in xs) if len(xs) > 1 else np.zeros_like(xs[0])

    assert check_vjp(fn, zero, inputs).status == "inconclusive"
    # A gross mistake is still caught there: the elements are judged absolutely.
    assert check_vjp(fn, lambda g, *xs: _tuple(vjp(g, *xs))[0] + 1e-3, inputs).status == "failed"


def test_mean_over_thousands_of_rows_really_has_tiny_gradients():
    fn, vjp, (z,) = HARD["ce_mean_over_2000_rows"]
    (d,) = _tuple(vjp(np.ones(()), z))
    assert np.max(np.abs(d)) < 1e-3
    assert np.min(np.abs(d)) < 1e-8


def test_softmax_at_scale_300_with_tiny_gradients_is_inconclusive_numerically():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3, 6)) * 300
    # Cotangent 1 on every entry plus a small varying part: the VJP is
    # a * (g - <g, a>), whose entries are the varying part times a (tiny).
    g = 1.0 + 1e-3 * rng.standard_normal(z.shape)
    d = R.softmax_vjp(g, z)
    assert 0 < np.max(np.abs(d)) < 1e-3
    # The gradients (down to 1e-215) live in outputs that round to 1.0 at every step: central
    # differences cannot resolve them, and a zero gradient would pass as well.
    report = check_vjp(R.softmax, R.softmax_vjp, (z,), direction=g)
    assert report.status == "inconclusive", str(report)
    assert "autodiff" in str(report)
    zero = check_vjp(R.softmax, lambda g, z: np.zeros_like(z), (z,), direction=g)
    assert zero.status == "inconclusive"


def test_float32_note():
    fn, vjp, inputs = HARD["tanh_float32"]
    report = check_vjp(fn, vjp, inputs)
    assert any("float32" in n for n in report.notes), report.notes


def _abs_vjp(g, x):
    # +1 at 0 (including -0.0): a subgradient of |x| at 0, and one that the
    # central difference (0 there) does not give by itself.
    return np.where(x >= 0, g, -g)


def _maximum_vjp(g, a, b):
    # At a tie, the gradient goes to the first argument (a subgradient: any split of g
    # between the two whose parts lie between 0 and g is one).
    first = a >= b
    return g * first, g * ~first


KINKS = {
    "relu": (R.relu, R.relu_vjp, lambda: (np.array([[0.0, 1.5, -2.0], [0.0, 0.0, 0.3]]),)),
    "abs": (np.abs, _abs_vjp, lambda: (np.array([0.0, -1.0, 2.0, 0.0, -0.0]),)),
    "maximum_with_ties": (
        np.maximum,
        _maximum_vjp,
        lambda: (np.array([1.0, 2.0, -3.0, 0.5, 0.0]), np.array([1.0, 1.0, -3.0, 0.7, 0.0])),
    ),
}


@pytest.mark.parametrize("name", list(KINKS))
def test_kinks_pass_and_the_report_names_them(name):
    fn, vjp, make = KINKS[name]
    inputs = make()
    report = check_vjp(fn, vjp, inputs, direction=np.ones(np.shape(fn(*inputs))))
    assert report.ok, str(report)
    kink_notes = [n for n in report.notes if "kink" in n]
    assert kink_notes, str(report)
    assert all(n in str(report) for n in kink_notes)


@pytest.mark.parametrize("name", list(KINKS))
def test_a_value_outside_the_subdifferential_at_a_kink_fails(name):
    fn, vjp, make = KINKS[name]
    inputs = make()

    def wrong(g, *xs):
        # 1.5 g at every element: outside [left, right] at the kinks, and wrong off them.
        return tuple(1.5 * d + 0.5 * g for d in _tuple(vjp(g, *xs)))

    report = check_vjp(fn, wrong, inputs, direction=np.ones(np.shape(fn(*inputs))))
    assert not report.ok, str(report)


# --- a wrong derivation with tiny gradients still fails ------------------------------------------


def test_saturated_sigmoid_with_a_wrong_factor_2_fails():
    x = np.array([-25.0, -24.0, -26.5, -23.0])
    assert np.max(R.sigmoid_vjp(np.ones(4), x)) < 2e-10

    def wrong(g, x):
        return 2.0 * R.sigmoid_vjp(g, x)

    report = check_vjp(R.sigmoid, wrong, (x,))
    assert not report.ok, str(report)
    assert report.inputs[0].checks["numeric"].n_failed == 4, str(report)


def test_saturated_tanh_missing_the_square_fails():
    x = np.array([15.0, -16.0, 14.0])

    def wrong(g, x):
        return g * (1.0 - np.abs(np.tanh(x)))  # 1 - |y| instead of 1 - y^2: a factor ~2 off

    report = check_vjp(R.tanh, wrong, (x,))
    assert not report.ok, str(report)


def test_softmax_at_scale_100_with_diagonal_only_jacobian_fails():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(3, 5)) * 100

    def diagonal_only(g, x):
        a = R.softmax(x)
        return g * a * (1.0 - a)

    right = R.softmax_vjp(np.ones_like(z) + rng.standard_normal(z.shape), z)
    assert np.median(np.abs(right)) < 1e-6  # the gradients are tiny
    report = check_vjp(R.softmax, diagonal_only, (z,))
    assert not report.ok, str(report)


def test_confident_cross_entropy_gradient_off_by_1e6_relative_fails():
    # Logits at scale 30: most gradients ~1e-10 .. 1e-13 of the loss.
    rng = np.random.default_rng(8)
    z = rng.normal(size=(4, 5)) * 30
    t = np.argmax(z, axis=1)
    fn, vjp, _ = _softmax_ce_labels(z, t)
    report = check_vjp(fn, _scaled_everywhere(vjp, 1 + 1e-6), (z,))
    assert not report.ok, str(report)


def _dominant_logits(shape, offset, gap, seed):
    """Logits near ``offset`` with one logit ``gap`` above the rest of a random row."""
    rng = np.random.default_rng(seed)
    z = offset + rng.normal(size=shape)
    row = rng.integers(shape[0])
    z[row, rng.integers(shape[1])] += gap
    return z, row


# The noise probe steps the logits on their own scale (2^-14 of 1e6 is 61): a
# probe point where another logit overtakes the dominant one changes a softmax
# output of 1.0 to about 0.5. Those few values far apart were taken for a
# quantized output with a quantum of 0.5, and the elements of the dominated
# row were judged against a "noise" of 0.25 (a false alarm found by the docs'
# Hypothesis example under CI=true).
@pytest.mark.parametrize("offset", [1e3, 1e6, 1e8])
@pytest.mark.parametrize("gap", [40.0, 500.0, 700.0])
@pytest.mark.parametrize("shape,seed", [((4, 10), 0), ((2, 3), 1), ((3, 50), 2)])
def test_softmax_at_large_offsets_with_a_dominant_logit(offset, gap, shape, seed):
    z, row = _dominant_logits(shape, offset, gap, seed)
    report = check_vjp(R.softmax, R.softmax_vjp, (z,))
    assert report.status != "failed", str(report)
    # The rows without a dominant logit are resolved: an error there fails (at the
    # row's largest gradient: at logits near 1e8 the outputs carry noise of 2e-9 relative
    # from the inputs' rounding, and a gradient that the cotangent made small is resolved
    # to about 1e-3 only).
    other = (row + 1) % shape[0]
    cot = np.random.default_rng(0).standard_normal(shape)  # check_vjp's default direction
    col = int(np.argmax(np.abs(R.softmax_vjp(cot, z)[other])))

    def wrong(g, x):
        out = R.softmax_vjp(g, x).copy()
        out[other, col] *= 1 + 1e-3
        return out

    assert check_vjp(R.softmax, wrong, (z,)).status == "failed"
