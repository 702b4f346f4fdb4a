"""The error type the reference functions raise on bad input, and the checks that raise it."""

from __future__ import annotations

import numpy as np

__all__ = ["InvalidInput", "direction_like"]


class InvalidInput(ValueError):
    """An argument of a reference function breaks a documented rule.

    A subclass of ValueError; the message names the argument and the rule.
    """


def direction_like(v, shape, what):
    """The direction ``v`` of a Hessian-vector product, float64, shaped like ``what``."""
    v = np.asarray(v, dtype=np.float64)
    if v.shape != tuple(shape):
        raise InvalidInput(f"v must have the shape of {what} {tuple(shape)}, got {v.shape}")
    return v
