"""Autodiff oracles at saturated units (issue 13: no false alarms, in any units).

A tanh or sigmoid layer fed raw pixel values (0..255) or inputs of 1e3 has
pre-activations of tens to thousands. Where one is near 14, ``1 - tanh^2``
(what torch, jax and the hand derivation all compute) has lost about five
digits in cancellation, and the framework and the hand derivation round
differently: they disagree by 1e-4 relative. Before, the autodiff bound was
at float64 rounding of the input's scale (1e-16 absolute) and a correct VJP
failed against torch and jax, with the report saying the derivation was
wrong. A wrong derivation must still fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch, id="torch"),
    pytest.param("jax", marks=pytest.mark.jax, id="jax"),
]


def _framework(backend, kind):
    if backend == "torch":
        import torch

        act = torch.tanh if kind == "tanh" else torch.sigmoid
    else:
        import jax.numpy as jnp
        from jax.nn import sigmoid

        act = jnp.tanh if kind == "tanh" else sigmoid
    return lambda x, w, b: act(x @ w + b)


def _layer(kind):
    def act(a):
        if kind == "tanh":
            return np.tanh(a)
        return 0.5 * (1.0 + np.tanh(0.5 * a))  # a sigmoid that does not overflow

    def fn(x, w, b):
        return act(x @ w + b)

    def vjp(g, x, w, b):
        y = act(x @ w + b)
        d = g * ((1 - y**2) if kind == "tanh" else y * (1 - y))
        return d @ w.T, x.T @ d, d.sum(0)

    def vjp_wrong(g, x, w, b):  # dW off by a relative 1e-3
        dx, dw, db = vjp(g, x, w, b)
        return dx, dw * (1 + 1e-3), db

    return fn, vjp, vjp_wrong


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["tanh", "sigmoid"])
@pytest.mark.parametrize(("n", "d", "h", "scale"), [
    (4, 5, 6, 1e3),
    (8, 16, 4, 255.0),
    (3, 30, 10, 40.0),
])  # fmt: skip
@pytest.mark.parametrize("seed", range(3))
def test_saturated_layers_against_autodiff(backend, kind, n, d, h, scale, seed):
    rng = np.random.default_rng(seed)
    if scale == 255.0:  # raw pixels
        x = rng.integers(0, 256, size=(n, d)).astype(np.float64)
    else:
        x = rng.normal(size=(n, d)) * scale
    w = rng.normal(size=(d, h)) / np.sqrt(d)
    b = rng.normal(size=h)
    fn, vjp, wrong = _layer(kind)
    options = {"against": ("numeric", backend), f"{backend}_fn": _framework(backend, kind)}
    r = check_vjp(fn, vjp, (x, w, b), seed=seed, **options)
    assert r.status != "failed", str(r)
    bad = check_vjp(fn, wrong, (x, w, b), seed=seed, **options)
    assert bad.status != "passed", str(bad)
    if r.status == "passed":
        assert bad.status == "failed", str(bad)
