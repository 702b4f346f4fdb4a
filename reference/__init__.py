"""Hand-derived forward and backward passes (vector-Jacobian products), NumPy, float64.

Every ``*_vjp(g, *inputs)`` takes the cotangent ``g`` (the upstream gradient)
first, then the forward inputs, and returns one gradient per differentiable
input. The derivation of each is written in its docstring; the test suite
verifies every one against central-difference numerics, PyTorch autograd and
JAX grad with :mod:`oracles`. ``reference`` never imports ``oracles``.
"""

from reference import layers, mlp, pitfalls
from reference._validation import InvalidInput
from reference.activations import relu, relu_vjp, sigmoid, sigmoid_vjp, tanh, tanh_vjp
from reference.affine import affine, affine_vjp
from reference.idx import IDXFormatError, read_idx
from reference.losses import cross_entropy, cross_entropy_vjp, squared_error, squared_error_vjp
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
    "squared_error_vjp",
    "tanh",
    "tanh_vjp",
]
