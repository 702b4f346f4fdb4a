"""Elements the reference cannot resolve, where the analytic values are of a typical size.

Found in round 14 by fuzzing: a float32 conv1d whose inputs are of scale 1e-6 next to a
bias of scale 1. Almost every element of ``dx`` moves the output by less than float32's
resolution of it, so its reference is 0 to within an error larger than the gradient,
and ``dx`` is treated as 0 there ("checked absolutely"). The figure comes from the two
elements that were resolved ("catches >= 3e-6 in x (48 elements: >= 4 only)"), the
check passes, and a median element off by a factor of 2 passes too: a known limit
(strict xfail). Counting such elements as unresolved (where the analytic values are of
the size they have elsewhere) fixes it, but also made a softmax at logits of offset 100
inconclusive in 6 of 60 Hypothesis examples; not taken this round. Round 16: the
exhaustive screen of a reduced-precision fn follows its ladders above T0 (they climb where
fn moves by a few float32 units at T0), which resolves x or says inconclusive.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp


def _conv1d(seed, x_scale, n=5, length=6, cin=2, cout=3, k=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cin, length)) * x_scale
    w, b = rng.normal(size=(cout, cin, k)), rng.normal(size=cout)
    lo = length - k + 1

    def f(x, w, b):
        out = np.zeros((x.shape[0], w.shape[0], lo), dtype=x.dtype)
        for j in range(k):
            out += np.einsum("ncl,oc->nol", x[:, :, j : j + lo], w[:, :, j])
        return out + b[None, :, None]

    def fn(x, w, b):
        f32 = np.float32
        return f(x.astype(f32), w.astype(f32), b.astype(f32)).astype(np.float64)

    def vjp(g, x, w, b):
        dx, dw = np.zeros_like(x), np.zeros_like(w)
        for j in range(k):
            dx[:, :, j : j + lo] += np.einsum("nol,oc->ncl", g, w[:, :, j])
            dw[:, :, j] = np.einsum("nol,ncl->oc", g, x[:, :, j : j + lo])
        return dx, dw, g.sum(axis=(0, 2))

    return fn, vjp, (x, w, b)


def _one_element_doubled(vjp, at):
    def wrong(g, *xs):
        dx, dw, db = vjp(g, *xs)
        dx = dx.copy()
        dx.reshape(-1)[at] *= 2.0
        return dx, dw, db

    return wrong


def test_an_unresolved_input_is_not_called_resolved():
    """Round 16 fixed this known limit: the screen of a float32 fn follows its ladders above
    T0, and the check says inconclusive (x resolved to 1e-3) where it cannot resolve x."""
    _an_unresolved_input_is_not_called_resolved(1, 1e-6)


@pytest.mark.parametrize(("seed", "x_scale"), [(0, 1e-6), (2, 1e-6), (0, 1e-5), (1, 1e-5)])
def test_where_the_input_is_resolved_or_said_to_be(seed, x_scale):
    _an_unresolved_input_is_not_called_resolved(seed, x_scale)


def _an_unresolved_input_is_not_called_resolved(seed, x_scale):
    fn, vjp, xs = _conv1d(seed, x_scale)
    right = check_vjp(fn, vjp, xs, mode="exhaustive", seed=seed)
    assert right.status != "failed", str(right)
    g = np.random.default_rng(99).normal(size=fn(*xs).shape)
    dx = np.abs(vjp(g, *xs)[0]).reshape(-1)
    median = int(np.argsort(dx)[dx.size // 2])
    wrong = check_vjp(fn, _one_element_doubled(vjp, median), xs, mode="exhaustive", seed=seed)
    assert wrong.status != "passed", str(wrong)
    if right.status == "passed":  # then it must have resolved x: the doubled element fails
        assert wrong.status == "failed", str(wrong)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_resolved_float32_conv1d_still_passes_and_catches(seed):
    fn, vjp, xs = _conv1d(seed, 1.0)
    assert check_vjp(fn, vjp, xs, mode="exhaustive", seed=seed).status == "passed"
    wrong = check_vjp(fn, _one_element_doubled(vjp, 3), xs, mode="exhaustive", seed=seed)
    assert wrong.status == "failed"
