"""Derivatives along whole directions: of the scalar objective, and of a vector function.

:func:`directional` differentiates ``phi = <cotangent, fn>`` along whole
directions of the inputs (the projections of the fast mode).
:func:`vector_ladder` differentiates every output element of a vector
function along one direction (the references of forward-mode and
second-order checks), running the step ladder's rules per element.
"""

from __future__ import annotations

import numpy as np

from oracles.errors import UserFunctionError
from oracles.numerics.ladder import kink_test, ladder
from oracles.numerics.objective import EPS, N_RUNGS, NOISE_SAFETY, T0, Estimate

__all__ = ["directional", "vector_ladder"]


def directional(objective, directions, *, grads=None, t0=T0, n_rungs=N_RUNGS):
    """Derivatives of ``objective`` along whole directions, with error estimates.

    When ``grads`` (one array per input: e.g. the analytic gradient) is given,
    the ladder runs on the *residual*
    ``phi(x + t u) - phi(x - t u) - <grads, (x + t u) - (x - t u)>``, divided
    by ``2 t``. That is the directional derivative of ``phi - <grads, x>``:
    zero when ``grads`` is right, and free of the error of not being able to
    step exactly ``t u`` in floating point (which would otherwise be
    ``|grad| * ulp(x) / t`` per element). The value returned is then the
    residual ``<true_grad - grads, u>`` estimate; ``value + <grads, u>`` is
    the numeric directional derivative.

    Parameters
    ----------
    objective : ScalarObjective
    directions : sequence of tuples of arrays
        Each direction is one array per input (zeros where an input is not
        perturbed).

    Returns
    -------
    Estimate

    Examples
    --------
    >>> import numpy as np
    >>> from oracles.numerics.objective import ScalarObjective
    >>> x = np.array([0.5, -1.0])
    >>> obj = ScalarObjective(np.sin, [x], np.ones(2))
    >>> est = directional(obj, [(np.array([1.0, -1.0]),)])   # d/dt sum sin(x + t u)
    >>> bool(abs(est.value[0] - (np.cos(0.5) - np.cos(-1.0))) < 1e-10)
    True
    """
    noise_x = objective.input_noise(grads)
    m = len(directions)
    value = np.full(m, np.nan)
    error = np.full(m, np.inf)
    step = np.full(m, np.nan)
    nonfinite = np.zeros(m, dtype=bool)
    calls0 = objective.calls
    gs = None if grads is None else [np.asarray(g, dtype=np.float64) for g in grads]
    for p, u in enumerate(directions):
        u = [np.asarray(ui, dtype=np.float64) for ui in u]
        mask = np.zeros(objective.cotangent.shape, dtype=bool)

        def quotient(k, u=u, mask=mask):
            t = t0 * 2.0**-k
            # asarray: a 0-d input plus a 0-d direction is a NumPy scalar, not an array.
            xp = [np.asarray(x + t * ui) for x, ui in zip(objective.work, u, strict=True)]
            xm = [np.asarray(x - t * ui) for x, ui in zip(objective.work, u, strict=True)]
            num, noise = objective.difference(xp, xm, mask)
            if gs is not None:
                num -= sum(
                    float(np.vdot(g.ravel(), (a - b).ravel()))
                    for g, a, b in zip(gs, xp, xm, strict=True)
                )
            return num / (2.0 * t), 2.0 * t, (noise + 2.0 * noise_x) / (2.0 * t)

        v, e, k_best, _, nf = ladder(quotient, n_rungs=n_rungs)
        value[p], error[p] = v, e + objective.hidden_noise(mask, t0)
        nonfinite[p] = nf or not np.isfinite(v)
        if k_best >= 0:
            step[p] = t0 * 2.0**-k_best
    return Estimate(
        value=value,
        error=error,
        step=step,
        kink=np.zeros(m, dtype=bool),
        left=np.full(m, np.nan),
        right=np.full(m, np.nan),
        nonfinite=nonfinite,
        evaluations=objective.calls - calls0,
        notes=list(objective.notes),
    )


def _changed_noise(fp, fm, mask):
    """Per-element rounding noise of ``fp - fm`` where an element was seen to change.

    ``mask`` accumulates (in place) the elements that changed at any rung.
    """
    mask |= fp != fm
    level = np.maximum(np.abs(fp), 1.0) + np.maximum(np.abs(fm), 1.0)
    with np.errstate(invalid="ignore"):
        return np.where(mask, NOISE_SAFETY * EPS * level, 0.0)


def vector_ladder(evaluate, xs, us, *, linear=None, t0=T0, n_rungs=N_RUNGS):
    """Derivative of a vector function along ``us``, per output element, with error estimates.

    ``evaluate(list of arrays) -> flat float64 vector``. Rung ``k`` (step
    ``h = t0 / 2^k``) is the central difference ``(f(x + h u) - f(x - h u)) /
    2h``; each output element then runs the scalar ladder's rules
    (:func:`oracles.numerics.ladder.ladder`: Richardson between neighbouring
    rungs, error = the larger of the last two extrapolant changes plus the
    rounding noise, the rung with the smallest error wins, consistency across
    rungs) and the kink test (:func:`oracles.numerics.ladder.kink_test`) on its own
    column. Rungs are evaluated lazily: as many as the slowest element needs.

    ``x + h u`` cannot be stepped exactly in floating point: the step taken
    is ``(x + h u) - (x - h u) = 2 h u + delta``. When ``linear`` (the
    analytic JVP, ``linear(list of tangents) -> flat vector``) is given, the
    effect of ``delta``, ``J delta / 2h``, is removed with it, as
    :func:`directional` does with the analytic gradient; an
    error in ``linear`` enters only multiplied by ``|delta| / h`` (about
    ``eps |x| / h``). Without it the ladder cannot see that error: ``h``
    halves exactly from rung to rung, so ``x + h u`` rounds the same way at
    every rung and the bias ``|J| ulp(x) / h`` is consistent, not noisy.

    Returns a dict of flat arrays ``value, error, kink, left, right,
    nonfinite`` and the number of evaluations.
    """
    f0 = evaluate(xs)
    m = f0.size
    calls = [1]
    mask = np.zeros(m, dtype=bool)
    rungs = {}

    def rung(k):
        if k in rungs:
            return rungs[k]
        h = t0 * 2.0**-k
        xp = [x + h * u for x, u in zip(xs, us, strict=True)]
        xm = [x - h * u for x, u in zip(xs, us, strict=True)]
        fp, fm = evaluate(xp), evaluate(xm)
        calls[0] += 2
        if fp.shape != f0.shape or fm.shape != f0.shape:
            raise UserFunctionError(
                f"fn returned {fp.size if fp.shape != f0.shape else fm.size} elements at a "
                f"perturbed point but {m} at the evaluation point"
            )
        corr = np.zeros(m)
        if linear is not None:
            deltas = [(a - b) - 2.0 * h * u for a, b, u in zip(xp, xm, us, strict=True)]
            if any(np.any(d != 0) for d in deltas):
                corr = linear([d / (2.0 * h) for d in deltas])
        with np.errstate(invalid="ignore", over="ignore"):
            c = (fp - fm) / (2.0 * h) - corr
            noise = _changed_noise(fp, fm, mask) / (2.0 * h)
            fwd = (fp - f0) / h
            bwd = (f0 - fm) / h
            side_noise = (
                NOISE_SAFETY * EPS * (np.maximum(np.abs(fp), 1.0) + np.maximum(np.abs(f0), 1.0)) / h
            )
        bad = ~(np.isfinite(fp) & np.isfinite(fm))
        c = np.where(bad, np.nan, c)
        rungs[k] = (c, 2.0 * h, noise, fwd, bwd, side_noise, bad)
        return rungs[k]

    value = np.full(m, np.nan)
    error = np.full(m, np.inf)
    kink = np.zeros(m, dtype=bool)
    left = np.full(m, np.nan)
    right = np.full(m, np.nan)
    nonfinite = np.zeros(m, dtype=bool)
    for i in range(m):

        def quotient(k, i=i):
            c, delta, noise, *_ = rung(k)
            return c[i], delta, noise[i]

        v, e, k_best, n_eval, nf = ladder(quotient, n_rungs=n_rungs)
        value[i], error[i] = v, e
        nonfinite[i] = nf or not np.isfinite(v)
        if k_best >= 0:
            evals = {
                k: (r[3][i], r[4][i], r[5][i])
                for k, r in rungs.items()
                if k < n_eval and not r[6][i]
            }
            kink[i], left[i], right[i] = kink_test(evals, k_best)
    # An output element that never changed, even at the largest step, can still
    # depend on the direction by less than its own rounding: bound it.
    hidden = np.where(mask, 0.0, 2.0 * EPS * np.maximum(np.abs(f0), 1.0) / t0)
    error = error + hidden
    out = {
        "value": value,
        "error": error,
        "kink": kink,
        "left": left,
        "right": right,
        "nonfinite": nonfinite,
    }
    return out, calls[0]
