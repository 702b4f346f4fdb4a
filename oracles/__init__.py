"""Oracles that judge a hand-written gradient.

``check_vjp``, ``check_jvp``, ``check_hvp`` and ``check_layer`` compare a
derivative you wrote by hand with central-difference numerics (with their
own error estimates), PyTorch autograd and JAX, and return a report that
points at the wrong element, says what kind of mistake it is
(:class:`Diagnosis`) and what this run could have caught; the ``assert_*``
forms raise :class:`GradientMismatch` with that report, or
:class:`InconclusiveCheck` when the check could not have failed. Every
check runs the same pipeline and follows one calling convention (see
:mod:`oracles.checks`).

The public names are those in ``__all__``; modules and names with a leading
underscore, and the subpackages ``numerics`` and ``backends``, are internal.
``oracles.strategies`` (Hypothesis strategies) and ``oracles.plugin`` (the
pytest plugin) are public modules of their own. ``oracles.verify`` is the
verification application of this project (``python -m oracles``).
"""

from oracles.backends.jax import jax_vjp
from oracles.backends.torch import torch_vjp
from oracles.checks import assert_hvp, assert_jvp, assert_vjp, check_hvp, check_jvp, check_vjp
from oracles.diagnose import Diagnosis
from oracles.errors import (
    BackendUnavailable,
    GradientMismatch,
    InconclusiveCheck,
    InvalidArgument,
    InvalidArgumentType,
    NonDeterministicFunction,
    OraclesError,
    UserFunctionError,
)
from oracles.layer import assert_layer, check_layer
from oracles.numerics import numeric_vjp
from oracles.numerics.complex_step import complex_step_vjp
from oracles.numerics.exhaustive import Exhaustive
from oracles.numerics.fast import Fast
from oracles.report import Report

__all__ = [
    "BackendUnavailable",
    "Diagnosis",
    "Exhaustive",
    "Fast",
    "GradientMismatch",
    "InconclusiveCheck",
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
