"""Elementwise comparison of an analytic gradient with a reference, error-aware.

The rule, for every element::

    |analytic - reference| <= atol + rtol * |reference| + error

where ``error`` is the reference's own error estimate (for central
differences: what the step ladder says it may be off by; for autodiff:
rounding, see :func:`oracles.backends.rounding.error_estimate`). With the
defaults ``atol = rtol = 0`` the tolerance is exactly what the numerics can
explain, so a VJP off by a relative 1e-6 is flagged wherever the numerics are
better than that (on well-conditioned inputs they are good to about 1e-10
relative). The tolerance is never below the smallest normal float64
(2.2e-308): a gradient whose exact value is subnormal may be flushed to 0.

At a kink (the numeric oracle saw one-sided slopes that differ by a jump
that does not shrink with the step) any value between the two one-sided
slopes is a valid subgradient and is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Comparison", "Reference", "compare"]

#: The smallest normal float64: the floor of every tolerance (see :func:`compare`).
_TINY = float(np.finfo(np.float64).tiny)


@dataclass
class Reference:
    """One oracle's reference for one compared piece (a gradient, an output tangent, ...).

    Attributes
    ----------
    value : ndarray
        The reference values, shaped like the piece.
    error : ndarray
        Their error estimates (absolute).
    kink, left, right : ndarray, optional
        Where ``kink`` is True the function is not differentiable along the
        perturbation, and any value between the one-sided slopes ``left``
        and ``right`` is a valid subgradient.
    nonfinite : ndarray of bool, optional
        Where the function was NaN or inf at some perturbed point used.
    checked : ndarray of bool, optional
        The elements compared one by one (``mode="fast"``); ``None``: all.
    covered : int, optional
        How many elements the reference vouches for (the fast mode's passing
        projections cover elements it never compared individually).
    """

    value: np.ndarray
    error: np.ndarray
    kink: np.ndarray | None = None
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    checked: np.ndarray | None = None
    covered: int | None = None

    def subset(self, positions):
        """The reference at flat ``positions`` only (``checked``/``covered`` dropped)."""

        def take(a):
            return None if a is None else np.asarray(a).reshape(-1)[positions]

        return Reference(
            value=take(self.value),
            error=take(self.error),
            kink=take(self.kink),
            left=take(self.left),
            right=take(self.right),
            nonfinite=take(self.nonfinite),
        )


@dataclass
class Comparison:
    """Per-element outcome of comparing one input's gradient with one oracle."""

    analytic: np.ndarray
    reference: np.ndarray
    error_estimate: np.ndarray
    tolerance: np.ndarray
    abs_error: np.ndarray
    rel_error: np.ndarray
    passed: np.ndarray
    kink: np.ndarray

    @property
    def ok(self):
        return bool(np.all(self.passed))

    @property
    def n_failed(self):
        return int(np.size(self.passed) - np.count_nonzero(self.passed))

    @property
    def max_abs_error(self):
        return float(np.max(self.abs_error)) if self.abs_error.size else 0.0

    @property
    def max_rel_error(self):
        return float(np.max(self.rel_error)) if self.rel_error.size else 0.0

    def worst(self, limit=10):
        """Flat indices of the worst elements: failures first, by error / tolerance."""
        if self.abs_error.size == 0:
            return np.zeros(0, dtype=np.intp)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(
                self.tolerance > 0, self.abs_error / self.tolerance, np.inf * (self.abs_error > 0)
            )
        ratio = np.where(np.isnan(ratio), np.inf, ratio).ravel()
        failed = ~self.passed.ravel()
        key = np.lexsort((-ratio, ~failed))
        return key[:limit]


def compare(
    analytic, reference, error_estimate, *, atol=0.0, rtol=0.0, kink=None, left=None, right=None
):
    """Compare ``analytic`` with ``reference`` elementwise (see the module notes).

    Parameters
    ----------
    analytic, reference, error_estimate : ndarray
        Same shape. NaN anywhere never counts as agreement.
    atol, rtol : float
        NumPy's meaning, added to the error estimate.
    kink, left, right : ndarray, optional
        Where ``kink`` is True, values in ``[min(left, right), max(left, right)]``
        (widened by the tolerance) pass.

    Returns
    -------
    Comparison

    Examples
    --------
    >>> import numpy as np
    >>> c = compare(np.array([1.0, 2.0]), np.array([1.0, 2.1]), np.array([1e-9, 1e-9]))
    >>> c.passed.tolist(), c.n_failed
    ([True, False], 1)
    """
    a = np.asarray(analytic, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    est = np.asarray(error_estimate, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # A reference near the float64 limits overflows a tolerance or a
        # relative error to inf (a subnormal one divides to inf): no warning.
        tol = atol + rtol * np.abs(r) + est
        # No difference below the smallest normal float64 counts: a backward whose exact
        # value is subnormal may flush it to 0 (1 / (1 + exp(-x)) at x = -714, where
        # exp(714) overflows, for a true 4.6e-311), as compiled kernels do.
        tol = np.maximum(tol, _TINY)
        abs_err = np.abs(a - r)
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.abs(r))
    passed = abs_err <= tol  # NaN compares False
    if kink is None:
        kink = np.zeros(a.shape, dtype=bool)
    else:
        kink = np.asarray(kink, dtype=bool).reshape(a.shape)
        lo = np.minimum(left, right).reshape(a.shape)
        hi = np.maximum(left, right).reshape(a.shape)
        inside = (a >= lo - tol) & (a <= hi + tol)
        at_kink = kink & inside & ~passed
        passed = passed | at_kink
        # At an accepted kink the error is the distance to the interval of
        # subgradients (0 inside it), not to the central difference.
        dist = np.maximum(np.maximum(lo - a, a - hi), 0.0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            abs_err = np.where(at_kink, dist, abs_err)
            rel_err = np.where(
                at_kink,
                np.where(dist == 0, 0.0, dist / np.maximum(np.abs(lo), np.abs(hi))),
                rel_err,
            )
        kink = kink & (at_kink | ~passed)
    return Comparison(
        analytic=a,
        reference=r,
        error_estimate=est,
        tolerance=tol,
        abs_error=abs_err,
        rel_error=rel_err,
        passed=passed,
        kink=kink,
    )
