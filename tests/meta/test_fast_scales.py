"""mode="fast" at extreme output scales: no overflow, no underflow, the same verdicts.

``s * tanh(x)`` and ``s * sum(sin(x) * x)`` for ``s`` from 1e-200 to 1e200, at
several sizes and seeds: the noise of the projections' differences near 1e186
used to be squared as a Python float (``OverflowError``), and near 1e-214 it
read as 0. Warnings are errors here: the check must not leak floating-point
warnings either.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import oracles


def _tanh(scale):
    def fn(x):
        return scale * np.tanh(x)

    def vjp(g, x):
        return g * scale * (1.0 - np.tanh(x) ** 2)

    return fn, vjp


def _sin_x(scale):
    def fn(x):
        return np.array(scale * np.sum(np.sin(x) * x))

    def vjp(g, x):
        return g * scale * (np.cos(x) * x + np.sin(x))

    return fn, vjp


def _off(vjp, j, rel):
    def wrong(g, x):
        d = np.array(vjp(g, x), dtype=np.float64)
        d.reshape(-1)[j] *= 1.0 + rel
        return d

    return wrong


def _check(fn, vjp, x, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return oracles.check_vjp(fn, vjp, (x,), mode="fast", seed=seed)


CASES = [
    (kind, scale, n, seed)
    for kind in ("tanh", "sin_x")
    for scale in (1e-200, 1.0, 1e200)
    for n, seed in ((6000, 0), (20000, 1))
]


@pytest.mark.parametrize(("kind", "scale", "n", "seed"), CASES)
def test_correct_passes_and_one_element_off_by_1e6_fails_at_any_output_scale(kind, scale, n, seed):
    fn, vjp = {"tanh": _tanh, "sin_x": _sin_x}[kind](scale)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, n)
    before = x.copy()
    right = _check(fn, vjp, x, seed)
    assert right.status == "passed", str(right)
    j = int(rng.integers(n))
    wrong = _check(fn, _off(vjp, j, 1e-6), x, seed)
    assert wrong.status == "failed", str(wrong)
    named = [e.index for r in wrong.inputs for e in r.worst if not e.passed]
    assert named == [(j,)], str(wrong)
    np.testing.assert_array_equal(x, before)


def test_the_measured_noise_scales_with_the_output():
    """The noise the fast mode measures follows the function's scale (powers of two exact)."""
    from oracles.numerics.fast import fast_partials
    from oracles.numerics.objective import ScalarObjective

    x = np.random.default_rng(3).uniform(-1.5, 1.5, 8000)
    noise = {}
    for scale in (2.0**-660, 1.0, 2.0**660):
        fn, vjp = _tanh(scale)
        cot = np.random.default_rng(4).standard_normal(x.size)
        res = fast_partials(ScalarObjective(fn, (x,), cot), [vjp(cot, x)])
        assert res.projections and all(p.passed for p in res.projections[-3:])
        noise[scale] = res.noise
    assert np.isfinite(noise[1.0]) and noise[1.0] > 0
    for scale in (2.0**-660, 2.0**660):
        assert noise[scale] / scale == pytest.approx(noise[1.0], rel=1e-6)
