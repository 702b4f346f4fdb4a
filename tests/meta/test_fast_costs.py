"""What the default (fast) mode spends its evaluations on, and what it must not skip.

The probe for kinks at tied input values (:func:`oracles.checks._kink_where_ties_untie`)
runs on every check whose inputs hold equal values (zero-initialized biases). Where the
function is smooth there and its defects stand above the rounding, it decides in its own 10
evaluations per group, without measuring the objective's noise model (8 more); where the
defects are rounding only (an affine function) or a kink is there, the decision is the same
as with the noise worked out for every defect.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles.checks import TIE_PROBE_STEPS, _kink_where_ties_untie
from oracles.numerics.objective import ScalarObjective

SCALES = (1e-6, 1.0, 1e6)


def _layer(n_in, n_out, scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, n_in))
    W = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)

    def fn(b):  # outputs at the scale ``scale``
        return scale * np.sum(1.0 / (1.0 + np.exp(-(x @ W + b))), axis=0)

    return fn


def _reference_probe(objective, i, idx, rng):
    """The probe as it was: the rounding of every defect worked out (the noise model measured)."""
    flat = objective.work[i].reshape(-1)
    f0, cot = objective.base_output, objective.cotangent
    x0 = flat[idx].copy()
    s = objective.scales[i].reshape(-1)[idx]
    u, v = rng.standard_normal(idx.size) * s, rng.standard_normal(idx.size) * s
    combos = {"+u": u, "-u": -u, "+v": v, "-v": -v, "+uv": u + v}
    defects = []
    for t in TIE_PROBE_STEPS:
        f = {}
        for key, w in combos.items():
            flat[idx] = x0 + t * w
            f[key] = objective.output(objective.work)
        flat[idx] = x0

        def defect(plus, minus, t=t, f=f):
            change = sum(f[k] - f0 for k in plus) - sum(f[k] - f0 for k in minus)
            noise = sum(
                objective.rung_noise(f[k], f0, np.zeros(f0.shape, dtype=bool)) for k in plus + minus
            )
            return abs(float(np.vdot(cot, change))) / t, noise / t

        defects.append(
            [defect(["+u", "-u"], []), defect(["+v", "-v"], []), defect(["+uv"], ["+u", "+v"])]
        )
    big, small = defects
    return any(not d <= 0.5 * b + n for (b, _), (d, n) in zip(big, small, strict=True))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("n_in", "n_out"), [(5, 3), (30, 20), (60, 128)])
def test_smooth_ties_cost_ten_evaluations_and_no_noise_model(n_in, n_out, scale):
    for seed in range(3):
        fn = _layer(n_in, n_out, scale, seed)
        b = np.zeros(n_out)
        cot = np.random.default_rng(seed + 100).uniform(0.5, 1.5, size=n_out)
        objective = ScalarObjective(fn, (b,), cot)
        calls = objective.calls
        assert objective.scales  # b is 0 everywhere: its scale is measured, 4 calls a scale tried
        assert 0 < objective.calls - calls <= 4 * 3, (seed, scale)
        calls = objective.calls
        idx = np.arange(n_out)
        assert _kink_where_ties_untie(objective, 0, idx, np.random.default_rng(seed)) is False
        assert objective.calls - calls == 2 * 5, (seed, scale)
        assert objective._noise is None  # the noise model was never needed
        fresh = ScalarObjective(fn, (b,), cot)
        assert _reference_probe(fresh, 0, idx, np.random.default_rng(seed)) is False


def _max_rows(x):
    return np.max(x.reshape(-1, 4), axis=1)


def _relu(x):
    return np.maximum(x, 0.0)


def _affine(x):
    return 3.0 * x - 7.0


def _offset_sigmoid(x):
    # A smooth function whose defects drown in the rounding of a large output.
    return 1e12 + 0.5 * (1.0 + np.tanh(0.5 * x))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    "fn", [_max_rows, _relu, _affine, _offset_sigmoid, np.sort], ids=lambda f: f.__name__
)
def test_the_decision_is_the_one_with_every_defects_noise(fn, scale):
    """Kinks, rounding-only defects (affine), defects below the rounding of a huge output."""
    noise_path = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = scale * rng.normal(size=16)
        tied = [1, 2, 3] if fn is _max_rows else [2, 7, 11]
        x[tied] = 0.0 if fn is _relu else (scale * 9.0 if fn is _max_rows else scale * 0.3)
        shape = np.shape(fn(x))
        cot = rng.uniform(0.5, 1.5, size=shape)
        idx = np.array(tied)
        objective = ScalarObjective(fn, (x,), cot)
        got = _kink_where_ties_untie(objective, 0, idx, np.random.default_rng(seed))
        want = _reference_probe(ScalarObjective(fn, (x,), cot), 0, idx, np.random.default_rng(seed))
        assert got is want, (seed, scale)
        assert got is (fn in (_max_rows, _relu, np.sort)), (seed, scale)
        noise_path += objective._noise is not None
    if fn is _offset_sigmoid and scale == 1.0:
        # Defects of the order of the rounding (at the other scales the output does not
        # move at all, or saturates): the smooth verdict needed the noise model, mostly.
        assert noise_path >= 2


# --- the directions of a failing round serve the next one ------------------------------------


def _planted_fast(n, scale, seed, plants):
    """``scale * sum(sin(x) * w[k % m])`` (two inputs, ``w`` shared): ``fast_partials``."""
    from oracles.numerics import fast

    rng = np.random.default_rng(seed)
    x, w = rng.uniform(-2.0, 2.0, size=n), rng.uniform(0.5, 1.5, size=n // 3)
    k = np.arange(n) % w.size

    def fn(x, w):
        return np.array(scale * np.sum(np.sin(x) * w[k]))

    gx = scale * np.cos(x) * w[k]
    gw = np.bincount(k, weights=scale * np.sin(x), minlength=w.size)
    grads = [gx, gw]
    for i, j, rel in plants:
        grads[i][j] *= 1.0 + rel
    return fast.fast_partials(ScalarObjective(fn, (x, w), np.array(1.0)), grads, seed=seed)


PLANTS = [
    [(0, 123, 1e-6)],
    [(1, 7, -1e-5)],
    [(0, 5, 1e-6), (0, 2900, -1e-6)],
    [(0, 99, 1e-4), (1, 300, 1e-6)],
]


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
@pytest.mark.parametrize("n", [3000, 20000])
@pytest.mark.parametrize("plants", PLANTS, ids=["one", "one in w", "two in x", "x and w"])
def test_planted_errors_are_named_and_the_last_round_passes(plants, n, scale):
    for seed in (n % 7, n % 5):
        res = _planted_fast(n, scale, seed, plants)
        assert sorted(res.localized) == sorted((i, j) for i, j, _ in plants), (seed, res.method)
        assert not res.fallback_all
        last = res.projections[-3:]
        assert len(last) == 3 and all(p.passed for p in last), res.projections
        # A round measures all its directions; the search follows one, and the others (and
        # it) pass the next round once the named elements are taken out: no round measures
        # more directions than it needs.
        assert len(res.projections) <= 3 * (1 + len(plants)), res.projections


@pytest.mark.parametrize("plants", PLANTS[:3], ids=["one", "one in w", "two in x"])
def test_directions_drawn_again_are_the_same(plants, monkeypatch):
    """Large directions are not kept between rounds but drawn again: the same search."""
    from oracles.numerics import fast

    kept = _planted_fast(20000, 1.0, 1, plants)
    monkeypatch.setattr(fast, "KEEP_DIRECTION", 16)
    again = _planted_fast(20000, 1.0, 1, plants)
    assert again.localized == kept.localized
    assert [(p.residual, p.error) for p in again.projections] == [
        (p.residual, p.error) for p in kept.projections
    ]
    assert again.evaluations == kept.evaluations


def test_a_direction_drawn_again_from_its_state_is_bitwise_the_same():
    from oracles.numerics import fast

    for n in (1, 1000, fast.CHUNK + 17, 3 * fast.CHUNK):
        rng = np.random.default_rng(n)
        rng.standard_normal(5)
        d = fast._Direction(rng, n)
        first = d.values().copy()
        rng.standard_normal(3)  # the check's generator moves on
        state = rng.bit_generator.state
        d._values = None  # as a large direction between rounds
        assert np.array_equal(d.values(), first)
        assert rng.bit_generator.state == state  # drawing again leaves the check's generator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_relu_mlp_on_real_digits_stays_in_mode_fast(seed):
    """ReLU 784-128-10, zero biases, 64 real digits: about 100 calls of fn, not exhaustive.

    In round 8 a bound on O(t) truncation in the fast mode's stencils (since removed) moved
    the calibration's step a thousandfold on this network at seed 1: its projections then
    crossed ReLU kinks, the errors looked everywhere, and the check compared all 101,770
    elements one by one (261,106 calls of fn, 126 s, instead of 103 calls and 0.15 s).
    """
    from reference.mnist import load_mnist

    images, labels = load_mnist()
    x, t = images[:64].reshape(64, -1) / 255.0, labels[:64].astype(int)
    rng = np.random.default_rng(seed)
    W1, b1 = rng.normal(size=(784, 128)) * 0.05, np.zeros(128)
    W2, b2 = rng.normal(size=(128, 10)) * 0.1, np.zeros(10)

    def forward(W1, b1, W2, b2):
        z = x @ W1 + b1
        s = np.maximum(z, 0) @ W2 + b2
        return z, s - s.max(axis=1, keepdims=True)

    def fn(*params):
        _, s = forward(*params)
        return -(s[np.arange(64), t] - np.log(np.exp(s).sum(axis=1))).mean()

    def vjp(g, *params):
        z, s = forward(*params)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(64), t] -= 1
        ds = g * p / 64
        dz = (ds @ params[2].T) * (z > 0)
        return x.T @ dz, dz.sum(axis=0), np.maximum(z, 0).T @ ds, ds.sum(axis=0)

    from oracles import check_vjp

    r = check_vjp(fn, vjp, (W1, b1, W2, b2), seed=seed)
    assert r.status == "passed", str(r)
    assert r.context["fn evaluations"] < 400, r.context["fn evaluations"]
