"""Derivatives along whole directions: of the scalar objective, and of a vector function.

:func:`directional` differentiates ``phi = <cotangent, fn>`` along whole
directions of the inputs (the projections of the fast mode).
:func:`vector_ladder` differentiates every output element of a vector
function along one direction (the references of forward-mode and
second-order checks), running the step ladder's rules per element.

Both are independent of the units: the steps are relative to
:func:`direction_scale` (the scale of the inputs over the scale of the
direction), and the rounding noise is the measured noise of each output
element (:func:`~oracles.numerics.objective.measure_noise`).
"""

from __future__ import annotations

import numpy as np

from oracles.errors import UserFunctionError
from oracles.numerics.ladder import (
    FROZEN_LEVELS,
    ROUNDING_UNITS,
    UNSEEN_NOISE,
    _measured_quantum,
    _moved,
    kink_test,
    ladder,
    scale_search,
)
from oracles.numerics.objective import (
    ANALYTIC_ROUNDING,
    EPS,
    MAX_RUNGS,
    NOISE_SAFETY,
    T0,
    Estimate,
    _rms,
    _whole_multiples,
    analytic_rounding,
    largest_magnitude,
    measure_noise,
    measured_scales,
)

__all__ = ["direction_scale", "directional", "vector_ladder"]


def direction_scale(scales, direction):
    """The step unit of a direction: ``max_i rms(s_i) / rms(u_i)`` over the inputs it moves.

    ``x + t * S * u`` then moves every input by about ``t`` times its own
    scale (``scales``: :func:`~oracles.numerics.objective.element_scales`).

    Examples
    --------
    >>> direction_scale([np.full(3, 1e9)], [np.ones(3)])
    1000000000.0
    """
    out = 0.0
    for s, u in zip(scales, direction, strict=True):
        u = np.asarray(u, dtype=np.float64)
        moved = np.broadcast_to(u != 0, np.shape(s))
        if not moved.any():
            continue
        ru = _rms(u[u != 0]) if u.ndim else abs(float(u))
        if ru > 0:
            out = max(out, _rms(np.asarray(s)[moved]) / ru)
    return out or 1.0


def directional(objective, directions, *, grads=None, t0=T0, n_rungs=MAX_RUNGS):
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
    t0 : float
        Largest step, relative to :func:`direction_scale` of each direction.
    n_rungs : int
        Most rungs to descend.

    Returns
    -------
    Estimate
        ``step`` is relative to ``scale`` (the direction's scale).

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
    objective.noise  # noqa: B018 - measure before counting this method's calls
    m = len(directions)
    value = np.full(m, np.nan)
    error = np.full(m, np.inf)
    step = np.full(m, np.nan)
    scale = np.full(m, np.nan)
    nonfinite = np.zeros(m, dtype=bool)
    calls0 = objective.calls
    cot = objective.cotangent
    f0 = objective.base_output
    level0 = objective.noise.level(f0)
    gs = None if grads is None else [np.asarray(g, dtype=np.float64) for g in grads]
    for p, u in enumerate(directions):
        u = [np.asarray(ui, dtype=np.float64) for ui in u]
        mask = np.zeros(cot.shape, dtype=bool)
        unit = direction_scale(objective.scales, u)
        tops, terms, closest = [], {}, [np.inf]

        def quotient(k, u=u, mask=mask, unit=unit, tops=tops, terms=terms, closest=closest):
            t = t0 * unit * 2.0**-k
            with np.errstate(over="ignore", invalid="ignore"):
                # asarray: a 0-d input plus a 0-d direction is a NumPy scalar, not an array.
                xp = [np.asarray(x + t * ui) for x, ui in zip(objective.point, u, strict=True)]
                xm = [np.asarray(x - t * ui) for x, ui in zip(objective.point, u, strict=True)]
            moved = [(a != b) for a, b in zip(xp, xm, strict=True)]
            if not any(np.any(mv) for mv in moved):
                return None  # the step no longer moves x
            fp, fm = objective.output(xp), objective.output(xm)
            if fp.shape != cot.shape or fm.shape != cot.shape:
                raise UserFunctionError(
                    f"fn returned shape {fp.shape if fp.shape != cot.shape else fm.shape} at a "
                    f"perturbed point but {cot.shape} at the evaluation point"
                )
            if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
                return np.nan, 2.0 * t, np.inf
            still = np.array_equal(fp, f0) and np.array_equal(fm, f0)
            if still and mask.any() and closest[0] <= FROZEN_LEVELS:
                return None  # below fn's resolution (see oracles.numerics.ladder)
            if not still:
                closest[0] = min(closest[0], _moved(fp, fm, f0, level0))
            tops.append(k)
            side = max(objective.rung_noise(fp, f0, mask), objective.rung_noise(f0, fm, mask))
            noise = objective.rung_noise(fp, fm, mask)
            num = float(np.vdot(cot, fp - fm))
            jump = float(np.vdot(cot, fp - f0) - np.vdot(cot, f0 - fm)) / t
            if gs is not None:
                num -= sum(
                    float(np.vdot(g.ravel(), (a - b).ravel()))
                    for g, a, b in zip(gs, xp, xm, strict=True)
                )
            terms[k] = float(np.vdot(np.abs(cot), np.abs(fp - fm))) / (2.0 * t)
            return num / (2.0 * t), 2.0 * t, noise / (2.0 * t), jump, 2.0 * side / t

        v, e, k_best, _, nf = ladder(quotient, n_rungs=n_rungs)
        top = min(tops + [0])
        value[p] = v
        error[p] = (
            e
            + objective.hidden_noise(mask, t0 * unit * 2.0**-top)
            + analytic_rounding(terms.get(k_best, 0.0), objective.noise.kind)
        )
        nonfinite[p] = nf or not np.isfinite(v)
        scale[p] = unit
        if k_best is not None:
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
        scale=scale,
    )


#: Rescaled directions whose defect measures the rounding of the analytic derivative.
ROUNDING_PROBES = 4

#: Largest defect, relative to the largest result, still taken for rounding.
ROUNDING_CAP = 2.0**10 * EPS


def _linear_rounding(linear, us, m):
    """What the analytic derivative's own rounding may move each of its elements by.

    ``linear`` is linear in exact arithmetic, so ``linear(a u) / a -
    linear(u)`` (``a`` random in ``[1, 2)``, not a power of 2) is rounding,
    per element: the rounding of the terms it is computed from, which can be
    far larger than the rounding of the result when they cancel (``t -
    sum(a t)`` of a log-softmax JVP at the row's maximum is ``1e-13`` from
    terms of size 1). The largest defect over :data:`ROUNDING_PROBES` such
    rescalings (one alone can come out 0), times
    :data:`~oracles.numerics.objective.ANALYTIC_ROUNDING`; at least ``eps
    |linear(u)|``, and never more than :data:`ROUNDING_CAP` times the largest
    ``|linear(u)|`` (a derivative that is not linear is not rounding: it gets
    no allowance beyond that).
    """
    rng = np.random.default_rng(20261201)
    try:
        base = np.asarray(linear(list(us)), dtype=np.float64).reshape(-1)
    except Exception:  # noqa: BLE001 - the pipeline reports the user's derivative itself
        return np.zeros(m)
    if base.size != m or not np.all(np.isfinite(base)):
        return np.zeros(m)
    defect = np.zeros(m)
    for a in 1.0 + rng.random(ROUNDING_PROBES):
        scaled = np.asarray(linear([a * u for u in us]), dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(scaled / a - base)
        defect = np.fmax(defect, np.where(np.isfinite(d), d, 0.0))
    cap = ROUNDING_CAP * float(np.max(np.abs(base), initial=0.0))
    defect = np.maximum(np.minimum(defect, cap), EPS * np.abs(base))
    return ANALYTIC_ROUNDING * defect


#: Rungs just above the one where an element froze whose changes measure its quantum.
FROZE_RUNGS = 3


def _froze_quantum(raw, level):
    """The quantum of an element that moved by whole units of it, and then not at all.

    ``raw``: the element's rungs (``dp = f(x + h u) - f(x)``, ``dm = f(x) - f(x - h
    u)``, ``dc = dp + dm``), ``level``: the noise model's rounding of its value.
    A function computed to its own precision stops changing (on both sides at
    once) only where ``|f'| h`` falls below its rounding; one whose changes at
    the :data:`FROZE_RUNGS` rungs above that were whole multiples of the
    smallest, far above ``level`` (``UNSEEN_NOISE`` times), is a staircase whose
    stairs the noise model did not see: ``log(1 + exp(x))`` at ``x = -36``
    (``1 + 2e-16`` rounds to 1 or to ``1 + 2^-52``), ``-log(1 + 1e-15)`` at a
    log-softmax row's maximum. Their smallest change is its rounding. A
    function constant beyond a kink (a ReLU a distance ``d`` from it) moves
    by ``s (h - d)``, no whole multiples of each other. 0 where neither holds.
    """
    still = [k for k, g in raw.items() if g["dp"] == 0.0 and g["dm"] == 0.0]
    if not still:
        return 0.0
    above = sorted(k for k, g in raw.items() if k < min(still) and (g["dp"] or g["dm"]))
    above = above[-FROZE_RUNGS:]
    gaps = np.abs([raw[k][d] for k in above for d in ("dp", "dm", "dc")])
    gaps = gaps[np.isfinite(gaps) & (gaps > 0.0)]
    if gaps.size < 2:
        return 0.0
    q = float(np.min(gaps))
    if q <= UNSEEN_NOISE * level or not _whole_multiples(gaps[:, None])[0]:
        return 0.0
    return q


def vector_ladder(evaluate, xs, us, *, linear=None, t0=T0, n_rungs=MAX_RUNGS, notes=None):
    """Derivative of a vector function along ``us``, per output element, with error estimates.

    ``evaluate(list of arrays) -> flat float64 vector``. Rung ``k`` (step
    ``h = t0 S / 2^k``, ``S`` the :func:`direction_scale` of ``us``) is the
    central difference ``(f(x + h u) - f(x - h u)) / 2h``; each output
    element then runs the scalar ladder's rules
    (:func:`oracles.numerics.ladder.ladder`: Richardson between neighbouring
    rungs, error = the larger of the last two extrapolant changes plus the
    rounding noise, the rung with the smallest error wins, consistency across
    rungs, the stop below ``fn``'s resolution) and the kink test
    (:func:`oracles.numerics.ladder.kink_test`) on its own column. The
    rounding noise of each output element is measured first
    (:func:`~oracles.numerics.objective.measure_noise`, 9 to 25
    evaluations). Rungs are evaluated lazily: as many as the slowest element
    needs.

    ``x + h u`` cannot be stepped exactly in floating point: the step taken
    is ``(x + h u) - (x - h u) = 2 h u + delta``. When ``linear`` (the
    analytic JVP, ``linear(list of tangents) -> flat vector``) is given, the
    effect of ``delta``, ``J delta / 2h``, is removed with it, as
    :func:`directional` does with the analytic gradient; an
    error in ``linear`` enters only multiplied by ``|delta| / h`` (about
    ``eps |x| / h``). Without it the ladder cannot see that error: ``h``
    halves exactly from rung to rung, so ``x + h u`` rounds the same way at
    every rung and the bias ``|J| ulp(x) / h`` is consistent, not noisy.

    ``notes`` (a list, optional) receives the note on a coarse precision.

    Where the direction moves inputs whose scales per unit of it are more
    than :data:`SPLIT_RATIO` apart (inputs of 1e8 and weights of 1e-8 with
    tangents of 1 on both), no one step resolves them all: the ladder runs
    along each input's part of the direction and the parts are summed (the
    derivative is linear in the direction), values, errors and one-sided
    slopes alike.

    Returns a dict of flat arrays ``value, error, kink, left, right,
    nonfinite`` and the number of evaluations.
    """
    calls = [0]

    def fresh(points):
        calls[0] += 1
        return np.array(evaluate(points), dtype=np.float64, copy=True)

    f0 = fresh(xs)
    scales = measured_scales(fresh, xs, f0=f0)
    noise = measure_noise(fresh, xs, scales, f0=f0)
    if notes is not None and noise.note():
        notes.append(noise.note())
    parts = []
    for group in _scale_groups(scales, us):
        part = [u if k in group else np.zeros_like(u) for k, u in enumerate(us)]
        parts.append(_along(fresh, xs, part, f0, scales, noise, linear, t0, n_rungs))
    out = parts[0]
    for more in parts[1:]:
        for key in ("value", "error", "left", "right"):
            out[key] = out[key] + more[key]
        for key in ("kink", "nonfinite"):
            out[key] = out[key] | more[key]
    return out, calls[0]


#: Inputs whose step units (:func:`direction_scale` of each alone) are more than this
#: factor apart are stepped separately by :func:`vector_ladder`.
SPLIT_RATIO = 2.0**10


def _scale_groups(scales, us):
    """The inputs ``us`` moves, in one group, or one group each when their units are far apart."""
    units = {}
    for k, (s, u) in enumerate(zip(scales, us, strict=True)):
        if np.any(np.asarray(u) != 0):
            units[k] = direction_scale([s], [u])
    if not units or max(units.values()) <= SPLIT_RATIO * min(units.values()):
        return [list(range(len(us)))]
    return [[k] for k in units]


def _along(fresh, xs, us, f0, scales, noise, linear, t0, n_rungs):
    """:func:`vector_ladder` along one direction whose inputs one step resolves."""
    m = f0.size
    unit = direction_scale(scales, us)
    mask = np.zeros(m, dtype=bool)
    closest = np.full(m, np.inf)  # fewest noise levels each element moved by at any rung
    rungs = {}

    def rung(k):
        if k in rungs:
            return rungs[k]
        h = t0 * unit * 2.0**-k
        with np.errstate(over="ignore", invalid="ignore"):
            xp = [x + h * u for x, u in zip(xs, us, strict=True)]
            xm = [x - h * u for x, u in zip(xs, us, strict=True)]
        if not any(np.any(a != b) for a, b in zip(xp, xm, strict=True)):
            rungs[k] = None
            return None
        fp, fm = fresh(xp), fresh(xm)
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
        # Below the resolution: an element that changed at a larger step by a
        # few quanta, and now equals its value at x on both sides (per element).
        still = (fp == f0) & (fm == f0)
        frozen = mask & still & (closest <= FROZEN_LEVELS)
        lp, lm, l0 = noise.level(fp), noise.level(fm), noise.level(f0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            moved = np.maximum(np.abs(fp - f0), np.abs(fm - f0)) / l0
        closest[...] = np.where(~still & np.isfinite(moved), np.minimum(closest, moved), closest)
        # Changed at all: also where both sides moved to the same value (x^2 at
        # x = 1e-21 stepped by 0.1 on either side: fp == fm, far from f(x)).
        mask[...] |= (fp != fm) | (fp != f0) | (fm != f0)
        with np.errstate(invalid="ignore", over="ignore"):
            c = (fp - fm) / (2.0 * h) - corr
            # Unmasked: an element carries its noise at every rung once it changed at any.
            rnoise = NOISE_SAFETY * (lp + lm) / (2.0 * h)
            fwd = (fp - f0) / h
            bwd = (f0 - fm) / h
            side_noise = NOISE_SAFETY * (np.maximum(lp, lm) + l0) / h
        bad = ~(np.isfinite(fp) & np.isfinite(fm))
        c = np.where(bad, np.nan, c)
        rungs[k] = (
            c, 2.0 * h, rnoise, fwd, bwd, side_noise, bad, frozen, np.abs(corr),
            fp - f0, f0 - fm, fp - fm,
        )  # fmt: skip
        return rungs[k]

    if rung(0) is not None and not mask.any():
        # Nothing changed at the largest step: fn may vary on a much larger
        # scale than the inputs' (a softmax of equal logits of 1e-166 varies
        # on a scale of 1). Find it (as the scalar ladder does) and start there.
        def central(step):
            with np.errstate(over="ignore", invalid="ignore"):
                xp = [x + step * u for x, u in zip(xs, us, strict=True)]
                xm = [x - step * u for x, u in zip(xs, us, strict=True)]
            if not all(np.all(np.isfinite(a)) for a in xp + xm):
                return None
            fp, fm = fresh(xp), fresh(xm)
            if fp.shape != f0.shape or fm.shape != f0.shape:
                return None
            changed = fp != fm
            with np.errstate(over="ignore", invalid="ignore"):
                c = np.where(changed, (fp - fm) / (2.0 * step), 0.0)
                n = np.where(changed, NOISE_SAFETY * (noise.level(fp) + noise.level(fm)), 0.0)
            return c, n / (2.0 * step)

        up = scale_search(central, t0 * unit)
        if up is not None:
            unit = float(np.ldexp(unit, up))
            rungs.clear()
            mask[...] = False
            closest[...] = np.inf

    value = np.full(m, np.nan)
    error = np.full(m, np.inf)
    kink = np.zeros(m, dtype=bool)
    left = np.full(m, np.nan)
    right = np.full(m, np.nan)
    nonfinite = np.zeros(m, dtype=bool)
    l0_all = noise.level(f0)
    # Where the noise probe saw an output vary on a smaller scale than the
    # largest rungs, they are meaningless for it (NoiseModel.start_limit).
    with np.errstate(divide="ignore"):
        skip = np.ceil(np.log2(T0 / noise.start_limit()))
    first = np.where(np.isfinite(skip), np.clip(skip, 0, n_rungs // 2), 0).astype(int)

    quantum = np.zeros(m)  # per element, a rounding quantum its rungs show (_element_quantum)
    reach = ROUNDING_UNITS * EPS * largest_magnitude([*xs, f0])

    def moved_by(i, k):
        """How far element ``i`` moved at rung ``k`` (its largest change), None if unknown."""
        r = rungs.get(k)
        if r is None or r[6][i]:
            return None
        return max(abs(r[9][i]), abs(r[10][i]), abs(r[11][i]))

    def _past_variation(i, k):
        """True where the climb's rung ``k`` moved element ``i`` no farther than rung ``k + 1``.

        Below the scale on which an element varies, doubling the step at least
        doubles how far it moves (``|f'| h``, or more where it curves); where
        it moves no farther, the step is past that scale: the element is
        bounded there (a softmax-CE's label gradient ``(p_y - 1) / N`` with
        ``p_y`` 1e-16, saturated at ``-1/N`` on both sides at steps 1e18 times
        its logits), and its central differences, 0 within a noise that
        halves with every rung, would claim any precision.
        """
        a, b = moved_by(i, k), moved_by(i, k + 1)
        return a is not None and b is not None and a <= b

    def _element_quantum(i):
        """The rounding quantum element ``i``'s rungs show and the noise model does not.

        The larger of :func:`_froze_quantum` and of the scalar ladder's measurement
        (:func:`oracles.numerics.ladder._measured_quantum`) on this element's rungs: a
        log-softmax at its row's maximum, ``-log(1 + 1e-15)``, moves in units of
        ``2^-52`` (the rounding of the sum near 1), 1e15 times the rounding of a value
        of its size. Counted up to ``ROUNDING_UNITS`` units of ``EPS`` times the largest
        input or output, as there.
        """
        raw = {}
        for k, r in rungs.items():
            if r is None or r[6][i] or r[7][i]:
                continue
            h = 0.5 * r[1]
            dp, dm, dc = float(r[9][i]), float(r[10][i]), float(r[11][i])
            raw[k] = {
                "fwd": dp / h, "bwd": dm / h, "side": float(r[5][i]) * h, "h": h,
                "dp": dp, "dm": dm, "mid": dc / r[1], "dc": dc,
            }  # fmt: skip
        froze = _froze_quantum(raw, float(l0_all[i]))
        # The slopes' signatures only below the top rung: above it (k < 0, a climb's) the
        # steps exceed the inputs' scale, and slopes that turn there tell nothing about
        # rounding (a softmax-CE's gradient of 1e-33 at steps of 60). A jump larger than
        # reach is fn's own (GELU's gradient, 0 below its knee and 1 above, straddled by
        # the largest steps): measured again without the largest rungs, until what is
        # left is rounding.
        for top in sorted(k for k in raw if k >= 0):
            got = _measured_quantum({k: g for k, g in raw.items() if k >= top}, unit)
            if got <= reach:
                return max(got, froze if froze <= reach else 0.0)
        return froze if froze <= reach else 0.0

    def solve(i):
        """Element ``i``'s ladder and kink test over the rungs (cached) it needs."""

        q = quantum[i]

        def quotient(k):
            r = rung(k)
            if r is None or r[7][i]:
                return None
            if k < first[i] and _past_variation(i, k):
                return None  # climbing beyond the scale on which element i varies
            c, delta, rn, fwd, bwd, side = r[:6]
            noise_i = rn[i] + q / delta if mask[i] else 0.0
            side_i = side[i] + 2.0 * q / delta
            return c[i], delta, noise_i, fwd[i] - bwd[i], 2.0 * side_i, 2.0 * r[8][i]

        v, e, k_best, n_eval, nf = ladder(quotient, n_rungs=n_rungs, first=int(first[i]))
        frozen = [k for k, r in rungs.items() if r is not None and r[7][i]]
        if k_best is None and frozen and not nf:
            # Changed at larger steps, not at all at these (saturated): 0 within
            # the element's resolution over the largest such step.
            v = 0.0
            e = 4.0 * max(float(l0_all[i]), q) / (t0 * unit * 2.0 ** -min(frozen))
        value[i], error[i] = v, e
        nonfinite[i] = nf or not np.isfinite(v)
        used = {
            k: r
            for k, r in rungs.items()
            if r is not None and k < n_eval and not r[6][i] and not r[7][i]
        }
        kb = k_best if k_best is not None else min(used, default=0)
        evals = {k: (r[3][i], r[4][i], r[5][i] + 2.0 * q / r[1]) for k, r in used.items()}
        kink[i], left[i], right[i] = kink_test(evals, kb)
        return bool(mask[i])

    # An element first seen to change at a rung evaluated after its ladder ran
    # (during its own, or another element's that needed larger steps) carries
    # its noise at every rung, also at the cached ones its ladder read: it
    # runs again with that noise (the label's gradient -1/8 of a softmax-CE
    # whose label logit is 60 below its row's max moves by one ulp only at
    # the largest steps; without its noise the small rungs read 0 +- 0).
    # An element whose rungs show a rounding quantum the noise model missed carries it
    # at every rung too: it runs again with it (until its quantum no longer grows).
    ran_seen = np.array([solve(i) for i in range(m)], dtype=bool)
    for _ in range(4):
        redo = set(np.flatnonzero(mask & ~ran_seen).tolist())
        for i in np.flatnonzero(mask):
            got = _element_quantum(int(i))
            if got > quantum[i]:
                quantum[i] = got
                redo.add(int(i))
        if not redo:
            break
        for i in sorted(redo):
            ran_seen[i] = solve(i)
    # An output element that never changed, even at the largest step, can still
    # depend on the direction by less than its own rounding: bound it.
    top = min([k for k in rungs] + [0])
    hidden = np.where(mask, 0.0, 2.0 * noise.level(f0) / (t0 * unit * 2.0**-top))
    error = error + hidden
    if linear is not None:
        error = error + _linear_rounding(linear, us, m)
    out = {
        "value": value,
        "error": error,
        "kink": kink,
        "left": left,
        "right": right,
        "nonfinite": nonfinite,
    }
    return out
