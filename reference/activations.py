"""Elementwise activations and their hand-derived vector-Jacobian products.

Every activation ``y = f(x)`` here acts elementwise, so its Jacobian
``J = dy/dx`` is diagonal: ``J[i, j] = f'(x[i]) * delta(i, j)``. The
vector-Jacobian product of a cotangent ``g`` (the upstream gradient
``dL/dy``) is ``g @ J = g * f'(x)``: one multiplication per element, no
matrix is ever formed.

Each ``*_vjp(g, x)`` takes the cotangent first, then the forward inputs, and
returns the gradient with respect to ``x``. Nothing here modifies its
arguments.
"""

from __future__ import annotations

import numpy as np

__all__ = ["relu", "relu_vjp", "sigmoid", "sigmoid_vjp", "tanh", "tanh_vjp"]


def tanh(x):
    """Hyperbolic tangent, ``y = (e^x - e^-x) / (e^x + e^-x)``.

    Examples
    --------
    >>> float(tanh(0.0))
    0.0
    """
    return np.tanh(x)


def tanh_vjp(g, x):
    r"""VJP of :func:`tanh`.

    Derivation
    ----------
    ``tanh'(x) = 1 - tanh(x)^2`` (quotient rule on ``sinh/cosh``:
    ``(cosh^2 - sinh^2) / cosh^2``). The Jacobian is ``diag(1 - y^2)`` with
    ``y = tanh(x)``, so ``dL/dx = g * (1 - y^2)``.

    Notes
    -----
    Recomputed from ``x`` (not from a cached ``y``), so that the VJP is a pure
    function of its inputs. For ``|x| > ~19`` the result underflows towards
    ``1 - 1 = 0`` gracefully: the true value is below ``4e-16``.

    Examples
    --------
    >>> float(tanh_vjp(1.0, 0.0))
    1.0
    """
    y = np.tanh(x)
    return g * (1.0 - y * y)


def sigmoid(x):
    r"""Logistic sigmoid ``y = 1 / (1 + e^-x)``, stable for any ``|x|``.

    ``exp`` is only ever evaluated at ``-|x|``, so it cannot overflow: for
    ``x >= 0`` we use ``1 / (1 + e^-x)``, for ``x < 0`` the algebraically equal
    ``e^x / (1 + e^x)``. At ``x = +-1e308`` the result is exactly 1 or 0,
    without warnings.

    Examples
    --------
    >>> float(sigmoid(0.0))
    0.5
    >>> float(sigmoid(-1e308)), float(sigmoid(1e308))
    (0.0, 1.0)
    """
    x = np.asarray(x, dtype=np.result_type(x, np.float64))
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_vjp(g, x):
    r"""VJP of :func:`sigmoid`.

    Derivation
    ----------
    ``s(x) = (1 + e^-x)^-1`` so ``s'(x) = e^-x / (1 + e^-x)^2 = s(x) (1 - s(x))``.
    The Jacobian is ``diag(s (1 - s))``, so ``dL/dx = g * s * (1 - s)``.

    Notes
    -----
    ``1 - s(x)`` is computed as ``s(-x)``: for large positive ``x`` the
    subtraction ``1 - s`` would round to 0 long before the true value does.

    Examples
    --------
    >>> float(sigmoid_vjp(1.0, 0.0))
    0.25
    """
    return g * sigmoid(x) * sigmoid(-np.asarray(x))


def relu(x):
    """Rectified linear unit ``y = max(x, 0)``.

    Examples
    --------
    >>> relu(np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    return np.maximum(x, 0.0)


def relu_vjp(g, x):
    r"""VJP of :func:`relu`.

    Derivation
    ----------
    ``relu'(x) = 1`` for ``x > 0`` and ``0`` for ``x < 0``; at ``x = 0`` the
    function has a kink and any value in the subdifferential ``[0, 1]`` is a
    valid (sub)gradient. **We choose 0 at x = 0**, as PyTorch and JAX do. The
    Jacobian is ``diag(x > 0)``, so ``dL/dx = g * (x > 0)``.

    A new array is returned: the upstream gradient ``g`` is never written to
    (a classic mistake is ``g[x <= 0] = 0``, which silently changes the
    caller's array; see :mod:`reference.pitfalls`).

    Examples
    --------
    >>> relu_vjp(np.ones(3), np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 1.0]
    """
    return np.where(np.asarray(x) > 0, g, 0.0)
