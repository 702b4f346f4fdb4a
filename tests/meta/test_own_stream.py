"""The check's random directions never coincide with test data drawn from ``default_rng(seed)``.

Found in round 13: with the default direction the first normal draw of
``default_rng(seed)``, a user's ``x = default_rng(0).normal(size=...)`` shaped
like the output made the cotangent equal to ``x``; ``x.T @ dout`` was then
symmetric and a transposed weight gradient passed.
"""

import numpy as np
import pytest

from oracles import check_layer, check_vjp
from oracles._guards import own_stream


class _Affine:
    def __init__(self, W, transposed):
        self.W, self.transposed = W, transposed

    def forward(self, x):
        self.x = x
        return x @ self.W

    def backward(self, dout):
        dW = self.x.T @ dout
        self.dW = dW.T if self.transposed else dW
        return dout @ self.W.T


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("n", [3, 4, 6])
def test_a_transposed_weight_gradient_fails_on_data_from_the_checks_seed(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, n))
    W = np.random.default_rng(seed + 100).normal(size=(n, n))
    right = check_layer(_Affine(W, False), (x,), params={"W": "dW"}, seed=seed)
    wrong = check_layer(_Affine(W, True), (x,), params={"W": "dW"}, seed=seed)
    assert right.status == "passed", str(right)
    assert wrong.status == "failed", str(wrong)
    assert wrong.failed_inputs == ["W"]


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
@pytest.mark.parametrize("seed", [0, 3])
def test_a_transposed_gradient_fails_in_check_vjp_in_both_modes(mode, seed):
    rng = np.random.default_rng(seed)
    x, W = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))

    def wrong(g, x, W):
        return g @ W.T, (x.T @ g).T

    def right(g, x, W):
        return g @ W.T, x.T @ g

    def matmul(x, W):
        return x @ W

    assert check_vjp(matmul, right, (x, W), mode=mode, seed=seed).status == "passed"
    assert check_vjp(matmul, wrong, (x, W), mode=mode, seed=seed).status == "failed"


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_own_streams_differ_from_the_users_and_from_each_other(seed):
    user = np.random.default_rng(seed).standard_normal(64)
    ours = {u: own_stream(seed, u).standard_normal(64) for u in ("direction", "projection")}
    for v in ours.values():
        assert abs(np.corrcoef(user, v)[0, 1]) < 0.5
    assert not np.array_equal(ours["direction"], ours["projection"])
    again = own_stream(seed, "direction").standard_normal(64)
    np.testing.assert_array_equal(again, ours["direction"])
