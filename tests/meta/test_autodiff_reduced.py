"""Autodiff references computed in float32 carry float32 rounding (issue 13).

A ``torch_fn`` or ``jax_fn`` that casts to float32 computes its gradient in
float32: the reference is itself rounded to float32. Before, its error
estimate was float64 rounding, and a correct float32 VJP of a float32 MLP,
softmax cross-entropy or layer norm failed against torch's and jax's own
float32 gradients at 1e-7 relative: a false alarm. Now every value being a
float32 value names the reference's type, and its rounding is allowed (the
report says so), while an element off by 1e-3 still fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp

F32 = np.float32

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch, id="torch"),
    pytest.param("jax", marks=pytest.mark.jax, id="jax"),
]


def _as_f32(*arrays):
    return tuple(np.asarray(a, dtype=F32).astype(np.float64) for a in arrays)


def _off(vjp, k, rel=1e-3):
    """``vjp`` with its median-sized element of gradient ``k`` off by ``rel``."""

    def planted(g, *a):
        grads = [np.array(x, dtype=np.float64) for x in vjp(g, *a)]
        flat = grads[k].reshape(-1)
        mag = np.abs(flat)
        flat[int(np.argmin(np.abs(mag - np.median(mag[mag > 0]))))] *= 1 + rel
        return tuple(grads)

    return planted


def _mlp(seed, size):
    """tanh MLP with a mean softmax cross-entropy, computed in float32."""
    rng = np.random.default_rng(seed)
    n, d, h, c = size + 2, 2 * size, size + 3, 4
    x, w1, w2 = _as_f32(
        rng.normal(size=(n, d)), rng.normal(size=(d, h)) / np.sqrt(d),
        rng.normal(size=(h, c)) / np.sqrt(h),
    )  # fmt: skip
    t = rng.integers(0, c, n)
    onehot = np.eye(c, dtype=F32)[t]

    def forward(x, w1, w2):
        x, w1, w2 = (a.astype(F32) for a in (x, w1, w2))
        a = np.tanh(x @ w1)
        s = a @ w2
        e = np.exp(s - s.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        return -(np.log(p) * onehot).sum() / F32(n), (x, w1, w2, a, p)

    def vjp(g, *args):
        _, (x, w1, w2, a, p) = forward(*args)
        ds = (p - onehot) * (F32(g) / F32(n))
        dz = (ds @ w2.T) * (F32(1) - a * a)
        return dz @ w1.T, x.T @ dz, a.T @ ds

    def frameworks(torch, jax, jnp):
        def tfn(x, w1, w2):
            s = torch.tanh(x.float() @ w1.float()) @ w2.float()
            return torch.nn.functional.cross_entropy(s, torch.tensor(t))

        def jfn(x, w1, w2):
            s = jnp.tanh(x.astype(jnp.float32) @ w1.astype(jnp.float32)) @ w2.astype(jnp.float32)
            return -(jax.nn.log_softmax(s) * onehot).sum() / n

        return tfn, jfn

    return (x, w1, w2), (lambda *a: forward(*a)[0]), vjp, frameworks


def _layernorm(seed, size):
    """Layer norm of the rows (no affine) times a weight, in float32."""
    rng = np.random.default_rng(seed)
    n, d = size + 1, 2 * size + 2
    x, gam = _as_f32(rng.normal(size=(n, d)) * 2 + 1, rng.normal(size=d))
    eps = 1e-5

    def forward(x, gam):
        x, gam = x.astype(F32), gam.astype(F32)
        xc = x - x.mean(1, keepdims=True)
        inv = F32(1) / np.sqrt((xc * xc).mean(1, keepdims=True) + F32(eps))
        return xc * inv * gam, (xc * inv, inv, gam)

    def vjp(g, *args):
        _, (xh, inv, gam) = forward(*args)
        dxh = g.astype(F32) * gam
        dx = inv * (dxh - dxh.mean(1, keepdims=True) - xh * (dxh * xh).mean(1, keepdims=True))
        return dx, (g.astype(F32) * xh).sum(0)

    def frameworks(torch, jax, jnp):
        def jfn(x, gam):
            x = x.astype(jnp.float32)
            xc = x - x.mean(1, keepdims=True)
            return xc / jnp.sqrt((xc * xc).mean(1, keepdims=True) + eps) * gam.astype(jnp.float32)

        return (lambda x, gam: torch.nn.functional.layer_norm(x.float(), (d,), eps=eps)
                * gam.float()), jfn  # fmt: skip

    return (x, gam), (lambda *a: forward(*a)[0]), vjp, frameworks


def _softmax_ce(seed, size):
    """Softmax cross-entropy on logits of scale 3, float32."""
    rng = np.random.default_rng(seed)
    n, c = size + 2, 5
    (z,) = _as_f32(rng.normal(size=(n, c)) * 3)
    t = rng.integers(0, c, n)
    onehot = np.eye(c, dtype=F32)[t]

    def fn(z):
        s = z.astype(F32)
        s = s - s.max(1, keepdims=True)
        return -((s - np.log(np.exp(s).sum(1, keepdims=True))) * onehot).sum() / F32(n)

    def vjp(g, z):
        s = z.astype(F32)
        e = np.exp(s - s.max(1, keepdims=True))
        return ((e / e.sum(1, keepdims=True) - onehot) * (F32(g) / F32(n)),)

    def frameworks(torch, jax, jnp):
        return (
            lambda z: torch.nn.functional.cross_entropy(z.float(), torch.tensor(t)),
            lambda z: -(jax.nn.log_softmax(z.astype(jnp.float32)) * onehot).sum() / n,
        )

    return (z,), fn, vjp, frameworks


CASES = {"mlp": _mlp, "layernorm": _layernorm, "softmax_ce": _softmax_ce}


def _options(backend, frameworks, seed):
    import jax
    import jax.numpy as jnp
    import torch

    tfn, jfn = frameworks(torch, jax, jnp)
    key = {"torch_fn": tfn} if backend == "torch" else {"jax_fn": jfn}
    return dict(against=(backend,), seed=seed, **key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("size", "seed"), [(2, 0), (3, 1), (5, 2)])
def test_float32_references_allow_their_own_rounding(backend, case, size, seed):
    inputs, fn, vjp, frameworks = CASES[case](seed, size)
    options = _options(backend, frameworks, seed)
    r = check_vjp(fn, vjp, inputs, **options)
    assert r.status == "passed", str(r)
    assert "float32 value" in r.input(0).checks[backend].method
    for k in range(len(inputs)):
        bad = check_vjp(fn, _off(vjp, k), inputs, **options)
        assert bad.status == "failed", f"input {k}:\n{bad}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_references_keep_float64_rounding(backend):
    """The same MLP in float64 (its frameworks too): a 1e-9 error still fails."""
    inputs, _, _, _ = _mlp(0, 3)
    x, w1, w2 = inputs
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, x.shape[0])

    def fn(x, w1):
        s = np.tanh(x @ w1) @ w2
        e = np.exp(s - s.max(1, keepdims=True))
        return -np.log((e / e.sum(1, keepdims=True))[np.arange(len(t)), t]).mean()

    def vjp(g, x, w1):
        a = np.tanh(x @ w1)
        s = a @ w2
        e = np.exp(s - s.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        p[np.arange(len(t)), t] -= 1
        dz = (p * g / len(t)) @ w2.T * (1 - a * a)
        return dz @ w1.T, x.T @ dz

    def frameworks(torch, jax, jnp):
        tw2 = torch.tensor(w2)

        def tfn(x, w1):
            return torch.nn.functional.cross_entropy(torch.tanh(x @ w1) @ tw2, torch.tensor(t))

        def jfn(x, w1):
            s = jnp.tanh(x @ w1) @ w2
            return -jax.nn.log_softmax(s)[jnp.arange(len(t)), t].mean()

        return tfn, jfn

    options = _options(backend, frameworks, 0)
    r = check_vjp(fn, vjp, (x, w1), **options)
    assert r.status == "passed", str(r)
    assert "float32" not in r.input(0).checks[backend].method
    assert check_vjp(fn, _off(vjp, 1, rel=1e-9), (x, w1), **options).status == "failed"


@pytest.mark.torch
@pytest.mark.xfail(
    strict=True,
    reason="known limit: a float32 tanh layer at saturation (inputs of scale 40): the float32 "
    "framework gradient is exactly 0 where a correct float32 1 - y^2 is a few float32 units, "
    "and a reference of zeros does not show its type",
)
def test_known_limit_saturated_float32_tanh_against_torch():
    import torch

    rng = np.random.default_rng(2)
    x, w = _as_f32(rng.normal(size=(4, 4)) * 40, rng.normal(size=(4, 3)) / 2)

    def fn(x, w):
        return np.tanh(x.astype(F32) @ w.astype(F32))

    def vjp(g, x, w):
        x, w = x.astype(F32), w.astype(F32)
        y = np.tanh(x @ w)
        d = g.astype(F32) * (F32(1) - y * y)
        return d @ w.T, x.T @ d

    r = check_vjp(
        fn, vjp, (x, w), against=("torch",), seed=2,
        torch_fn=lambda x, w: torch.tanh(x.float() @ w.float()),
    )  # fmt: skip
    assert r.status != "failed", str(r)
