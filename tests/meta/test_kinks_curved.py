"""A kink on a curved function: its subgradients lie between the limits of the one-sided slopes.

At ``x = c`` the one-sided slopes of ``relu(x - c) + sin(x)`` at step ``t``
are ``cos(c) - t sin(c) / 2 + ...`` and ``1 + cos(c) - t sin(c) / 2``: they
miss the one-sided derivatives by a first-order truncation, on the inside
or the outside of the true interval depending on the sign of the curvature.
Taken as they were, a correct ``relu'(0) = 1`` (or ``0``) backward failed
(by about ``t sin(c) / 2``, against a tolerance of 1e-12), and where they
overshoot, an error of that size on the smooth part passed. They are
extrapolated over halving steps now. Constructions: ``c`` on both signs of
the curvature, input scales 1e-3, 1, 1e3, three modes; ``max(x, c)`` with an
exponential piece.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp

C0 = [0.5, 1.5, -0.5, 2.5, -2.0]


def _relu_sin(c0, scale, n=6):
    rng = np.random.default_rng(int(abs(c0) * 10))
    x = rng.normal(size=n) * scale
    c = x - 100.0 * scale  # far from every other kink
    x[0] = c[0] = c0 * scale  # element 0 sits at its kink

    def fn(x):
        return np.maximum(x - c, 0.0) + np.sin(x / scale) * scale

    def vjp(g, x, at_zero=1.0, smooth=1.0):
        step = np.where(x - c > 0, 1.0, np.where(x - c < 0, 0.0, at_zero))
        return g * (step + np.cos(x / scale) * smooth)

    return x, fn, vjp


@pytest.mark.parametrize("mode", ["exhaustive", "ladder", "fast"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("c0", C0)
def test_relu_on_a_curve(c0, scale, mode):
    x, fn, vjp = _relu_sin(c0, scale)
    for at_zero in (0.0, 1.0, 0.5):  # every subgradient of relu at 0
        r = check_vjp(fn, lambda g, x, a=at_zero: vjp(g, x, at_zero=a), (x,), mode=mode, seed=1)
        assert r.status == "passed", str(r)
    outside = check_vjp(fn, lambda g, x: vjp(g, x, at_zero=1.5), (x,), mode=mode, seed=1)
    assert outside.status == "failed", str(outside)
    smooth = check_vjp(fn, lambda g, x: vjp(g, x, smooth=1 + 1e-5), (x,), mode=mode, seed=1)
    assert smooth.status == "failed", str(smooth)


@pytest.mark.parametrize("c0", [-1.0, 0.3, 2.0])
def test_max_with_an_exponential_piece(c0):
    x = np.array([c0, 0.1, -0.7, 1.3])

    def fn(x):
        return np.maximum(np.exp(x), np.exp(c0) + 2.0 * (x - c0))  # pieces meet at x = c0

    def vjp(g, x, pick=0):
        e, lin = np.exp(x), np.exp(c0) + 2.0 * (x - c0)
        d = np.where(e > lin, e, np.where(e < lin, 2.0, [np.exp(c0), 2.0][pick]))
        return g * d

    for pick in (0, 1):
        r = check_vjp(fn, lambda g, x, p=pick: vjp(g, x, p), (x,), mode="ladder", seed=0)
        assert r.status == "passed", str(r)
    wrong = check_vjp(fn, lambda g, x: vjp(g, x) * (1 + 1e-5), (x,), mode="ladder", seed=0)
    assert wrong.status == "failed", str(wrong)
