"""The calibration scores its candidate steps as one array: the per-candidate formula, bitwise.

:func:`oracles.numerics.exhaustive._best_step` scores every candidate
screen step at once, a row each (issue 17: the calibration's Python was a
tenth of the check on a cheap ``fn``). Here it is compared with the loop it
replaced, one candidate at a time, on samples with zero and nonzero
values, deviations below and above the ladders' errors, non-finite screens
and tiny steps: the same step, model and bounds to the last bit, and the
first of equal scores.
"""

import numpy as np
import pytest

from oracles.numerics.exhaustive import _best_step, _truncation, _upper_quartile


def _one_at_a_time(candidates, screened, v, v_err, scales, nz):
    """The loop of ``_calibrate`` before: one candidate at a time."""
    k = v.size
    best = None
    for q, r in enumerate(candidates):
        c, noise, nonfinite = (a[q * k : (q + 1) * k] for a in screened)
        if np.any(nonfinite) or not np.all(np.isfinite(c)):
            continue
        h = r * scales
        excess = np.maximum(np.abs(c - v) - v_err, 0.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            per_c = np.where(excess > 0, excess / (h * h), 0.0)
        model = (
            float(np.max(per_c)),
            float(np.max(per_c[nz] / np.abs(v[nz]))) if nz.any() else np.inf,
        )
        bound = noise + _truncation(h, v, model)
        rel = bound[nz] / np.abs(v[nz]) if nz.any() else bound
        score = _upper_quartile(rel)
        if best is None or score < best[0]:
            best = (score, r, model, bound)
    return best


def _bits(x):
    return np.asarray(x, dtype=np.float64).view(np.int64).tolist()


def _case(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 9))
    center = 2.0 ** float(rng.integers(-30, -3))
    candidates = sorted({min(0.125, center * 4.0**e) for e in range(-5, 2)}, reverse=True)
    n = len(candidates)
    scales = np.abs(rng.standard_normal(k)) * 10.0 ** float(rng.integers(-8, 8)) + 1e-300
    v = rng.standard_normal(k) * 10.0 ** float(rng.integers(-5, 5))
    v[rng.random(k) < 0.2] = 0.0
    v_err = np.abs(v) * 10.0 ** rng.uniform(-16, -8, k)
    r = np.repeat(np.asarray(candidates), k)
    h = r * np.tile(scales, n)
    wobble = 1 + rng.standard_normal(n * k) * 1e-10
    c = np.tile(v, n) * wobble + h * h * rng.standard_normal(n * k)
    exact = rng.random(n * k) < 0.15  # no deviation from the ladder at all
    c[exact] = np.tile(v, n)[exact]
    noise = np.abs(rng.standard_normal(n * k)) * 1e-14 / np.maximum(h, 1e-300)
    nonfinite = rng.random(n * k) < 0.03
    if seed % 5 == 0:
        c[int(rng.integers(n * k))] = np.nan
    return candidates, (c, noise, nonfinite), v, v_err, scales, np.abs(v) > 0


@pytest.mark.parametrize("seed", range(40))
def test_rows_score_like_one_candidate_at_a_time(seed):
    candidates, screened, v, v_err, scales, nz = _case(seed)
    got = _best_step(candidates, screened, v, v_err, scales, nz)
    want = _one_at_a_time(candidates, screened, v, v_err, scales, nz)
    if want is None:
        assert got is None
        return
    assert got[1] == want[1]
    assert _bits([got[0], *got[2]]) == _bits([want[0], *want[2]])
    assert _bits(got[3]) == _bits(want[3])


def test_no_candidate_screened_finitely():
    candidates, (c, noise, nonfinite), v, v_err, scales, nz = _case(1)
    nonfinite = np.ones_like(nonfinite)
    assert _best_step(candidates, (c, noise, nonfinite), v, v_err, scales, nz) is None


def test_equal_scores_keep_the_first():
    # Every candidate sees no deviation: every score is the noise alone, equal; the first wins.
    candidates = [0.125, 2.0**-5, 2.0**-7]
    k = 3
    v = np.array([1.0, -2.0, 0.5])
    c = np.tile(v, 3)
    noise = np.full(9, 1e-12)
    best = _best_step(
        candidates, (c, noise, np.zeros(9, dtype=bool)), v, np.zeros(k), np.ones(k), v != 0
    )
    assert best[1] == 0.125
