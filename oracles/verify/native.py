"""Registry of the framework-native equivalents of every reference op.

``NATIVE_OPS[name]`` is a :class:`NativePair` ``(torch, jax)`` of functions
with the call signature of ``reference.<name>``, built from each framework's
own operations (:mod:`oracles.verify.native_torch`, :mod:`oracles.verify.native_jax`).
Importing this module imports neither torch nor jax.
"""

from __future__ import annotations

from typing import NamedTuple

from oracles.verify import native_jax, native_torch

__all__ = ["NATIVE_OPS", "NativePair"]


class NativePair(NamedTuple):
    """The torch-native and jax-native versions of one reference op."""

    torch: object
    jax: object


#: Op name (the reference function's name) -> its native torch and jax versions.
NATIVE_OPS = {
    name: NativePair(getattr(native_torch, name), getattr(native_jax, name))
    for name in (
        "tanh",
        "sigmoid",
        "relu",
        "softmax",
        "log_softmax",
        "cross_entropy",
        "squared_error",
        "affine",
    )
}
