"""Verdicts on the kind of backward code courses and libraries publish.

Wrong verdicts found by running course-style layers (CS231n, deep learning
from scratch, numpy-ml; custom ``torch.autograd.Function`` and
``jax.custom_vjp``) through the checks, each pinned here with our own
constructions at several sizes, scales and seeds:

* A torch Function whose backward is NumPy code gave, run twice on the
  same ``grad_output``, gradients that differ by one float64 subnormal
  (``exp`` of a saturated softmax: 0 once, 4.9e-324 the next time, by the
  vectorized or the scalar path of the kernel), and the correct layer
  failed as "not deterministic". Subnormals are flushed before the
  comparison in every dtype now, as they were in reduced precision; a
  backward that varies by a normal amount, however small, still fails
  (``nondet_tol`` keeps torch's meaning).
* numpy-ml's SoftPlus gradient ``1 / (1 + exp(-x))`` is 0 where ``exp(-x)``
  overflows (``x < -709``) and the exact value is subnormal (4.6e-311 at
  ``x = -714``); the numerics resolve it, and a correct layer at inputs of
  1e3 failed by 1e-311. No difference below the smallest normal float64
  counts now; gradients that are tiny but normal are judged as before.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ot = pytest.importorskip("oracles.torch")

from oracles import check_vjp as oracles_check_vjp  # noqa: E402

_SUBNORMAL = 5e-324


def _varying(delta, factor=1.0):
    """A sin Function whose backward, on every other run, adds ``delta`` times 1..n to the
    gradient and multiplies it by ``factor``."""
    calls = iter(range(10**6))

    class Varying(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            k = torch.arange(1, x.numel() + 1, dtype=x.dtype).reshape(x.shape)
            odd = next(calls) % 2
            return torch.cos(x) * g * (factor if odd else 1.0) + delta * k * odd

    return Varying


@pytest.mark.parametrize("n", [3, 40, 400])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_backward_whose_reruns_differ_only_in_subnormals_is_deterministic(n, seed):
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=n)).requires_grad_()
    for mode in ("exhaustive", "fast"):
        report = ot.check(_varying(_SUBNORMAL).apply, (x,), seed=seed, mode=mode)
        assert report.status == "passed", str(report)
    # A difference of a normal size, even of one unit in the last place, still fails.
    report = ot.check(_varying(0.0, 1 + 2**-52).apply, (x,), seed=seed)
    assert report.status == "failed"
    assert any("not reentrant" in p or "not deterministic" in p for p in report.problems)


def _numpy_function(fwd, bwd):
    """A torch Function whose forward and backward are NumPy code, as course code writes them."""

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return torch.from_numpy(np.asarray(fwd(*(x.detach().numpy() for x in xs))))

        @staticmethod
        def backward(ctx, g):
            xs = [x.detach().numpy() for x in ctx.saved_tensors]
            return tuple(torch.from_numpy(np.asarray(a)) for a in bwd(g.detach().numpy(), *xs))

    return F.apply


def _attention(q, k, v):
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    a = np.exp(s - s.max(axis=-1, keepdims=True))
    a /= a.sum(axis=-1, keepdims=True)
    return a, a @ v


def _attention_vjp(g, q, k, v, scale=True):
    a, _ = _attention(q, k, v)
    da = g @ v.swapaxes(-1, -2)
    ds = a * (da - (da * a).sum(axis=-1, keepdims=True)) / (np.sqrt(q.shape[-1]) if scale else 1)
    return ds @ k, ds.swapaxes(-1, -2) @ q, a.swapaxes(-1, -2) @ g


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize(("t", "seed"), [(3, 0), (5, 1)])
def test_numpy_attention_as_a_torch_function_at_saturated_scores(scale, t, seed):
    # At scores of 1e3 the softmax underflows to subnormals and 0: a NumPy backward there gave
    # a spurious "not deterministic" on some runs. Right passes (or is inconclusive: the scores'
    # gradients are 0 to within their estimate), a missing 1/sqrt(d) fails where it can be seen.
    rng = np.random.default_rng(600 + seed)
    q = rng.normal(size=(2, t, 4)) * scale
    k, v = rng.normal(size=q.shape), rng.normal(size=q.shape)
    args = tuple(torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    fn = _numpy_function(lambda *a: _attention(*a)[1], _attention_vjp)
    for mode in ("exhaustive", "fast"):
        report = ot.check(fn, args, seed=seed, mode=mode)
        assert not report.problems, str(report)
        assert report.status in (("passed",) if scale == 1 else ("passed", "inconclusive")), str(
            report
        )
    wrong = _numpy_function(
        lambda *a: _attention(*a)[1], lambda *a: _attention_vjp(*a, scale=False)
    )
    assert ot.check(wrong, args, seed=seed).status == ("failed" if scale == 1 else "inconclusive")


def _attention_out(q, k, v):
    return _attention(q, k, v)[1]


def _attention_torch(q, k, v):
    s = q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ v


def _saturated_attention(seed, t=6, d=8, scale=1e3):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, t, d)) * scale
    return q, rng.normal(size=q.shape), rng.normal(size=q.shape)


def _vjp_of_attention(g, q, k, v):
    return _attention_vjp(g, q, k, v)


def test_numeric_judges_a_correct_attention_at_scores_of_1e3():
    # The numerics alone do not fail the right VJP here (small gradients of the scores may
    # leave it inconclusive); against torch it fails (the strict xfail below).
    q, k, v = _saturated_attention(1007)
    report = oracles_check_vjp(_attention_out, _vjp_of_attention, (q, k, v), seed=1)
    assert report.status in ("passed", "inconclusive"), str(report)


@pytest.mark.xfail(
    strict=True,
    reason="known limit: at scores of ~3e3 computed in the forward pass, the rounding of the "
    "scores (eps |s|) moves a runner-up probability of ~2e-3 by 1e-13 relative; every "
    "gradient of Q and K scales with it, so torch's and the hand VJP differ by 1e-13 against "
    "an autodiff rounding bound of 4e-14 (the terms' second look sees the outputs' rounding, "
    "not the intermediates')",
)
def test_torch_judges_a_correct_attention_at_scores_of_1e3():
    q, k, v = _saturated_attention(1007)
    report = oracles_check_vjp(
        _attention_out,
        _vjp_of_attention,
        (q, k, v),
        against=("torch",),
        torch_fn=_attention_torch,
        seed=1,
    )
    assert report.status != "failed", str(report)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _softplus_vjp(g, x):
    return g / (1.0 + np.exp(-x))


@pytest.mark.parametrize("shape", [(6, 7), (30, 40)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_gradient_flushed_from_subnormal_to_zero_is_not_blamed(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 1e3
    x.flat[:4] = [-709.5, -714.6, -730.0, -744.0]  # exact derivatives 1e-308 .. 1e-323
    with np.errstate(over="ignore"):
        for mode in ("exhaustive", "fast"):
            report = oracles_check_vjp(_softplus, _softplus_vjp, (x,), seed=seed, mode=mode)
            assert report.status == "passed", str(report)
            wrong = oracles_check_vjp(
                _softplus, lambda g, x: 1.001 * _softplus_vjp(g, x), (x,), seed=seed, mode=mode
            )
            assert wrong.status == "failed"


@pytest.mark.parametrize("scale", [1e-300, 1e-290])
@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_normal_gradients_are_still_judged(scale, seed):
    x = np.random.default_rng(seed).normal(size=(5, 6))
    fn = lambda x: scale * np.sin(x)  # noqa: E731
    right = lambda g, x: scale * g * np.cos(x)  # noqa: E731
    assert oracles_check_vjp(fn, right, (x,), seed=seed).status == "passed"

    def off(g, x):
        out = right(g, x)
        out.flat[7] *= 1 + 1e-6
        return out

    report = oracles_check_vjp(fn, off, (x,), seed=seed)
    assert report.status == "failed" and report.failed_inputs == ["x"], str(report)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _lstm(x, h0, wx, wh, b):
    """CS231n-style LSTM over time (gates i, f, o, g); returns every h and the caches."""
    h, c, hs, caches = h0, np.zeros_like(h0), [], []
    n = h0.shape[1]
    for t in range(x.shape[1]):
        a = x[:, t] @ wx + h @ wh + b
        i, f, o = (_sigmoid(a[:, k * n : (k + 1) * n]) for k in range(3))
        g = np.tanh(a[:, 3 * n :])
        caches.append((x[:, t], h, c, i, f, o, g))
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs, axis=1), caches, c


def _lstm_vjp(dh_all, x, h0, wx, wh, b):
    _, caches, _ = _lstm(x, h0, wx, wh, b)
    dx, dwx, dwh, db = np.zeros_like(x), np.zeros_like(wx), np.zeros_like(wh), np.zeros_like(b)
    dh, dc = np.zeros_like(h0), np.zeros_like(h0)
    for t in reversed(range(x.shape[1])):
        xt, hp, cp, i, f, o, g = caches[t]
        tc = np.tanh(f * cp + i * g)
        dht = dh_all[:, t] + dh
        dct = dc + dht * o * (1 - tc**2)
        da = np.hstack(
            [
                dct * g * i * (1 - i),
                dct * cp * f * (1 - f),
                dht * tc * o * (1 - o),
                dct * i * (1 - g**2),
            ]
        )
        dx[:, t], dh, dc = da @ wx.T, da @ wh.T, dct * f
        dwx += xt.T @ da
        dwh += hp.T @ da
        db += da.sum(axis=0)
    return dx, dh, dwx, dwh, db


@pytest.mark.xfail(
    strict=True,
    reason="known limit (README: outputs that absorb a change): an LSTM fed inputs of 1e3 "
    "saturates its forget gate to e^-566; the true gradient of Wh there, 1.8e-246, flows "
    "through outputs of order 1 that it cannot move, the outputs it does move are subnormal, "
    "and the reference (-1.7e-309, error 1e-309) fails the right value",
)
def test_an_lstm_with_a_gate_saturated_far_below_rounding():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 3)) * 1e3
    h0 = rng.normal(size=(2, 3))
    wx, wh = rng.normal(size=(3, 12)) * 0.4, rng.normal(size=(3, 12)) * 0.4
    b = rng.normal(size=12) * 0.1
    report = oracles_check_vjp(
        lambda *a: _lstm(*a)[0], _lstm_vjp, (x, h0, wx, wh, b), mode="exhaustive", seed=0
    )
    assert report.status != "failed", str(report)
