"""The Taylor-remainder test: a step-free oracle, judged by the observed order.

If ``g`` is the derivative of ``phi`` at ``x``, the remainder

.. math::

    R(h) = |\\phi(x + h d) - \\phi(x) - h \\langle g, d \\rangle|

falls as ``h^2`` when ``h`` halves (it is the second-order term); if ``g``
is off by ``e`` along ``d``, ``R(h) \\approx |e| h`` falls only as ``h`` once
``h`` is small enough. The test evaluates ``R`` on a ladder of halving steps
and judges the *order* it observes, ``log2(R(h) / R(h / 2))``, at the
smallest steps where ``R`` is still well above rounding: about 2 passes,
about 1 fails. Where the smallest steps reach a noise floor the rounding
model does not know (``R`` stops falling: an order near 0, as in a function
that computes in float32 inside), the floor is measured and skipped; an
error never looks like that, since ``e h`` keeps falling with ``h``. No
tolerance is chosen and no step has to be right: the steps that are too
large (higher-order terms) or too small (rounding) are simply not the ones
that decide. That makes it robust where the step-size
noise of a finite difference is not. It is the test dolfin-adjoint calls
``taylor_test``.

What it costs and what it sees: one evaluation of ``phi`` per step (about
30), and it checks one projection ``<g, d>``. It can only see an error
``e`` where ``e h`` rises above both the rounding of ``phi`` and the
second-order term ``c h^2``, so its resolution is about ``sqrt(c *
noise)``: about 1e-8 relative for well-scaled smooth functions, coarser
than the ladder of :mod:`oracles.numerics.ladder` (about 1e-10), and
:attr:`TaylorResult.resolution` says what it was on each run.

Notes
-----
* At a kink exactly at ``x`` (ReLU at 0), ``R`` falls as ``h`` whatever
  ``g`` is: the test fails a correct subgradient. Use the numeric oracle
  there (it detects kinks).
* A remainder at the rounding level at every step (a linear ``phi``, or a
  direction along which ``phi`` is flat) passes: no step shows an error.
  The resolution then says how large an error would have shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ORDER_PASS", "TAYLOR_STEPS", "VALID_FACTOR", "TaylorResult", "taylor_test"]

#: Steps of the ladder (``h0, h0 / 2, ..``): 30 halvings span nine decades.
TAYLOR_STEPS = 30
#: A remainder counts only where it is this many times its rounding noise.
VALID_FACTOR = 64.0
#: The observed order at the smallest informative steps must reach this to pass.
ORDER_PASS = 1.5
#: Orders averaged at the smallest informative steps.
N_DECIDING = 3
#: Below this order the remainder has stopped falling: a noise floor, not an error.
FLOOR_ORDER = 0.75
#: The orders that decide may spread this much (noise makes them erratic).
ORDER_SPREAD = 0.5
#: An error shows once its first-order term is this many times a measured noise floor.
FLOOR_FACTOR = 4.0


@dataclass(frozen=True)
class TaylorResult:
    """What :func:`taylor_test` observed.

    Attributes
    ----------
    steps, remainders, noise : ndarray
        The steps ``h``, the remainders ``R(h)`` and their rounding noise.
    orders : ndarray
        ``log2(R(h) / R(h / 2))`` between neighbouring informative steps
        (``nan`` where either remainder is within ``VALID_FACTOR`` of its
        noise).
    order : float
        The order at the smallest informative steps (the median of the last
        :data:`N_DECIDING`); ``inf`` when every remainder was at the rounding
        level, ``nan`` when too few steps were informative.
    passed : bool
        ``order >= ORDER_PASS`` (or every remainder at rounding level), or
        the first-order residual within ``allowance``.
    residual : float
        The first-order residual ``<true - g, d>`` estimated at the smallest
        informative steps (Richardson on ``R(h) / h``); about 0 when passed.
    resolution : float
        The smallest ``|residual|`` that would have failed this run.
    slope : float
        The analytic directional derivative ``<g, d>`` (per unit ``h``).
    evaluations : int
        Calls of ``phi`` (one per step, plus the base point).
    deciding : tuple of int
        The pairs of steps whose orders decided (indices into ``orders``).
    floor : float
        The noise floor measured below them (0 when none was reached).
    """

    steps: np.ndarray
    remainders: np.ndarray
    noise: np.ndarray
    orders: np.ndarray
    order: float
    passed: bool
    residual: float
    resolution: float
    slope: float
    evaluations: int
    deciding: tuple = ()
    floor: float = 0.0

    def describe(self):
        """One line: the observed orders at the steps that decided."""
        pairs = zip(self.steps[:-1], self.orders, strict=True)
        finite = [(h, p) for h, p in pairs if np.isfinite(p)]
        if math.isinf(self.order):
            return (
                "Taylor remainder at the rounding level at every step "
                f"(h = {self.steps[0]:.2g} .. {self.steps[-1]:.2g}): no error shows"
            )
        if not finite or not self.deciding:
            return "Taylor remainder: too few steps above rounding to observe an order"
        end = self.deciding[-1]
        shown = [k for k in range(max(0, end - 5), end + 1) if np.isfinite(self.orders[k])]
        orders = ", ".join(f"{self.orders[k]:.2f}" for k in shown)
        verdict = "as h^2: ok" if self.passed else "as h: the derivative is off along d"
        floor = (
            f"; a noise floor of {self.floor:.2g} below h = {self.steps[end + 1]:.2g}"
            if self.floor
            else ""
        )
        return (
            f"Taylor remainder orders {orders} at h = {self.steps[shown[0]]:.2g} .. "
            f"{self.steps[end]:.2g} (observed {self.order:.2f}, need >= {ORDER_PASS}): falls "
            f"{verdict}; first-order residual {self.residual:.3g}, resolution "
            f"{self.resolution:.2g}{floor}"
        )


def _consistent(orders, window):
    """The orders of ``window`` (pair indices) describe one regime: neighbours, not noise."""
    if len(window) < 2:
        return bool(window) and orders[window[-1]] >= FLOOR_ORDER
    if any(b != a + 1 for a, b in zip(window, window[1:], strict=False)):
        return False
    values = orders[np.asarray(window)]
    return bool(np.min(values) >= FLOOR_ORDER and np.ptp(values) <= ORDER_SPREAD)


def taylor_test(
    increment: Callable[[float], tuple[float, float, float]],
    *,
    h0: float = 0.25,
    n_steps: int = TAYLOR_STEPS,
    allowance: float = 0.0,
) -> TaylorResult:
    """Judge a directional derivative by the order of its Taylor remainder.

    Parameters
    ----------
    increment : callable
        ``increment(h) -> (delta, first_order, noise)``: ``delta = phi(x +
        h d) - phi(x)`` (difference the outputs elementwise before
        contracting them, so that unchanged outputs cancel exactly),
        ``first_order`` the analytic term for the step actually taken
        (``<g, (x + h d) - x>``: ``x + h d`` rounds), and the rounding noise
        of ``delta - first_order``; ``inf`` marks a step the function did
        not resolve (an output that moved at larger steps stayed bitwise
        the same: quantized outputs make ``R`` fall as ``h`` there, like
        an error). It is called with decreasing ``h``.
    h0 : float
        The largest step; the ladder halves it ``n_steps - 1`` times.
    n_steps : int
        Number of steps.
    allowance : float
        A first-order residual up to this size passes (the caller's
        ``atol``/``rtol`` along ``d``).

    Returns
    -------
    TaylorResult

    Examples
    --------
    >>> import numpy as np
    >>> x, d = np.array([0.3, -1.2]), np.array([1.0, 0.5])
    >>> def increment_with(g):
    ...     def increment(h):
    ...         xh = x + h * d
    ...         delta = float(np.sum(np.sin(xh) - np.sin(x)))
    ...         size = float(np.sum(np.abs(np.sin(xh)) + np.abs(np.sin(x))))
    ...         noise = 8 * np.finfo(float).eps * size
    ...         return delta, float(g @ (xh - x)), noise
    ...     return increment
    >>> right = taylor_test(increment_with(np.cos(x)))
    >>> right.passed, round(right.order)
    (True, 2)
    >>> wrong = taylor_test(increment_with(np.cos(x) * (1 + 1e-5)))
    >>> wrong.passed, round(wrong.order)
    (False, 1)
    """
    steps = float(h0) * 2.0 ** -np.arange(n_steps, dtype=np.float64)
    remainders = np.full(n_steps, np.nan)
    noise = np.full(n_steps, np.inf)
    firsts = np.full(n_steps, np.nan)
    deltas = np.full(n_steps, np.nan)
    for k, h in enumerate(steps):
        delta, first, nz = increment(float(h))
        if math.isfinite(delta) and math.isfinite(first):
            deltas[k], firsts[k] = delta, first
            remainders[k] = abs(delta - first)
            noise[k] = nz
    valid = np.isfinite(remainders) & (remainders > VALID_FACTOR * noise)
    orders = np.full(n_steps - 1, np.nan)
    pair = valid[:-1] & valid[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        orders[pair] = np.log2(remainders[:-1][pair] / remainders[1:][pair])
    slope = float(np.nanmedian(firsts / steps)) if np.any(np.isfinite(firsts)) else math.nan
    # The smallest steps may sit on a noise floor the model does not know (a
    # function that computes in float32 inside): there the remainder stops
    # falling (order about 0). An error never does that (it falls as h), so
    # the floor is skipped and measured, and the steps just above it decide.
    informative = list(np.flatnonzero(pair))
    floor = 0.0
    while informative and not _consistent(orders, informative[-N_DECIDING:]):
        k = informative.pop()
        floor = max(floor, float(remainders[k]), float(remainders[k + 1]))
    deciding = np.asarray(informative[-N_DECIDING:], dtype=int)

    # The second-order coefficient, where the remainder behaves as h^2.
    curv = [remainders[k] / steps[k] ** 2 for k in informative if orders[k] >= ORDER_PASS]
    c = float(np.median(curv)) if curv else 0.0
    finite_noise = np.where(np.isfinite(noise), noise, np.inf)
    # An error e shows at step h once e h rises above the noise (twice the
    # level), and the order-1 regime below the crossing h = e / c must span
    # the N_DECIDING + 1 halvings that decide: e >= 2^(N + 1) c h.
    level = np.maximum(VALID_FACTOR * finite_noise, FLOOR_FACTOR * floor)
    span = 2.0 ** (N_DECIDING + 1)
    resolution = float(np.min(np.maximum(span * c * steps, 2.0 * level / steps)))

    if not valid.any() or (not informative and floor > 0):
        order, residual, passed = math.inf, 0.0, bool(np.all(np.isfinite(remainders)))
    elif deciding.size == 0:
        order, residual, passed = math.nan, 0.0, True
    else:
        order = float(np.median(orders[deciding]))
        k = int(deciding[-1])
        r1 = (deltas[k] - firsts[k]) / steps[k]
        r2 = (deltas[k + 1] - firsts[k + 1]) / steps[k + 1]
        residual = float(2.0 * r2 - r1)
        passed = order >= ORDER_PASS or abs(residual) <= allowance
    return TaylorResult(
        steps=steps,
        remainders=remainders,
        noise=noise,
        orders=orders,
        order=order,
        passed=bool(passed),
        residual=residual,
        resolution=resolution,
        slope=slope,
        evaluations=n_steps + 1,
        deciding=tuple(int(k) for k in deciding),
        floor=floor,
    )
