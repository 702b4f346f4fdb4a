"""The exhaustive mode's typical samples: calibration, the ladder's threshold, no weaker verdict.

The screen is calibrated on full ladders at the largest gradients and at
the elements nearest the median magnitude (typical elements). The typical
ones are screened like every other element: their ladders decide only where
the screen flags them. Their ladders' errors are the full ladder's
threshold at a typical element, which the report's sensitivity uses, so
the pipeline runs no ladder of its own for it. The constructions: ``tanh(x
@ W)``, ``exp`` and a row softmax at several sizes, input scales and seeds.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracles
import reference as R
from oracles._guards import own_stream
from oracles.numerics import exhaustive
from oracles.numerics.exhaustive import Exhaustive, exhaustive_partials, sharp_partials
from oracles.numerics.objective import ScalarObjective


def _tanh_mm(rng, n, scale):
    x = scale * rng.normal(size=(n, 8))
    W = rng.normal(size=(8, 5)) / (3.0 * scale)

    def fn(x, W):
        return np.tanh(x @ W)

    def vjp(g, x, W):
        d = g * (1 - np.tanh(x @ W) ** 2)
        return d @ W.T, x.T @ d

    return fn, vjp, (x, W)


def _exp(rng, n, scale):
    x = scale * rng.uniform(-2.0, 2.0, size=n * 4)
    return (lambda x: np.exp(x / scale)), (lambda g, x: g * np.exp(x / scale) / scale), (x,)


def _softmax(rng, n, scale):
    x = 3.0 * scale * rng.normal(size=(n, 6))
    return (
        (lambda x: R.softmax(x / scale)),
        (lambda g, x: R.softmax_vjp(g, x / scale) / scale),
        (x,),
    )


CASES = {"tanh(x @ W)": _tanh_mm, "exp": _exp, "softmax": _softmax}
GRID = [(n, scale, seed) for n in (40, 300) for scale in (1.0, 1e-6, 1e5) for seed in (0, 1)]


def _run(fn, vjp, xs, seed):
    cot = own_stream(seed, "direction").standard_normal(np.shape(fn(*xs)))
    grads = vjp(cot, *xs)
    grads = list(grads) if isinstance(grads, tuple) else [grads]
    obj = ScalarObjective(fn, [np.array(x, copy=True) for x in xs], cot)
    res, info = exhaustive_partials(obj, grads, [(i, np.arange(x.size)) for i, x in enumerate(xs)])
    return res, info, grads, cot


@pytest.mark.parametrize(("n", "scale", "seed"), GRID)
@pytest.mark.parametrize("case", list(CASES))
def test_typical_thresholds_are_the_ladders_never_sharper(case, n, scale, seed):
    """At each typical element: at least the sharpened ladder's error, at most the reference's."""
    fn, vjp, xs = CASES[case](np.random.default_rng(seed), n, scale)
    res, info, grads, cot = _run(fn, vjp, xs, seed)
    for i, x in enumerate(xs):
        flat, errors = info["typical"][i]
        mag = np.abs(res[i]["value"])
        assert flat.size == min(exhaustive.TYPICAL_SAMPLES, x.size)
        # The elements nearest the median magnitude of the references.
        m = float(np.median(mag[mag > 0]))
        others = np.setdiff1d(np.arange(x.size), flat)
        assert np.abs(mag[flat] - m).max() <= np.abs(mag[others] - m).min()
        fresh = ScalarObjective(fn, [np.array(v, copy=True) for v in xs], cot)
        ladder = sharp_partials(fresh, [(i, int(j)) for j in flat], grads)
        assert np.all(errors >= ladder["error"] * (1 - 1e-9)), (errors, ladder["error"])
        blunter = errors > ladder["error"] * (1 + 1e-9)
        assert np.all(errors[blunter] <= res[i]["error"][flat][blunter]), (errors, res[i])


@pytest.mark.parametrize(("n", "scale", "seed"), GRID[::2])
@pytest.mark.parametrize("case", list(CASES))
def test_the_report_runs_no_ladder_of_its_own(monkeypatch, case, n, scale, seed):
    fn, vjp, xs = CASES[case](np.random.default_rng(seed), n, scale)
    calls, done = [], []
    original, partials = exhaustive.sharp_partials, exhaustive.exhaustive_partials

    def spy(*args, **kwargs):
        calls.append(bool(done))
        return original(*args, **kwargs)

    def finished(*args, **kwargs):
        out = partials(*args, **kwargs)
        done.append(True)
        return out

    monkeypatch.setattr(exhaustive, "sharp_partials", spy)
    monkeypatch.setattr(exhaustive, "exhaustive_partials", finished)
    report = oracles.check_vjp(fn, vjp, xs, mode=Exhaustive(), seed=seed)
    assert report.ok, str(report)
    assert done and calls and not any(calls), calls  # every ladder ran inside the mode
    for ir in report.inputs:
        assert 0 < ir.sensitivity < 1e-3, str(report)


@pytest.mark.parametrize(("n", "scale", "seed"), GRID[1::2])
@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_typical_sample_fails_like_any_element(monkeypatch, case, n, scale, seed):
    """A typical calibration sample is judged like every other element (screen, then ladder)."""
    fn, vjp, xs = CASES[case](np.random.default_rng(seed), n, scale)
    picked = []
    original = exhaustive._calibrate

    def spy(objective, i, flat_idx, grads, rng, how="copies"):
        out = original(objective, i, flat_idx, grads, rng, how)
        picked.append((i, out[4].flat.copy()))
        return out

    monkeypatch.setattr(exhaustive, "_calibrate", spy)
    assert oracles.check_vjp(fn, vjp, xs, mode=Exhaustive(), seed=seed).ok
    k, typical = next((i, t) for i, t in picked if t.size)
    j = int(typical[0])

    def wrong(g, *args):
        out = vjp(g, *args)
        many = isinstance(out, tuple)
        out = [np.array(o, dtype=np.float64, copy=True) for o in (out if many else (out,))]
        out[k].reshape(-1)[j] *= 1 + 1e-6
        return tuple(out) if many else out[0]

    report = oracles.check_vjp(fn, wrong, xs, mode=Exhaustive(), seed=seed)
    bad = [(ir.number, e.index) for ir in report.inputs for e in ir.worst if not e.passed]
    assert bad == [(k, np.unravel_index(j, xs[k].shape))], str(report)
