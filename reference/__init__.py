"""Hand-derived forward and backward passes (vector-Jacobian products), NumPy, float64.

Every ``*_vjp(g, *inputs)`` takes the cotangent ``g`` (the upstream gradient)
first, then the forward inputs, and returns one gradient per differentiable
input. Every ``*_hvp(v, *inputs)`` is a Hessian-vector product ``H v`` of one
scalar function (named in its docstring) with respect to its first
argument: the derivative of the gradient along the direction ``v``, taken
first as the cotangent is, derived in closed form without forming ``H``.
Each op's forward, VJP and HVP sit side by side in one module. The
derivation of each is written in its docstring; the test suite verifies
every one against central-difference numerics, PyTorch autograd and JAX
with :mod:`oracles`. ``reference`` never imports ``oracles``.

Every public function converts plain lists and raises
:class:`InvalidInput` (a ValueError) naming the argument and the rule for
anything it cannot give a correct result for: ``None``, non-numbers, a
softmax over zero classes, labels out of range, a mean over an empty batch.
Complex inputs give the analytic continuation of the real formulas (what
the complex-step oracle evaluates), except in :mod:`reference.mlp`.
"""

from reference import layers, mlp, pitfalls
from reference._validation import InvalidInput
from reference.activations import (
    relu,
    relu_vjp,
    sigmoid,
    sigmoid_vjp,
    tanh,
    tanh_hvp,
    tanh_vjp,
)
from reference.affine import affine, affine_vjp
from reference.idx import IDXFormatError, read_idx
from reference.losses import (
    cross_entropy,
    cross_entropy_hvp,
    cross_entropy_vjp,
    squared_error,
    squared_error_hvp,
    squared_error_vjp,
)
from reference.mnist import load_mnist
from reference.softmax import log_softmax, log_softmax_vjp, softmax, softmax_vjp

__all__ = [
    "IDXFormatError",
    "InvalidInput",
    "layers",
    "load_mnist",
    "mlp",
    "pitfalls",
    "read_idx",
    "affine",
    "affine_vjp",
    "cross_entropy",
    "cross_entropy_hvp",
    "cross_entropy_vjp",
    "log_softmax",
    "log_softmax_vjp",
    "relu",
    "relu_vjp",
    "sigmoid",
    "sigmoid_vjp",
    "softmax",
    "softmax_vjp",
    "squared_error",
    "squared_error_hvp",
    "squared_error_vjp",
    "tanh",
    "tanh_hvp",
    "tanh_vjp",
]
