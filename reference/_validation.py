"""The error type the reference functions raise on bad input, and the checks that raise it.

One rule for array arguments, applied by every public function: plain
Python numbers and (rectangular) nested lists are converted with
:func:`numpy.asarray`; booleans count as 0 and 1; ``None``, ragged lists,
strings and other non-numbers raise :class:`InvalidInput` naming the
argument. Complex values are kept complex (the formulas here are analytic,
so a complex input gives the analytic continuation that the complex-step
oracle evaluates) unless the function is real by nature and says so.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "InvalidInput",
    "as_floats",
    "as_numbers",
    "cotangent_like",
    "direction_like",
    "real_scalar",
]


class InvalidInput(ValueError):
    """An argument of a reference function breaks a documented rule.

    A subclass of ValueError; the message names the argument and the rule.
    """


def as_numbers(value, name, *, bools=True):
    """``value`` as an ndarray of numbers, its dtype kept (booleans become float64).

    An ndarray of numbers is returned as it is (not copied). ``bools=False``
    refuses booleans instead of converting them.
    """
    if value is None:
        raise InvalidInput(
            f"{name} must be an array of numbers (or nested lists of them), got None"
        )
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"{name} must be an array of numbers; nested lists must be rectangular ({exc})"
        ) from None
    if arr.dtype == np.bool_:
        if not bools:
            raise InvalidInput(f"{name} must be numbers, not booleans, got dtype bool")
        return arr.astype(np.float64)
    if arr.dtype.kind in "iufc":
        return arr
    if arr.dtype.kind == "O":
        # Fractions, Decimals, or a list holding None or a string.
        for dtype in (np.float64, np.complex128):
            try:
                return arr.astype(dtype)
            except (ValueError, TypeError):
                pass
    raise InvalidInput(
        f"{name} must be an array of numbers, got {type(value).__name__} of dtype {arr.dtype}"
    )


def as_floats(value, name, *, real=None):
    """:func:`as_numbers`, promoted to at least float64 (complex to complex128).

    ``real``, when given, is the reason the function takes real input only:
    complex input is then refused with it.
    """
    arr = as_numbers(value, name)
    if real is not None and arr.dtype.kind == "c":
        raise InvalidInput(f"{name} must be real ({real}), got dtype {arr.dtype}")
    return arr.astype(np.result_type(arr, np.float64), copy=False)


def real_scalar(value, name, *, rule="a real number"):
    """``value`` as a Python float: a real number, or an array of shape ``()`` holding one."""
    arr = as_floats(value, name, real=f"it must be {rule}")
    if arr.shape != ():
        raise InvalidInput(f"{name} must be {rule} (shape ()), got shape {arr.shape}")
    return float(arr)


def cotangent_like(g, shape, name, what):
    """The cotangent ``g`` as numbers, broadcastable to ``shape`` (the shape of ``what``).

    A scalar is fine; a shape that broadcasting would enlarge, or that does
    not broadcast, is refused rather than silently giving a bigger result.
    """
    g = as_numbers(g, name)
    try:
        ok = np.broadcast_shapes(g.shape, tuple(shape)) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise InvalidInput(
            f"{name} must have the shape of {what} {tuple(shape)} (or broadcast to it), "
            f"got {g.shape}"
        )
    return g


def direction_like(v, shape, what):
    """The direction ``v`` of a Hessian-vector product, at least float64, shaped like ``what``."""
    v = as_floats(v, "v")
    if v.shape != tuple(shape):
        raise InvalidInput(f"v must have the shape of {what} {tuple(shape)}, got {v.shape}")
    return v
