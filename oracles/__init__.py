"""Oracles that judge a hand-written gradient.

``check_vjp`` compares a vector-Jacobian product you derived by hand with
central-difference numerics (with their own error estimates), PyTorch
autograd and JAX grad, and returns a report that points at the wrong
element; ``assert_vjp`` raises :class:`GradientMismatch` with that report.
"""

from oracles.check import assert_vjp, check_vjp
from oracles.complex_step import complex_step_vjp
from oracles.errors import (
    BackendUnavailable,
    GradientMismatch,
    InvalidArgument,
    InvalidArgumentType,
    NonDeterministicFunction,
    OraclesError,
    UserFunctionError,
)
from oracles.exhaustive import Exhaustive
from oracles.fast import Fast
from oracles.jax_backend import jax_vjp
from oracles.jvp import assert_jvp, check_jvp
from oracles.layer import assert_layer, check_layer
from oracles.numerics import numeric_vjp
from oracles.report import Report
from oracles.second_order import assert_hvp, check_hvp
from oracles.torch_backend import torch_vjp

__all__ = [
    "BackendUnavailable",
    "Exhaustive",
    "Fast",
    "GradientMismatch",
    "InvalidArgument",
    "InvalidArgumentType",
    "NonDeterministicFunction",
    "OraclesError",
    "Report",
    "UserFunctionError",
    "assert_hvp",
    "assert_jvp",
    "assert_layer",
    "assert_vjp",
    "check_hvp",
    "check_jvp",
    "check_layer",
    "check_vjp",
    "complex_step_vjp",
    "jax_vjp",
    "numeric_vjp",
    "torch_vjp",
]
