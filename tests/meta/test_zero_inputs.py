"""Inputs that are 0 everywhere (biases, an RNN's first hidden state) beside inputs of any scale.

Such an input has no scale of its own; it used to borrow the largest scale of the
others, so that ``h0 = 0`` beside inputs of scale 1e6 was stepped by 1e6 and every
``tanh`` saturated (a correct VJP failed), and a bias beside inputs of 1e12 was judged
on a softmax swamped by its steps (the check was inconclusive). Its scale is measured
now (:func:`oracles.numerics.objective.measured_scales`). The constructions: an RNN
step, an affine softmax cross-entropy and a bias inside a function that varies on the
scale of its input, at input scales 1e-9 to 1e12, two sizes, two seeds, both modes; the
correct derivative passes and one element of the zero input off by a relative 1e-6
fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracles
from oracles.numerics.objective import ScalarObjective, element_scales, measured_scales

SCALES = (1e-9, 1e-3, 1e6, 1e12)


def _rnn(sx, n, m, rng):
    x = rng.standard_normal((n, m)) * sx
    wx = rng.standard_normal((m, m)) / (sx * np.sqrt(m))
    wh = rng.standard_normal((m, m)) / np.sqrt(m)

    def fn(x, wx, wh, h0, b):
        return np.tanh(x @ wx + h0 @ wh + b)

    def vjp(c, x, wx, wh, h0, b):
        y = fn(x, wx, wh, h0, b)
        d = c * (1 - y * y)
        return d @ wx.T, x.T @ d, h0.T @ d, d @ wh.T, d.sum(0)

    return fn, vjp, [x, wx, wh, np.zeros((n, m)), np.zeros(m)], (3, 4)


def _affine_ce(sx, n, m, rng):
    k = 5
    x = rng.standard_normal((n, m)) * sx
    w = 3 * rng.standard_normal((m, k)) / (sx * np.sqrt(m))
    y = rng.integers(0, k, n)

    def probs(x, w, b):
        z = x @ w + b
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    def fn(x, w, b):
        return -probs(x, w, b)[np.arange(n), y].mean()

    def vjp(c, x, w, b):
        p = np.exp(probs(x, w, b))
        p[np.arange(n), y] -= 1
        d = c * p / n
        return d @ w.T, x.T @ d, d.sum(0)

    return fn, vjp, [x, w, np.zeros(k)], (2,)


def _sharp(sx, n, m, rng):
    """``tanh((x + b) / sx)``: varies with its zero bias on the scale ``sx`` of ``x``."""
    x = rng.standard_normal((n, m)) * sx

    def fn(x, b):
        return np.tanh((x + b) / sx)

    def vjp(c, x, b):
        y = fn(x, b)
        d = c * (1 - y * y) / sx
        return d, d.sum(0)

    return fn, vjp, [x, np.zeros(m)], (1,)


BUILDERS = {"rnn": _rnn, "affine_ce": _affine_ce, "sharp": _sharp}


def _planted(vjp, k, j, rel):
    def wrong(*a):
        g = [np.array(v, dtype=np.float64) for v in vjp(*a)]
        g[k].reshape(-1)[j] *= 1.0 + rel  # linear in the cotangent, as a derivative is
        return tuple(g)

    return wrong


@pytest.mark.parametrize("mode", ["fast", "exhaustive"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_correct_passes_and_a_planted_zero_input_element_fails(name, scale, mode):
    for (n, m), seed in (((3, 4), 0), ((8, 16), 1)):
        rng = np.random.default_rng(seed)
        fn, vjp, xs, zero = BUILDERS[name](scale, n, m, rng)
        kw = dict(mode=mode, against="numeric", seed=seed)
        report = oracles.check_vjp(fn, vjp, xs, **kw)
        assert report.status == "passed", (n, m, seed, str(report))
        k = zero[seed % len(zero)]
        j = int(rng.integers(xs[k].size))
        report = oracles.check_vjp(fn, _planted(vjp, k, j, 1e-6), xs, **kw)
        assert report.status == "failed", (n, m, seed, str(report))
        named = {(r.name, e.index) for r in report.inputs for e in r.worst if not e.passed}
        index = tuple(int(i) for i in np.unravel_index(j, xs[k].shape))
        assert (report.inputs[k].name, index) in named, str(report)


@pytest.mark.parametrize("sigma", [1e-9, 1e-4, 1.0, 1e3, 1e9])
@pytest.mark.parametrize("lent", [1e-6, 1.0, 1e12])
def test_the_measured_scale_follows_the_scale_fn_varies_on(sigma, lent):
    """``tanh(b / sigma + y)`` beside an input of scale ``lent``: the scale found is
    at most 16^2 below ``sigma`` and at most the start (the borrowed scale), and the
    start itself where ``fn`` varies on a far larger scale."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal(6) * lent

    def evaluate(xs):
        return np.tanh(xs[0] / sigma + xs[1] / lent)

    calls = [0]

    def counted(xs):
        calls[0] += 1
        return evaluate(xs)

    (sb, sy) = measured_scales(counted, [np.zeros(6), y])
    assert np.all(sy == measured_scales(evaluate, [np.ones(6), y])[1])  # others as before
    start = float(element_scales([np.zeros(6), y])[0][0])  # borrowed: the rms of y
    found = float(sb[0])
    assert np.all(sb == found)
    if sigma >= 16 * start:
        assert found == start
    else:
        assert min(sigma, start) / 16**2 <= found <= min(sigma * 16, start), (found, sigma)
    assert calls[0] % 4 == 1  # f0, then four calls a scale tried


def test_no_zero_input_costs_nothing_and_the_user_rng_is_untouched():
    state = np.random.get_state()[1].copy()  # noqa: NPY002 - the global state is the point
    xs = [np.full(3, 2.0), np.array([0.0, 1.0, 0.0])]
    objective = ScalarObjective(lambda a, b: np.tanh(a * b), xs, np.ones(3))
    calls = objective.calls
    assert objective.scales
    assert objective.calls == calls
    objective = ScalarObjective(lambda a, b: np.tanh(a + b), [xs[0], np.zeros(3)], np.ones(3))
    calls = objective.calls
    assert objective.scales
    assert objective.calls > calls
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_a_relu_of_a_zero_bias_alone_keeps_a_scale_and_judges_its_kinks():
    """``relu(b)`` at ``b = 0`` kinks at the point on every scale: the first scale
    (the borrowed one, the rms of ``x``) is kept, and subgradients in [0, 1] are accepted."""
    x = np.linspace(-1.0, 1.0, 5)

    def fn(x, b):
        return np.maximum(x * 0.0 + b, 0.0) + x

    def vjp(c, x, b):
        return c, 0.5 * c

    lent = float(element_scales([x, np.zeros(5)])[1][0])
    assert float(measured_scales(lambda xs: fn(*xs), [x, np.zeros(5)])[1][0]) == lent
    report = oracles.check_vjp(fn, vjp, [x, np.zeros(5)], against="numeric", seed=0)
    assert report.status != "failed", str(report)

    def wrong(c, x, b):
        return c, 1.5 * c

    report = oracles.check_vjp(fn, wrong, [x, np.zeros(5)], against="numeric", seed=0)
    assert report.status == "failed", str(report)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e8])
def test_jvp_along_a_zero_input(scale):
    """Forward mode: a bias of zeros beside weights of scale ``1/scale`` and inputs of ``scale``.

    At 1e8 the default tangents (random normal on every input) move ``x`` and ``w``
    on scales 1e16 apart: no one step resolved both, and a correct JVP failed; the
    ladder now runs along each input's part of the tangents and sums them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6)) * scale
    w = rng.standard_normal((6, 3)) / (scale * np.sqrt(6))
    b = np.zeros(3)

    def fn(x, w, b):
        return np.tanh(x @ w + b)

    def jvp(t, x, w, b):
        tx, tw, tb = t
        return (1 - fn(x, w, b) ** 2) * (tx @ w + x @ tw + tb)

    def wrong(t, x, w, b):
        out = jvp(t, x, w, b)
        out[1, 2] *= 1 + 1e-6
        return out

    assert oracles.check_jvp(fn, jvp, [x, w, b], seed=0).status == "passed"
    assert oracles.check_jvp(fn, wrong, [x, w, b], seed=0).status == "failed"
