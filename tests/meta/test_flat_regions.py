"""Round 9: where fn turns constant, large outputs that move in whole units, projections that
cannot resolve an input.

Found by fuzzing classes of code from public courses (CS231n, numpy-ml activations):

- **A piece that turns constant near an element** (a dead ReLU, ``relu6`` or a clip just past
  its bound). The noise probe's coarse line crossed the bound; its few distinct values
  (0.895, 0.927, 0.959, 0.991, then 1.0 five times) were taken for a staircase of quanta,
  the output's noise for half the smallest gap (4e-3), and the ladder then took the
  unchanged fn at small steps for a step below its resolution and discarded those rungs:
  a correct backward failed at an element 1.2e-2 past a clip's bound (reference -0.44
  against an exact 0), in both modes. A staircase's values differ by whole multiples of
  its quantum and show no kink (``objective._whole_multiples``).
- **A loss near 2e4 whose moving part is linear** (a temporal softmax loss with logits of
  scale 1e3). Every change of fn along one element was a whole number of units of its last
  place, exactly proportional to the step; mode fast's noise samples saw no noise (8.5e-21
  against a rounding of 4.5e-12), and a tail term of 1.6e-8 times the step, lost below
  those units, failed a correct backward by 1.6e-8 relative. Mode fast's noise is now
  never below the outputs' rounding (``_Prober.rounding_floor``).
- **Projections that resolve nothing of most of an input** (a hard sigmoid at inputs of
  scale 1e-3, half its elements at its kinks): the other elements were covered only to 20
  times their size, but the sensitivity was taken from the three compared one by one
  (3e-13), and a backward off by 1e-3 passed. Elements of a typical size whose error
  exceeds them now count as typical and unresolved, not as 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp
from oracles.numerics.objective import _whole_multiples, element_scales, measure_noise

MODES = ("exhaustive", "fast")


def _piecewise(name, s):
    """``(fn, grad, bounds)``: a function that is constant on part of its domain."""
    if name == "relu":
        return (lambda x: 1.5 * np.maximum(x, 0.0)), (lambda x: 1.5 * (x > 0)), [0.0]
    if name == "relu6":
        return (
            (lambda x: np.clip(x, 0.0, 6.0 * s)),
            (lambda x: ((x > 0) & (x < 6.0 * s)).astype(float)),
            [0.0, 6.0 * s],
        )
    # A clip's square plus a smooth term: constant pieces only up to the sine.
    return (
        (lambda x: np.clip(x, -s, s) ** 2 + 0.1 * s * np.sin(x / s)),
        (lambda x: 2.0 * np.clip(x, -s, s) * ((x > -s) & (x < s)) + 0.1 * np.cos(x / s)),
        [-s, s],
    )


def _near_bounds(name, s, n, seed):
    rng = np.random.default_rng(seed)
    fn, grad, bounds = _piecewise(name, s)
    b = rng.choice(bounds, n)
    # Distances from the bound of 1e-5 to 1e-1 input scales, on both sides.
    x = b + 10.0 ** rng.uniform(-5, -1, n) * s * rng.choice([-1.0, 1.0], n)
    x[::3] = rng.normal(size=x[::3].size) * 3.0 * s
    c = rng.normal(size=n)
    return fn, grad, x, c


def _vjp(grad, planted=None):
    def vjp(g, x):
        d = g * grad(x)
        if planted is not None:
            d[planted] *= 1.0 + 1e-6
        return d

    return vjp


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("name", ["relu", "relu6", "clip^2"])
def test_elements_near_where_fn_turns_constant(name, scale, mode):
    for seed in range(3):
        for n in (30, 200):
            fn, grad, x, c = _near_bounds(name, scale, n, seed)
            right = check_vjp(fn, _vjp(grad), x, direction=c, mode=mode)
            assert right.status != "failed", (seed, n, str(right))
            k = int(np.argmax(np.abs(c * grad(x))))  # a smooth element of the largest size
            wrong = check_vjp(fn, _vjp(grad, k), x, direction=c, mode=mode)
            assert wrong.status != "passed", (seed, n, str(wrong))


def test_a_clip_crossed_by_the_probe_is_no_staircase():
    # The construction of the report: one element 1.2e-2 past the bound of a clip.
    x = np.array([1.0121208308087115, 0.3, -0.7, 1.0, -1.0, 1.6])
    noise = measure_noise(lambda a: np.clip(a[0], -1.0, 1.0) ** 2, [x], element_scales([x]))
    assert noise.sigma[0] < 1e-12, noise.sigma
    fn = lambda x: np.clip(x, -1.0, 1.0) ** 2  # noqa: E731
    vjp = lambda g, x: g * 2.0 * np.clip(x, -1.0, 1.0) * (np.abs(x) < 1.0)  # noqa: E731
    for mode in MODES:
        assert check_vjp(fn, vjp, x, mode=mode, seed=3).status != "failed"


def test_whole_multiples_tells_a_staircase_from_a_crossed_bound():
    q = 2.0**-23
    stair = np.array([[q], [3 * q], [2 * q]])
    crossed = np.array([[0.0315], [0.032], [0.0088]])
    rescaled = np.array([[0.1 * q], [0.2 * q], [np.inf]])  # float32 values times 0.1
    assert _whole_multiples(np.hstack([stair, crossed, rescaled])).tolist() == [True, False, True]


def _temporal_softmax(scale, seed, T):
    """A CS231n temporal softmax loss with a mask, logits of the given scale."""
    rng = np.random.default_rng(seed)
    N, V = 2, 5
    x = rng.normal(size=(N, T, V)) * scale
    y = rng.integers(0, V, (N, T))
    mask = rng.random((N, T)) > 0.3

    def fn(x):
        flat = x.reshape(N * T, V)
        p = flat - flat.max(1, keepdims=True)
        lp = p - np.log(np.exp(p).sum(1, keepdims=True))
        return -np.sum(mask.ravel() * lp[np.arange(N * T), y.ravel()]) / N

    def vjp(g, x, planted=None):
        flat = x.reshape(N * T, V)
        p = np.exp(flat - flat.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(N * T), y.ravel()] -= 1.0
        d = g * (p * mask.ravel()[:, None] / N).reshape(N, T, V)
        if planted is not None:
            d.reshape(-1)[planted] *= 1.0 + 1e-6
        return d

    return fn, vjp, x


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e3])
def test_a_large_loss_that_moves_in_whole_units_in_mode_fast(scale):
    for seed in range(4):
        for T in (30, 120):
            fn, vjp, x = _temporal_softmax(scale, seed, T)
            right = check_vjp(fn, vjp, x, mode="fast", seed=seed + 10)
            assert right.status != "failed", (seed, T, str(right))
            k = int(np.argmax(np.abs(vjp(1.0, x))))
            wrong = check_vjp(
                fn, lambda g, x, k=k, vjp=vjp: vjp(g, x, k), x, mode="fast", seed=seed + 10
            )
            assert wrong.status != "passed", (seed, T, str(wrong))


def _hard_sigmoid(s):
    def fn(x):
        return np.clip(0.2 * x / s + 0.5, 0.0, 1.0)

    def grad(x):
        z = 0.2 * x / s + 0.5
        return np.where((z > 0) & (z < 1), 0.2 / s, 0.0)

    return fn, grad


def _planted_grad(grad, k, rel):
    def vjp(g, x):
        d = g * grad(x)
        d[k] *= 1.0 + rel
        return d

    return vjp


def test_projections_that_resolve_nothing_do_not_pass():
    # A hard sigmoid at inputs of scale 1e-3: its kinks at +-2.5e-3 are where a third
    # of the elements sit, and the projections' steps cross them.
    s, n = 1e-3, 300
    fn, grad = _hard_sigmoid(s)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=n) * 2.0 * s
        x[: n // 3] = 2.5 * s
        x[n // 3 : n // 2] = -2.5 * s
        c = rng.normal(size=n)
        k = int(np.argmax(np.abs(c * grad(x))))
        r = check_vjp(fn, _planted_grad(grad, k, 1e-3), x, direction=c, mode="fast")
        assert r.status != "passed", str(r)
        right = check_vjp(fn, _planted_grad(grad, k, 0.0), x, direction=c, mode="fast")
        assert right.status != "failed", str(right)
