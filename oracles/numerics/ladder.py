"""The step ladder: central differences at halving steps, Richardson extrapolation, kinks.

How one derivative is computed
------------------------------
For steps ``t_k = t_0 / 2^k`` (``t_0 = 1/8`` by default, down to about
``3e-8``):

1. Evaluate ``phi`` at ``x + t_k u`` and ``x - t_k u``, rounded to float64,
   and divide by the step **actually taken**, ``(x + t_k u) - (x - t_k u)``,
   not by the nominal ``2 t_k`` (at ``x = 1e6`` the two differ in the 5th
   digit for ``t = 1e-5``).
2. Richardson extrapolation between neighbouring rungs removes the ``t^2``
   term: ``e_k = c_k + (c_k - c_{k-1}) / (r^2 - 1)`` with ``r`` the actual
   step ratio (2 up to rounding).
3. The error estimate of rung ``k`` is the larger of the last two changes
   between successive extrapolants plus a rounding term
   ``noise(phi) / step``; the rung with the smallest estimate wins. The
   ladder stops once the rounding term alone exceeds the best estimate
   (rounding only grows as the step shrinks).

``noise(phi)`` is the absolute rounding noise of one evaluation of ``phi``
(:class:`~oracles.numerics.objective.ScalarObjective`).

Kinks
-----
At a point where ``phi`` is not differentiable along the perturbation
(ReLU at 0, ``max``, ``abs``) the one-sided slopes differ. Comparing them at
one step flags every smooth point (their difference is ``t * phi''``);
instead the *jump* ``forward - backward`` is compared at two steps: at a kink
it stays put as ``t`` halves, at a smooth point it halves too.
:func:`partials` reports, per element, whether a kink was seen and the two
one-sided slopes, so that a comparison can accept any subgradient between
them.
"""

from __future__ import annotations

import numpy as np

from oracles.numerics.objective import N_RUNGS, T0, Estimate, changed_noise

__all__ = ["kink_test", "ladder", "partials"]


def ladder(quotient, n_rungs=N_RUNGS):
    """Run the step ladder on one probe.

    ``quotient(k) -> (c, delta, noise_c)``: the central-difference quotient
    at rung ``k``, the actual full step taken and the rounding noise of
    ``c``. ``c`` may be non-finite (that rung is skipped).

    The error estimate of rung ``k`` is the larger of the last two changes
    between successive extrapolants (one change can be small by
    coincidence, e.g. while the steps straddle a nearby kink) plus the
    rounding noise. The ladder stops once the rounding noise alone exceeds
    the best estimate: rounding only grows as the step shrinks.

    Returns ``(value, error, rung, rungs_evaluated, nonfinite_seen)``.
    """
    prev_c = prev_delta = None
    extrapolants = []
    rungs = []  # (value, error, k) of every rung with an estimate
    nonfinite = False
    best_err = np.inf
    k = 0
    for k in range(n_rungs):
        c, delta, noise_c = quotient(k)
        if not np.isfinite(c):
            nonfinite = True
            prev_c = None
            extrapolants = []
            continue
        if prev_c is None:
            prev_c, prev_delta = c, delta
            continue
        r2 = (prev_delta / delta) ** 2
        e = c + (c - prev_c) / (r2 - 1.0)
        noise_e = noise_c * (r2 + 1.0) / (r2 - 1.0)
        extrapolants.append(e)
        if len(extrapolants) >= 3:
            e0, e1, e2 = extrapolants[-3:]
            err = max(abs(e2 - e1), abs(e1 - e0)) + noise_e
            rungs.append((e, err, k))
            if err < best_err:
                best_err = err
            elif noise_e > best_err:
                break
        prev_c, prev_delta = c, delta
    if not rungs:
        return np.nan, np.inf, -1, k + 1, nonfinite
    value, err, k_best = min(rungs, key=lambda r: r[1])
    # Every other rung must agree within both estimates; where one does not,
    # the estimates were too optimistic (a kink closer than the steps, a
    # staircase of rounding): widen to the disagreement.
    for e_j, err_j, _ in rungs:
        err = max(err, abs(e_j - value) - err_j)
    return value, err, k_best, k + 1, nonfinite


def kink_test(evals, k_best):
    """Kink test on the one-sided slopes of the rungs from the chosen one down.

    ``evals[k] = (forward slope, backward slope, noise)``. At a smooth point
    the jump ``forward - backward`` is ``t * phi''`` and halves with the
    step; at a kink (or a kink closer than the steps) it does not. Returns
    ``(kink, lowest slope, highest slope)`` over the rungs from the first
    non-shrinking pair on: any value between them is a valid subgradient
    (or, for a kink closer than the steps, cannot be told from the truth).
    A jump that grows as the step shrinks is noise, not a kink.
    """
    ks = [k for k in sorted(evals) if k >= k_best - 1]
    jumps = {k: (evals[k][0] - evals[k][1], evals[k][2]) for k in ks}
    for a, b in zip(ks, ks[1:], strict=False):
        (ja, na), (jb, nb) = jumps[a], jumps[b]
        if abs(ja) > 4.0 * na and abs(jb) > 4.0 * nb and abs(jb) > 0.8 * abs(ja):
            # A kink's jump is bounded by the difference of the one-sided
            # derivatives; a jump that keeps growing as the step shrinks is
            # noise in fn (rounding staircase, hidden randomness), not a kink.
            later = [k for k in ks if k >= a]
            growing = any(
                abs(jumps[d][0]) > 1.5 * abs(jumps[c][0]) and abs(jumps[d][0]) > 4.0 * jumps[d][1]
                for c, d in zip(later, later[1:], strict=False)
            )
            if growing:
                return False, np.nan, np.nan
            slopes = [v for k in later for v in evals[k][:2]]
            return True, min(slopes), max(slopes)
    return False, np.nan, np.nan


def _perturbed(x, t):
    """``(x + t, x - t, (x + t) - (x - t))`` for a scalar, rounded as float64."""
    xp = x + t
    xm = x - t
    return xp, xm, xp - xm


def partials(objective, indices, *, grads=None, t0=T0, n_rungs=N_RUNGS):
    """Per-element derivatives of ``objective`` with error estimates.

    Parameters
    ----------
    objective : ScalarObjective
    indices : sequence of (input_number, flat_index)
        Which elements to differentiate with respect to.
    grads : sequence of arrays, optional
        A gradient estimate (e.g. the analytic one) for the noise model.
    t0 : float
        Largest step; rungs are ``t0 / 2^k``.

    Returns
    -------
    Estimate
        One entry per index, in order.

    Examples
    --------
    >>> import numpy as np
    >>> from oracles.numerics.objective import ScalarObjective
    >>> obj = ScalarObjective(np.abs, [np.array([0.0, 2.0])], np.ones(2))
    >>> est = partials(obj, [(0, 0), (0, 1)])
    >>> est.kink.tolist(), float(est.value[1]), bool(est.error[1] < 1e-12)
    ([True, False], 1.0, True)
    """
    noise_x = objective.input_noise(grads)
    m = len(indices)
    value = np.full(m, np.nan)
    error = np.full(m, np.inf)
    step = np.full(m, np.nan)
    kink = np.zeros(m, dtype=bool)
    left = np.full(m, np.nan)
    right = np.full(m, np.nan)
    nonfinite = np.zeros(m, dtype=bool)
    calls0 = objective.calls
    work = objective.work
    for p, (i, j) in enumerate(indices):
        flat = work[i].reshape(-1)
        x0 = flat[j]
        evals = {}
        mask = np.zeros(objective.cotangent.shape, dtype=bool)

        def quotient(k, flat=flat, j=j, x0=x0, evals=evals, mask=mask):
            t = t0 * 2.0**-k
            xp, xm, delta = _perturbed(x0, t)
            try:
                flat[j] = xp
                fp = objective.output(work)
                flat[j] = xm
                fm = objective.output(work)
            finally:
                flat[j] = x0
            cot = objective.cotangent
            if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
                return np.nan, delta, np.inf
            f0 = objective.base_output
            hp, hm = xp - x0, x0 - xm
            fwd = float(np.vdot(cot, fp - f0)) / hp
            bwd = float(np.vdot(cot, f0 - fm)) / hm
            evals[k] = (fwd, bwd, (changed_noise(cot, fp, f0, mask) + noise_x) / min(hp, hm))
            num = float(np.vdot(cot, fp - fm))
            # Rounding x +- t can leave the two steps unequal: the difference
            # is then centred at x + (hp - hm) / 2, off by curvature * that.
            center = abs(fwd - bwd) / (0.5 * (hp + hm)) * abs(hp - hm)
            noise = changed_noise(cot, fp, fm, mask) + 2.0 * noise_x
            return num / delta, delta, noise / delta + center

        v, e, k_best, n_eval, nf = ladder(quotient, n_rungs=n_rungs)
        value[p], error[p] = v, e + objective.hidden_noise(mask, t0)
        nonfinite[p] = nf or not np.isfinite(v)
        if k_best >= 0:
            step[p] = t0 * 2.0**-k_best
        kink[p], left[p], right[p] = kink_test(evals, k_best)
    return Estimate(
        value=value,
        error=error,
        step=step,
        kink=kink,
        left=left,
        right=right,
        nonfinite=nonfinite,
        evaluations=objective.calls - calls0,
        notes=list(objective.notes),
    )
