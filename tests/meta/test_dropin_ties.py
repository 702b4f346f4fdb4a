"""The drop-ins judge tied maxima jointly in float32 as in float64, also after a rounding op.

A float32 derivative gets an allowance measured by Monte-Carlo arithmetic
(every rounded result moved by an ulp). Equal values that come out of a
rounding op (``c * x`` before a max) are no longer equal under that jitter,
so the measured spread at a tied element is the whole gradient: tie-breaking,
not rounding. The joint tie test must not take that as its slack, or a
backward that routes the gradient to every tied maximum (or to none) passes
in float32 while it fails in float64. A correct backward (the gradient to
one of the tied elements, as ``torch.max`` and ``jnp.argmax`` pick) passes.
Constructions: pair- and window-maxima of ``c * x`` for integer-valued
``x`` with many ties, c in {3, 0.1}, windows of 2 and 4, two seeds in
float32 (one in float64, the control).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import oracles.jax as oj
import oracles.torch as ot

ROUTES = ("first", "every", "none")


def _torch_windowmax(c, window, route):
    class WindowMax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            b = (c * x).reshape(x.shape[0], -1, window)
            out = b.max(-1).values
            ctx.save_for_backward(b, out)
            return out

        @staticmethod
        def backward(ctx, g):
            b, out = ctx.saved_tensors
            hit = (b == out[..., None]).to(g.dtype)
            if route == "first":
                first = hit.cumsum(-1) == 1
                hit = hit * first.to(g.dtype)
            elif route == "none":
                hit = hit * (hit.sum(-1, keepdim=True) == 1).to(g.dtype)
            return c * (hit * g[..., None]).reshape(b.shape[0], -1)

    return WindowMax.apply


def _points(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    x = rng.integers(-6, 7, size=shape).astype(np.float64)  # 13 values: ties in some windows
    x[:, :2] = 7.0  # and the first window of every row is a tie at its maximum
    return x.astype(dtype)


CASES = [(c, w, shape) for c in (3.0, 0.1) for w, shape in ((2, (2, 8)), (4, (2, 8)))]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c, window, shape", CASES)
@pytest.mark.parametrize("route", ROUTES)
def test_torch_window_max_of_a_rounding_op(route, c, window, shape, dtype):
    fn = _torch_windowmax(c, window, route)
    for seed in range(2 if dtype == torch.float32 else 1):  # float64: the control
        x = torch.tensor(_points(seed, shape, np.float64), dtype=dtype, requires_grad=True)
        r = ot.check(fn, (x,), seed=seed)
        if route == "first":
            assert r.status == "passed", str(r)
        else:
            assert r.status == "failed", str(r)


def _jax_windowmax(c, window, route):
    @jax.custom_vjp
    def f(x):
        return (c * x).reshape(x.shape[0], -1, window).max(-1)

    def fwd(x):
        return f(x), x

    def bwd(x, g):
        b = (c * x).reshape(x.shape[0], -1, window)
        out = b.max(-1)
        hit = (b == out[..., None]).astype(g.dtype)
        if route == "first":
            hit = hit * (jnp.cumsum(hit, -1) == 1).astype(g.dtype)
        elif route == "none":
            hit = hit * (hit.sum(-1, keepdims=True) == 1).astype(g.dtype)
        return (c * (hit * g[..., None]).reshape(x.shape),)

    f.defvjp(fwd, bwd)
    return f


@pytest.mark.jax
@pytest.mark.parametrize("c, window, shape", CASES[:4])
@pytest.mark.parametrize("route", ROUTES)
def test_jax_float32_window_max_of_a_rounding_op(route, c, window, shape):
    f = _jax_windowmax(c, window, route)
    for seed in range(2):
        x = jnp.asarray(_points(seed, shape, np.float32))
        r = oj.check(f, (x,), seed=seed)
        if route == "first":
            assert r.status == "passed", str(r)
        else:
            assert r.status == "failed", str(r)
