"""Functions that compute in float32 inside, at the limit of their precision (round 16).

Constructions of the round-16 grid (``/work/f32_grid.py`` of that round): elementwise
``exp``, ``sigmoid`` and an affine map, a softmax cross-entropy, a layer norm and a tanh
MLP, computed in float32 either from float32 inputs (``fn`` returns float32) or inside a
float64 wrapper (``astype(float32)`` in, float64 out). Before that round:

* at inputs of scale 1e-6 the ladders of half the elements of a float32 ``exp`` moved
  ``fn`` by two of its units at the largest step and not at all below: the reference was
  exactly 0 with a large error, the element was "checked absolutely", and a typical element
  off by 1e-3 passed. Such a frozen ladder now searches larger steps, where fn varies
  smoothly, with its error bounded at the type's resolution;
* a float32 softmax-CE at logits of scale 1e-6 never moved at any probe step, so the noise
  probe did not see float32 at all and the correct gradient failed (exhaustive and fast);
  outputs that never move are now probed at far points to tell their type;
* mode fast judged a named element on its own axis where nothing moved at a step of the
  stencil: a reference of exactly 0, within float64 rounding, failed a correct gradient.

The claims: a correct backward never fails; in mode exhaustive a typical element off by
1e-3 fails (1e-4 in the elementwise and affine ones at inputs of scale 1e-6); the report
names the type, in both modes (mode fast did not pass the noise probe's note on).
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp
from oracles._guards import own_stream

F32 = np.float32


def _elementwise(name, rng, n, scale):
    x = rng.normal(size=(n, 4)) * scale
    if name == "exp":
        return (lambda x, dt: np.exp(x.astype(dt))), (lambda c, x: (c * np.exp(x),)), (x,)
    if name == "sigmoid":

        def sig(x, dt):
            return dt(1) / (dt(1) + np.exp(-x.astype(dt)))

        def sig_vjp(c, x):
            s = 1 / (1 + np.exp(-x))
            return (c * s * (1 - s),)

        return sig, sig_vjp, (x,)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=3)

    def affine(x, W, b, dt):
        return x.astype(dt) @ W.astype(dt) + b.astype(dt)

    return affine, (lambda c, x, W, b: (c @ W.T, x.T @ c, c.sum(0))), (x, W, b)


def _softmax_ce(rng, n, scale, k=5):
    x = rng.normal(size=(n, k)) * scale
    y = rng.integers(0, k, size=n)

    def core(x, dt):
        z = x.astype(dt)
        p = z - z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(p).sum(axis=1)) - p[np.arange(n), y])

    def vjp(c, x):
        e = np.exp(x - x.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        p[np.arange(n), y] -= 1.0
        return (c * p / n,)

    return core, vjp, (x,)


def _layernorm(rng, n, scale, d=6):
    x = rng.normal(size=(n, d)) * scale
    g, bb = 1.0 + 0.3 * rng.normal(size=d), 0.1 * rng.normal(size=d)
    eps = 1e-5 * scale**2

    def core(x, g, bb, dt):
        x = x.astype(dt)
        mu = x.mean(1, keepdims=True)
        v = ((x - mu) ** 2).mean(1, keepdims=True)
        return (x - mu) / np.sqrt(v + dt(eps)) * g.astype(dt) + bb.astype(dt)

    def vjp(c, x, g, bb):
        mu = x.mean(1, keepdims=True)
        r = 1 / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + eps)
        xh = (x - mu) * r
        dxh = c * g
        dx = r * (dxh - dxh.mean(1, keepdims=True) - xh * (dxh * xh).mean(1, keepdims=True))
        return dx, (c * xh).sum(0), c.sum(0)

    return core, vjp, (x, g, bb)


def _mlp(rng, n, scale, d=4, h=5):
    x = rng.normal(size=(n, d)) * scale
    W = rng.normal(size=(d, h)) / (np.sqrt(d) * scale)
    b, V = 0.3 * rng.normal(size=h), 0.5 * rng.normal(size=(h, 2))

    def core(x, W, b, dt):
        return np.tanh(x.astype(dt) @ W.astype(dt) + b.astype(dt)) @ V.astype(dt)

    def vjp(c, x, W, b):
        z = np.tanh(x @ W + b)
        dz = (c @ V.T) * (1 - z**2)
        return dz @ W.T, x.T @ dz, dz.sum(0)

    return core, vjp, (x, W, b)


def _case(name, seed, n, scale, wrap):
    """``(fn, vjp, inputs)``: float32 inside; ``wrap``: float64 in and out, else float32."""
    rng = np.random.default_rng(seed)
    if name == "softmax_ce":
        core, vjp0, xs = _softmax_ce(rng, n, scale)
    elif name == "layernorm":
        core, vjp0, xs = _layernorm(rng, n, scale)
    elif name == "mlp":
        core, vjp0, xs = _mlp(rng, n, scale)
    else:
        core, vjp0, xs = _elementwise(name, rng, n, scale)
    if wrap:

        def fn(*a):
            return np.asarray(core(*a, F32), dtype=np.float64)

    else:
        xs = tuple(x.astype(F32) for x in xs)

        def fn(*a):
            return core(*a, F32)

    def vjp(c, *a):
        g = vjp0(np.asarray(c, dtype=np.float64), *(np.asarray(v, dtype=np.float64) for v in a))
        return g[0] if len(g) == 1 else g

    return fn, vjp, xs


def _planted(fn, vjp, xs, seed, rel):
    """``vjp`` with one typical element (the median of those >= 1e-3 of the largest, in the
    largest input) off by a relative ``rel``."""
    c = own_stream(seed, "direction").standard_normal(np.shape(fn(*xs)))  # the check's own
    g = vjp(c, *xs)
    g = g if isinstance(g, tuple) else (g,)
    i = int(np.argmax([np.size(v) for v in g]))
    a = np.abs(np.asarray(g[i])).ravel()
    ok = np.flatnonzero(a >= 1e-3 * a.max())
    j = int(ok[np.argsort(a[ok], kind="stable")[ok.size // 2]])

    def wrong(c, *a):
        out = vjp(c, *a)
        out = [np.array(v, dtype=np.float64, copy=True) for v in (out if len(xs) > 1 else (out,))]
        out[i].reshape(-1)[j] *= 1.0 + rel
        return tuple(out) if len(xs) > 1 else out[0]

    return wrong


def _names_float32(report):
    return any("float32 precision" in note for note in report.notes)


FUNCTIONS = ["exp", "sigmoid", "affine", "softmax_ce", "layernorm", "mlp"]


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "float32-inputs"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_correct_float32_backward_never_fails(name, wrap, mode):
    for k, scale in enumerate((1e-6, 1e-3, 1.0, 3.0)):
        seed, n = k, (3, 4, 6)[k % 3]
        fn, vjp, xs = _case(name, seed, n, scale, wrap)
        r = check_vjp(fn, vjp, xs, mode=mode, seed=seed)
        assert r.status != "failed", f"scale {scale}\n{r}"
        assert _names_float32(r), f"scale {scale}\n{r}"  # mode fast says so too (round 16)


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "float32-inputs"])
@pytest.mark.parametrize("name", ["exp", "sigmoid", "affine"])
@pytest.mark.parametrize(("seed", "n"), [(0, 3), (1, 4), (2, 6)])
def test_inputs_of_scale_1e6_resolve_where_their_ladders_froze(name, wrap, seed, n):
    """A float32 ``exp(x)`` at ``x ~ 1e-6`` moves by two float32 units at the ladder's top."""
    fn, vjp, xs = _case(name, seed, n, 1e-6, wrap)
    right = check_vjp(fn, vjp, xs, mode="exhaustive", seed=seed)
    assert right.status == "passed", str(right)
    # No element is left at a reference of 0 where its gradient is of a typical size.
    assert "checked absolutely" not in str(right) and "only)" not in str(right), str(right)
    for rel in (1e-3, 1e-4):
        wrong = check_vjp(fn, _planted(fn, vjp, xs, seed, rel), xs, mode="exhaustive", seed=seed)
        assert wrong.status == "failed", f"{rel}\n{wrong}"


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "float32-inputs"])
@pytest.mark.parametrize("seed", range(4))
def test_a_float32_loss_that_no_probe_step_moves(wrap, seed):
    """Softmax-CE at logits of scale 1e-6: every probe step moves the loss (about 1.6) by less
    than its float32 unit; far points name the type, the correct gradient passes in both modes
    and a typical element off by 1e-3 fails in mode exhaustive."""
    n = (3, 5)[seed % 2]
    fn, vjp, xs = _case("softmax_ce", seed, n, 1e-6, wrap)
    for mode in ("exhaustive", "fast"):
        r = check_vjp(fn, vjp, xs, mode=mode, seed=seed)
        assert r.status != "failed", f"{mode}\n{r}"
    r = check_vjp(fn, vjp, xs, mode="exhaustive", seed=seed)
    assert r.status == "passed" and _names_float32(r), str(r)
    wrong = check_vjp(fn, _planted(fn, vjp, xs, seed, 1e-3), xs, mode="exhaustive", seed=seed)
    assert wrong.status == "failed", str(wrong)


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "float32-inputs"])
@pytest.mark.parametrize("name", ["layernorm", "softmax_ce", "sigmoid", "exp", "affine", "mlp"])
def test_a_typical_element_off_by_1e2_is_never_passed(name, wrap):
    """Mode exhaustive over input scales 1e-6 .. 3: a planted 1e-2 fails, or the check says
    it could not have caught it (inconclusive)."""
    for k, scale in enumerate((1e-6, 1e-3, 1.0, 3.0)):
        seed, n = k + 10, (3, 4, 6)[k % 3]
        fn, vjp, xs = _case(name, seed, n, scale, wrap)
        wrong = check_vjp(fn, _planted(fn, vjp, xs, seed, 1e-2), xs, mode="exhaustive", seed=seed)
        assert wrong.status != "passed", f"scale {scale}\n{wrong}"


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "float32-inputs"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_typical_element_off_by_1e3_is_caught_or_said_out_of_reach(name, wrap):
    """Mode exhaustive over input scales 1e-6 .. 3: a planted 1e-3 in an element typical for
    the check's own cotangent never passes where the report says a typical element of every
    input is resolved to 1e-3."""
    for k, scale in enumerate((1e-6, 1e-3, 1.0, 3.0)):
        seed, n = k + 10, (3, 4, 6)[k % 3]
        fn, vjp, xs = _case(name, seed, n, scale, wrap)
        wrong = check_vjp(fn, _planted(fn, vjp, xs, seed, 1e-3), xs, mode="exhaustive", seed=seed)
        if wrong.status == "passed":
            worst = max(r.sensitivity for r in wrong.inputs if r.sensitivity is not None)
            assert worst > 1e-3, f"scale {scale}\n{wrong}"
