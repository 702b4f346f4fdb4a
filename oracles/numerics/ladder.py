"""The step ladder: central differences at halving steps, Richardson extrapolation, kinks.

How one derivative is computed
------------------------------
For steps ``t_k = t_0 s / 2^k`` (``t_0 = 1/8``; ``s`` the element's scale,
:func:`~oracles.numerics.objective.element_scales`, so that the ladder is
the same in any units):

1. Evaluate ``phi`` at ``x + t_k u`` and ``x - t_k u``, rounded to float64,
   and divide by the step **actually taken**, ``(x + t_k u) - (x - t_k u)``,
   not by the nominal ``2 t_k`` (at ``x = 1e6`` the two differ in the 5th
   digit for ``t = 1e-5``).
2. Richardson extrapolation between neighbouring rungs removes the ``t^2``
   term: ``e_k = c_k + (c_k - c_{k-1}) / (r^2 - 1)`` with ``r`` the actual
   step ratio (2 up to rounding).
3. The error estimate of rung ``k`` is the larger of the last two changes
   between successive extrapolants plus a rounding term
   ``noise(phi) / step``; the rung with the smallest estimate wins.

``noise(phi)`` is the rounding noise of the output elements that changed,
as measured for this ``fn``
(:meth:`~oracles.numerics.objective.ScalarObjective.rung_noise`).

Where the ladder starts and stops
---------------------------------
The scale ``s`` comes from the inputs; the function may vary on a smaller
one (a softmax of logits near ``1e6`` varies on a scale of 1). A coarse
descent (every 4th rung) first finds where the central differences settle
(:func:`ladder`); the ladder proper starts there. It descends until the
rounding term alone exceeds the best estimate (rounding only grows as the
step shrinks), or until the step falls below ``fn``'s resolution: when
``fn`` returns *exactly* its value at ``x`` on both sides although larger
steps changed it by a few quanta, the difference is 0 because the step
rounded away (a function that computes in float32 does so below about
``6e-8 |x|``), not because the derivative is 0, and that rung and every
smaller one are discarded. When the best rung is the largest one and its
estimate is rounding-dominated, the steps were too small for the scale on
which ``fn`` varies, and the ladder climbs to larger steps (up to ``2^64``
times larger) until the best rung is no longer at the top. When nothing
changed at any rung, :func:`scale_search` looks for the scale on which
``fn`` varies (``exp`` at ``x = 1e-131``) and the ladder runs there.

Outputs that never changed
--------------------------
An output that stayed bitwise equal at every rung may depend on the element
below its resolution (a softmax output of exactly 1.0), or not at all (an
elementwise ``fn``). Only the outputs that change at some far step
(:data:`FAR_STEPS`) are bounded
(:meth:`~oracles.numerics.objective.ScalarObjective.hidden_noise`):
elements of ``exp`` over ``[-30, 30]`` are not judged at the resolution of
``exp(30)``.

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

A kink *near* ``x`` (``abs(x - c)`` with ``c`` 1e-6 away, a max-pool window
whose two values differ by 1e-6) keeps the jump only while the steps
straddle it; where it collapses at smaller steps (:func:`_past_kink`),
``phi`` is differentiable at ``x``, and the ladder runs again from there:
those steps measure its derivative. Only a kink closer than the steps can
resolve is taken to be at ``x``.
"""

from __future__ import annotations

import math

import numpy as np

from oracles.numerics.objective import (
    EPS,
    MAX_RUNGS,
    NOISE_SAFETY,
    REDUCED_UNIT,
    T0,
    Estimate,
    analytic_rounding,
)

__all__ = ["MAX_UP", "kink_test", "ladder", "partials", "scale_search"]

#: Most rungs the ladder climbs above its first step (``2^64``: exp at x = 1e-16 needs 2^40).
MAX_UP = 64

#: A best estimate worse than this (relative to the value) at the top rung makes the ladder climb.
CLIMB_ABOVE = 1e-10

#: Factor on the change between successive extrapolants (the truncation estimate): alone it
#: fell 10% short of the true error of a softmax JVP element of 1e-192 (logits 437.5 apart).
TRUNCATION_SAFETY = 1.25

#: Rungs of exact zeros, or of quotients flat within their noise, after which the ladder stops.
PATIENCE = 8

#: Stride of the coarse descent that finds where the central differences settle.
COARSE = 4

#: Relative agreement of two coarse central differences that counts as settled.
COARSE_AGREE = 0.05

#: Far steps (times the element's scale) that test whether unchanged outputs depend on it.
FAR_STEPS = (2.0**4, 2.0**32, 2.0**256, 2.0**1000)


class _Rungs:
    """Richardson extrapolants and their error estimates over consecutive rungs."""

    def __init__(self):
        self.prev = None
        self.extrapolants = []
        self.results = []  # (value, error, k, noise) of every rung with an estimate

    def add(self, k, c, delta, noise_c):
        if not np.isfinite(c):
            self.prev, self.extrapolants = None, []
            return None
        if self.prev is None or self.prev[0] != k - 1:
            self.prev, self.extrapolants = (k, c, delta), []
            return None
        _, prev_c, prev_delta = self.prev
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            r2 = (prev_delta / delta) ** 2
        if not (np.isfinite(r2) and r2 > 1.0):
            # The two steps taken rounded to the same size (or did not shrink):
            # no extrapolation across them; start again from this rung.
            self.prev, self.extrapolants = (k, c, delta), []
            return None
        e = c + (c - prev_c) / (r2 - 1.0)
        noise_e = noise_c * (r2 + 1.0) / (r2 - 1.0)
        self.extrapolants.append(e)
        self.prev = (k, c, delta)
        if len(self.extrapolants) < 3:
            return None
        e0, e1, e2 = self.extrapolants[-3:]
        err = TRUNCATION_SAFETY * max(abs(e2 - e1), abs(e1 - e0)) + noise_e
        self.results.append((e, err, k, noise_e))
        return err, noise_e


def _flat(a, b):
    """Two consecutive rungs' quotients (and jumps, where given) equal within their noise."""
    if not (np.isfinite(a[0]) and np.isfinite(b[0])) or abs(a[0] - b[0]) > a[2] + b[2]:
        return False
    if len(a) > 4 and len(b) > 4 and (np.isfinite(a[3]) or np.isfinite(b[3])):
        return bool(abs(a[3] - b[3]) <= a[4] + b[4])
    return True


#: Consecutive rungs whose quotients agree within their noise before the far rung is tried.
FLAT_RUNGS = 6

#: Halvings below a flat run where its quotient must still hold for the ladder to stop. A
#: rounding staircase can be flat too: SELU at 0 computes lambda alpha (exp(-t) - 1), whose
#: quanta of exp's near 1 halve exactly with t over 9 rungs there, a constant bias of 7e-6
#: in the slope; 2^24 times smaller steps change it (or freeze that side).
FAR_DROP = 24


def _far_agrees(peek, k, res, n_rungs):
    """The rung ``FAR_DROP`` below ``k`` agrees with ``k``'s ``res`` within their noise.

    ``peek`` evaluates it without recording it: a rung that far below, out of
    the ladder's order, can land where ``fn`` no longer resolves the step (a
    ReLU in float16, whose output underflows to 0 on both sides of a zero),
    which the descent, reaching it rung by rung, tells from a constant piece.
    ``peek`` returns ``None`` there (nothing moved, or not finite).
    """
    far = min(n_rungs - 1, k + FAR_DROP)
    if far <= k + FLAT_RUNGS:
        return False
    got = peek(far)
    return got is not None and _flat(res, got)


def _analyse(cache, ks):
    rungs = _Rungs()
    for k in ks:
        rungs.add(k, *cache[k][:3])
    return rungs.results


def _settled(a, b, c):
    """Three coarse rungs (largest step first) where the central differences have settled.

    The last two agree to 5% beyond their noise and their difference is at
    most a quarter of the first two's (differences shrink like ``t^2`` at a
    smooth point, are 0 at a kink of straight pieces); where the quotient
    reports it, the jump between the one-sided slopes did not grow either
    (where steps are far larger than the scale on which ``fn`` varies it
    grows like ``1 / t``: a saturated output is the same at ``x + t`` and
    ``x - t``). Large steps can also sit on a plateau, where ``fn`` is
    piecewise linear far out (``log_softmax`` of logits near ``1e6`` stepped
    by ``1e5``): there the differences grow as the step shrinks.
    """
    ca, cb, cc = a[0], b[0], c[0]
    if not (np.isfinite(ca) and np.isfinite(cb) and np.isfinite(cc)):
        return False

    def slack(r):
        return r[5] if len(r) > 5 else 0.0

    noise_ab = 4.0 * (a[2] + b[2]) + slack(a) + slack(b)
    noise_bc = 4.0 * (b[2] + c[2]) + slack(b) + slack(c)
    d_ab, d_bc = abs(ca - cb), abs(cb - cc)
    if d_bc > COARSE_AGREE * (abs(cb) + abs(cc)) + noise_bc:
        return False
    if d_bc > 0.25 * d_ab + noise_ab + noise_bc:
        return False
    if len(b) > 3 and len(c) > 3:
        (jb, njb), (jc, njc) = b[3:5], c[3:5]
        if np.isfinite(jb) and np.isfinite(jc) and abs(jc) > 2.0 * abs(jb) + 4.0 * (njb + njc):
            return False
    return True


#: A jump that falls to this fraction of a kink's (where the noise could show one) is past it.
PAST_KINK = 0.25


def _past_kink(jumps):
    """The first rung below a kink that the larger steps straddled, or ``None``.

    ``jumps``: ``(rung, |forward - backward|, its noise)``, largest step
    first. A kink *at* ``x`` keeps the jump at its size as the step shrinks,
    down to the noise. A kink a distance ``d`` away (``abs(x - c)`` with
    ``c = x + 1e-6``) does so only while the steps straddle it; below ``d``
    the jump collapses to the smooth ``t phi''``, and ``phi`` is
    differentiable at ``x``: the central differences above ``d`` average
    its two pieces, and the one-sided slopes there are not subgradients.
    Returns the first rung whose jump is at most :data:`PAST_KINK` of the
    kink's, where the noise could not have hidden one that size.

    Examples
    --------
    >>> kink = [(k, 1.0, 1e-9) for k in range(6)]
    >>> near = kink + [(k, 1e-3 * 2.0**-k, 1e-9) for k in range(6, 12)]
    >>> _past_kink(kink), _past_kink(near)
    (None, 6)
    """
    kink_jump = None
    for (_, ja, na), (kb, jb, nb) in zip(jumps, jumps[1:], strict=False):
        if ja > 4.0 * na and jb > 4.0 * nb and jb > 0.8 * ja:
            kink_jump = max(kink_jump or 0.0, jb)
        elif kink_jump is not None and max(jb, 4.0 * nb) <= PAST_KINK * kink_jump:
            return kb
    return None


def ladder(
    quotient, n_rungs=MAX_RUNGS, climb=True, coarse=COARSE, first=0, ceiling=None, peek=None
):
    """Run the step ladder on one probe.

    ``quotient(k) -> (c, delta, noise_c)``: the central-difference quotient
    at rung ``k`` (step ``t_0 2^-k``; ``k`` may be negative when the ladder
    climbs), the actual full step taken and the rounding noise of ``c``;
    optionally followed by ``jump, jump_noise``, the difference of the
    one-sided slopes and its noise, and ``slack``, an uncertainty of ``c``
    that is not noise (for the coarse descent only). ``c`` may be
    non-finite (that rung is skipped); ``quotient`` returns ``None`` when
    the step is below ``fn``'s resolution (the ladder stops).

    First a coarse descent (every ``coarse``-th rung) finds where the
    central differences settle (:func:`_settled`). Above that, steps are larger than the scale on
    which ``fn`` varies (a softmax of logits near ``1e6`` varies on a scale
    of 1, not ``1e6``) and the quotients are meaningless, however well they
    happen to agree with each other (``sin(t) / t`` tends to 0 for large
    ``t``): the ladder proper starts where they settled. In the usual case
    they settle at once and the coarse rungs are rungs of the ladder. The
    descent starts at rung ``first`` (0 unless the caller knows that larger
    steps are meaningless, e.g. from the noise probe), and the ladder never
    climbs above rung ``ceiling`` (``None``: up to :data:`MAX_UP` rungs).
    ``peek(k)``, optional, is ``quotient(k)`` without its side effects (nothing
    recorded): with it, a run of :data:`FLAT_RUNGS` rungs flat within their
    noise ends the descent where a rung :data:`FAR_DROP` halvings below agrees
    (:func:`_far_agrees`).

    The error estimate of rung ``k`` is the larger of the last two changes
    between successive extrapolants (one change can be small by
    coincidence, e.g. while the steps straddle a nearby kink) plus the
    rounding noise. See the module notes for where the ladder stops and
    when it climbs.

    Returns ``(value, error, rung, rungs_evaluated, nonfinite_seen)``;
    ``rung`` is ``None`` when no rung gave an estimate, and
    ``rungs_evaluated`` is one past the smallest rung evaluated.
    """
    cache = {}

    def q(k):
        if k not in cache:
            cache[k] = quotient(k)
        return cache[k]

    start = first
    nonfinite = False
    if coarse:
        seen = []
        for k in range(first, n_rungs, coarse):
            res = q(k)
            if res is None:
                break
            # Steps above where the ladder proper starts count too: the report
            # says that fn left its domain there.
            nonfinite |= not np.isfinite(res[0])
            seen.append(res)
            if len(seen) >= 3 and _settled(*seen[-3:]):
                start = k - 2 * coarse
                break
    best_err, k_at = np.inf, start
    rungs = _Rungs()
    last = start - 1
    flat, before = 0, None
    for k in range(start, n_rungs):
        res = q(k)
        if res is None:
            break
        last = k
        if not np.isfinite(res[0]):
            nonfinite = True
        flat = flat + 1 if before is not None and _flat(before, res) else 0
        before = res
        out = rungs.add(k, *res[:3])
        if out is None:
            continue
        err, noise_e = out
        if err < best_err:
            best_err, k_at = err, k
        elif noise_e > best_err:
            break
        if best_err == 0.0 and k - k_at >= PATIENCE:
            break  # exact zeros for a while: fn does not move with this probe
        if peek is not None and flat >= FLAT_RUNGS and _far_agrees(peek, k, before, n_rungs):
            # The quotients (and the jumps between the one-sided slopes) have not moved
            # beyond their noise over FLAT_RUNGS halvings, nor at a step FAR_DROP halvings
            # smaller: no truncation is left to remove, and the noise does not shrink with
            # the step (it stays put where the outputs moved are about t: fn piecewise
            # linear through 0, a max-pool of zeros, which descended every rung).
            break
    results = rungs.results
    top = start
    if climb and results:
        # Too small for the scale on which fn varies: climb while the top rung is
        # the best and its estimate is rounding.
        while top > start - MAX_UP and (ceiling is None or top > ceiling):
            value, err, k_best, noise_e = min(results, key=lambda r: r[1])
            first = results[0][2]
            if k_best > first + 1 or 2.0 * noise_e < err or err <= CLIMB_ABOVE * abs(value):
                break
            res = q(top - 1)
            if res is None or not np.isfinite(res[0]):
                break
            top -= 1
            results = _analyse(cache, range(top, last + 1))
    past = _past_kink(
        [(k, abs(r[3]), r[4]) for k, r in sorted(cache.items())
         if k >= start and r is not None and len(r) > 4 and np.isfinite(r[3])]
    )  # fmt: skip
    if past is not None and past > start:
        # A kink near x, not at it: only the steps below it measure the derivative
        # (and a kink at x that the nearer one hid); the ladder runs again from there.
        # Where nothing settles below it (a jump that only looked like a kink's: sin(1e4 x)
        # at x ~ 1e3 aliases at large steps), the whole ladder's result stands.
        again = ladder(
            quotient, n_rungs=n_rungs, climb=False, coarse=coarse, first=past, ceiling=ceiling,
            peek=peek,
        )  # fmt: skip
        if again[2] is not None:
            return again
    if not results:
        return np.nan, np.inf, None, last + 1, nonfinite
    value, err, k_best, _ = min(results, key=lambda r: r[1])
    # Every other rung must agree within both estimates; where one does not,
    # the estimates were too optimistic (a kink closer than the steps, a
    # staircase of rounding): widen to the disagreement.
    for e_j, err_j, _, _ in results:
        err = max(err, abs(e_j - value) - err_j)
    return value, err, k_best, last + 1, nonfinite


def kink_test(evals, k_best):
    """Kink test on the one-sided slopes of the rungs from the chosen one down.

    ``evals[k] = (forward slope, backward slope, noise)``. At a smooth point
    the jump ``forward - backward`` is ``t * phi''`` and halves with the
    step; at a kink (or a kink closer than the steps) it does not. Returns
    ``(kink, lowest slope, highest slope)`` over the rungs from the first
    non-shrinking pair on: any value between them is a valid subgradient
    (or, for a kink closer than the smallest step the noise allows, cannot
    be told from the truth; :func:`ladder` runs below a nearer one).
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
            # Growth at one halving only is the rounding floor met at the last rungs
            # (SELU at 0: lambda alpha (exp(-t) - 1) at t near 2^-52 rounds to a whole
            # unit of exp's), not noise that keeps growing.
            growing = (
                sum(
                    abs(jumps[d][0]) > 1.5 * abs(jumps[c][0])
                    and abs(jumps[d][0]) > 4.0 * jumps[d][1]
                    for c, d in zip(later, later[1:], strict=False)
                )
                >= 2
            )
            if growing:
                return False, np.nan, np.nan
            # One-sided slopes carry a first-order truncation, t f''/2 of their own piece
            # (relu(x - c) + sin(x) at x = c: the right slope at t is 1 + cos(c) - t sin(c)/2),
            # which no comparison tolerance covers, on either side of the true interval:
            # each is extrapolated over halving steps (where the rungs halve).
            # Their own error (t^2 times the third derivative over 6) is bounded by the change
            # between the last two.
            raw = [v for k in later for v in evals[k][:2]]
            pairs = [(c, d) for c, d in zip(later, later[1:], strict=False) if d == c + 1]
            if not pairs:
                return True, min(raw), max(raw)
            ext = [[2.0 * evals[d][side] - evals[c][side] for c, d in pairs] for side in (0, 1)]
            margin = max(abs(e[-1] - e[-2]) if len(e) > 1 else 0.0 for e in ext)
            ext = ext[0] + ext[1]
            return True, min(min(ext) - margin, *raw), max(max(ext) + margin, *raw)
    return False, np.nan, np.nan


def _perturbed(x, t):
    """``(x + t, x - t, (x + t) - (x - t))`` for a scalar, rounded as float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        xp = x + t
        xm = x - t
        return xp, xm, xp - xm


#: Exponents (steps times ``2^e``) the scale search tries before it bisects.
SEARCH_EXPONENTS = (8, 16, 32, 64, 128, 256, 512, 1024)


def _ldexp(t, e):
    with np.errstate(over="ignore"):
        return float(np.ldexp(t, e))


def scale_search(central, t):
    """How far above step ``t`` does the function vary? For a ladder that saw no change at all.

    ``central(step) -> (c, noise)``: the central-difference quotient (any
    shape) at an absolute step and its rounding noise (both 0 where no
    output changed), or ``None`` when the step cannot be taken (``x +-
    step`` not finite). Two stages: the exponents :data:`SEARCH_EXPONENTS`
    find the first step at which ``fn`` changes at all (bisected); from
    there, exponents ``+4, +8, +16, ...`` find where the quotient changes
    with the step by more than its noise, or stops being finite (bisected):
    below that scale ``fn`` moves by little more than its resolution (``exp``
    at ``x = 1e-131``, stepped relative to ``|x|``).

    Returns ``e`` such that a ladder starting at ``t 2^e`` sees the function
    vary (two octaves above where variation first showed), or ``None`` when
    it never changes or never varies (it does not depend on this input, or
    only beyond the float64 range).
    """

    def still(v):
        return v is not None and np.all(v[0] == 0) and np.all(v[1] == 0)

    def varies(a, b):
        """``None`` (cannot step), True or False."""
        if b is None:
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            if np.any(~np.isfinite(b[0])):
                return True
            return bool(np.any(np.abs(b[0] - a[0]) > 4.0 * (a[1] + b[1])))

    def at(e):
        return central(_ldexp(t, e))

    # Stage 1: the first exponent at which fn changes.
    val = at(0)
    if val is None:
        return None
    lo, hi, hi_val = 0, 0, val
    if still(val):
        hi = None
        for e in SEARCH_EXPONENTS:
            val = at(e)
            if val is None:
                return None
            if not still(val):
                hi, hi_val = e, val
                break
            lo = e
        if hi is None:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            val = at(mid)
            if val is not None and not still(val):
                hi, hi_val = mid, val
            else:
                lo = mid
    # Stage 2: from there, where the quotient varies with the step.
    base, base_val = hi, hi_val
    lo, lo_val, top, top_varies = base, base_val, None, False
    for d in (4, 8, 16, 32, 64, 128, 256, 512, 1024):
        val = at(base + d)
        v = varies(lo_val, val)
        if v is not False:
            top, top_varies = base + d, bool(v)
            break
        lo, lo_val = base + d, val
    if top is None:
        return None
    while top - lo > 1:
        mid = (lo + top) // 2
        val = at(mid)
        v = varies(lo_val, val)
        if v is False:
            lo, lo_val = mid, val
        else:
            top, top_varies = mid, bool(v)
    return top + 2 if top_varies else None


def coupled(objective, flat, idx, s, unseen):
    """Which of the ``unseen`` outputs change when ``flat[idx]`` moves by a far step.

    ``idx`` is one flat index or an array of them (a tie group, moved
    together). Far steps :data:`FAR_STEPS` (times the scale ``s``, and for
    ``s < 1`` times 1 as well) in both directions, up to the edge of the
    float64 range (``1 + 1e-38 x`` first changes at ``x ~ 1e22``), until
    every unseen output has changed or ``fn`` stops being finite. An output
    that stays bitwise equal throughout is taken not to depend on them.
    """
    work = objective.work
    f0 = objective.base_output
    x0 = np.array(flat[idx], copy=True)
    found = np.zeros(unseen.shape, dtype=bool)
    # Also on the scale of 1: an output that underflows (``(a - b)**2`` at
    # ``|a - b| ~ 1e-259``) stays 0 at any step that is a power of two times
    # the tiny scale of the inputs, and still depends on them.
    fars = [far * s for far in FAR_STEPS]
    if s < 1.0:
        fars += list(FAR_STEPS)
    try:
        for step in fars:
            finite = False
            for sign in (1.0, -1.0):
                with np.errstate(over="ignore", invalid="ignore"):
                    moved = x0 + sign * step
                if not np.all(np.isfinite(moved)):
                    continue
                flat[idx] = moved
                f = objective.output(work)
                ok = np.isfinite(f)
                finite |= bool(ok.any())
                found |= unseen & ((ok & (f != f0)) | ~ok)
            if not finite or np.array_equal(found, unseen):
                break
    finally:
        flat[idx] = x0
    return found


#: Changes of at most this many noise levels mark steps near the resolution (see _moved).
FROZEN_LEVELS = 64.0


def _moved(fp, fm, f0, level):
    """How many noise levels ``fn`` moved by at a rung (its largest change, per element level)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.maximum(np.abs(fp - f0), np.abs(fm - f0)) / level
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.max(d)) if d.size else np.inf


def _central(objective, flat, j, x0, t):
    """``(quotient, noise)`` of one central difference of element ``j`` at absolute step ``t``."""
    xp, xm, delta = _perturbed(x0, t)
    if not (np.isfinite(xp) and np.isfinite(xm)) or not (xm < x0 < xp):
        return None
    work = objective.work
    try:
        flat[j] = xp
        fp = objective.output(work)
        flat[j] = xm
        fm = objective.output(work)
    finally:
        flat[j] = x0
    if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
        return np.nan, np.inf
    mask = np.zeros(fp.shape, dtype=bool)
    noise = objective.rung_noise(fp, fm, mask)
    return float(np.vdot(objective.cotangent, fp - fm)) / delta, noise / delta


def _saturation_bound(objective, value, error, still, kind=None):
    """The error of a derivative found only at steps far above one that changed nothing.

    ``fn`` did not change at all at step ``still``: the derivative at ``x``
    is then at most about the outputs' resolution over that step. A value
    found at much larger steps that exceeds that bound was measured on
    another stretch of ``fn`` (``tanh`` at 300 first changes 281 away, on
    the far side of its saturation), not at ``x``: it cannot be told from 0,
    so the error covers it. A function that really varies on a larger scale
    than ``|x|`` (``exp`` at ``1e-131``) stays within the bound and keeps
    its estimate. ``kind``: the reduced type ``fn`` computes in, whose unit
    replaces float64's epsilon in that resolution.
    """
    if not (np.isfinite(value) and np.isfinite(error)) or still <= 0:
        return error
    f0 = objective.base_output
    unit = 2.0 * REDUCED_UNIT[kind] if kind in REDUCED_UNIT else EPS
    resolution = 4.0 * unit * float(np.sum(np.abs(objective.cotangent) * np.abs(f0))) / still
    if abs(value) > 4.0 * resolution:
        return max(error, abs(value) + resolution)
    return error


#: Rungs a ladder keeps below where the noise probe says it may start at most.
MIN_LADDER = 8


def _start(noise, mask, quotient):
    """``(first, ceiling)`` of an element's ladder from what the noise probe saw.

    The outputs the element moves are those that changed at the largest step
    (``quotient(0)`` fills ``mask``). Where the probe saw them vary on a smaller
    scale (:meth:`~oracles.numerics.objective.NoiseModel.start_limit`), larger
    steps are meaningless: the ladder starts below it and does not climb to
    where they oscillated (``sin`` at ``x ~ 1e15``, spaced by 1/8: quotients
    over steps of ``1e20`` are about 0, agree with each other, and their
    rounding is tiny).
    """
    if noise.wavy is None:
        return 0, None
    if not mask.any():
        quotient(0)
    moved = mask.reshape(-1)
    first = noise.first_rung(moved)
    if not first:
        return 0, None
    first = min(first, MAX_RUNGS - MIN_LADDER)
    # The climb may go up to half the smallest step at which it oscillated: between
    # there and where it looked calm the probe does not know (a softmax of logits near
    # 1e8, calm at steps of 1e-4 and wild at 0.7, is best resolved near 1e-2).
    wavy = float(np.min(noise.wavy[moved]))
    return first, int(np.ceil(np.log2(T0 / (0.5 * wavy))))


#: A side whose slope shrank to this fraction of its value three rungs up was reaching 0.
SHRUNK = 0.6


def _one_side_frozen(k, fwd, bwd, fp, fm, f0, raw):
    """True where one side of rung ``k`` fell below ``fn``'s resolution.

    That side's outputs are bitwise those at ``x`` (its slope exactly 0)
    while the other side's moved, and at the larger steps that side's slope
    was non-zero without shrinking towards 0: an intermediate of magnitude 1
    absorbed the step (SELU at 0: ``lambda alpha (exp(-t) - 1)`` is 0 once
    ``exp(-t)`` rounds to 1, with ``fn`` itself of size ``t``; before that
    its slopes step up and down with the quanta of ``exp``). A piece that is
    really constant beyond a nearby kink (a ReLU a distance ``d`` from its
    kink) reaches 0 through slopes that shrink at every halving, like
    ``1 - d / t``, to below :data:`SHRUNK` of theirs three rungs up.
    """
    sides = []
    if bwd == 0.0 and fwd != 0.0 and np.array_equal(fm, f0):
        sides.append("bwd")
    if fwd == 0.0 and bwd != 0.0 and np.array_equal(fp, f0):
        sides.append("fwd")
    if not sides:
        return False
    above = sorted(r for r in raw if r < k and isinstance(raw[r], dict) and "fwd" in raw[r])[-4:]
    if len(above) < 4:
        return False
    for side in sides:
        slopes = np.abs([raw[r][side] for r in above])
        if not np.all(slopes > 0.0):
            continue
        shrinking = np.all(np.diff(slopes) < 0.0) and slopes[-1] < SHRUNK * slopes[0]
        if not shrinking:
            return True
    return False


#: A quantum measured in a ladder (:func:`_one_side_frozen`, :func:`_measured_quantum`,
#: :func:`_jump`) is rounding only up to this many units of ``EPS`` times the largest input or
#: output (``ScalarObjective.magnitude``) per unit of cotangent on the outputs moved: a loss
#: whose saturated tanh units flip over the larger steps (inputs of scale 1e4) changes by
#: about 2 while the step halves and then not at all, a jump of fn, not its rounding.
ROUNDING_UNITS = 2.0**10

#: Measured rounding counts where it exceeds the noise model's by this factor: a
#: gross miss (an intermediate near 1 under values of size t: 1e8 and more), not the
#: model's usual spread (a float32 staircase: a few times).
UNSEEN_NOISE = 1e3


def _measured_quantum(raw, scale):
    """The rounding of a side's values that its slopes show and the noise model does not.

    A one-sided slope converges smoothly, ``s + c t``: its changes between
    halvings keep their sign (a kink crossed by the larger steps turns them
    once, or a few times while they cross several, and then they shrink).
    Rounding of ``q`` in that side's values adds ``q / t`` of either sign,
    growing as the step shrinks: where three successive changes alternate
    and the last is the larger of the outer two, the smallest of them,
    times the step, measures ``q`` (SELU at 0: the intermediate ``exp(-t)``
    near 1 rounds to ``2^-53``, ``fn`` itself is of size ``t``, and its
    slopes below ``t ~ 1e-11`` step with those quanta). Counted only where it
    exceeds :data:`UNSEEN_NOISE` times the noise model's rounding of those
    values.
    """
    rungs = sorted(k for k, g in raw.items() if isinstance(g, dict) and "fwd" in g)
    have = set(rungs)
    q = 0.0
    for k in rungs:
        if not all(k + d in have for d in (1, 2, 3)):
            continue
        run = [raw[k + d] for d in range(4)]
        for side in ("fwd", "bwd"):
            # Python floats: NumPy calls on three numbers cost more than the rung's arithmetic.
            v = [float(g[side]) for g in run]
            diffs = [v[1] - v[0], v[2] - v[1], v[3] - v[2]]
            if not all(map(math.isfinite, diffs)) or not (
                _alternate(diffs[0], diffs[1]) and _alternate(diffs[1], diffs[2])
            ):
                continue
            if abs(diffs[-1]) < abs(diffs[0]):
                continue  # shrinking: the larger steps crossed kinks, and then it settled
            measured = min(abs(d) for d in diffs) * run[-1]["h"] / 2.0
            if measured > UNSEEN_NOISE * run[-1]["side"]:
                q = max(q, measured)
    return max(q, _jump(raw, rungs, scale))


def _alternate(a, b):
    """Whether ``a`` and ``b`` (finite) are of opposite signs, neither zero."""
    return (a > 0.0 and b < 0.0) or (a < 0.0 and b > 0.0)


#: A jump counts as rounding where the steps that straddle it are at most this
#: fraction of the element's scale (a step function's own jumps, ``round(x)`` at
#: 0.3, lie at distances like the scale) ...
JUMP_STEP = 2.0**-6
#: ... and it exceeds the noise model's rounding of the values by this factor.
JUMP_NOISE = 4.0


def _above_drops(raw):
    """Rungs just above a drop of a side's slope to a tenth that were not evaluated.

    The ladder's coarse descent skips rungs; where a slope drops between two
    evaluated rungs, the one above the upper tells whether it had settled
    (:func:`_jump`).
    """
    rungs = sorted(k for k, g in raw.items() if isinstance(g, dict) and "fwd" in g)
    out = []
    for a, b in zip(rungs, rungs[1:], strict=False):
        if a - 1 in raw or a == rungs[0]:
            continue
        ga, gb = raw[a], raw[b]
        if any(
            np.isfinite(ga[side]) and abs(gb[side]) < 0.1 * abs(ga[side])
            for side in ("fwd", "bwd", "mid")
        ):
            out.append(a - 1)
    return out


def _jump(raw, rungs, scale):
    """The size of a step in ``fn``'s values that the larger steps straddled, else 0.

    A side whose change stays ``J`` while the step halves (its slope
    doubling) straddles a jump of ``J``; below it the slope is that of the
    piece between jumps. Where that slope times the step is far below ``J``,
    ``fn`` is a staircase there (GELU's tanh form at ``x ~ -7``: ``0.5 x (1 +
    tanh(u))`` with ``1 + tanh(u)`` a few units of ``2^-53``, constant
    between its jumps), and its rounding is ``J``, which the noise model,
    rounding values of size ``|f|``, does not know. A kink with a constant
    piece beyond it (a clip a distance ``d`` away) changes by ``s d`` above
    ``d`` and keeps slope ``s`` below: ``s t`` is not far below ``s d``.
    """
    q = 0.0
    for side, change in (("fwd", "dp"), ("bwd", "dm"), ("mid", "dc")):
        for a, b in zip(rungs, rungs[1:], strict=False):
            ga, gb = raw[a], raw[b]
            j = ga[change]
            if not (math.isfinite(j) and j != 0.0 and abs(gb[change] - j) <= 0.05 * abs(j)):
                continue
            if not (abs(j) > JUMP_NOISE * ga["side"] and gb["h"] <= JUMP_STEP * scale):
                continue
            below = [raw[c][side] for c in rungs if c > b]
            if below and all(abs(v) * gb["h"] < 0.25 * abs(j) for v in below):
                q = max(q, abs(j))
        # A slope settled over two halvings that drops to a tenth within the next
        # one, and stays there: no kink does that (through one at a distance d the
        # slope moves like d / t, by a quarter or more over the halving before),
        # a staircase does where the step falls inside one stair (both sides of
        # GELU's tanh form at x ~ -6.9 move by 4, 2, 1 quanta, then by none).
        for k in range(2, len(rungs)):
            if not rungs[k - 2] + 2 == rungs[k - 1] + 1 == rungs[k]:
                continue
            s0, s1 = float(raw[rungs[k - 2]][side]), float(raw[rungs[k - 1]][side])
            if not (math.isfinite(s0) and math.isfinite(s1) and s0 != 0.0 and s1 != 0.0):
                continue
            if max(s0, s1) - min(s0, s1) > 0.1 * min(abs(s0), abs(s1)):
                continue
            last = raw[rungs[k - 1]]
            if not abs(last[change]) > JUMP_NOISE * last["side"]:
                continue
            if all(abs(raw[c][side]) < 0.1 * abs(s1) for c in rungs[k:]):
                q = max(q, abs(last[change]))
    return q


def _element_ladder(objective, flat, j, x0, s, t0, n_rungs):
    """The ladder of one element at scale ``s``: a dict of its results.

    An output that changed at some rung carries its rounding noise at every
    rung, also at those where it happened to round equal on both sides, and
    also at rungs evaluated *before* it was first seen to change (the ladder
    climbs after descending: ``10 + 3e-15 x`` moves only at the largest
    steps). The ladder therefore runs again, on the rungs already evaluated,
    until the set of outputs seen to change no longer grows.
    """
    work = objective.work
    cot = objective.cotangent
    f0 = objective.base_output
    evals = {}
    raw = {}  # rung -> its evaluation (or None below fn's resolution)
    order = {}  # rung -> how many rungs were evaluated before it
    terms = {}  # sum |c_i (f_i(x + t) - f_i(x - t))| / 2t per rung: the size of the VJP's terms
    mask = np.zeros(cot.shape, dtype=bool)
    first_seen = np.full(cot.shape, np.inf)  # order of the rung where each output first changed
    frozen = []  # steps at which fn no longer changed at all
    closest = [np.inf]  # fewest resolution units fn has moved by at any rung so far
    quantum = [0.0]  # a side's smallest change before it froze (:func:`_one_side_frozen`)
    level0 = objective.noise.level(f0)
    with np.errstate(over="ignore", invalid="ignore"):
        late_weight = 2.0 * NOISE_SAFETY * np.abs(cot) * level0

    abs_cot = np.abs(cot)
    unmeasured = []  # (fp - f0, f0 - fm) of rungs that changed fn, not yet in closest
    count = [0, -1]  # outputs in mask, and the order of the rung where it last grew
    gathered = {}  # rung_noises' terms of the outputs in mask, by their count (mask only grows)

    def nearest():
        """``closest[0]`` over every rung evaluated: ``_moved`` of each, on its differences."""
        for up, down in unmeasured:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                d = np.maximum(np.abs(up), np.abs(down)) / level0
            d = d[np.isfinite(d) & (d > 0)]
            closest[0] = min(closest[0], float(np.max(d)) if d.size else np.inf)
        unmeasured.clear()
        return closest[0]

    late_sums = {}  # (outputs in mask, order of rung k) -> late(k): first_seen changes only then

    def rounding(q):
        """``q`` where it can be rounding of ``fn``, else 0 (:data:`ROUNDING_UNITS`)."""
        if q <= 0.0:
            return 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            reach = ROUNDING_UNITS * EPS * objective.magnitude * float(np.sum(abs_cot[mask]))
        return q if q <= reach else 0.0

    def sides(k):
        """``(t, xp, xm, delta, fp, fm)`` of rung ``k``, ``x`` restored; None where the step
        no longer moves ``x`` (or leaves the float64 range)."""
        t = t0 * s * 2.0**-k
        if t < 1e300 and -1e300 < x0 < 1e300:
            xp, xm = x0 + t, x0 - t  # _perturbed, where nothing can overflow
            delta = xp - xm
        else:
            xp, xm, delta = _perturbed(x0, t)
        if not (xm < x0 < xp) or not np.isfinite(delta):
            return None
        try:
            flat[j] = xp
            fp = objective.output(work)
            flat[j] = xm
            fm = objective.output(work)
        finally:
            flat[j] = x0
        return t, xp, xm, delta, fp, fm

    def evaluate(k):
        got = sides(k)
        if got is None:
            return None
        t, xp, xm, delta, fp, fm = got
        if not (np.isfinite(fp).all() and np.isfinite(fm).all()):
            return {"nonfinite": delta}
        # np.array_equal, without its Python wrapper (a rung is a few us of NumPy calls).
        still = (
            fp.shape == f0.shape == fm.shape and bool((fp == f0).all()) and bool((fm == f0).all())
        )
        if still and mask.any() and nearest() <= FROZEN_LEVELS:
            # Below fn's resolution: larger steps changed it by a few quanta,
            # this one not at all (float32 inside). After macroscopic changes
            # only (a dead ReLU whose kink is within the largest steps) an
            # unchanged fn is locally constant, and 0 is its derivative.
            frozen.append(t)
            return None
        up, down = fp - f0, f0 - fm
        if not still:
            unmeasured.append((up, down))  # how far fn moved: measured when first needed
        before = mask.copy()
        hp, hm = xp - x0, x0 - xm
        fwd = float(np.vdot(cot, up)) / hp
        bwd = float(np.vdot(cot, down)) / hm
        if _one_side_frozen(k, fwd, bwd, fp, fm, f0, raw):
            # Every rung carries the rounding of that side's values, whose quantum
            # is the smallest change it showed before it froze (the noise model,
            # which rounds values of size t, does not see an intermediate near 1).
            side = "dm" if bwd == 0.0 else "dp"
            moved = [abs(g[side]) for g in raw.values() if isinstance(g, dict) and g.get(side)]
            if moved:
                quantum[0] = max(quantum[0], rounding(min(moved)))
            frozen.append(t)
            return None
        # The noise of both one-sided differences (the larger) and of the central one.
        side, noise = objective.rung_noises(fp, fm, f0, mask, gathered)
        both = fp - fm
        num = float(np.vdot(cot, both))
        # Rounding x +- t can leave the two steps unequal: the difference
        # is then centred at x + (hp - hm) / 2, off by curvature * that.
        center = abs(fwd - bwd) / (0.5 * (hp + hm)) * abs(hp - hm)
        grown = int(np.count_nonzero(mask))
        if grown != count[0]:
            count[0] = grown
            first_seen[mask & ~before] = len(order)
            count[1] = len(order)
        order[k] = len(order)
        terms[k] = float(np.vdot(abs_cot, np.abs(both))) / delta
        return {
            "fwd": fwd, "bwd": bwd, "side": side, "num": num, "center": center,
            "noise": noise, "delta": delta, "h": min(hp, hm),
            "dp": fwd * hp, "dm": bwd * hm, "mid": num / delta, "dc": num,
        }  # fmt: skip

    def late(k):
        """Noise of the outputs first seen to change after rung ``k`` was evaluated."""
        if order[k] >= count[1]:
            return 0.0  # no output was first seen after it (the finite first_seen are <= count[1])
        key = (count[0], order[k])  # first_seen is set only where the mask grows
        got = late_sums.get(key)
        if got is None:
            later = first_seen > order[k]
            if not later.any():
                got = 0.0
            else:
                got = float(np.sum(late_weight[later & np.isfinite(first_seen)]))
            late_sums[key] = got
        return got

    def quotient(k):
        if k not in raw:
            raw[k] = evaluate(k)
        got = raw[k]
        if got is None:
            return None
        if "nonfinite" in got:
            return np.nan, got["nonfinite"], np.inf
        late_k = late(k)
        used.append((k, late_k))
        extra = late_k + quantum[0]
        side = (got["side"] + extra) / got["h"]
        evals[k] = (got["fwd"], got["bwd"], side)
        noise = (got["noise"] + extra) / got["delta"]
        return (
            got["num"] / got["delta"], got["delta"], noise + got["center"],
            got["fwd"] - got["bwd"], 2.0 * side,
        )  # fmt: skip

    def peek(k):
        """``quotient(k)`` recording nothing (no rung, mask or order); None where fn is still."""
        got = sides(k)
        if got is None:
            return None
        _, xp, xm, delta, fp, fm = got
        if not (np.isfinite(fp).all() and np.isfinite(fm).all()):
            return None
        if fp.shape != f0.shape or fm.shape != f0.shape:
            return None
        if bool((fp == f0).all()) and bool((fm == f0).all()):
            return None  # still: the descent tells a constant piece from the step rounding away
        hp, hm = xp - x0, x0 - xm
        side, noise = objective.rung_noises(fp, fm, f0, mask.copy())
        extra = quantum[0]
        fwd = float(np.vdot(cot, fp - f0)) / hp
        bwd = float(np.vdot(cot, f0 - fm)) / hm
        num = float(np.vdot(cot, fp - fm))
        return (
            num / delta, delta, (noise + extra) / delta, fwd - bwd,
            2.0 * (side + extra) / min(hp, hm),
        )  # fmt: skip

    used = []  # (k, late(k)) of every quotient the last ladder was given
    out = start = q_run = None
    for _ in range(4):
        seen, q0 = int(mask.sum()), quantum[0]
        first, ceiling = _start(objective.noise, mask, quotient)
        if (
            out is not None
            and (first, ceiling) == start
            and quantum[0] == q_run
            and all(late(k) == x for k, x in used)
        ):
            # The ladder would run again on the same quotients (the rungs it chose are
            # cached, the noise of late outputs did not change for any of them): the same
            # result, and the mask would not grow. (A smooth fn moves every output it
            # moves at the first, largest step.)
            break
        used.clear()
        start, q_run = (first, ceiling), quantum[0]
        out = ladder(quotient, n_rungs=n_rungs, first=first, ceiling=ceiling, peek=peek)
        for k in _above_drops(raw):
            quotient(k)  # the rung above a drop, to tell a staircase from a kink
        quantum[0] = max(quantum[0], rounding(_measured_quantum(raw, s)))
        if int(mask.sum()) == seen and quantum[0] == q0:
            break
    v, e, k_best, _, nf = out
    evals = {  # every finite rung, with the noise of every output seen to change
        k: (got["fwd"], got["bwd"], (got["side"] + late(k) + quantum[0]) / got["h"])
        for k, got in raw.items()
        if got is not None and "nonfinite" not in got
    }
    if k_best is None and frozen and not nf:
        # fn changed at larger steps but not at all at these (saturated: tanh
        # at 20): the derivative is below its resolution over the largest such
        # step, and is reported as 0 within that.
        v = 0.0
        e = 2.0 * objective.rung_noise(f0, f0, mask.copy()) / NOISE_SAFETY / max(frozen)
    if terms:
        # The rounding a correct derivative carries is that of its terms at x: the
        # largest seen at any rung (where the ladder climbed far above the scale of x,
        # the quotient's terms shrink with the step; a constant phi whose outputs move,
        # batchnorm under an all-ones cotangent, climbs as far as it can).
        e = e + analytic_rounding(max(terms.values()), objective.noise.kind)
    return {
        "value": v,
        "error": e,
        "k": k_best,
        "nonfinite": nf,
        "mask": mask,
        "evals": evals,
        "top": min([k for k in evals] + [0]),
        "quantum": quantum[0],
        "frozen": max(frozen, default=0.0),
    }


def _frozen_below(objective, run):
    """True where a ladder of a reduced-precision fn found nothing but its rounding.

    Its outputs moved at some rung, no rung gave an estimate, and it froze below
    (``fn`` computes in float32, float16 or bfloat16: :attr:`NoiseModel.kind`). In
    float64 such a ladder is a saturated function (``tanh`` at 20), whose 0 stands.
    """
    return (
        objective.noise.kind is not None
        and run["k"] is None
        and bool(run["mask"].any())
        and not run["nonfinite"]
        and run.get("frozen", 0.0) > 0.0
    )


def _climbed(objective, flat, j, x0, s, t0, n_rungs, run):
    """``(scale, run)`` of a frozen ladder (:func:`_frozen_below`) searched above its top.

    :func:`scale_search` from the ladder's largest step finds where the quotient
    varies with the step above its rounding; a ladder from there replaces the
    frozen one when it found an estimate, its error bounded by the outputs'
    resolution in ``fn``'s type over the largest step that froze
    (:func:`_saturation_bound`): a value found far out on another stretch of fn
    cannot be told from 0. Else the frozen ladder stands.
    """
    top = t0 * s * 2.0 ** -run["top"]
    up = scale_search(lambda t: _central(objective, flat, j, x0, t), top)
    if up is None:
        return s, run
    s_far = _ldexp(s, up - run["top"])
    far = _element_ladder(objective, flat, j, x0, s_far, t0, n_rungs)
    if far["k"] is None or not np.isfinite(far["value"]):
        return s, run
    if abs(far["value"]) * run["frozen"] > _spacing(objective, run["mask"]):
        # That slope would have moved fn by more than a unit of its type at the step
        # that froze: fn is constant there, and the change above is a kink the largest
        # steps crossed (a float32 max-pool's second-largest input, 0.04 below the max).
        return s, run
    far["error"] = _saturation_bound(
        objective, far["value"], far["error"], run["frozen"], objective.noise.kind
    )
    return s_far, far


def _spacing(objective, mask):
    """``sum |c_i| spacing(f_i)`` over the outputs ``mask``, spaced as in ``fn``'s type."""
    f0 = np.abs(np.asarray(objective.base_output, dtype=np.float64)).reshape(-1)
    at = np.asarray(mask).reshape(-1)
    kind = objective.noise.kind
    with np.errstate(over="ignore", invalid="ignore"):
        if kind in ("float32", "float16"):
            spacing = np.spacing(f0[at].astype(kind)).astype(np.float64)
        else:
            spacing = 2.0 * REDUCED_UNIT.get(kind, EPS) * f0[at]
    c = np.abs(np.asarray(objective.cotangent, dtype=np.float64)).reshape(-1)[at]
    return float(np.sum(c * spacing))


def partials(objective, indices, *, grads=None, t0=T0, n_rungs=MAX_RUNGS):
    """Per-element derivatives of ``objective`` with error estimates.

    Parameters
    ----------
    objective : ScalarObjective
    indices : sequence of (input_number, flat_index)
        Which elements to differentiate with respect to.
    grads : sequence of arrays, optional
        Accepted for compatibility; the noise model is measured instead
        (:attr:`~oracles.numerics.objective.ScalarObjective.noise`).
    t0 : float
        Largest step, relative to each element's scale; rungs are
        ``t0 s / 2^k``.
    n_rungs : int
        Most rungs to descend.

    Returns
    -------
    Estimate
        One entry per index, in order; ``step`` is relative to ``scale``.

    Examples
    --------
    >>> import numpy as np
    >>> from oracles.numerics.objective import ScalarObjective
    >>> obj = ScalarObjective(np.abs, [np.array([0.0, 2.0])], np.ones(2))
    >>> est = partials(obj, [(0, 0), (0, 1)])
    >>> est.kink.tolist(), float(est.value[1]), bool(est.error[1] < 1e-12)
    ([True, False], 1.0, True)
    """
    del grads  # the measured noise replaces the gradient-based input-noise bound
    objective.noise  # noqa: B018 - measure before counting this method's calls
    m = len(indices)
    value = np.full(m, np.nan)
    error = np.full(m, np.inf)
    step = np.full(m, np.nan)
    scale = np.full(m, np.nan)
    quanta = np.zeros(m)
    kink = np.zeros(m, dtype=bool)
    left = np.full(m, np.nan)
    right = np.full(m, np.nan)
    nonfinite = np.zeros(m, dtype=bool)
    calls0 = objective.calls
    work = objective.work
    for p, (i, j) in enumerate(indices):
        flat = work[i].reshape(-1)
        x0 = flat[j]
        s = float(objective.scales[i].reshape(-1)[j])
        run = _element_ladder(objective, flat, j, x0, s, t0, n_rungs)
        if _frozen_below(objective, run):
            # A reduced-precision fn that moved at the largest steps by a few of its units
            # and not at all below: the 0 is its rounding, not its derivative (float32 exp
            # at x ~ 1e-6). Larger steps resolve it, where fn varies smoothly.
            s, run = _climbed(objective, flat, j, x0, s, t0, n_rungs, run)
        if not run["mask"].any() and np.isfinite(run["value"]):
            # Nothing changed at any rung: fn may vary on a much larger scale
            # than |x_j| (a lone element near 0); find it and start there.
            up = scale_search(
                lambda t, j=j, x0=x0, flat=flat: _central(objective, flat, j, x0, t),
                t0 * s * 2.0 ** -run["top"],
            )
            if up is not None:
                still = t0 * s * 2.0 ** -run["top"]  # the largest step that changed nothing
                s_far = _ldexp(s, up - run["top"])
                far = _element_ladder(objective, flat, j, x0, s_far, t0, n_rungs)
                far["error"] = _saturation_bound(
                    objective, far["value"], far["error"], still, objective.noise.kind
                )
                kf = far["k"]
                if kf is None or not np.isfinite(far["value"]):
                    pass  # no estimate out there (fn overflows first): keep the bound of here
                elif far["evals"].get(kf, (0.0, 0.0))[:2] == (0.0, 0.0):
                    # Locally constant after all (a dead ReLU): its kink lies
                    # farther out. It keeps the bound of the outputs'
                    # resolution over the step: a dominated logit (softmax at a
                    # scale of 500) looks the same from here, and its true
                    # derivative is tiny, not 0.
                    pass
                else:
                    s, run = s_far, far
        v, err, k_best = run["value"], run["error"], run["k"]
        mask, evals = run["mask"], run["evals"]
        largest = t0 * s * 2.0 ** -run["top"]
        hidden = objective.hidden_noise(mask, largest)
        if hidden > err and np.isfinite(v):
            # Outputs that never changed may still depend on x_j below their
            # resolution (a saturated softmax output of 1.0), or not at all (an
            # elementwise fn): only those that change at some far step count.
            moves = coupled(objective, flat, j, s, ~mask)
            hidden = objective.hidden_noise(~moves, largest)
        value[p], error[p] = v, err + hidden
        quanta[p] = run.get("quantum", 0.0)
        nonfinite[p] = run["nonfinite"] or not np.isfinite(v)
        scale[p] = s
        if k_best is not None:
            step[p] = t0 * 2.0**-k_best
        kb = k_best if k_best is not None else min(evals, default=0)
        kink[p], left[p], right[p] = kink_test(evals, kb)
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
        scale=scale,
        quantum=quanta,
    )
