"""Elementwise activations, their hand-derived vector-Jacobian products and an HVP.

Every activation ``y = f(x)`` here acts elementwise, so its Jacobian
``J = dy/dx`` is diagonal: ``J[i, j] = f'(x[i]) * delta(i, j)``. The
vector-Jacobian product of a cotangent ``g`` (the upstream gradient
``dL/dy``) is ``g @ J = g * f'(x)``: one multiplication per element, no
matrix is ever formed.

Each ``*_vjp(g, x)`` takes the cotangent first, then the forward inputs, and
returns the gradient with respect to ``x``. ``tanh_hvp(v, x)`` takes the
direction first in the same way; the Hessian of a sum of elementwise
functions is diagonal too. Nothing here modifies its arguments.

Inputs follow :mod:`reference._validation`: lists are converted, ``None``
and non-numbers raise :class:`reference.InvalidInput`, empty arrays give
empty results. The cotangent ``g`` has the shape of ``x`` or broadcasts to
it (a scalar weights every element). Complex ``x`` gives the analytic
continuation (``relu`` compares complex numbers as NumPy orders them, real
part first: the analytic branch away from ``Re x = 0``).
"""

from __future__ import annotations

import numpy as np

from reference._validation import (
    InvalidInput,
    as_floats,
    as_numbers,
    cotangent_like,
    direction_like,
)

__all__ = ["relu", "relu_vjp", "sigmoid", "sigmoid_vjp", "tanh", "tanh_hvp", "tanh_vjp"]


def tanh(x):
    """Hyperbolic tangent, ``y = (e^x - e^-x) / (e^x + e^-x)``.

    Examples
    --------
    >>> float(tanh(0.0))
    0.0
    """
    return np.tanh(as_numbers(x, "x"))


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
    x = as_numbers(x, "x")
    g = cotangent_like(g, x.shape, "g", "x")
    y = np.tanh(x)
    return g * (1.0 - y * y)


def tanh_hvp(v, x, *, weights=None):
    r"""HVP of ``L(x) = sum(weights * tanh(x))`` with respect to ``x``.

    This is the second-order term that backpropagation through a tanh layer
    needs: ``weights`` plays the role of the upstream gradient, held fixed.

    Derivation
    ----------
    With ``y = tanh(x)``, ``dy/dx = 1 - y^2`` and, differentiating again,
    ``d^2 y / dx^2 = -2 y dy/dx = -2 tanh(x) (1 - tanh(x)^2)``. ``L`` is a
    sum of functions of one element each, so its Hessian is diagonal::

        dL/dx_i = w_i (1 - y_i^2)
        H = diag(-2 w y (1 - y^2))
        (H v)_i = -2 w_i y_i (1 - y_i^2) v_i

    Forgetting the factor 2, or the sign (``tanh`` is concave for
    ``x > 0``), are the usual mistakes.

    Parameters
    ----------
    v : array, shape of ``x``
    x : array
    weights : array or float, optional
        Broadcast to ``x``'s shape; default 1 (``L = sum tanh(x)``).

    Returns
    -------
    ndarray
        ``H v``, shaped like ``x``.

    Examples
    --------
    >>> tanh_hvp(np.array([1.0]), np.array([0.0])).tolist()
    [-0.0]
    >>> round(float(tanh_hvp(np.array([1.0]), np.array([1.0]))[0]), 6)
    -0.6397
    """
    x = as_floats(x, "x")
    v = direction_like(v, x.shape, "x")
    w = np.ones(x.shape) if weights is None else as_floats(weights, "weights")
    try:
        w = np.broadcast_to(w, x.shape)
    except ValueError:
        raise InvalidInput(
            f"weights must broadcast to the shape of x {x.shape}, got {w.shape}"
        ) from None
    # tanh_vjp computes (1 - y^2) times its first argument.
    return -2.0 * np.tanh(x) * tanh_vjp(w * v, x)


def sigmoid(x):
    r"""Logistic sigmoid ``y = 1 / (1 + e^-x)``, stable for any ``|x|``.

    ``exp`` is only ever evaluated where its real part is ``-|Re x|``, so it
    cannot overflow: for ``Re x >= 0`` we use ``1 / (1 + e^-x)``, otherwise
    the algebraically equal ``e^x / (1 + e^x)``. At ``x = +-1e308`` the
    result is exactly 1 or 0, without warnings. Both branches are analytic
    (no ``|x|`` inside ``exp``), so complex ``x`` gives the analytic
    continuation, as the complex-step oracle needs.

    Examples
    --------
    >>> float(sigmoid(0.0))
    0.5
    >>> float(sigmoid(-1e308)), float(sigmoid(1e308))
    (0.0, 1.0)
    """
    x = as_floats(x, "x")
    right = x.real >= 0
    e = np.exp(np.where(right, -x, x))
    return np.where(right, 1.0 / (1.0 + e), e / (1.0 + e))


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
    x = as_floats(x, "x")
    g = cotangent_like(g, x.shape, "g", "x")
    return g * sigmoid(x) * sigmoid(-x)


def relu(x):
    """Rectified linear unit ``y = max(x, 0)``.

    Examples
    --------
    >>> relu(np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    return np.maximum(as_numbers(x, "x"), 0.0)


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
    x = as_numbers(x, "x")
    g = cotangent_like(g, x.shape, "g", "x")
    return np.where(x > 0, g, 0.0)
