"""Regression guard: the hand-written gradients of this project stay right.

Needs only ``backprop-oracles`` (its pytest plugin provides the ``gradcheck``
fixture) and pytest. Run with ``python -m pytest tests/test_gradients.py``.
"""

import numpy as np
import pytest

# In your project these come from your own package, e.g.
# from mynet.ops import softmax, softmax_vjp
# from mynet.layers import Affine


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_vjp(g, x):
    a = softmax(x)
    return a * (g - (g * a).sum(axis=-1, keepdims=True))


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


# Not at logits of scale 500: there every gradient is below what central differences
# resolve, a zero gradient would pass too, and the check says "inconclusive" (and fails).
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_softmax_vjp(gradcheck, scale):
    x = scale * np.random.default_rng(0).normal(size=(8, 10))
    gradcheck.vjp(softmax, softmax_vjp, (x,))


def test_affine_layer(gradcheck):
    rng = np.random.default_rng(1)
    layer = Affine(rng.normal(size=(5, 3)), rng.normal(size=3))
    # Name the parameters: a gradient of the wrong shape is then reported,
    # not skipped by the discovery of parameters.
    gradcheck.layer(layer, rng.normal(size=(4, 5)), params={"W": "dW", "b": "db"})
