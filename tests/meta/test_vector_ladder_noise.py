"""The forward-mode and second-order references at saturated points (issue 13: no false alarms).

An output element that moves by an ulp only at the largest steps of the
ladder (the label's gradient ``(p_y - 1) / N`` of a softmax cross-entropy,
whose ``p_y`` is 1e-141 at logits 300 apart) carries its rounding noise at
every rung, also at the rungs evaluated before it was first seen to change.
Before, those rungs read ``0 +- 0``: the numeric HVP claimed an error of
3e-156 where the true value is 1e-141, and a correct HVP failed.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_hvp, check_jvp


def _probs(s):
    z = s - s.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _ce(y):
    def loss(s):
        z = s - s.max(axis=1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -lp[np.arange(len(y)), y].mean()

    def grad(s):
        p = _probs(s)
        p[np.arange(len(y)), y] -= 1.0
        return p / len(y)

    def hvp(v, s):
        p = _probs(s)
        return (p * v - p * (p * v).sum(axis=1, keepdims=True)) / len(y)

    def hvp_no_outer(v, s):  # the published slip: the -p p^T v term dropped
        p = _probs(s)
        return p * v / len(y)

    return loss, grad, hvp, hvp_no_outer


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0, 1e3])
@pytest.mark.parametrize(("n", "m"), [(3, 5), (8, 10)])
@pytest.mark.parametrize("seed", range(5))
def test_softmax_ce_hvp_at_saturated_logits(scale, n, m, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, m)) * scale
    y = rng.integers(0, m, size=n)
    loss, grad, hvp, wrong = _ce(y)
    r = check_hvp(loss, hvp, (s,), grad=grad, seed=seed)
    assert r.status != "failed", str(r)
    if scale <= 30.0:
        assert r.status == "passed", str(r)
        assert check_hvp(loss, wrong, (s,), grad=grad, seed=seed).status == "failed"


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0, 1e3])
@pytest.mark.parametrize("seed", range(5))
def test_log_softmax_jvp_at_saturated_logits(scale, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(4, 6)) * scale

    def log_softmax(s):
        z = s - s.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def jvp(t, s):
        return t - (_probs(s) * t).sum(axis=1, keepdims=True)

    def jvp_no_mean(t, s):  # forgets the normalizer's tangent
        return t

    r = check_jvp(log_softmax, jvp, (s,), seed=seed)
    assert r.status != "failed", str(r)
    if scale <= 30.0:
        assert r.status == "passed", str(r)
        assert check_jvp(log_softmax, jvp_no_mean, (s,), seed=seed).status == "failed"
