"""Autodiff oracles at kinks and ties: judged by the subgradient rule (issue 13).

At a kink or a tie torch and jax each return one subgradient of their own
choosing: ``relu'(0) = 0``, the first of tied maxima (torch's max-pool), an
equal split between tied arguments (jax's ``max`` and ``clip``), the first
of equal values in a top-k. Before, a correct hand-written VJP that picked
another valid subgradient (``relu'(0) = 1``, the last of tied maxima, ``abs'(0)
= 1``) failed against torch and jax, element by element, while it passed the
numeric oracle. Now an element where the numerics find a kink or a tie is
judged between the one-sided slopes, and tie groups jointly, against every
oracle; a routing to every tied maximum, a slope just outside the one-sided
ones, and an element off by 1e-3 away from the kinks still fail.
Constructions: several sizes and seeds, both modes, torch and jax alone and
with the numerics.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch, id="torch"),
    pytest.param("jax", marks=pytest.mark.jax, id="jax"),
]


def _plant(vjp, k, rel=1e-3, avoid=None):
    """``vjp`` with one typical element of gradient ``k`` off by ``rel``, away from the
    elements where ``avoid`` (another correct convention) differs: away from the kinks."""

    def planted(g, *a):
        grads = list(vjp(g, *a))
        flat = np.array(grads[k], dtype=np.float64).reshape(-1)
        ok = flat != 0
        if avoid is not None:
            ok &= np.asarray(avoid(g, *a)[k]).reshape(-1) == flat
        mag = np.abs(flat)
        if not ok.any():  # nowhere away from the kinks: nothing planted (not judged)
            return tuple(grads)
        at = int(np.argmin(np.where(ok, np.abs(mag - np.median(mag[ok])), np.inf)))
        flat[at] *= 1 + rel
        grads[k] = flat.reshape(np.shape(grads[k]))
        return tuple(grads)

    return planted


def _relu_x(seed, size):
    """``relu(x) @ w`` with a third of ``x`` exactly 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, size + 1))
    x[rng.random(x.shape) < 0.35] = 0.0
    w = rng.normal(size=(size + 1, 3))

    def make(slope):
        def vjp(g, x, w):
            return (g @ w.T) * ((x > 0) + slope * (x == 0)), np.maximum(x, 0).T @ g

        return vjp

    def frameworks(torch, jax, jnp):
        return (lambda x, w: torch.relu(x) @ w), (lambda x, w: jax.nn.relu(x) @ w)

    correct = {"relu'(0)=0": make(0.0), "relu'(0)=1": make(1.0), "relu'(0)=1/2": make(0.5)}
    wrong = {
        "relu'(0)=1.001": make(1.001),
        "relu'(0)=-0.01": make(-0.01),
        "dx off by 1e-3": _plant(make(1.0), 0, avoid=make(0.0)),
    }
    return (x, w), (lambda x, w: np.maximum(x, 0) @ w), frameworks, correct, wrong


def _relu_net(seed, size):
    """``relu(X @ W1 + b1) @ W2`` with exact zeros of pre-activations (one per row and unit)."""
    rng = np.random.default_rng(seed)
    n, d, h = size + 2, size, size + 1
    X, W1, W2 = rng.normal(size=(n, d)), rng.normal(size=(d, h)), rng.normal(size=(h, 3))
    b1 = rng.normal(size=h) * 0.1
    z = X @ W1
    for k, row in enumerate(rng.permutation(n)[: h // 2 + 1]):
        b1[k] = -z[row, k]

    def make(slope):
        def vjp(g, X, W1, b1, W2):
            zz = X @ W1 + b1
            dz = (g @ W2.T) * ((zz > 0) + slope * (zz == 0))
            return dz @ W1.T, X.T @ dz, dz.sum(0), np.maximum(zz, 0).T @ g

        return vjp

    def frameworks(torch, jax, jnp):
        return (
            lambda X, W1, b1, W2: torch.relu(X @ W1 + b1) @ W2,
            lambda X, W1, b1, W2: jax.nn.relu(X @ W1 + b1) @ W2,
        )

    correct = {"relu'(0)=0": make(0.0), "relu'(0)=1": make(1.0)}
    wrong = {
        "relu'(0)=1.001": make(1.001),
        "W1 off by 1e-3": _plant(make(0.0), 1, avoid=make(1.0)),
        "b1 off by 1e-3": _plant(make(1.0), 2, avoid=make(0.0)),
    }

    def fn(X, W1, b1, W2):
        return np.maximum(X @ W1 + b1, 0) @ W2

    return (X, W1, b1, W2), fn, frameworks, correct, wrong


def _windows(x):
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return win.reshape(n, c, h // 2, w // 2, 4)


def _pool_vjp(route):
    def vjp(g, x):
        win = _windows(x)
        hit = (win == win.max(-1, keepdims=True)).astype(np.float64)
        if route in ("first", "last"):
            pick = win.argmax(-1) if route == "first" else 3 - win[..., ::-1].argmax(-1)
            sel = np.zeros_like(hit)
            np.put_along_axis(sel, pick[..., None], 1.0, -1)
        elif route == "split":
            sel = hit / hit.sum(-1, keepdims=True)
        else:  # "every": the mistake, every tied maximum gets the whole gradient
            sel = hit
        n, c, h, w = x.shape
        d = (sel * g[..., None]).reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
        return (d.reshape(x.shape),)

    return vjp


def _maxpool(seed, size):
    """2x2 max-pool of an integer image: tied maxima in most windows."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(1, 2, 2 * size, 2 * size)).astype(np.float64)

    def frameworks(torch, jax, jnp):
        def jfn(x):
            return jax.lax.reduce_window(
                x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"
            )

        return (lambda x: torch.nn.functional.max_pool2d(x, 2)), jfn

    correct = {r: _pool_vjp(r) for r in ("first", "last", "split")}
    wrong = {"every tie": _pool_vjp("every"), "off by 1e-3": _plant(_pool_vjp("first"), 0)}
    return (x,), (lambda x: _windows(x).max(-1)), frameworks, correct, wrong


def _abs_clip(seed, size):
    """``|x| v + clip(y, -1, 1)^2`` with ``x`` exactly 0 and ``y`` exactly at the bounds."""
    rng = np.random.default_rng(seed)
    n = 3 * size
    x, y, v = rng.normal(size=n), rng.normal(size=n) * 1.5, rng.normal(size=n)
    x[rng.random(n) < 0.3] = 0.0
    y[rng.random(n) < 0.3] = 1.0
    y[rng.random(n) < 0.2] = -1.0

    def make(abs0, inclusive):
        def vjp(g, x, y):
            s = np.where(x == 0, abs0, np.sign(x))
            inside = (np.abs(y) <= 1) if inclusive else (np.abs(y) < 1)
            return g * v * s, g * 2 * np.clip(y, -1, 1) * inside

        return vjp

    def frameworks(torch, jax, jnp):
        tv = torch.tensor(v)
        return (
            lambda x, y: torch.abs(x) * tv + torch.clamp(y, -1.0, 1.0) ** 2,
            lambda x, y: jnp.abs(x) * v + jnp.clip(y, -1.0, 1.0) ** 2,
        )

    correct = {
        "abs'(0)=0, inclusive": make(0.0, True),
        "abs'(0)=1, strict": make(1.0, False),
        "abs'(0)=-1/2": make(-0.5, True),
    }
    wrong = {"abs'(0)=1.01": make(1.01, True), "y off by 1e-3": _plant(make(0.0, True), 1)}

    def fn(x, y):
        return np.abs(x) * v + np.clip(y, -1.0, 1.0) ** 2

    return (x, y), fn, frameworks, correct, wrong


def _topk(seed, size):
    """Top-k values of the rows of an integer matrix: ties inside the k and at its edge."""
    rng = np.random.default_rng(seed)
    m, k = 2 * size + 2, size
    x = rng.integers(0, 4, size=(2, m)).astype(np.float64)

    def order(x, reverse):
        if not reverse:
            return np.argsort(-x, axis=1, kind="stable")[:, :k]
        return m - 1 - np.argsort(-x[:, ::-1], axis=1, kind="stable")[:, :k]

    def make(route):
        def vjp(g, x):
            out = np.zeros_like(x)
            if route == "every":
                vals = np.take_along_axis(x, order(x, False), 1)
                for i in range(x.shape[0]):
                    out[i] = (g[i][:, None] * (x[i][None, :] == vals[i][:, None])).sum(0)
            else:
                np.put_along_axis(out, order(x, route == "reverse"), g, 1)
            return (out,)

        return vjp

    def frameworks(torch, jax, jnp):
        return (lambda x: torch.topk(x, k, dim=1).values), (lambda x: jax.lax.top_k(x, k)[0])

    correct = {"stable": make("stable"), "reverse": make("reverse")}
    wrong = {"every tie": make("every"), "off by 1e-3": _plant(make("stable"), 0)}
    return (x,), (lambda x: np.take_along_axis(x, order(x, False), 1)), frameworks, correct, wrong


CASES = {
    "relu_x": _relu_x,
    "relu_net": _relu_net,
    "maxpool": _maxpool,
    "abs_clip": _abs_clip,
    "topk": _topk,
}


def _frameworks(backend, frameworks):
    import jax
    import jax.numpy as jnp
    import torch

    tfn, jfn = frameworks(torch, jax, jnp)
    return {"torch_fn": tfn} if backend == "torch" else {"jax_fn": jfn}


def _differs(variant, correct, inputs, fn):
    """The planted variant differs from every correct one here (else it is not planted)."""
    g = np.random.default_rng(99).normal(size=np.shape(fn(*inputs)))
    mine = variant(g, *inputs)
    return all(
        not all(np.array_equal(a, b) for a, b in zip(mine, c(g, *inputs), strict=True))
        for c in correct.values()
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_numeric", [False, True], ids=["alone", "with-numeric"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("size", "seed"), [(2, 0), (4, 1)])
def test_subgradients_at_kinks_and_ties(backend, with_numeric, case, size, seed):
    inputs, fn, frameworks, correct, wrong = CASES[case](seed, size)
    against = ("numeric", backend) if with_numeric else (backend,)
    options = dict(against=against, seed=seed, **_frameworks(backend, frameworks))
    judged = 0
    for mode in ("exhaustive", "fast"):
        for name, vjp in correct.items():
            r = check_vjp(fn, vjp, inputs, mode=mode, **options)
            assert r.status != "failed", f"{name}, mode {mode}:\n{r}"
            if "subgradient rule" in r.input(0).checks[backend].method:
                judged += 1
        for name, vjp in wrong.items():
            if not _differs(vjp, correct, inputs, fn):
                continue  # e.g. no tie in this draw: every routing is the same one
            r = check_vjp(fn, vjp, inputs, mode=mode, **options)
            assert r.status == "failed", f"{name}, mode {mode}:\n{r}"
    # The report says which rule judged: the other conventions than the framework's own.
    assert judged > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_report_names_the_rule_and_the_framework_value_stays_sharp(backend):
    """At kinks the subgradient rule; elsewhere the framework's own value, at rounding level."""
    inputs, fn, frameworks, correct, _ = _relu_x(3, 4)
    options = dict(against=(backend,), seed=3, **_frameworks(backend, frameworks))
    r = check_vjp(fn, correct["relu'(0)=1"], inputs, **options)
    assert r.status == "passed", str(r)
    check = r.input("x").checks[backend]
    assert "subgradient rule" in check.method and check.kinks > 0
    assert any("second look" in n for n in r.notes)
    # A relative 1e-9 in one element away from the kinks: below the numerics' reach
    # for a screened element, not below the framework's rounding.
    planted = _plant(correct["relu'(0)=1"], 0, rel=1e-9, avoid=correct["relu'(0)=0"])
    assert check_vjp(fn, planted, inputs, **options).status == "failed"


@pytest.mark.torch
@pytest.mark.jax
def test_torch_and_jax_disagree_at_ties_and_both_pass_a_third_routing():
    """torch's ``max(dim)`` routes a tie to one maximum, jax's ``max`` splits it: both valid."""
    import jax.numpy as jnp
    import torch

    x = np.array([[1.0, 1.0, 0.0, 2.0], [3.0, 3.0, 3.0, -1.0]])

    def fn(x):
        return x.reshape(2, 2, 2).max(-1)

    def last(g, x):
        w = x.reshape(2, 2, 2)
        pick = 1 - w[..., ::-1].argmax(-1)
        out = np.zeros_like(w)
        np.put_along_axis(out, pick[..., None], g[..., None], -1)
        return out.reshape(x.shape)

    r = check_vjp(
        fn, last, (x,), against=("numeric", "torch", "jax"),
        torch_fn=lambda t: t.reshape(2, 2, 2).max(-1).values,
        jax_fn=lambda a: jnp.max(a.reshape(2, 2, 2), axis=-1),
    )  # fmt: skip
    assert r.status == "passed", str(r)
    del torch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dist", [1e-9, 1e-10])
@pytest.mark.parametrize("seed", range(3))
def test_next_to_a_kink_the_framework_value_judges(backend, dist, seed):
    """``relu`` at ``x = +-1e-10``: the ladders read a kink, the framework has the exact slope.

    A backward that takes tiny positive inputs for zeros (``relu'`` of 0 below 1e-8) is
    wrong there; the numerics alone accept it as a subgradient (a known limit of theirs),
    so the subgradient rule must not hide what torch and jax see: a second look at steps of
    2^-36 and 2^-40 of the element's scale finds ``fn`` smooth there.
    """
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(4, 5)), rng.normal(size=(5, 3))
    near = rng.random(x.shape) < 0.3
    x[near] = dist * rng.choice([-1.0, 1.0], int(near.sum()))

    def fn(x, w):
        return np.maximum(x, 0) @ w

    def make(cut):
        def vjp(g, x, w):
            return (g @ w.T) * (x > cut), np.maximum(x, 0).T @ g

        return vjp

    def frameworks(torch, jax, jnp):
        return (lambda x, w: torch.relu(x) @ w), (lambda x, w: jax.nn.relu(x) @ w)

    for against in [(backend,), ("numeric", backend)]:
        options = dict(against=against, seed=seed, **_frameworks(backend, frameworks))
        assert check_vjp(fn, make(0.0), (x, w), **options).status != "failed"
        assert check_vjp(fn, make(1e-8), (x, w), **options).status == "failed"


@pytest.mark.torch
def test_a_blamed_tie_group_fails_against_the_framework_too():
    """Routing to every tied maximum, against torch alone: its elements fail in torch's row."""
    inputs, fn, frameworks, _, wrong = _maxpool(0, 2)
    r = check_vjp(
        fn, wrong["every tie"], inputs, against=("torch",), seed=0,
        **_frameworks("torch", frameworks),
    )  # fmt: skip
    assert r.status == "failed" and r.problems
    assert r.input(0).checks["torch"].n_failed > 0, str(r)
