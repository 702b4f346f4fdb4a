"""Outputs of size ``t`` computed from intermediates of size 1: the steps meet fn's resolution.

SELU at 0 computes ``lambda alpha (exp(-t) - 1)``: the value is of size
``t`` but it carries the rounding of ``exp(-t)`` near 1, a unit of
``2^-53``. The noise model, which rounds values of the size it sees, does
not know that: below ``t ~ 1e-11`` the backward slopes step with those quanta
(sign-alternating changes far above the modelled noise), and below ``2^-53``
the backward side freezes (``exp(-t)`` rounds to 1: a slope of exactly 0).
Taken at face value, those rungs agree with each other, hide the kink at 0
and give the average of the two one-sided slopes: a correct SELU failed at
exact zeros in about half the seeds. Here correct derivations pass at
several sizes, scales and seeds, and wrong ones still fail.
"""

import numpy as np
import pytest

from oracles import check_vjp

LAMBDA, ALPHA = 1.0507009873554805, 1.6732632423543772


def selu(x):
    return LAMBDA * np.where(x > 0, x, ALPHA * (np.exp(x) - 1.0))


def selu_vjp(g, x):
    return g * LAMBDA * np.where(x > 0, 1.0, ALPHA * np.exp(x))


def scaled_elu(x, c=2.5):
    """An ELU whose negative branch is scaled: a kink at 0 (slopes c and 1)."""
    return np.where(x > 0, x, c * (np.exp(x) - 1.0))


def scaled_elu_vjp(g, x, c=2.5):
    return g * np.where(x > 0, 1.0, c * np.exp(x))


def softplus_centered(x):
    """Smooth, and 0 at 0 by cancellation of log(1 + e^x) against log 2."""
    return np.log1p(np.exp(x)) - np.log(2.0)


def softplus_centered_vjp(g, x):
    return g / (1.0 + np.exp(-x))


FNS = {
    "selu": (selu, selu_vjp),
    "scaled_elu": (scaled_elu, scaled_elu_vjp),
    "softplus_centered": (softplus_centered, softplus_centered_vjp),
}


def point(shape, seed, zeros, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x.reshape(-1)[rng.permutation(x.size)[: max(1, int(zeros * x.size))]] = 0.0
    return x * scale


def scaled(name, scale):
    """``fn(x / scale)`` and its VJP: the same function on inputs of another unit."""
    f, v = FNS[name]
    return (lambda x: f(x / scale)), (lambda g, x: v(g, x / scale) / scale)


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("shape,zeros", [((16,), 0.25), ((128,), 0.05), ((8, 16), 0.3)])
@pytest.mark.parametrize("name", sorted(FNS))
def test_correct_derivative_passes_at_exact_zeros(name, shape, zeros, scale, mode):
    f, v = scaled(name, scale)
    for seed in range(4):
        x = point(shape, seed, zeros, scale)
        r = check_vjp(f, v, (x,), mode=mode, seed=seed)
        assert r.ok, (seed, r)


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("name", ["selu", "scaled_elu"])
def test_dead_at_zero_fails(name, mode):
    """A backward that gives 0 at exact zeros is outside both one-sided slopes."""
    f, v = FNS[name]
    for seed in range(3):
        x = point((8, 16), seed, 0.2, 1.0)

        def dead(g, x_, v=v):
            return np.where(x_ == 0, 0.0, v(g, x_))

        r = check_vjp(f, dead, (x,), mode=mode, seed=seed)
        assert r.status == "failed", (seed, r)
        (c,) = r.inputs[0].checks.values()
        failed = np.asarray(c.error_ratio).reshape(-1) > 1
        if mode == "exhaustive":
            np.testing.assert_array_equal(failed, (x == 0).reshape(-1))


@pytest.mark.parametrize("rel", [1e-6, 1e-8])
@pytest.mark.parametrize("name", sorted(FNS))
def test_small_planted_errors_are_still_caught(name, rel):
    """The extra rounding is charged where it is measured, not to every element."""
    f, v = FNS[name]
    for seed in range(3):
        x = point((128,), seed, 0.1, 1.0)
        k = int(np.flatnonzero(x != 0)[seed])

        def planted(g, x_, v=v, k=k):
            out = np.array(v(g, x_), dtype=np.float64)
            out.reshape(-1)[k] *= 1.0 + rel
            return out

        r = check_vjp(f, planted, (x,), mode="exhaustive", seed=seed)
        assert r.status == "failed", (seed, r)
        (c,) = r.inputs[0].checks.values()
        assert np.flatnonzero(np.asarray(c.error_ratio).reshape(-1) > 1).tolist() == [k]


C_GELU = np.sqrt(2.0 / np.pi)


def gelu_tanh(x):
    """GELU's tanh form as courses write it: 1 + tanh(u) cancels to a few units of 2^-53."""
    return 0.5 * x * (1.0 + np.tanh(C_GELU * (x + 0.044715 * x**3)))


def gelu_tanh_vjp(g, x):
    t = np.tanh(C_GELU * (x + 0.044715 * x**3))
    return g * (
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C_GELU * (1.0 + 3.0 * 0.044715 * x * x)
    )


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("lo,hi", [(-9.0, -6.0), (-7.0, -5.0), (-8.0, 3.0)])
@pytest.mark.parametrize("n", [16, 64])
def test_gelu_tanh_form_in_its_staircase_never_fails(lo, hi, n, mode):
    """Below x ~ -5 the forward is a staircase of 0.5 |x| 2^-53: never a false alarm.

    Between the stairs it is 0.5 x times a constant, whose slope the small
    steps measure to 1e-17 (a derivative of 1e-13 read as 1e-15); the
    probe's values there jump once among smooth ones, and ladders see a
    settled slope collapse, or a constant change as the step halves.
    Elements it cannot resolve make the check inconclusive, not failed.
    """
    for seed in range(4):
        x = np.random.default_rng(seed).uniform(lo, hi, n)
        r = check_vjp(gelu_tanh, gelu_tanh_vjp, (x,), mode=mode, seed=seed)
        assert r.status != "failed", (seed, r)


def test_gelu_tanh_form_still_catches_errors_where_it_resolves():
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(-8.0, 3.0, 64)
        k = int(np.flatnonzero(x > -3.0)[seed])

        def planted(g, x_, k=k):
            out = np.array(gelu_tanh_vjp(g, x_))
            out[k] *= 1.0 + 1e-6
            return out

        r = check_vjp(gelu_tanh, planted, (x,), mode="exhaustive", seed=seed)
        assert r.status == "failed", (seed, r)
        (c,) = r.inputs[0].checks.values()
        assert np.flatnonzero(np.asarray(c.error_ratio) > 1).tolist() == [k]


def rounded(x):
    """A quantizer plus a smooth term: jumps of 1 at the half-integers."""
    return np.round(x) + x * x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_step_function_keeps_its_verdict_away_from_its_jumps(seed):
    """Genuine jumps a few percent of x away are not taken for rounding.

    The derivative of round(x) + x^2 is 2x between the jumps: a
    straight-through backward (1 + 2x) is wrong there, and must fail.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, 32)
    frac = np.abs(np.abs(x) - np.floor(np.abs(x)) - 0.5)
    x = x[frac > 0.1]
    right = check_vjp(rounded, lambda g, x_: g * 2.0 * x_, (x,), seed=seed)
    assert right.ok, right
    ste = check_vjp(rounded, lambda g, x_: g * (1.0 + 2.0 * x_), (x,), seed=seed)
    assert ste.status == "failed", ste
