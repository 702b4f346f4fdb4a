"""The screen's block arithmetic is the per-element formula, bitwise.

:func:`oracles.numerics.exhaustive._block_stats` sums a block of central
differences at once, over the outputs that changed, into kept work arrays,
and sums the off-centre term over the rows whose steps rounded unequally
only. Here every element is recomputed alone, from the same two outputs,
with its sums taken one output at a time in output order (the order of
``bincount``): the numbers must be the same to the last bit, whatever the
block size, the calling convention, and the mix of rows with equal and
unequal steps.
"""

import numpy as np
import pytest

from oracles.numerics import exhaustive
from oracles.numerics.objective import NOISE_SAFETY, ScalarObjective, analytic_rounding


def _layer(x, W):
    return np.tanh(x @ W)


def _sequential(values):
    total = 0.0
    for v in values.tolist():
        total += v
    return total


def _one_element(objective, i, j, r):
    """``(value, noise, nonfinite)`` of element ``j`` of input ``i`` alone, by the formulas."""
    flat = objective.work[i].reshape(-1)
    x0 = float(flat[j])
    h = r * float(objective.scales[i].reshape(-1)[j])
    xp, xm = x0 + h, x0 - h
    flat[j] = xp
    fp = objective.output(objective.work).reshape(-1)
    flat[j] = xm
    fm = objective.output(objective.work).reshape(-1)
    flat[j] = x0
    f0 = objective.base_output.reshape(-1)
    cot = objective.cotangent.reshape(-1)
    model = objective.noise
    at = np.flatnonzero((fp != f0) | (fm != f0))
    a, z, w, g0 = fp[at], fm[at], cot[at], f0[at]
    s_c, r_c = model.sigma[at], model.relative[at]
    delta, hp, hm = xp - xm, xp - x0, x0 - xm
    num = _sequential(w * (a - z))
    lvl = np.maximum(s_c, r_c * np.abs(a)) + np.maximum(s_c, r_c * np.abs(z))
    level = _sequential(np.abs(w) * lvl)
    terms = _sequential(np.abs(w) * np.abs(a - z))
    center = 0.0
    if hp != hm:
        fwd, bwd = _sequential(w * (a - g0)), _sequential(w * (g0 - z))
        center = abs(fwd / hp - bwd / hm) / (0.5 * (hp + hm)) * abs(hp - hm)
    noise = NOISE_SAFETY * level / delta + center + float(analytic_rounding(terms / delta))
    return num / delta, noise, False


@pytest.mark.parametrize("rows", [None, 3])
@pytest.mark.parametrize("how", ["direct", "copies"])
def test_block_sums_are_the_per_element_sums(rows, how, monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 5))
    x.reshape(-1)[::3] = np.arange(10) / 8.0  # steps of 2^-k from these are exact: equal steps
    W = rng.standard_normal((5, 4)) / 2
    cot = rng.standard_normal((6, 4))
    if rows is not None:
        monkeypatch.setattr(exhaustive, "BLOCK_FLOATS", rows * cot.size)
    objective = ScalarObjective(_layer, (x, W), cot)
    for r in (2.0**-12, 3e-5):
        skews = []
        for i, xi in enumerate((x, W)):
            idx = np.arange(xi.size)
            value, noise, nonfinite = exhaustive._screen(objective, i, idx, r, how)
            for j in idx:
                want = _one_element(objective, i, j, r)
                got = (value[j], noise[j], nonfinite[j])
                assert [float(v) for v in got[:2]] == [float(v) for v in want[:2]], (i, j, r)
                assert bool(got[2]) == want[2]
                s = float(objective.scales[i].reshape(-1)[j]) * r
                x0 = float(xi.reshape(-1)[j])
                skews.append((x0 + s) - x0 != x0 - (x0 - s))
        if r == 3e-5:
            assert any(skews) and not all(skews)  # both kinds of row were exercised


def test_the_upper_quartile_is_numpys_bitwise():
    """The calibration's score (exhaustive._upper_quartile) is ``np.quantile(values, 0.75)``."""
    rng = np.random.default_rng(5)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, 1.7e308]
    for t in range(3000):
        n = int(rng.integers(1, 14))
        v = rng.standard_normal(n) * 10.0 ** rng.uniform(-300, 300, n)
        if t % 3 == 0:
            k = int(rng.integers(1, n + 1))
            v[rng.choice(n, k, replace=False)] = rng.choice(specials, k)
        with np.errstate(invalid="ignore"):
            want = float(np.quantile(v, 0.75))
        got = exhaustive._upper_quartile(v)
        assert np.array(got).tobytes() == np.array(want).tobytes() or (
            np.isnan(got) and np.isnan(want)
        ), (v, got, want)
