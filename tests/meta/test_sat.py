"""Saturated smooth layers against autodiff: the rounding of a derivative computed from its output.

A tanh unit at a pre-activation near 8 (raw pixels through a layer) has
``1 - y^2 ~ 5e-7``, computed from ``y`` rounded to ``eps``: the hand
derivation and JAX (XLA's tanh is accurate to 3.5 ulp) differ by ``eps``
times the unsaturated slope, far above ``eps`` times the derivative. Steps of
1/8 of a pixel's scale do not leave the saturation, so the size of the VJP's
terms measured over them misses it; the rate ``|f''/f'|`` at which the unit
saturates does not (``oracles.backends.rounding.output_rates``).
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp
from oracles.backends.rounding import output_rates

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch, id="torch"),
    pytest.param("jax", marks=pytest.mark.jax, id="jax"),
]


def _differences(f, x, t):
    f0 = f(x)
    return f(x + t) - f0, f0 - f(x - t), f0


@pytest.mark.parametrize("lam", [-40.0, -2.0, 0.5, 10.0])
@pytest.mark.parametrize("t", [1e-3, 0.05, 0.3])
def test_the_rate_of_an_exponential_is_exact_at_any_step(lam, t):
    x = np.array([-0.5, 0.0, 0.25])
    up, down, f0 = _differences(lambda v: 3.0 - 2.0 * np.exp(lam * v), x, t)
    np.testing.assert_allclose(output_rates(up, down, f0, t), abs(lam), rtol=1e-6)


def test_a_saturated_tanh_has_rate_two_however_small_its_slope():
    a = np.array([6.0, 9.0, 12.0, -14.0])
    up, down, f0 = _differences(np.tanh, a, 0.5)
    np.testing.assert_allclose(output_rates(up, down, f0, 0.5), 2.0, rtol=1e-3)


def test_no_rate_for_linear_outputs_turning_points_or_rounding():
    x = np.linspace(-3.0, 3.0, 7) * 1e3
    up, down, f0 = _differences(lambda v: 1e6 + 0.3 * v, x, 1e-4 * 1e3)
    assert not np.any(output_rates(up, down, f0, 0.1))
    # cos at 0: the one-sided differences have opposite signs
    up, down, f0 = _differences(np.cos, np.zeros(1), 0.1)
    assert output_rates(up, down, f0, 0.1)[0] == 0.0
    # an output that moved by a few rounding quanta only
    f0 = np.array([1.0])
    up, down = np.array([4 * np.finfo(float).eps]), np.array([np.finfo(float).eps])
    assert output_rates(up, down, f0, 1.0)[0] == 0.0


def _framework(backend):
    if backend == "torch":
        import torch

        return lambda x, w, b: torch.tanh(x @ w + b)
    import jax.numpy as jnp

    return lambda x, w, b: jnp.tanh(x @ w + b)


def _fn(x, w, b):
    return np.tanh(x @ w + b)


def _vjp(g, x, w, b):
    d = g * (1 - np.tanh(x @ w + b) ** 2)
    return d @ w.T, x.T @ d, d.sum(0)


def _pixel_layer(seed, n, d, h):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, d)).astype(np.float64)
    return x, rng.normal(size=(d, h)) / np.sqrt(d), rng.normal(size=h)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("seed", "n", "d", "h"), [(1, 8, 16, 4), (12, 8, 16, 4), (18, 6, 12, 5)])
def test_a_tanh_layer_on_raw_pixels_is_not_blamed_and_a_wrong_one_is(backend, seed, n, d, h):
    # Before, with JAX: 2-14 elements failed at 1.4-10 times their bound.
    xs = _pixel_layer(seed, n, d, h)
    options = {"against": ("numeric", backend), f"{backend}_fn": _framework(backend)}
    r = check_vjp(_fn, _vjp, xs, seed=seed, **options)
    assert r.status == "passed", str(r)

    def wrong_dw(g, x, w, b):
        dx, dw, db = _vjp(g, x, w, b)
        return dx, dw * (1 + 1e-3), db

    assert check_vjp(_fn, wrong_dw, xs, seed=seed, **options).status == "failed"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rel", [1e-6, 1e-8])
def test_what_the_wider_bound_hides_it_says(backend, rel):
    # A uniform error in dx that the widened bounds let pass must be below
    # the sensitivity the report states.
    xs = _pixel_layer(1, 8, 16, 4)
    options = {"against": ("numeric", backend), f"{backend}_fn": _framework(backend)}

    def wrong_dx(g, x, w, b):
        dx, dw, db = _vjp(g, x, w, b)
        return dx * (1 + rel), dw, db

    r = check_vjp(_fn, wrong_dx, xs, seed=1, **options)
    assert r.status == "failed" or r.input("x").sensitivity > rel, str(r)


@pytest.mark.jax
@pytest.mark.xfail(strict=True, reason="units at 18-20: both 1 - tanh^2 are rounding only")
def test_known_limit_units_too_saturated_to_measure():
    # The case test_autodiff_saturation's seed 1 (3, 30, 10, 40.0) showed at
    # the direction the check drew before 9512a32 (default_rng(1), now passed
    # explicitly): units at pre-activations of 18-20, where both
    # ``1 - tanh^2`` round to 0 or to a few ulp (exact: 9e-18) and XLA's tanh
    # differs from NumPy's by ulps, so dW[8, 4] is 4.0e-14 by hand and 2.8e-13
    # by JAX: a relative disagreement of 0.86, beyond the second look's gate
    # (1e-3), and no step up to 1/8 of the scale resolves the unit's rate.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 30)) * 40.0
    w = rng.normal(size=(30, 10)) / np.sqrt(30)
    b = rng.normal(size=10)
    c = np.random.default_rng(1).standard_normal((3, 10))
    r = check_vjp(
        _fn, _vjp, (x, w, b), direction=c, seed=1, against=("numeric", "jax"),
        jax_fn=_framework("jax"),
    )  # fmt: skip
    assert r.status != "failed", str(r)
