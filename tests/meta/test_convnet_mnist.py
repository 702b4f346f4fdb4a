"""A from-scratch convolutional net on real MNIST digits (deep-learning-from-scratch style).

im2col convolution, ReLU, 2x2 max-pool by argmax, affine, ReLU, affine, mean softmax
cross-entropy. Real digits have wide all-zero borders: the convolution there gives exactly
its bias, so max-pool windows are full of ties, the zero pixels are a tie group of hundreds,
and a probe along a random direction crosses the ties at x and ReLU kinks near it. Before
round 8 the noise probe took those kinks (of both signs, on a smooth background) for noise
of 5e-7 relative; with the ladders stopped at large steps, a correct backward failed in
every mode (W1 off by 4.5% "against the numerics"), and in mode fast the errors everywhere
were then taken for a wrong formula and 1561 pixels were never compared, with an OK
verdict. Seeds pick the digits.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp
from reference.mnist import load_mnist

K, P, FN, HIDDEN = 3, 2, 2, 8  # filter side, pool side, filters, hidden units


def _im2col(x, k, stride=1):
    n, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    col = np.zeros((n, c, k, k, oh, ow))
    for i in range(k):
        for j in range(k):
            col[:, :, i, j] = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)


def _col2im(col, shape, k, stride=1, accumulate=True):
    n, c, h, w = shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    col = col.reshape(n, oh, ow, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros(shape)
    for i in range(k):
        for j in range(k):
            at = (slice(None), slice(None), slice(i, i + stride * oh, stride))
            at += (slice(j, j + stride * ow, stride),)
            if accumulate:
                img[at] += col[:, :, i, j]
            else:
                img[at] = col[:, :, i, j]  # the bug: overlapping windows overwrite
    return img


def _forward(W1, b1, W2, b2, W3, b3, x, t):
    n = x.shape[0]
    col = _im2col(x, K)
    z = col @ W1.reshape(FN, -1).T + b1
    side = x.shape[2] - K + 1
    z4 = z.reshape(n, side, side, FN).transpose(0, 3, 1, 2)
    a = np.maximum(z4, 0)
    windows = _im2col(a, P, stride=P).reshape(-1, P * P)
    pooled = windows.max(axis=1)
    h1 = pooled.reshape(n, side // P, side // P, FN).transpose(0, 3, 1, 2).reshape(n, -1)
    z2 = h1 @ W2 + b2
    s = np.maximum(z2, 0) @ W3 + b3
    s = s - s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    cache = (col, z4, a, windows, h1, z2, logp, side)
    return -logp[np.arange(n), t].mean(), cache


def _backward(g, W1, b1, W2, b2, W3, b3, x, t, bug=None):
    n = x.shape[0]
    _, (col, z4, a, windows, h1, z2, logp, side) = _forward(W1, b1, W2, b2, W3, b3, x, t)
    ds = np.exp(logp)
    ds[np.arange(n), t] -= 1
    ds *= g / n
    a2 = np.maximum(z2, 0)
    dz2 = (ds @ W3.T) * (z2 > 0)
    dh1 = dz2 @ W2.T
    dpooled = dh1.reshape(n, FN, side // P, side // P).transpose(0, 2, 3, 1).reshape(-1)
    if bug == "pool_every_tie":
        dwin = (windows == windows.max(axis=1, keepdims=True)) * dpooled[:, None]
    else:
        dwin = np.zeros_like(windows)
        dwin[np.arange(windows.shape[0]), windows.argmax(axis=1)] = dpooled
    da = _col2im(dwin, a.shape, P, stride=P)
    dz = (da * (z4 > 0)).transpose(0, 2, 3, 1).reshape(-1, FN)
    dx = _col2im(dz @ W1.reshape(FN, -1), x.shape, K, accumulate=bug != "col2im_overwrites")
    grads = [(col.T @ dz).T.reshape(W1.shape), dz.sum(0), h1.T @ dz2, dz2.sum(0)]
    return tuple(grads + [a2.T @ ds, ds.sum(0), dx])


NAMES = ["W1", "b1", "W2", "b2", "W3", "b3", "x"]


def _net(seed, n_images=1):
    images, labels = load_mnist()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), n_images, replace=False)
    # Every other pixel: 14 x 14 digits, their zero borders kept.
    x = images[pick, ::2, ::2].astype(np.float64)[:, None] / 255.0
    t = labels[pick].astype(np.int64)
    flat = FN * ((x.shape[2] - K + 1) // P) ** 2
    params = [
        rng.normal(size=(FN, 1, K, K)) * 0.5,
        np.abs(rng.normal(size=FN)) * 0.1,  # positive: relu(b) > 0, so zero windows tie
        rng.normal(size=(flat, HIDDEN)) * np.sqrt(2.0 / flat),
        rng.normal(size=HIDDEN) * 0.1,
        rng.normal(size=(HIDDEN, 10)) * 0.3,
        np.zeros(10),
    ]
    return params + [x], t


def _check(seed, mode, bug=None, plant=None):
    inputs, t = _net(seed)

    def fn(*a):
        return _forward(*a, t)[0]

    def vjp(g, *a):
        grads = list(_backward(g, *a, t, bug=bug))
        if plant is not None:
            k, j, rel = plant
            grads[k] = grads[k].copy()
            grads[k].reshape(-1)[j] *= 1.0 + rel
        return tuple(grads)

    return check_vjp(fn, vjp, tuple(inputs), names=NAMES, mode=mode, seed=seed)


def _judged_with_their_group_only(r):
    """Every reason the check could not tell is about pixels in groups of tied zeros."""
    return all(
        "in groups of tied values could not be judged" in why or "then passed at tied values" in why
        for why in r.inconclusive
    )


@pytest.mark.parametrize(("seed", "mode"), [(0, "exhaustive"), (1, "exhaustive"), (0, "fast")])
def test_a_correct_net_never_fails(seed, mode):
    r = _check(seed, mode)
    assert r.status == "passed" or _judged_with_their_group_only(r), str(r)
    assert all(r.input(name).ok for name in NAMES), str(r)
    if mode == "exhaustive":
        for name in NAMES[:-1]:
            # every weight judged at the limit of the numerics, not at 5e-7 "noise"
            assert r.input(name).coverage.relative < 1e-6, (name, str(r))


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("bug", ["pool_every_tie", "col2im_overwrites"])
def test_the_classic_bugs_fail(mode, bug):
    r = _check(1, mode, bug=bug)
    assert r.status == "failed", str(r)
    # Routing to every tied maximum shows in the bias (its windows of zeros move together).
    culprit = "b1" if bug == "pool_every_tie" else "x"
    assert not r.input(culprit).ok, str(r)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_a_relative_1e6_error_in_one_weight_is_named(k):
    inputs, t = _net(0)
    # The weight with the largest gradient (many of W2 and W3 have none: dead units).
    j = int(np.argmax(np.abs(_backward(1.0, *inputs, t)[k])))
    r = _check(0, "exhaustive", plant=(k, j, 1e-6))
    assert r.status == "failed", str(r)
    ir = r.input(NAMES[k])
    bad = [e.index for e in ir.checks["numeric"].worst if not e.passed]
    assert bad == [tuple(int(i) for i in np.unravel_index(j, ir.shape))], str(r)
