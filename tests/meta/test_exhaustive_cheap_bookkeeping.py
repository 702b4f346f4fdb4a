"""The ladder's rung bookkeeping is the plain formula, bitwise (issue 17: cheap functions).

A rung of the step ladder used to call
:meth:`~oracles.numerics.objective.ScalarObjective.rung_noise` three times
(each one-sided difference, then the central one, the mask accumulating in
that order); :meth:`~oracles.numerics.objective.ScalarObjective.rung_noises`
does it in one pass, keeping the terms of the changed outputs over the
rungs of one probe. Here the fused call is compared with the three calls,
to the last bit, on masks that grow and on outputs where only one side
moved, and whole ladders are compared with ladders whose objective makes
the three calls: on smooth, saturated (outputs first seen to change at a
later rung), oscillating and float32-computing functions.
"""

import numpy as np
import pytest

from oracles.numerics.ladder import partials
from oracles.numerics.objective import ScalarObjective


def _three_calls(objective, fp, fm, f0, mask):
    side = max(objective.rung_noise(fp, f0, mask), objective.rung_noise(f0, fm, mask))
    return side, objective.rung_noise(fp, fm, mask)


class _Unfused(ScalarObjective):
    """The ladder's noise as three calls of rung_noise, as before the fused call."""

    def rung_noises(self, fp, fm, f0, mask, cache=None):
        return _three_calls(self, fp, fm, f0, mask)


def _bits(x):
    return np.asarray(x, dtype=np.float64).view(np.int64).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_rung_noises_is_the_three_calls(seed):
    rng = np.random.default_rng(seed)
    m = 40
    x = rng.standard_normal(m)
    obj = ScalarObjective(np.sin, (x,), rng.standard_normal(m))
    f0 = obj.base_output
    fused_mask = np.zeros(m, dtype=bool)
    plain_mask = np.zeros(m, dtype=bool)
    cache = {}
    for rung in range(12):
        fp, fm = f0.copy(), f0.copy()
        # Some outputs move on both sides, some on one side only, some not at all.
        both = rng.random(m) < 0.3
        plus = rng.random(m) < 0.1
        minus = rng.random(m) < 0.1
        step = 2.0**-rung
        fp[both | plus] += step * rng.standard_normal(int(np.count_nonzero(both | plus)))
        fm[both | minus] -= step * rng.standard_normal(int(np.count_nonzero(both | minus)))
        if rung == 5:
            fp, fm = f0.copy(), f0.copy()  # a rung where nothing moved
        if rung == 7:
            fp[3] = fm[3] = f0[3] + 1.0  # both sides moved to the same value
        got = obj.rung_noises(fp, fm, f0, fused_mask, cache)
        want = _three_calls(obj, fp, fm, f0, plain_mask)
        assert _bits(got) == _bits(want)
        assert np.array_equal(fused_mask, plain_mask)


def test_rung_noises_when_nothing_moved():
    x = np.linspace(0.1, 1.0, 8)
    obj = ScalarObjective(np.sin, (x,), np.ones(8))
    f0 = obj.base_output
    mask = np.zeros(8, dtype=bool)
    assert obj.rung_noises(f0.copy(), f0.copy(), f0, mask, {}) == (0.0, 0.0)
    assert not mask.any()


def _softmax_ce_grad(y):
    def grad(s):
        z = s - s.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        return p / len(y)

    return grad


def _cases():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 7))
    W = rng.standard_normal((7, 5)) / 3
    s = rng.normal(size=(4, 6)) * 300.0
    y = rng.integers(0, 6, size=4)
    return [
        ("tanh(x @ W)", lambda x, W: np.tanh(x @ W), (x, W)),
        ("softmax CE gradient at logits 300 apart", _softmax_ce_grad(y), (s,)),
        ("sin(1e3 x)", lambda x: np.sin(1e3 * x), (np.linspace(0.1, 0.9, 12),)),
        (
            "float32 tanh(x @ W)",
            lambda x, W: np.tanh(x.astype(np.float32) @ W.astype(np.float32)).astype(float),
            (x, W),
        ),
        ("tanh saturated", np.tanh, (np.linspace(-30.0, 30.0, 13),)),
        ("abs at 0 and near it", lambda x: np.abs(x - 1e-6), (np.array([0.0, 1e-6, 0.5, -2.0]),)),
    ]


@pytest.mark.parametrize(("name", "fn", "inputs"), _cases(), ids=[c[0] for c in _cases()])
def test_ladders_are_those_of_three_noise_calls(name, fn, inputs):
    cot = np.random.default_rng(7).standard_normal(np.shape(fn(*inputs)))
    elements = [(i, j) for i, x in enumerate(inputs) for j in range(np.size(x))]
    fused = partials(ScalarObjective(fn, inputs, cot), elements)
    plain = partials(_Unfused(fn, inputs, cot), elements)
    for key in ("value", "error", "step", "left", "right"):
        assert _bits(getattr(fused, key)) == _bits(getattr(plain, key)), (name, key)
    assert np.array_equal(fused.kink, plain.kink)
    assert np.array_equal(fused.nonfinite, plain.nonfinite)
    assert fused.evaluations == plain.evaluations
