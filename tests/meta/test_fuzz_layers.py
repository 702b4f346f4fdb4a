"""Fuzzing findings on check_layer, pinned: a stored gradient that is legitimately all zeros.

numpy-ml-style layers preallocate ``gradients['g'] = zeros`` and accumulate into it
(``+=``). When the true gradient of a parameter is exactly 0 at the checked point (a branch
that is switched off for this batch, a saturated unit), backward leaves those zeros as they
were, which looks the same as a gradient never written. check_layer raised
``UserFunctionError("backward never wrote ...")`` on such correct layers. Zeros that stay
zeros are now compared as a gradient of 0: the layer passes when the true gradient is 0, and
the error is raised, naming the parameter, when the numerics say it is not.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from oracles import UserFunctionError, check_layer


class GatedDense:
    """``tanh(x @ W + b) + g * relu(x.sum(1) - t)[:, None]``: numpy-ml's dict conventions."""

    def __init__(self, W, b, g, threshold, forget=None):
        self.parameters = {"W": W, "b": b, "g": g}
        self.gradients = {k: np.zeros_like(v) for k, v in self.parameters.items()}
        self.threshold = threshold
        self.forget = forget
        self.X = []

    def forward(self, X):
        p = self.parameters
        self.X.append(X)
        gate = np.maximum(X.sum(axis=1) - self.threshold, 0.0)[:, None]
        return np.tanh(X @ p["W"] + p["b"]) + p["g"] * gate

    def backward(self, dy):
        p, X = self.parameters, self.X[-1]
        z = np.tanh(X @ p["W"] + p["b"])
        dz = dy * (1 - z * z)
        s = X.sum(axis=1) - self.threshold
        gate = np.maximum(s, 0.0)[:, None]
        grads = {"W": X.T @ dz, "b": dz.sum(axis=0), "g": (dy * gate).sum(axis=0)}
        for k, v in grads.items():
            if k != self.forget:
                self.gradients[k] += v
        dgate = (dy * p["g"]).sum(axis=1) * (s > 0)
        return dz @ p["W"].T + dgate[:, None]

    def flush_gradients(self):
        self.X = []
        for k, v in self.gradients.items():
            self.gradients[k] = np.zeros_like(v)


def _layer(seed, n, scale, *, gate_on, forget=None):
    rng = np.random.default_rng(seed)
    d, k = n + 1, n + 2
    x = rng.normal(size=(n, d)) * scale
    W = rng.normal(size=(d, k)) / max(scale, 1.0)
    b, g = rng.normal(size=k), rng.normal(size=k)
    total = x.sum(axis=1)
    # The gate is off for the whole batch (g's true gradient is exactly 0), or on for some rows.
    t = np.sort(total)
    threshold = t[-1] + 1.0 if not gate_on else float(t[len(t) // 2 - 1] + t[len(t) // 2]) / 2
    return GatedDense(W, b, g, threshold, forget), x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "scale"), [(2, 1.0), (4, 1e-3), (5, 1e3)])
def test_a_gradient_that_is_zero_here_passes_and_the_layer_is_unchanged(seed, n, scale):
    layer, x = _layer(seed, n, scale, gate_on=False)
    before, x0 = pickle.dumps(layer), x.copy()
    r = check_layer(layer, (x,), seed=seed)
    assert r.status == "passed", str(r)
    assert any("compared as a gradient of 0" in note for note in r.notes), r.notes
    assert pickle.dumps(layer) == before and np.array_equal(x, x0)


@pytest.mark.parametrize(("seed", "n", "scale"), [(2, 3, 1.0), (3, 4, 1e-3)])
def test_a_gradient_never_accumulated_into_is_an_error_naming_it(seed, n, scale):
    layer, x = _layer(seed, n, scale, gate_on=True, forget="g")
    with pytest.raises(UserFunctionError, match=r"gradients\['g'\].*not 0 here"):
        check_layer(layer, (x,), seed=seed)
    layer, x = _layer(seed, n, scale, gate_on=False, forget="b")
    with pytest.raises(UserFunctionError, match=r"gradients\['b'\]"):
        check_layer(layer, (x,), seed=seed)


@pytest.mark.parametrize("seed", [4])
def test_the_same_layer_with_the_gate_on_passes_and_a_wrong_gate_gradient_fails(seed):
    layer, x = _layer(seed, 4, 1.0, gate_on=True)
    assert check_layer(layer, (x,), seed=seed).status == "passed"

    class HalfGate(GatedDense):
        def backward(self, dy):
            dx = super().backward(dy)
            self.gradients["g"] *= 0.5
            return dx

    wrong = HalfGate(**{k: layer.parameters[k] for k in "Wbg"}, threshold=layer.threshold)
    r = check_layer(wrong, (x,), seed=seed)
    assert r.status == "failed" and r.failed_inputs == ["g"], str(r)
