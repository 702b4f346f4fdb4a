"""Ties couple elements: a subgradient at tied values is judged jointly, not per element.

At tied maxima (``max``, max-pool, top-k, sort) every element alone lies
between its own one-sided slopes whether the backward routes the gradient to
one tied element, to all of them, or to none: at ``max`` of ``[1, 1]`` the
per-element slopes are 0 and 1, so ``[1, 1]`` and ``[0, 0]`` pass an
elementwise test although only ``[1, 0]``, ``[0, 1]`` and their convex
combinations are subgradients. Directions that move the tied elements
*together* tell them apart: along ``d = (1, 1)`` the maximum moves with
slope exactly 1, so ``<g, d>`` must be 1.

Which elements are tied: elements of one input with exactly equal values
(ties are equal values). For each such group the all-ones direction ``d``
over the group is a tie-preserving direction: ``phi(x + t d)`` keeps the
group tied, so it is smooth along ``d`` for max, max-pool, top-k and sort,
and ``<g, d>`` must equal the directional derivative. Where ``phi`` still
has a kink along ``d`` (elementwise kinks such as ReLU at 0, all at the same
value), ``<g, d>`` must lie between the one-sided directional derivatives
``-phi'(x; -d)`` and ``phi'(x; d)``: every backward with one convention for
the kink (``relu'(0) = 0`` or ``1``) satisfies that, whatever the signs of
the cotangent.

The one-sided derivatives come from a ladder of one-sided differences at
halving steps with first-order Richardson extrapolation
(``2 D(t/2) - D(t)``), each with an error estimate (the change between
successive extrapolants plus the rounding noise of the changed outputs over
the step), as the central ladder of :mod:`oracles.numerics.ladder` does.
The step actually taken is corrected with the analytic gradient, as in
:func:`oracles.numerics.directional.directional`.

Per element, too: perturbing one tied element alone only ever moves it to
an end of its group (the largest or the smallest), so its one-sided slopes
miss what the middle positions contribute (``sort`` of three tied values
with cotangent ``c``: the first element's slopes are ``c_0`` and ``c_2``,
but ``c_1`` is a valid derivative too). :func:`limiting_slopes` samples
points next to ``x`` where the group is untied in random orders and takes
the per-element central slopes there: the range of the limiting gradients,
which the per-element comparison then accepts.

Limits: ties of values that differ but tie after an operation
(``max(x + 1, y)`` at ``x = 0, y = 1``) are not grouped; groups span one
input (elementwise ties between two inputs, ``np.maximum(x, y)`` at
``x == y``, are not grouped across them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oracles.numerics.ladder import coupled as ladder_coupled
from oracles.numerics.objective import (
    EPS,
    N_RUNGS,
    NOISE_SAFETY,
    QUANTUM,
    T0,
    _ecnoise,
    analytic_rounding,
)

__all__ = [
    "MAX_GROUPS",
    "TieCheck",
    "check_ties",
    "element_slopes",
    "exact_slopes",
    "limiting_slopes",
    "tie_groups",
]

#: Unit roundoff of the reduced float types that ``NoiseModel.kind`` names.
REDUCED_EPS = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}

#: NumPy types of those (bfloat16 has none).
REDUCED_TYPES = {"float32": np.float32, "float16": np.float16}

#: Tie groups checked per check at most (groups with kinks first, then the largest).
MAX_GROUPS = 32


@dataclass(frozen=True)
class TieCheck:
    """The joint test of one group of tied elements.

    ``value`` is ``<g, d>`` (the analytic gradient summed over the group),
    ``left``/``right`` the one-sided directional derivatives along the
    all-ones direction ``d``, ``error`` their error estimate and
    ``allowance`` the summed ``atol + rtol |g_i|`` of the group.
    """

    input_number: int
    input_name: str
    tied_value: float
    indices: tuple
    value: float
    left: float
    right: float
    error: float
    allowance: float
    moves: bool = True
    size: float = 0.0

    @property
    def resolved(self):
        """Whether the one-sided slopes were measured, to better than the sums at stake.

        Not where no two steps fit between the tied value and the next other
        value of the input, or ``fn`` is not finite along ``d``; nor where
        ``fn`` moves along ``d`` (``moves``: some step changed an output) and
        the error is as large as both slopes and as the analytic gradient's
        size over the group (``size``, ``sum |g_i|``): then a routing to none
        of the group (sum 0), or to every element, passes as well (a float16
        max at 1.0 whose next value is 2 units below: steps of 1 and 2 units,
        the output's rounding over them an error of 25 for slopes of 0.78).
        The size counts too because a shift-invariant ``fn`` (softmax-CE
        along a bias of equal zeros) has slopes of exactly 0, moves by its
        rounding only, and its gradient's sum is told from 0 at ``sum |g_i|``.
        """
        if not (np.isfinite(self.left) and np.isfinite(self.right) and self.error < np.inf):
            return False
        at_stake = max(abs(self.left), abs(self.right), self.size)
        return bool(not self.moves or self.error < at_stake)

    @property
    def passed(self):
        """The sum lies between the one-sided slopes; True where they are not :attr:`resolved`
        (nothing contradicts it: callers say the group could not be judged)."""
        if not self.resolved:
            return bool(np.isfinite(self.value))
        lo = min(self.left, self.right) - self.error - self.allowance
        hi = max(self.left, self.right) + self.error + self.allowance
        return bool(np.isfinite(self.value) and lo <= self.value <= hi)

    def unresolved(self):
        """Why the group could not be judged jointly, in words (see :attr:`resolved`)."""
        shown = ", ".join("[" + ", ".join(map(str, i)) + "]" for i in self.indices[:6])
        more = f", ... ({len(self.indices)} elements)" if len(self.indices) > 6 else ""
        return (
            f"tie group of {self.input_name} (value {self.tied_value!r}: {shown}{more}) could "
            "not be judged jointly: moving its elements together, no steps short of the next "
            "other value of the input resolve fn's slope (fn computes in a coarse type and that "
            "value is a few of its units away), or fn was not finite there; a backward that "
            "routes the gradient to every tied element, or to none, would pass"
        )

    def describe(self, what=None, labels=None):
        """The group, its sum and its slopes, in words.

        ``what`` names the group (default: ``tie group of <input>``), ``labels``
        its elements (default: their indices).
        """
        if labels is None:
            labels = ["[" + ", ".join(map(str, i)) + "]" for i in self.indices[:6]]
        shown = ", ".join(labels[:6])
        more = f", ... ({len(self.indices)} elements)" if len(self.indices) > 6 else ""
        if abs(self.left - self.right) <= self.error:
            slopes = f"the directional derivative is {self.right:.17g}"
        else:
            slopes = f"the one-sided slopes are {self.left:.17g} and {self.right:.17g}"
        return (
            f"{what or 'tie group of ' + self.input_name} (value {self.tied_value!r}: "
            f"{shown}{more}): along "
            f"the direction that moves them together, the gradient sums to {self.value:.17g} "
            f"but {slopes} (error estimate {self.error:.2g})"
        )


def tie_groups(xs, kinks=None, max_groups=MAX_GROUPS):
    """Groups of tied elements: ``[(input number, flat indices), ...]`` and the number found.

    ``kinks`` (one bool array per input, optional): elements the per-element
    check saw at a kink; groups containing one come first.
    """
    found = []
    for i, x in enumerate(xs):
        flat = np.asarray(x).reshape(-1)
        if flat.size < 2:
            continue
        order = np.argsort(flat, kind="stable")
        values = flat[order]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        ends = np.r_[starts[1:], values.size]
        kink = None if kinks is None else np.asarray(kinks[i], dtype=bool).reshape(-1)
        tied = ends - starts >= 2  # no Python loop over the (many) values held once
        for s, e in zip(starts[tied].tolist(), ends[tied].tolist(), strict=True):
            idx = np.sort(order[s:e])
            has_kink = bool(kink is not None and kink[idx].any())
            found.append((not has_kink, -(e - s), i, idx))
    found.sort(key=lambda t: (t[0], t[1], t[2]))
    return [(i, idx) for _, _, i, idx in found[:max_groups]], len(found)


def _rounding(objective, fa, fb, mask, line=None):
    """Rounding noise of ``<cot, fa - fb>`` over the outputs that changed.

    Each output counts with its resolution (:func:`_resolution`, or ``line``
    where the steps are exact, :func:`_line_noise`), and each product ``c_i
    (fa_i - fb_i)`` with at least one quantum.
    """
    cot = objective.cotangent
    mask |= fa != fb
    c = np.abs(cot[mask])
    if line is None:
        level = _resolution(objective, fa)[mask] + _resolution(objective, fb)[mask]
    else:
        level = line(fa)[mask] + line(fb)[mask]
    with np.errstate(over="ignore", invalid="ignore"):
        return NOISE_SAFETY * (float(np.sum(c * level)) + c.size * QUANTUM)


def _resolution(objective, f):
    """Resolution of output values ``f``: float64 rounding, or the measured noise below float64.

    Float64 rounding is relative to each output's own magnitude (no scale is
    assumed), and not the measured noise of ``fn``: at ties, the noise probe's
    points fall on both sides of the kink, and its jumps look like noise
    (``sort`` of tied values "measures" 6e-6 relative, a max-pool at offset
    1e6 2e-5). Where every output ``fn`` returns is a value of a reduced
    float type (a max-pool in float32: ``NoiseModel.kind``), ``fn`` rounds
    its outputs, and its inputs, to that precision whatever the ties, and the
    measured noise counts where it is the larger.
    """
    noise = objective.noise
    with np.errstate(over="ignore", invalid="ignore"):
        own = EPS * np.abs(f)
        return own if noise.kind is None else np.maximum(own, noise.level(f))


def _exact_type(objective, values):
    """The reduced NumPy type ``fn`` computes in, where ``values`` are all values of it; or None.

    Steps that land on values of that type reach ``fn`` exactly as taken,
    with no rounding of its inputs.
    """
    reduced = REDUCED_TYPES.get(objective.noise.kind)
    if reduced is None:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.all(np.asarray(values).astype(reduced).astype(np.float64) == values)
    return reduced if ok else None


def _snap(values, reduced):
    """``values`` rounded to the nearest values of ``reduced`` (unchanged where it is None)."""
    if reduced is None:
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(reduced).astype(np.float64)


def _line_noise(objective, i, idx, reduced, room):
    """Per-output noise along the group's all-ones direction at exact steps, as a level function.

    ``fn`` at ``x + k q d`` (``k = -4 .. 4``, ``q`` from :func:`_line_step`
    within ``room``, a distance the group can move without crossing another
    value; every point a value of ``reduced``): the group stays tied, crosses
    no other value, and no input
    is rounded, so what ECnoise finds in the outputs is the rounding of
    ``fn``'s own arithmetic (none for a sort or a max-pool, whose outputs are
    inputs). Returns ``level(f) = max(u |f|, sigma)``: the roundoff ``u`` of
    the reduced type (every output is rounded to it once; float64's for an
    output that moved exactly linearly along the line, as a sort's does) and
    the noise measured along this line (cached on the objective: measured
    once per group). Two calls at ``+-room`` tell the outputs that do not
    move along the line because they do not depend on the group (a sort's
    other positions: exact) from those whose change was below their unit (a
    float32 sum of a max-pool's outputs and 1e3: rounded).
    """
    cache = objective.__dict__.setdefault("_tie_line_noise", {})
    key = (i, idx.tobytes(), room)
    if key not in cache:
        flat = objective.work[i].reshape(-1)
        x0 = flat[idx].copy()
        q = _line_step(x0, reduced, room, _group_scale(objective, i, idx))
        rows, ends = [], []
        try:
            for k in range(-4, 5):
                if k == 0:
                    rows.append(objective.base_output.reshape(-1))
                    continue
                flat[idx] = _snap(x0 + k * q, reduced)
                rows.append(np.asarray(objective.output(objective.work)).reshape(-1))
            if np.isfinite(room) and room > 4.0 * q:
                for sign in (1.0, -1.0):
                    flat[idx] = _snap(x0 + sign * room, reduced)
                    ends.append(np.asarray(objective.output(objective.work)).reshape(-1))
        finally:
            flat[idx] = x0
        size = objective.base_output.size
        unit = REDUCED_EPS[objective.noise.kind]
        if any(row.size != size for row in rows) or not np.all(np.isfinite(np.array(rows))):
            sigma, floor = np.full(size, np.inf), np.full(size, unit)
        else:
            values = np.array(rows)
            sigma, *_ = _ecnoise(values)
            sigma = np.where(np.isfinite(sigma), sigma, 0.0)
            # An output that moves exactly linearly along the line (a sort's,
            # a max-pool's: its values are inputs) is not rounded at all. One that
            # did not move along it but moves farther out is a rounded one whose
            # change was below its unit (a float32 sum of a max-pool's outputs and 1e3).
            moved_far = np.zeros(size, dtype=bool)
            for end in ends:
                if end.size == size:
                    moved_far |= (end != values[4]) & np.isfinite(end)
            moved_far &= np.all(values == values[4], axis=0)
            linear = np.all(np.diff(values, 2, axis=0) == 0, axis=0) & ~moved_far
            floor = np.where(linear, EPS, max(EPS, unit))
        shape = objective.base_output.shape
        cache[key] = (sigma.reshape(shape), floor.reshape(shape))
    sigma, floor = cache[key]

    def level(f):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.maximum(floor * np.abs(f), sigma)

    return level


def _natural_rounding(objective, i, idx):
    """Rounding of an analytic gradient at the function's natural scale ``sum |c f| / s``.

    A gradient whose elements cancel inside the derivation (softmax-CE at
    equal logits: ``1/6 - 1/6`` per element) carries rounding at the size
    of its terms, not of its result; ``sum |c f|`` over the group's scale
    ``s`` is that size in the units of the check (it reads the same at any
    output or input scale).
    """
    s = _group_scale(objective, i, idx)
    if not (s > 0 and np.isfinite(objective.scale)):
        return 0.0
    with np.errstate(over="ignore"):
        return float(analytic_rounding(objective.scale / s))


def _group_scale(objective, i, idx):
    """The step scale of a tie group: the largest element scale among its elements."""
    return float(np.max(objective.scales[i].reshape(-1)[idx]))


#: Most octaves the one-sided ladder of a tie group climbs above its first step.
MAX_CLIMB = 6


def _gap(flat, value, sign):
    """Distance from ``value`` to the nearest other value of the input on the ``sign`` side."""
    with np.errstate(over="ignore", invalid="ignore"):
        other = (flat - value) * sign
    other = other[np.isfinite(other) & (other > 0)]
    return float(np.min(other)) if other.size else np.inf


def _nearest(flat, value):
    """Distance from ``value`` to the nearest other value of the input, on either side."""
    return min(_gap(flat, value, 1.0), _gap(flat, value, -1.0))


def _spacing(values, reduced):
    """The largest spacing of ``reduced`` at ``values`` (its unit there), as a float."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.asarray(values).astype(reduced)
        return float(np.max(np.abs(np.spacing(v).astype(np.float64))))


def _line_step(x0, reduced, room, scale):
    """A step for :func:`_line_noise`: 64 units of ``reduced`` at the group, within ``room``.

    The units are those at the group value or at its scale (``scale``,
    :func:`_group_scale`), whichever are larger: at a tie of 0 the units of
    float32 are subnormal, and a line 64 of them long left a float32 loss
    bitwise unchanged; it read as exact float64 (no rounding at all), and a
    correct max-pool over ReLU zeros failed with error estimates of 3e-12. A
    power of two, so that ``x0 + k q`` are values of ``reduced`` wherever
    ``x0`` is one and ``q`` is at least its unit there.
    """
    spacing = _spacing(x0, reduced)
    unit = max(spacing, _spacing(np.array([scale]), reduced))
    q = 2.0 ** np.ceil(np.log2(64.0 * unit))
    while q > spacing and 4.0 * q > room:
        q /= 2.0
    return float(q)


def _extrapolate(quotients):
    """Best first-order Richardson ``(value, error, rung, noise)`` over consecutive rungs."""
    best = (np.nan, np.inf, None, np.inf)
    extrap = []
    for (d0, n0, k0), (d1, n1, k1) in zip(quotients, quotients[1:], strict=False):
        if k1 != k0 + 1:
            extrap = []
            continue
        extrap.append((2.0 * d1 - d0, 2.0 * n1 + n0))
        if len(extrap) >= 3:
            (e0, _), (e1, _), (e2, ne) = extrap[-3:]
            err = max(abs(e2 - e1), abs(e1 - e0)) + ne
            if err < best[1]:
                best = (e2, err, k1, ne)
            elif ne > best[1]:
                break
    return best


def _first_within(largest, gap):
    """The first rung ``k`` whose step ``largest 2^-k`` is at most ``gap`` (0 when all are).

    Also 0 where no rung of the ladder is that small (a group of zeros next to
    the smallest subnormal): capped there, the group would have no step at
    all, and the ladder's own steps are all there is to go by.
    """
    if not (np.isfinite(gap) and gap > 0 and largest > gap):
        return 0
    if not largest * 2.0**-N_RUNGS <= gap:
        return 0
    k = int(np.ceil(np.log2(largest / gap)))
    return k + 1 if largest * 2.0**-k > gap else k


def _short(quotients, n):
    """``(value, error, rung, noise)`` from the ``n`` largest steps of ``quotients`` alone.

    Where the next other value of the input limits the steps (a float16 sort
    of values 2 units apart has room for two; a float32 max-pool plus 1e3
    over ReLU zeros 0.04 from a positive value, for steps whose noise is 0.03
    at the largest and 8 times that at the fourth), the three extrapolants of
    :func:`_extrapolate` need steps whose noise buries the slope. The
    quotient at the smallest of the ``n`` steps is the estimate, and its
    error the largest change between consecutive ones (a first-order
    truncation ``a t`` changes a one-sided difference by ``a t / 2`` from
    ``t`` to ``t / 2``, as much as is left in it) plus twice their largest
    noise. Unresolved (NaN) where the ``n`` largest are not consecutive rungs.
    """
    top = quotients[:n]
    if len(top) < max(n, 2) or any(b[2] != a[2] + 1 for a, b in zip(top, top[1:], strict=False)):
        return (np.nan, np.inf, None, np.inf)
    change = max(abs(b[0] - a[0]) for a, b in zip(top, top[1:], strict=False))
    noise = max(q[1] for q in top)
    return (top[-1][0], change + 2.0 * noise, top[-1][2], noise)


def _one_sided(objective, i, idx, grads, sign, t0=T0, n_rungs=N_RUNGS):
    """``phi'(x; sign * d)`` along the all-ones direction ``d`` over ``idx`` of input ``i``.

    Steps are relative to the group's scale (:func:`_group_scale`), and the
    noise is the measured noise of the outputs that changed (the same model
    as the central ladder's), so the test reads the same in any units. Where
    the best estimate comes from the largest steps and is mostly rounding
    noise (a max-pool in float16), the ladder climbs to larger steps, by at
    most :data:`MAX_CLIMB` octaves and never by more than half the distance
    to the next other value of the input (the group would cross it there).
    Returns ``(slope, error, moves)``: ``moves``, whether some step changed an output.
    """
    work = objective.work
    f0 = objective.base_output
    cot = objective.cotangent
    g = np.asarray(grads[i], dtype=np.float64).reshape(-1)[idx]
    mask = np.zeros(cot.shape, dtype=bool)
    flat = work[i].reshape(-1)
    x0 = flat[idx].copy()
    s = _group_scale(objective, i, idx)
    terms = [0.0]  # the largest sum |c_i (f_i(x + t d) - f_i(x))| / t: the size of the VJP's terms
    # Where fn computes in float32 or float16 and the tied value is one of its
    # values, every step lands on one too: fn then sees exactly the step taken.
    reduced = _exact_type(objective, x0)
    line = None
    if reduced is not None:
        room = 0.5 * _nearest(flat, float(x0[0]))
        line = _line_noise(objective, i, idx, reduced, room)

    def rung(k):
        """``(quotient, noise, k, unchanged)`` at step ``t0 s 2^-k``: None below resolution, ()
        non-finite; ``unchanged``: every output bitwise what it was at ``x``."""
        t = t0 * s * 2.0**-k
        with np.errstate(over="ignore", invalid="ignore"):
            moved = _snap(x0 + sign * t, reduced)
        if np.any(moved == x0):
            return None  # the step no longer moves every tied element
        if not np.all(np.isfinite(moved)):
            return ()
        try:
            flat[idx] = moved
            fp = objective.output(work)
        finally:
            flat[idx] = x0
        if fp.shape != cot.shape or not np.all(np.isfinite(fp)):
            return ()
        taken = moved - x0  # the step actually taken, per element
        num = float(np.vdot(cot, fp - f0)) - float(np.dot(g, taken - sign * t))
        noise = _rounding(objective, fp, f0, mask, line)
        with np.errstate(over="ignore", invalid="ignore"):
            terms[0] = max(terms[0], float(np.vdot(np.abs(cot), np.abs(fp - f0))) / t)
        return (num / t, noise / t, k, bool(np.array_equal(fp, f0)))

    # No step carries the group past another value of its input: beyond the gap to
    # it, phi along d is another piece (a sort's group moved above its neighbours
    # takes their positions' cotangents), and one-sided differences there agree with
    # each other on its slope (a float16 sort whose values are 2 units apart read
    # 0.65 for a sum of 4.1, error estimate 2). At the gap the group ties the next
    # value: still on its piece, phi being continuous there.
    lowest = _first_within(t0 * s, _gap(flat, float(x0[0]), sign))
    # Where the noise probe saw the outputs the group moves (those that changed at
    # the largest step) vary on a smaller scale than the largest steps, start below
    # it (sin at tied values near 1e14 varies on a scale of 1: one-sided differences
    # over steps of 1e5 and more are all about 0, and agree with each other).
    q0 = rung(lowest)
    first = max(lowest, objective.noise.first_rung(mask, t0)) if q0 and mask.any() else lowest
    quotients, changed, kept = [], False, []
    for k in range(first, first + n_rungs):
        q = q0 if k == lowest else rung(k)
        if q is None:
            break
        if q:
            # fn bitwise unchanged although a larger step changed it (by more than its
            # rounding: a slope of 0 moves fn by rounding only): the step fell below
            # fn's resolution (a float32 loss near 5 at steps below 2e-7 on tied values of
            # 0, which float32 represents exactly), not a zero slope; this and smaller
            # rungs are left out (their exact zeros agree with each other perfectly).
            if changed and q[3]:
                break
            changed |= not q[3] and abs(q[0]) > q[1]  # a change above its rounding
            quotients.append(q[:3])
            kept.append(q)
    best = _extrapolate(quotients)
    room = 0.5 * _gap(flat, float(x0[0]), sign)
    top = first
    capped = lowest > 0  # the gap to the next other value set the largest step
    while top > -MAX_CLIMB and quotients and best[2] is not None:
        value, err, k_best, noise_e = best
        if k_best > quotients[0][2] + 3 or 2.0 * noise_e < err:
            break  # not at the largest steps, or not rounding-dominated
        if not t0 * s * 2.0 ** -(top - 1) <= room:
            capped = True
            break
        top -= 1
        q = rung(top)
        if not q:
            break
        quotients.insert(0, q[:3])
        kept.append(q)
        best = _extrapolate(quotients)
    if capped:
        # No larger steps to climb to: fewer of the largest ones, where they are less noisy.
        for n in (2, 3):
            short = _short(quotients, n)
            if short[1] < best[1]:
                best = short
    best = best[:2]
    value, err = best
    moves = any(not q[3] for q in kept)
    if not np.isfinite(value):
        return np.nan, np.inf, moves
    # The analytic sum over the group carries the rounding of the terms it is
    # made of (softmax-CE at equal logits: 1/6 - 1/6 per element, summing to
    # 1e-18 where the directional derivative is exactly 0).
    err += analytic_rounding(terms[0], objective.noise.kind)
    largest = t0 * s * 2.0**-top
    unseen = ~mask
    hidden = 0.0
    if unseen.any():
        # Only the unchanged outputs that depend on the group count (an
        # elementwise fn's other outputs do not): each may have moved by up to
        # its rounding over the largest step.
        coupled = ladder_coupled(objective, objective.work[i].reshape(-1), idx, s, unseen)
        # At exact steps the outputs' resolution is their noise along this line
        # (a sort's other outputs stay exactly what they were).
        level = _resolution(objective, f0) if line is None else line(f0)
        resolution = level[coupled] + QUANTUM
        hidden = 2.0 * float(np.sum(np.abs(cot[coupled]) * (resolution / largest)))
    return sign * value, err + hidden, moves


def element_slopes(objective, i, j, grads):
    """One-sided derivatives ``(left, right, error)`` of element ``j`` of input ``i`` alone.

    At a tie, moving one tied element alone makes it the largest (or the
    smallest) of its group: its one-sided slopes are the derivatives at the
    ends of the group's positions. The central ladder's kink test sees them
    only where the jump between them is well above the noise at the steps
    it chose; in a ``fn`` that computes in float16 those steps are noisy,
    and these one-sided ladders climb to steps that resolve the jump
    (:func:`_one_sided`).
    """
    idx = np.array([j], dtype=np.intp)
    right, err_r, _ = _one_sided(objective, i, idx, grads, +1.0)
    left, err_l, _ = _one_sided(objective, i, idx, grads, -1.0)
    return left, right, max(err_l, err_r)


#: Most (order, element) pairs :func:`limiting_slopes` samples per scale: a group of
#: ``m`` tied values needs ``m`` orders for every element to take every position once.
MAX_TIE_PAIRS = 2048


def _orders(m, n, rng, shifted=False):
    """``n`` orders of ``m`` tied elements (``order[p]``: the position of element ``p``).

    The first ``min(m, n)`` are the cyclic shifts of one random permutation,
    so that every element takes every position of the group once (the middle
    positions of a sort are limiting derivatives as much as the ends); the
    rest are random permutations. ``shifted``: those are moved as a whole so
    that a random number ``c`` (0 to ``m``) of the group lies above the tied
    value (position ``(m - 1) / 2``) and the rest below, none at it: where
    each element also kinks at the tied value (ReLU zeros in overlapping
    max-pool windows), the group entirely above it is a limiting
    configuration too, which orders centred on it never reach (half the
    group always sits below: a zero that is the maximum of one window while
    its neighbour, above it, takes the next).
    """
    base = rng.permutation(m)
    shifts = [np.roll(base, k) for k in range(min(m, n))]
    rest = [rng.permutation(m).astype(np.float64) for _ in range(n - len(shifts))]
    if shifted:
        rest = [o + (rng.integers(0, m + 1) - 0.5 * m) for o in rest]
    return shifts + rest


def _sampled_slopes(objective, i, idx, which, orders, sep, h, reduced=None, line=None):
    """Per-element lowest/highest central slope where the group is untied in ``orders``.

    In each order the group's elements sit ``sep`` apart around the tied
    value (position ``k`` of ``m`` at ``(k - (m - 1) / 2) sep``), and each
    element of ``which`` (positions within ``idx``) takes a central
    difference of half-width ``h < sep``: the order stays the same on both
    sides, so the slope is the derivative of the piece where the group is in
    that order. ``reduced``: the type ``fn`` computes in, whose values the
    points are rounded to (exact steps, :func:`_exact_type`); ``line``: its
    noise level (:func:`_line_noise`).
    """
    work = objective.work
    cot = objective.cotangent
    flat = work[i].reshape(-1)
    x0 = flat[idx].copy()
    m = idx.size
    lo, hi, noise = np.full(m, np.inf), np.full(m, -np.inf), np.zeros(m)
    try:
        for order in orders:
            base = _snap(x0 + (order - 0.5 * (m - 1)) * sep, reduced)
            for p in which:
                xp, xm = _snap(base[p] + h, reduced), _snap(base[p] - h, reduced)
                flat[idx] = base
                flat[idx[p]] = xp
                fp = objective.output(work)
                flat[idx[p]] = xm
                fm = objective.output(work)
                taken = xp - xm
                finite = np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))
                if fp.shape != cot.shape or not finite or not taken > 0:
                    continue
                slope = float(np.vdot(cot, fp - fm)) / taken
                changed = np.zeros(cot.shape, dtype=bool)
                noise[p] = max(noise[p], _rounding(objective, fp, fm, changed, line) / taken)
                lo[p] = min(lo[p], slope)
                hi[p] = max(hi[p], slope)
    finally:
        flat[idx] = x0
    return lo, hi, noise


def _reduced_layout(value, gap, m, reduced, spread):
    """``(sep, sep_small, h)`` of the ordered points in a reduced type, or None where none fit.

    Every point must be a value of ``reduced`` and the group must stay
    within the gap to the next other value: ``(m - 1) / 2`` separations plus
    the step on each side. The step spans 8 units of ``reduced`` where it
    fits (down to 2), the separation is as large as ``spread`` allows, and the
    smaller separation (for the smoothness test) is a sixteenth of it, at
    least the step plus two units.
    """
    # The unit of the reduced type over the whole span (at 0 it is a subnormal's).
    unit = _spacing(np.array([value - 2.0 * spread, value, value + 2.0 * spread]), reduced)
    room = gap - 2.0 * unit
    half = 0.5 * max(m - 1, 1)
    for h in (8.0 * unit, 4.0 * unit, 2.0 * unit):
        if half * (h + 2.0 * unit) + h <= room:
            break
    else:
        return None
    sep = min((room - h) / half, spread / half)
    sep = max(np.floor(sep / unit) * unit, h + 2.0 * unit)
    small = max(np.ceil(sep / 16.0 / unit) * unit, h + 2.0 * unit)
    return float(sep), float(small), float(h)


def limiting_slopes(objective, i, idx, which=None, n_samples=None, seed=0, orders=None):
    """Per-element ``(lowest, highest, noise, resolved)`` limiting slopes of a tie group.

    The group is untied in several orders (:func:`_orders`: every element
    takes every position of the group at least once), its elements ``sep``
    apart (far below the distance to the nearest other value of the input),
    and each element of ``which`` (positions within ``idx``; default: all)
    takes a central difference there, at two separations ``sep`` and ``sep /
    16``. Where the spread of the slopes shrinks with the separation the
    function is smooth there (the spread was curvature): NaN. Where it does
    not, the elements sit at a tie whose limiting gradients span ``[lowest,
    highest]``; ``noise`` bounds the rounding error of the sampled slopes.

    ``resolved`` is False where no slope could be sampled: in a ``fn`` that
    computes in float16, a group of many tied values on a grid of a few of
    its units has no room to be untied with steps it resolves; and a large
    group gets :data:`MAX_TIE_PAIRS` (order, element) pairs at most.
    ``orders``: the positions to sample (see :func:`_orders`) instead of drawn ones.
    """
    rng = np.random.default_rng(seed)
    flat = objective.work[i].reshape(-1)
    x0 = flat[idx]
    m = idx.size
    which = np.arange(m) if which is None else np.asarray(which, dtype=np.intp)
    n_orders = n_samples or max(min(8 * m, 48), m)
    n_orders = max(1, min(n_orders, MAX_TIE_PAIRS // max(which.size, 1)))
    if n_orders < m and which.size > 1:
        # Too many elements to see every one of them in every position: fewer
        # elements, each in every position.
        which = which[: max(1, MAX_TIE_PAIRS // m)]
        n_orders = m
    value = float(x0[0])
    gap = _nearest(flat, value)
    delta = min(2.0**-12 * _group_scale(objective, i, idx), gap / 16.0)
    # Not beyond the scale on which the outputs the group feeds vary (sin at tied
    # values near 1e15 varies on a scale of 1: slopes sampled 1e11 apart alias).
    limits = objective.noise.start_limit(turns=False)
    near = _support(objective, i, int(idx[0])) if limits is not None else None
    if near is not None and near.any():
        delta = min(delta, float(np.min(limits[near])) * _group_scale(objective, i, idx))
    reduced = _exact_type(objective, x0)
    line = None
    half = 0.5 * max(m - 1, 1)
    if reduced is None:
        sep, small = delta / half, delta / half / 16.0
        h, h_small = min(0.25 * sep, delta / 64.0), min(0.25 * small, delta / 1024.0)
        smooth_test = True
    else:
        # fn computes in float32 or float16, and the tied value is one of its
        # values: the points are rounded to its values (exact steps), and the
        # steps must span a few of its units (sort in float16 at 1.0 has
        # units of 1e-3), so the separation widens as far as the gap allows.
        spread = min(max(delta, 1024.0 * 8.0 * _spacing(value, reduced)), gap / 4.0)
        layout = _reduced_layout(value, gap, m, reduced, spread)
        nan = np.full(m, np.nan)
        if layout is None:
            return nan, nan, np.zeros(m), np.zeros(m, dtype=bool)
        sep, small, h = layout
        h_small = h
        smooth_test = small <= 0.5 * sep
        line = _line_noise(objective, i, idx, reduced, 0.5 * gap)
    if orders is None:
        orders = _orders(m, n_orders, rng, shifted=reduced is None)
    extra = {"reduced": reduced, "line": line}
    lo1, hi1, n1 = _sampled_slopes(objective, i, idx, which, orders, sep, h, **extra)
    if smooth_test:
        lo2, hi2, n2 = _sampled_slopes(objective, i, idx, which, orders, small, h_small, **extra)
    else:
        lo2, hi2, n2 = lo1, hi1, n1
    noise = np.maximum(n1, n2)
    with np.errstate(invalid="ignore"):
        smooth = (hi2 - lo2) <= 0.25 * (hi1 - lo1) + 4.0 * noise if smooth_test else hi1 < lo1
    resolved = np.zeros(m, dtype=bool)
    resolved[which] = np.isfinite(lo1[which]) & np.isfinite(hi1[which])
    lo = np.where(smooth | ~resolved, np.nan, np.minimum(lo1, lo2))
    hi = np.where(smooth | ~resolved, np.nan, np.maximum(hi1, hi2))
    return lo, hi, noise, resolved


#: Largest tie group whose limiting slopes :func:`exact_slopes` enumerates.
EXACT_MAX = 8


def exact_slopes(objective, i, idx, p):
    """``(lowest, highest, noise)`` of element ``p`` of a small tie group, over every piece.

    Sampled orders (:func:`limiting_slopes`) can miss the pieces where an
    element's slope is extreme. For a group of at most :data:`EXACT_MAX`
    elements each is enumerated: every set of the others above the element
    (in the order of their flat indices, the rest below it, in that order
    too), with the element just above and just below the tied value (where
    it also kinks there: ReLU zeros under tied max-pool windows). On a piece
    of ``max``, max-pool, top-k or sort the slope of the element depends on
    those only. NaN where the group is smooth there or no slope was sampled
    (a coarse type: :func:`limiting_slopes`).
    """
    m = idx.size
    others = [q for q in range(m) if q != p]
    orders = []
    for mask in range(2 ** len(others)):
        above = [q for k, q in enumerate(others) if mask >> k & 1]
        below = [q for k, q in enumerate(others) if not mask >> k & 1]
        for side in (0.5, -0.5):
            pos = np.empty(m)
            pos[p] = side
            pos[above] = side + np.arange(1, len(above) + 1)
            pos[below] = side - np.arange(1, len(below) + 1)
            orders.append(pos + 0.5 * (m - 1))
    lo, hi, noise, _ = limiting_slopes(objective, i, idx, which=[p], orders=orders)
    return float(lo[p]), float(hi[p]), float(noise[p])


#: Largest tie group split into the parts that share no output (:func:`_components`).
MAX_SPLIT = 256


def _support(objective, i, j):
    """The outputs (flat bool) that change when element ``j`` of input ``i`` moves alone.

    Steps of ``s / 8`` and ``16 s`` each way (``s`` its scale): the near ones
    see what it feeds, the far ones whom it overtakes (a sort's other
    positions, the maximum of its window).
    """
    flat = objective.work[i].reshape(-1)
    s = float(objective.scales[i].reshape(-1)[j])
    f0 = objective.base_output.reshape(-1)
    x0 = flat[j]
    found = np.zeros(f0.shape, dtype=bool)
    try:
        for step in (s / 8.0, 16.0 * s, -s / 8.0, -16.0 * s):
            with np.errstate(over="ignore", invalid="ignore"):
                moved = x0 + step
            if not np.isfinite(moved):
                continue
            flat[j] = moved
            f = np.asarray(objective.output(objective.work)).reshape(-1)
            found |= (f != f0) | ~np.isfinite(f)
    finally:
        flat[j] = x0
    return found


def _components(objective, i, idx):
    """The tie group ``idx`` split into parts that share no output (arrays of flat indices).

    Two tied elements are coupled when moving either changes a common output
    (:func:`_support`): the elements of one max-pool window, all the elements
    of a sort. Elements in different windows kink independently. Groups
    above :data:`MAX_SPLIT` elements stay whole.
    """
    if idx.size > MAX_SPLIT:
        return [idx]
    parent = list(range(idx.size))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner = {}
    for p, j in enumerate(idx):
        for o in np.flatnonzero(_support(objective, i, int(j))):
            q = owner.setdefault(int(o), p)
            parent[root(p)] = root(q)
    parts = {}
    for p in range(idx.size):
        parts.setdefault(root(p), []).append(int(idx[p]))
    return [np.array(part, dtype=np.intp) for part in parts.values()]


def _joint(objective, grads, names, i, idx, atol, rtol):
    """The :class:`TieCheck` of the group ``idx`` of input ``i`` (flat indices)."""
    g = np.asarray(grads[i], dtype=np.float64).reshape(-1)[idx]
    right, err_r, moves_r = _one_sided(objective, i, idx, grads, +1.0)
    left, err_l, moves_l = _one_sided(objective, i, idx, grads, -1.0)
    shape = objective.work[i].shape
    indices = tuple(tuple(int(v) for v in np.unravel_index(int(j), shape)) for j in idx)
    return TieCheck(
        input_number=i,
        input_name=names[i],
        tied_value=float(objective.work[i].reshape(-1)[idx[0]]),
        indices=indices,
        value=float(np.sum(g)),
        left=left,
        right=right,
        error=max(err_l, err_r)
        + NOISE_SAFETY * EPS * float(np.sum(np.abs(g)))
        + _natural_rounding(objective, i, idx),
        allowance=atol * idx.size + rtol * float(np.sum(np.abs(g))),
        moves=moves_r or moves_l,
        size=float(np.sum(np.abs(g))),
    )


def check_ties(objective, grads, names, *, kinks=None, atol=0.0, rtol=0.0, found=None):
    """Test every tie group jointly; returns ``(list of TieCheck, groups found, evaluations)``.

    ``grads`` is the analytic gradient (finite), one array per input.
    ``found``: what :func:`tie_groups` returned for ``objective.work`` and
    ``kinks``, when the caller has it already.

    A group along whose direction ``phi`` kinks, or that fails, is split into the parts that
    share no output (:func:`_components`), and each part of two or more
    elements is tested alone (a part of one is the per-element kink
    test's): tied zeros of a ReLU in different max-pool windows kink
    independently. Judged as one
    group, a subgradient that routes one window's gradient to its zero and
    another's to none sums outside the one-sided slopes of the whole group
    when the windows' cotangents differ in sign (a false alarm), and one that
    routes a window's gradient to each of its zeros can sum inside them (a
    wrong gradient passed).
    """
    groups, n_found = tie_groups(objective.work, kinks) if found is None else found
    calls0 = objective.calls
    out = []
    for i, idx in groups:
        whole = _joint(objective, grads, names, i, idx, atol, rtol)
        smooth = not abs(whole.left - whole.right) > whole.error
        if idx.size < 2 or (smooth and whole.passed):
            # phi is smooth along the group's direction: its derivative there is the
            # sum of the parts' (each stays tied, a sort's positions stay put).
            out.append(whole)
            continue
        parts = _components(objective, i, idx)
        checks = [_joint(objective, grads, names, i, p, atol, rtol) for p in parts if p.size > 1]
        if len(parts) == 1 or (smooth and all(c.passed for c in checks)):
            # One part, or a smooth group whose parts each pass (the sum is wrong
            # where no part shows it): the group is judged whole.
            out.append(whole)
            continue
        # A failing smooth group (equal values in many max-pool windows, moved
        # together: each window's maximum moves along) names the windows wrong.
        out += checks
    return out, n_found, objective.calls - calls0
