"""The forward-mode and second-order references where an output is a staircase of rounding.

The vector ladder (``oracles.numerics.directional.vector_ladder``) judges every
output element along one direction. Two ways it read 0 within a tiny error
where the true derivative is far larger, so that a correct JVP or HVP failed:

* An output much smaller than the intermediate it is computed from moves in
  that intermediate's units, which the noise model (``eps |f|``) does not see:
  ``log(1 + exp(x))`` at ``x = -36`` (``1 + 2e-16`` rounds to 1 or to
  ``1 + 2^-52``); a log-softmax at its row's maximum, ``-log(1 + 1e-15)``;
  the tanh-form GELU's gradient ``0.5 (1 + tanh(u))`` at ``x ~ -7``. Its rungs
  show the staircase: changes by whole units of it, then none at all, or a
  slope that drops to a tenth and stays there. That unit is charged as
  rounding to every rung of the element.
* A climb above the largest step (the ladder climbs while its estimate is
  rounding) reached where the element is saturated on both sides (a
  softmax-CE's label gradient ``(p_y - 1) / N`` at ``p_y = 5e-16``, at steps
  of 1e20): central differences 0 within a noise that halves with every rung.
  The climb stops where doubling the step no longer moves the element farther.

Each construction is run over several shapes and seeds; a planted error is
still caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_hvp, check_jvp


def _softplus(x):
    return np.log(1 + np.exp(x))  # the naive form: a staircase of 2^-52 near x = -36


def _softplus_jvp(t, x):
    return t / (1 + np.exp(-x))


@pytest.mark.parametrize("n", [5, 12, 30])
@pytest.mark.parametrize("seed", range(4))
def test_naive_softplus_jvp_where_it_is_a_few_units_of_2_52(n, seed):
    rng = np.random.default_rng(seed)
    # Half the inputs where 1 + exp(x) is 1 + 1 to 40 units of 2^-52, half typical.
    x = np.concatenate([-36.0 + 3.6 * rng.random(n), rng.normal(size=n)])
    r = check_jvp(_softplus, _softplus_jvp, (x,), seed=seed)
    assert r.status != "failed", str(r)

    def wrong(t, x):
        return _softplus_jvp(t, x) * (1 + 1e-6)

    assert check_jvp(_softplus, wrong, (x,), seed=seed).status == "failed"


def _probs(s):
    z = s - s.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _log_softmax(s):
    z = s - s.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _log_softmax_jvp(t, s):
    return t - (_probs(s) * t).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", [(3, 20), (8, 10)])
@pytest.mark.parametrize("scale", [30.0, 100.0, 1e3])
@pytest.mark.parametrize("seed", range(5, 9))
def test_log_softmax_jvp_at_saturated_rows(shape, scale, seed):
    s = np.random.default_rng(seed).normal(size=shape) * scale
    r = check_jvp(_log_softmax, _log_softmax_jvp, (s,), seed=seed)
    assert r.status != "failed", str(r)

    def wrong(t, s):
        return _log_softmax_jvp(t, s) * (1 + 1e-6)

    assert check_jvp(_log_softmax, wrong, (s,), seed=seed).status == "failed"


def _ce(y):
    def loss(s):
        return -_log_softmax(s)[np.arange(len(y)), y].mean()

    def grad(s):
        p = _probs(s)
        p[np.arange(len(y)), y] -= 1.0
        return p / len(y)

    def hvp(v, s):
        p = _probs(s)
        return (p * v - p * (p * v).sum(axis=1, keepdims=True)) / len(y)

    return loss, grad, hvp


@pytest.mark.parametrize(("n", "m"), [(16, 4), (3, 5)])
@pytest.mark.parametrize("scale", [30.0, 300.0])
@pytest.mark.parametrize("seed", range(8))
def test_softmax_ce_hvp_where_the_label_gradient_saturates(n, m, scale, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, m)) * scale
    y = rng.integers(0, m, size=n)
    loss, grad, hvp = _ce(y)
    r = check_hvp(loss, hvp, (s,), grad=grad, seed=seed)
    assert r.status != "failed", str(r)

    def wrong(v, s):
        return hvp(v, s) * (1 + 1e-6)

    assert check_hvp(loss, wrong, (s,), grad=grad, seed=seed).status == "failed"


_C = np.sqrt(2 / np.pi)


def _gelu_sum(x):
    return float((0.5 * x * (1 + np.tanh(_C * (x + 0.044715 * x**3)))).sum())


def _gelu_grad(x):  # 0.5 (1 + tanh) is a staircase of 2^-54 below x ~ -5
    t = np.tanh(_C * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * 0.044715 * x * x)


def _gelu_hvp(v, x, d2u=True):
    t = np.tanh(_C * (x + 0.044715 * x**3))
    s = 1 - t * t
    du = _C * (1 + 3 * 0.044715 * x * x)
    second = s * _C * 6 * 0.044715 * x if d2u else 0.0
    return (s * du + 0.5 * x * (-2 * t * s * du * du + second)) * v


@pytest.mark.parametrize("shape", [(4, 4), (8, 9)])
@pytest.mark.parametrize("scale", [10.0, 30.0])
@pytest.mark.parametrize("seed", range(3, 8))
def test_gelu_hvp_where_the_users_gradient_is_a_staircase(shape, scale, seed):
    x = np.random.default_rng(seed).normal(size=shape) * scale
    r = check_hvp(_gelu_sum, _gelu_hvp, (x,), grad=_gelu_grad, seed=seed)
    assert r.status != "failed", str(r)

    def no_d2u(v, x):  # the second derivative of the tanh's argument forgotten
        return _gelu_hvp(v, x, d2u=False)

    assert check_hvp(_gelu_sum, no_d2u, (x,), grad=_gelu_grad, seed=seed).status == "failed"
