"""The checks of hand-written derivatives: VJPs, JVPs and HVPs, as specs of one pipeline.

The calling convention, the same for every check and every derivative
----------------------------------------------------------------------
* What is checked is positional: ``check_*(fn, derivative, inputs)``;
  every option is keyword-only.
* ``inputs`` is a tuple with one array per positional argument of ``fn``
  (a bare array counts as the only input).
* The user's derivative is called as ``derivative(direction, *inputs)``:
  ``vjp(cotangent, *inputs)``, ``jvp(tangents, *inputs)``,
  ``hvp(vectors, *inputs)``.
* Anything that lives in the input space (gradients, tangents, HVP vectors
  and HVP results) is a bare array when ``fn`` has one input, else a tuple
  with one array per input. Anything that lives in the output space (a
  cotangent, an output tangent) is one array shaped like ``fn``'s output.
* The same keywords everywhere: ``direction=`` (the cotangent, tangents or
  vectors; default random normal from ``seed``), ``against=``, ``names=``,
  ``seed=``, ``rtol=``/``atol=``, ``torch_fn=``/``jax_fn=``; ``mode=`` where
  the numeric oracle searches element by element (VJPs and layers).
* ``check_*`` returns a :class:`~oracles.report.Report`; ``assert_*``
  returns it too, or raises :class:`~oracles.errors.GradientMismatch`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles._guards import (
    Guarded,
    call_user,
    check_repeatable,
    mutations,
    outside_the_domain,
    own_stream,
)
from oracles._pipeline import (
    OracleResult,
    Spec,
    dot_hvp,
    dot_jvp,
    dot_vjp,
    flat,
    raise_unless_passed,
    run,
    split,
    taylor_forward,
    taylor_vjp,
)
from oracles._validation import as_output, normalize_gradients
from oracles.compare import Reference, compare
from oracles.errors import InvalidArgument, OraclesError, UserFunctionError
from oracles.numerics.directional import vector_ladder
from oracles.numerics.ladder import partials
from oracles.numerics.modes import resolve_mode
from oracles.numerics.objective import ScalarObjective
from oracles.numerics.ties import (
    EXACT_MAX,
    check_ties,
    element_slopes,
    exact_slopes,
    limiting_slopes,
    tie_groups,
)
from oracles.report import Report

__all__ = ["assert_hvp", "assert_jvp", "assert_vjp", "check_hvp", "check_jvp", "check_vjp"]

#: Name of the one piece a JVP check compares: the output tangent.
OUTPUT_NAME = "out_tangent"


def _pack(direction):
    """What the user's derivative receives: a bare array for one input, else a tuple."""
    return direction[0] if len(direction) == 1 else tuple(direction)


def _backend(oracle):
    if oracle == "torch":
        from oracles.backends import torch as backend
    else:
        from oracles.backends import jax as backend
    return backend


# --- VJP ----------------------------------------------------------------------------------------


def _vjp_numeric(r):
    # fn at the point is known already (the pipeline's forward stage): one call less.
    objective = r.objective()
    safe = [g if np.isfinite(g).all() else np.where(np.isfinite(g), g, 0.0) for g in r.analytic]
    n = sum(x.size for x in r.xs)
    refs, method, evaluations, notes = resolve_mode(r.mode, n).reference(
        objective,
        safe,
        atol=r.atol,
        rtol=r.rtol,
        seed=r.seed,
        must_check=[~np.isfinite(g) for g in r.analytic],
    )
    evaluations += tie_stages(r, objective, safe, refs, notes)
    return OracleResult(refs, method, evaluations, notes)


def tie_stages(r, objective, grads, refs, notes):
    """What follows the per-element references of a VJP: tied values, judged jointly.

    Tie groups of each input (:func:`_joint_ties`), values tied across
    inputs (:func:`_cross_input_ties`), the groups that failed only where
    ``fn`` kinks along them judged again nearby (:func:`_off_the_kinks`),
    and what mode fast gave up on evidence the tie stages took back
    (:func:`_given_up_on_retracted_evidence`). Updates ``refs``, ``notes``
    and ``r.problems``; returns the calls of ``fn``.
    """
    failures, lost, given_up = [], [], [_not_compared(ref) for ref in refs]
    calls = _joint_ties(r, objective, grads, refs, notes, failures, lost)
    calls += _cross_input_ties(r, objective, grads, refs, notes, failures)
    calls += _off_the_kinks(r, objective, grads, refs, notes, failures)
    calls += _lost_elements_nearby(r, objective, lost, notes)
    _given_up_on_retracted_evidence(r, refs, grads, given_up)
    return calls


#: Above this share of an input's elements judged only jointly with their tie group
#: (:func:`_widen_to_limiting_slopes`), the check says it could not tell: what 9 elements
#: in 10 catch is the figure of a check (``TYPICAL_QUANTILE`` of the pipeline).
BLIND_SHARE = 0.1

#: Tie groups up to this size get the per-element limits of every element from sampled
#: nearby points; larger ones only of the elements that disagree with their reference.
TIE_WIDEN_MAX = 8


def _widen_to_limiting_slopes(r, objective, refs, tie, grads):
    """Accept, per element of a tie group, any limiting slope (see :mod:`oracles.numerics.ties`).

    Groups of up to :data:`TIE_WIDEN_MAX` elements sample every element;
    larger ones (a sort of many equal values) only the elements that
    disagree with their reference. Where the sampled limiting slopes are not
    resolved (the function is smooth there, or too coarse for their small
    steps: float16 inside) and an element disagrees with its reference, the
    one-sided slopes of that element alone
    (:func:`~oracles.numerics.ties.element_slopes`) are accepted when they
    differ by more than their error: it sits at a kink that the central
    ladder's steps did not resolve. Where no order of the group could be
    sampled at all (float16 leaves no room between the tied value and the
    next one), a disagreeing element cannot be judged alone: it is not
    compared one by one (``checked``), only jointly with its group, and the
    report says so.

    Returns the flat indices of the elements that could not be judged alone.
    A group whose joint test measured no slopes
    (:attr:`~oracles.numerics.ties.TieCheck.resolved`) makes the check
    inconclusive where it is the only judge of a routing: an element of it
    sits at a kink, or ``fn`` computes in a coarse type. (Elsewhere the
    elements were judged one by one, as at equal logits of a softmax at an
    offset of 100, whose next other value can leave no room for the joint
    test's steps.)
    """
    i = tie.input_number
    shape = r.xs[i].shape
    idx = np.array([np.ravel_multi_index(j, shape) if shape else 0 for j in tie.indices])
    ref = refs[i]
    analytic = np.asarray(grads[i], dtype=np.float64).reshape(-1)
    value0 = error0 = kink0 = ends0 = None
    if ref.value is not None and ref.error is not None:
        value0 = np.asarray(ref.value, dtype=np.float64).reshape(-1)
        error0 = np.asarray(ref.error, dtype=np.float64).reshape(-1)
        kink0 = None if ref.kink is None else np.asarray(ref.kink, dtype=bool).reshape(-1)
        if kink0 is not None and ref.left is not None and ref.right is not None:
            ends0 = [np.asarray(e, dtype=np.float64).reshape(-1) for e in (ref.left, ref.right)]

    @functools.cache
    def is_coarse():
        # fn computes in a coarse type: the noise model, measured on first need only (mode
        # fast has none of its own, and most groups never ask).
        return objective.noise.kind is not None

    if not tie.resolved and (
        kink0 is None or value0 is None or kink0[idx].any() or is_coarse()
    ):
        r.inconclusive.append(tie.unresolved())

    def disagrees(j):
        if value0 is None:
            return False
        slack = r.atol + r.rtol * abs(value0[j]) + error0[j]
        if ends0 is not None and kink0[j] and not is_coarse():
            # At a kink of its own ladder, any value between its one-sided slopes passes
            # already: wider limiting slopes could only accept more (a zero pixel of a
            # digit under a convolution and a max-pool of tied windows). Not where fn
            # computes in a coarse type: its noise widens those slopes, and the joint
            # test of the group, which must then catch a wrong routing, is as coarse.
            lo, hi = sorted((float(ends0[0][j]), float(ends0[1][j])))
            if np.isfinite(lo) and np.isfinite(hi):
                return bool(not lo - slack <= analytic[j] <= hi + slack)
        return bool(abs(analytic[j] - value0[j]) > slack)

    which = None
    if idx.size > TIE_WIDEN_MAX:
        # Only where the element's own ladder saw a kink (or fn computes in a
        # coarse type, whose noise can hide one): a smooth tie that disagrees
        # (a zero bias under a wrong formula) needs no orders of its group.
        which = [
            p
            for p, j in enumerate(idx)
            if disagrees(j) and (is_coarse() or (kink0 is not None and kink0[j]))
        ]
        if not which:
            return idx[:0]
    lo, hi, noise, resolved = limiting_slopes(objective, i, idx, which=which)
    blind = np.zeros(idx.size, dtype=bool)
    if value0 is not None:
        for p, j in enumerate(idx):
            if np.isfinite(lo[p]) and np.isfinite(hi[p]):
                continue
            if not disagrees(j):
                continue
            if not resolved[p]:
                # Alone, an element only reaches the ends of the group's
                # positions; the middle ones could not be sampled.
                blind[p] = True
                continue
            if kink0 is not None and kink0[j]:
                continue
            left_j, right_j, err_j = element_slopes(objective, i, int(j), grads)
            if np.isfinite(left_j) and np.isfinite(right_j) and abs(right_j - left_j) > err_j:
                lo[p], hi[p] = min(left_j, right_j), max(left_j, right_j)
                noise[p] = max(noise[p], err_j)
        if which is not None:
            # A large group gets a few of its many orders. Where fn composes the tie with
            # more (the zero pixels of a digit under a convolution and a max-pool), the
            # limiting gradients are not those of the group's orders alone, and backprop's
            # routing to the first maximum need not be one of them at all (Kakade and Lee
            # 2018, Bolte and Pauwels 2020): an element outside what was sampled is judged
            # with its group only, not failed.
            for p in which:
                j = idx[p]
                if not (np.isfinite(lo[p]) and np.isfinite(hi[p])):
                    continue
                ends = [lo[p], hi[p]] + ([e[j] for e in ends0] if ends0 is not None else [])
                ends = [e for e in ends if np.isfinite(e)]
                slack = r.atol + r.rtol * abs(value0[j]) + max(error0[j], noise[p])
                if not min(ends) - slack <= analytic[j] <= max(ends) + slack:
                    blind[p] = True

    if value0 is not None and idx.size <= EXACT_MAX:
        _exact_ranges(r, objective, i, idx, analytic, (value0, error0, kink0, ends0),
                      (lo, hi, noise), blind, is_coarse)  # fmt: skip

    def flat(a, fill, dtype=np.float64):
        a = np.full(shape, fill, dtype=dtype) if a is None else np.array(a, dtype=dtype)
        return a.reshape(-1)

    value, error = flat(ref.value, np.nan), flat(ref.error, np.inf)
    kink, left, right = flat(ref.kink, False, bool), flat(ref.left, np.nan), flat(ref.right, np.nan)
    checked = None if ref.checked is None else flat(ref.checked, False, bool)
    covered = ref.covered
    if blind.any():
        # Not compared one by one (their reference is not a limiting slope):
        # the joint test of the group vouches for their sum only.
        if checked is None:
            checked, covered = np.ones(value.size, dtype=bool), value.size
        covered = (covered if covered is not None else int(checked.sum())) - int(
            np.count_nonzero(checked[idx[blind]])
        )
    for p, j in enumerate(idx):
        if blind[p]:
            value[j], error[j], checked[j], kink[j] = np.nan, np.inf, False, False
            continue
        if not (np.isfinite(lo[p]) and np.isfinite(hi[p])):
            continue  # smooth at this tie (or not finite): nothing to add
        unchecked = checked is not None and not checked[j]
        known = [v for v in (left[j], right[j]) if np.isfinite(v)] if kink[j] else []
        if unchecked:
            known, error[j] = [], tie.error
        error[j] = max(error[j], noise[p])
        ends = known + [lo[p], hi[p]]
        left[j], right[j] = min(ends), max(ends)
        if not np.isfinite(value[j]) or (checked is not None and not checked[j]):
            value[j] = 0.5 * (left[j] + right[j])
        kink[j] = True
        if checked is not None:
            checked[j] = True
    refs[i] = Reference(
        value=value.reshape(shape),
        error=error.reshape(shape),
        kink=kink.reshape(shape),
        left=left.reshape(shape),
        right=right.reshape(shape),
        nonfinite=ref.nonfinite,
        checked=None if checked is None else checked.reshape(shape),
        covered=covered,
    )
    return idx[blind]


#: Most elements of small tie groups per check whose exact range :func:`_exact_ranges` enumerates.
MAX_EXACT_ELEMENTS = 24


def _exact_ranges(r, objective, i, idx, analytic, own, sampled, blind, is_coarse):
    """Before an element of a small tie group fails, its exact range of limiting slopes.

    ``own``: ``(value, error, kink, ends)`` of the per-element references
    (flat); ``sampled``: ``(lo, hi, noise)`` of :func:`limiting_slopes`, per
    position in ``idx``, widened in place. An element outside both its own
    one-sided slopes and the sampled limiting slopes gets the slopes of every
    piece of its group (:func:`~oracles.numerics.ties.exact_slopes`): the
    sampled orders can miss the one where it is extreme (a ReLU zero that
    is the maximum of one overlapping max-pool window while its tied
    neighbour, above it, takes the next). At most :data:`MAX_EXACT_ELEMENTS`
    per check; not where ``fn`` computes in a coarse type (its points are
    rounded to that type's values).
    """
    value0, error0, kink0, ends0 = own
    lo, hi, noise = sampled
    left_budget = objective.__dict__.setdefault("_exact_left", [MAX_EXACT_ELEMENTS])
    for p, j in enumerate(idx):
        if blind[p] or left_budget[0] <= 0:
            continue
        ends = [lo[p], hi[p]]
        if ends0 is not None and kink0[j]:
            ends += [ends0[0][j], ends0[1][j]]
        ends = [e for e in ends if np.isfinite(e)]
        if not ends:
            continue  # smooth here: judged by its own reference
        slack = r.atol + r.rtol * abs(value0[j]) + max(error0[j], noise[p])
        if min(ends) - slack <= analytic[j] <= max(ends) + slack or is_coarse():
            continue
        left_budget[0] -= 1
        e_lo, e_hi, e_noise = exact_slopes(objective, i, idx, p)
        if not (np.isfinite(e_lo) and np.isfinite(e_hi)):
            continue
        lo[p] = e_lo if not np.isfinite(lo[p]) else min(lo[p], e_lo)
        hi[p] = e_hi if not np.isfinite(hi[p]) else max(hi[p], e_hi)
        noise[p] = max(noise[p], e_noise)


def _not_compared(ref):
    """Elements of a mode-fast reference that were neither compared nor covered (or None)."""
    if ref.checked is None:
        return None
    checked = np.asarray(ref.checked, dtype=bool).reshape(-1)
    error = np.asarray(ref.error, dtype=np.float64).reshape(-1)
    out = ~checked & ~np.isfinite(error)
    return out if out.any() else None


def _given_up_on_retracted_evidence(r, refs, grads, given_up):
    """Say so where mode fast gave elements up as a wrong formula and nothing fails now.

    Mode fast stops comparing an input whose errors are everywhere when a
    sample of them fails: a wrong formula. When the sampled failures sat at
    tied values and the tie stage then judged them with their group (or
    accepted them as subgradients), or they failed only at kinks and agreed
    at nearby points (:func:`_off_the_kinks`), that evidence is gone, and the elements
    given up were never compared: the input could not have failed there.
    """
    for i, lost in enumerate(given_up):
        if lost is None:
            continue
        ref = refs[i]
        at = np.flatnonzero(np.asarray(ref.checked, dtype=bool).reshape(-1))
        part = ref.subset(at)
        analytic = np.asarray(grads[i], dtype=np.float64).reshape(-1)[at]
        cmp = compare(
            analytic, part.value, part.error, atol=r.atol, rtol=r.rtol,
            kink=part.kink, left=part.left, right=part.right,
        )  # fmt: skip
        if cmp.n_failed:
            continue
        r.inconclusive.append(
            f"{int(lost.sum())} of {lost.size} element(s) of {r.names[i]} were not compared: "
            "mode fast took its errors everywhere for a wrong formula from sampled elements "
            "that failed, and those then passed at tied values (judged with their group or as "
            "subgradients), so any gradient passes there; mode='exhaustive' compares them all"
        )


def _blame_tie_group(r, refs, grads, tie):
    """Make a failed tie group fail element by element, against the nearest valid routing.

    The reference of each element of the group becomes the analytic value
    shifted by the same amount, so that the group sums to the nearest
    directional derivative the one-sided slopes allow: what a backward with
    this routing pattern would have to return to be a subgradient.
    """
    i = tie.input_number
    shape = r.xs[i].shape
    idx = np.array([np.ravel_multi_index(j, shape) if shape else 0 for j in tie.indices])
    lo, hi = min(tie.left, tie.right), max(tie.left, tie.right)
    target = float(np.clip(tie.value, lo, hi)) if np.isfinite(lo + hi) else np.nan
    g = np.asarray(grads[i], dtype=np.float64).reshape(-1)
    ref = refs[i]

    def flat(a, fill, dtype=np.float64):
        a = np.full(shape, fill, dtype=dtype) if a is None else np.array(a, dtype=dtype)
        return a.reshape(-1)

    value, error = flat(ref.value, np.nan), flat(ref.error, np.inf)
    kink = flat(ref.kink, False, bool)
    checked = None if ref.checked is None else flat(ref.checked, False, bool)
    if kink[idx].any():
        # The elements at a kink of their own carry the blame: a tied value
        # whose gradient is defined alone (a zero that is no window's maximum)
        # was judged by its own reference.
        idx = idx[kink[idx]]
    newly = 0
    if checked is not None:
        # Elements the search had given up on (no resolution) are covered now.
        old_error = error[idx]
        newly = int(np.count_nonzero(~checked[idx] & ~np.isfinite(old_error)))
    value[idx] = g[idx] + (target - tie.value) / idx.size
    error[idx] = tie.error / idx.size
    kink[idx] = False
    if checked is not None:
        checked[idx] = True
    refs[i] = Reference(
        value=value.reshape(shape),
        error=error.reshape(shape),
        kink=kink.reshape(shape),
        left=ref.left,
        right=ref.right,
        nonfinite=ref.nonfinite,
        checked=None if checked is None else checked.reshape(shape),
        covered=None if ref.covered is None else ref.covered + newly,
    )


#: Relative steps (times each element's scale) of the probe for a kink where ties untie.
TIE_PROBE_STEPS = (2.0**-10, 2.0**-12)


def _kink_where_ties_untie(objective, i, idx, rng):
    """Whether ``phi`` may have a kink at the tie ``idx`` of input ``i`` (10 evaluations).

    Along Gaussian directions ``u`` and ``v`` over the group (every pair of
    tied elements moves apart), two defects vanish at first order where
    ``phi`` is differentiable: ``J_u(t) = (phi(x + t u) + phi(x - t u) - 2
    phi(x)) / t``, the jump between the one-sided slopes (max, ReLU at tied
    zeros), and ``L(t) = (phi(x + t (u + v)) - phi(x + t u) - phi(x + t v) +
    phi(x)) / t``, the non-linearity of the one-sided slope in the direction
    (``sort`` under a palindromic cotangent has ``J = 0`` along every line,
    but not ``L``). At a kink they stay the same as ``t`` shrinks, where
    ``phi`` is smooth they shrink with ``t``: over two steps ``4x`` apart, a
    smooth ``phi`` has ``|D(t/4)| <= |D(t)| / 4`` up to rounding. Anything
    above ``|D(t)| / 2`` plus the rounding of ``D``, a non-finite output, or
    a step that does not move an element, counts as a kink.

    The rounding of ``D`` is only worked out where ``|D(t/4)| > |D(t)| / 2``
    (it can only add to the right-hand side): where ``phi`` is smooth and
    its defects stand above the rounding (zero biases of a sigmoid layer),
    the objective's noise model (:attr:`ScalarObjective.noise`, 8 more
    evaluations when not measured yet) is never needed.
    """
    work = objective.work
    flat = work[i].reshape(-1)
    f0 = objective.base_output
    cot = objective.cotangent
    x0 = flat[idx].copy()
    s = objective.scales[i].reshape(-1)[idx]
    u, v = rng.standard_normal(idx.size) * s, rng.standard_normal(idx.size) * s
    combos = {"+u": u, "-u": -u, "+v": v, "-v": -v, "+uv": u + v}
    defects = []  # per step: [(|D|, noise of D)] for J_u, J_v, L
    seen = {}  # the outputs at the previous step
    for t in TIE_PROBE_STEPS:
        f = {}
        try:
            for key, w in combos.items():
                moved = x0 + t * w
                if np.any(moved == x0) or not np.all(np.isfinite(moved)):
                    return True
                flat[idx] = moved
                f[key] = objective.output(work)
        finally:
            flat[idx] = x0
        if any(a.shape != f0.shape or not np.all(np.isfinite(a)) for a in f.values()):
            return True
        if (
            defects
            and any(np.any((seen[k] != f0) & (f[k] == f0)) for k in f)
            and objective.noise.kind is not None
        ):
            # An output moved at the larger step but not at this one, in a fn that
            # computes in a coarse type: the step fell below its resolution (float16 at
            # 100: a unit of 6e-4 relative, 2.5 times this step), where a kink's jump
            # reads 0 as a smooth defect does. Cannot tell. (In float64 that is an output
            # rounding to a constant, a saturated tanh: smooth.)
            return True
        seen = f

        def defect(plus, minus, t=t, f=f):
            change = sum(f[k] - f0 for k in plus) - sum(f[k] - f0 for k in minus)
            value = float(np.vdot(cot, change))

            def noise():
                return (
                    sum(
                        objective.rung_noise(f[k], f0, np.zeros(f0.shape, dtype=bool))
                        for k in plus + minus
                    )
                    / t
                )

            return abs(value) / t, noise

        defects.append(
            [defect(["+u", "-u"], []), defect(["+v", "-v"], []), defect(["+uv"], ["+u", "+v"])]
        )
    big, small = defects
    return any(
        not (d <= 0.5 * b or d <= 0.5 * b + n()) for (b, _), (d, n) in zip(big, small, strict=True)
    )


def _has_equal(x):
    """True when two elements of ``x`` are equal (NaN equals nothing)."""
    s = np.sort(x, axis=None)
    return bool(s.size > 1 and np.any(s[1:] == s[:-1]))


def _joint_ties(r, objective, grads, refs, notes, failures, lost_elements):
    """Tied elements judged jointly (:mod:`oracles.numerics.ties`); failures are problems.

    The joint test (two one-sided ladders per group, about 50 evaluations)
    runs where a kink is seen at a tie: an element the per-element check
    found at a kink or judged wrong (at tied values of ``sort`` the slopes
    of one element alone can miss the limiting slopes that make it right),
    or a group where :func:`_kink_where_ties_untie` sees one. Where ``fn``
    is smooth across every tie (zero-initialized biases of a sigmoid layer:
    equal values, not a kink), the per-element check covers the tied
    elements like any others, and the joint test is not run. A group that
    fails goes to ``failures`` (:class:`_TieFailure`), for
    :func:`_off_the_kinks` to decide; elements judged with their group only
    go to ``lost_elements`` (``(input, flat index)``).
    """
    kinks = [
        np.zeros(x.shape, dtype=bool) if ref.kink is None else np.asarray(ref.kink, dtype=bool)
        for x, ref in zip(r.xs, refs, strict=True)
    ]
    # Only inputs that hold equal values are searched for groups (a sort, one copy at a time).
    tied = [x if _has_equal(x) else x.reshape(-1)[:0] for x in objective.point]
    groups, n_found = tie_groups(tied, kinks)
    if not groups:
        return 0
    calls0 = objective.calls
    rng = np.random.default_rng(r.seed + 7919)

    def disagrees(i, idx):
        """An element of the group fails its per-element comparison (or is not finite)."""
        ref = refs[i]
        if ref.value is None:
            return False
        value = np.asarray(ref.value, dtype=np.float64).reshape(-1)[idx]
        error = np.asarray(ref.error, dtype=np.float64).reshape(-1)[idx]
        a = np.asarray(grads[i], dtype=np.float64).reshape(-1)[idx]
        judged = np.isfinite(value)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.abs(a - value) <= error + r.atol + r.rtol * np.abs(value)
        return bool(np.any(judged & ~ok) or np.any(~np.isfinite(error[judged])))

    kinked = any(kinks[i].reshape(-1)[idx].any() or disagrees(i, idx) for i, idx in groups) or any(
        _kink_where_ties_untie(objective, i, idx, rng) for i, idx in groups
    )
    probed = objective.calls - calls0
    if not kinked:
        notes.append(
            f"{n_found} group(s) of tied (equal) input values: fn is smooth where they untie "
            "(no kink along random directions that move them apart), so the per-element "
            "check covers them"
        )
        return probed
    checks, n_found, evaluations = check_ties(
        objective, grads, r.names, kinks=kinks, atol=r.atol, rtol=r.rtol, found=(groups, n_found)
    )
    evaluations += probed
    if not checks:
        return evaluations
    calls0 = objective.calls
    blind = {}
    for c in checks:
        lost = _widen_to_limiting_slopes(r, objective, refs, c, grads)
        if lost.size:
            blind[c.input_number] = blind.get(c.input_number, 0) + lost.size
            lost_elements += [(c.input_number, int(j)) for j in lost]
    evaluations += objective.calls - calls0
    for i, n_blind in blind.items():
        what = (
            f"{n_blind} of {r.xs[i].size} element(s) of {r.names[i]} in groups of tied values "
            "could not be judged one by one: no order of their group could be sampled (fn "
            "computes in a coarse type and the next other value is a few of its units away, or "
            "the group is too large), and alone each reaches only the ends of its group's "
            "positions; they were judged jointly with their group only"
        )
        if n_blind > BLIND_SHARE * r.xs[i].size:
            r.inconclusive.append(what)
        else:
            notes.append(what)
    failed = [c for c in checks if not c.passed]
    for c in failed:
        shape = r.xs[c.input_number].shape
        failures.append(
            _TieFailure(
                c,
                c.describe() + ". At tied values a subgradient routes the upstream gradient "
                "once (to one tied element, or split among them), never to every tied element "
                "or to none",
                [(c.input_number, _flat_index(j, shape)) for j in c.indices],
                blame=True,
            )
        )
    capped = f" ({len(groups)} of {n_found} checked)" if n_found > len(groups) else ""
    split = (
        f", as {len(checks)} part(s) whose elements share outputs (a part of one element is "
        "judged by its own kink test)"
        if len(checks) != len(groups)
        else ""
    )
    notes.append(
        f"{n_found} group(s) of tied (equal) input values{capped} were also checked jointly"
        f"{split}, along the direction that moves each together: {len(failed)} disagree"
    )
    return evaluations


#: Most values at kinks of two or more inputs judged jointly across them.
MAX_CROSS_GROUPS = 32


def _cross_input_ties(r, objective, grads, refs, notes, failures):
    """Values at kinks of two or more inputs, judged jointly across them.

    ``np.maximum(a, b)`` where ``a == b``, ``|p - t|`` where ``p == t``: each
    element alone lies between its one-sided slopes, so a backward that routes
    the gradient to both arguments, or to neither, passes element by element,
    and each input's own tie groups (:func:`_joint_ties`) hold one of them
    only. Here ``fn`` takes the inputs stacked into one array, and a group is
    the elements at a kink, in two or more inputs, that hold one value:
    along the direction that moves them together the gradient must sum to
    the directional derivative (``maximum(a + t, b + t) = maximum(a, b) + t``;
    ``|(p + t) - (t_ + t)|`` does not move), as it must when ``a`` and ``b``
    are one input. A group that fails goes to ``failures``. Returns the calls
    of ``fn`` spent.
    """
    if len(r.xs) < 2 or any(ref.kink is None for ref in refs):
        return 0
    points = [np.asarray(x, dtype=np.float64).reshape(-1) for x in objective.point]
    kinks = [np.asarray(ref.kink, dtype=bool).reshape(-1) for ref in refs]
    if sum(bool(k.any()) for k in kinks) < 2:
        return 0
    held = [set(p[k].tolist()) for p, k in zip(points, kinks, strict=True)]
    shared = set()
    for a in range(len(held)):
        for b in range(a + 1, len(held)):
            shared |= held[a] & held[b]
    if not shared:
        return 0
    offsets = np.cumsum([0] + [p.size for p in points])
    z = np.concatenate(points)
    kz = np.concatenate(kinks)
    groups = []
    for v in sorted(shared)[:MAX_CROSS_GROUPS]:
        idx = np.flatnonzero(kz & (z == v))
        owners = np.searchsorted(offsets, idx, side="right") - 1
        if np.unique(owners).size >= 2:
            groups.append((0, idx))
    if not groups:
        return 0
    obj = _stacked(objective, noise=objective.noise, base_output=objective.base_output)
    gz = np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])
    checks, _, evaluations = check_ties(
        obj, [gz], ["+".join(r.names)], atol=r.atol, rtol=r.rtol, found=(groups, len(groups))
    )
    r.inconclusive += [c.unresolved() for c in checks if not c.resolved]
    failed = [c for c in checks if not c.passed]
    for c in failed:
        elements = []
        for (p,) in c.indices:
            k = int(np.searchsorted(offsets, p, side="right") - 1)
            elements.append((k, int(p - offsets[k])))
        where = [_element_label(r, k, j) for k, j in elements]
        failures.append(
            _TieFailure(
                c,
                c.describe("tied values across inputs", where) + ". Where two arguments tie "
                "(maximum(a, b) at a == b, |p - t| at p == t), a subgradient routes the "
                "upstream gradient once, to one of them or split between them, never to both "
                "or to neither",
                elements,
                blame=False,
            )
        )
    notes.append(
        f"{len(groups)} value(s) at kinks of two or more inputs were also checked jointly "
        f"across the inputs, along the direction that moves each together: {len(failed)} "
        "disagree"
    )
    return evaluations


@dataclass
class _TieFailure:
    """A tie group that failed its joint test, its problem text and its elements.

    ``elements``: ``(input number, flat index)`` of each tied element;
    ``blame``: make its elements fail one by one if it stands
    (:func:`_blame_tie_group`; a group of one input only).
    """

    check: Any
    text: str
    elements: list
    blame: bool

    @property
    def smooth(self):
        """``phi`` is differentiable along the group's direction: the failure is proof."""
        return _smooth(self.check)


def _smooth(tie):
    return not abs(tie.left - tie.right) > tie.error


def _flat_index(index, shape):
    return int(np.ravel_multi_index(index, shape)) if shape else 0


def _stacked(objective, **kwargs):
    """``objective`` as a function of one input, its inputs flattened and concatenated."""
    shapes = [np.shape(x) for x in objective.point]
    offsets = np.cumsum([0] + [int(np.size(x)) for x in objective.point])
    fn = objective.fn

    def stacked(zz):
        return fn(*[zz[offsets[k] : offsets[k + 1]].reshape(s) for k, s in enumerate(shapes)])

    z = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in objective.point])
    scales = [np.concatenate([np.reshape(s, -1) for s in objective.scales])]
    return ScalarObjective(stacked, [z], objective.cotangent, scales=scales, **kwargs)


#: The shift of the second points of :func:`_off_the_kinks`, relative to each element's scale.
#: Larger than the steps that resolve a kink-free derivative there (the ladders descend to
#: 2^-28 of the scale), small enough to stay on the pieces that meet at the point.
OFF_KINK_SHIFT = 2.0**-12


def _tie_keeping_points(r, objective):
    """``x + shift`` and ``x - shift``, one shift per value held: every tie stays tied.

    Elements holding one value, in any input, move by the same amount: a
    tie of a maximum stays a tie (so does ``maximum(a, b)`` at ``a == b``),
    and a ReLU at exactly 0 (a zero bias on a zero pixel) leaves its kink,
    on one side at one point and on the other at the other.
    """
    points = [np.asarray(x, dtype=np.float64).reshape(-1) for x in objective.point]
    scales = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in objective.scales])
    values = np.concatenate(points)
    held, where = np.unique(values, return_inverse=True)
    rng = own_stream(r.seed, "shift")
    size = np.full(held.size, np.inf)
    np.minimum.at(size, where, scales)
    size = np.where(np.isfinite(size), size, 0.0)
    sign = rng.choice([-1.0, 1.0], held.size)
    shift = OFF_KINK_SHIFT * size * rng.uniform(0.5, 1.0, held.size) * sign
    offsets = np.cumsum([0] + [p.size for p in points])
    out = []
    for sign in (1.0, -1.0):
        moved = values + sign * shift[where]
        out.append(
            [
                moved[offsets[k] : offsets[k + 1]].reshape(np.shape(x))
                for k, x in enumerate(objective.point)
            ]
        )
    return out


def _moved(r, objective, xs):
    """``objective`` at another point ``xs`` near its own, with its step scales."""
    fn = Guarded(r.fn, "fn", xs, r.names, r.out.shape)
    return ScalarObjective(fn, xs, objective.cotangent, scales=objective.scales)


def _judged_again(r, objective, xs, ties):
    """The tie groups ``ties`` judged jointly at the point ``xs`` (or None).

    Per group: True (passes), the failed :class:`~oracles.numerics.ties.TieCheck`
    where ``fn`` is differentiable along its direction (proof), or None (it
    fails where ``fn`` kinks along it again). None for all where ``fn`` or
    the user's derivative cannot be evaluated at ``xs``, or is not finite
    there (a domain edge, an input that must hold integers).
    """
    obj = _moved(r, objective, xs)
    out = []
    try:
        grads = r.derivative(r.direction, xs=xs)
        if not all(np.all(np.isfinite(g)) for g in grads):
            return None
        for t in ties:
            if t.blame:
                i = t.elements[0][0]
                idx = np.array([j for _, j in t.elements])
                checks, _, _ = check_ties(
                    obj, grads, r.names, atol=r.atol, rtol=r.rtol, found=([(i, idx)], 1)
                )
            else:
                offsets = np.cumsum([0] + [x.size for x in xs])
                idx = np.array([offsets[i] + j for i, j in t.elements])
                gz = np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])
                checks, _, _ = check_ties(
                    _stacked(obj), [gz], ["+".join(r.names)], atol=r.atol, rtol=r.rtol,
                    found=([(0, idx)], 1),
                )  # fmt: skip
            wrong = [c for c in checks if not c.passed and _smooth(c)]
            if all(c.passed for c in checks):
                out.append(True)
            elif wrong:
                out.append(wrong[0])
            else:
                out.append(None)
    except OraclesError:
        return None
    finally:
        objective.calls += obj.calls
    return out


def _off_the_kinks(r, objective, grads, refs, notes, failures):
    """Judge again, at nearby points that keep every tie, the tie groups that failed at kinks.

    A tie group fails when, along the direction that moves it together, the
    gradient sums outside the one-sided slopes. Where ``fn`` is
    differentiable along it (``maximum(a + t, b + t)``, a max-pool window
    moved whole) that is proof. Where ``fn`` kinks along it too, it proves
    nothing once kinks combine: backprop's choice at each (ReLU'(0) = 0, the
    first of tied maxima) composes to sums that no one-sided derivative of
    the whole shows, and any value on such a set of measure zero is a valid
    gradient for training (Kakade and Lee 2018; Bolte and Pauwels 2020).
    Zero biases of a convolution on the zero border of a digit, under a
    max-pool, do it: the zero pixels tie, and so do the zero biases with
    them. Such a group is judged again at ``x + shift`` and ``x - shift``
    (:func:`_tie_keeping_points`), where the ties remain and the accidental
    kinks (a ReLU at exactly 0) are left, on one side at one point and on
    the other side at the other. A failure there where ``fn`` is
    differentiable along the group is proof (of the formula: the problem
    says where); a pass at both clears it; a kink at both leaves it unjudged
    (a note). Elements alone are not judged again: outside its one-sided
    slopes at a kink of its own (a ReLU'(0) of 1.5), an element fails.
    Returns the calls of ``fn``.
    """
    doubtful = [t for t in failures if not t.smooth]
    standing = [t for t in failures if t.smooth]
    confirmed, calls0 = [], objective.calls
    if doubtful and objective.noise.kind is not None:
        # fn computes in a coarse type: a shift of 2^-12 can round away inside it (float16
        # at 100 is 1/16 apart), and the nearby points would be x again. Failures stand.
        standing += doubtful
        doubtful = []
    if doubtful:
        results = []
        for xs in _tie_keeping_points(r, objective):
            results.append(_judged_again(r, objective, xs, doubtful))
            if results[-1] is None:
                break
        if all(res is not None for res in results):
            gone, unjudged = [], []
            for t, a, b in zip(doubtful, *results, strict=True):
                wrong = next((c for c in (a, b) if c is not True and c is not None), None)
                if wrong is not None:
                    # Its elements are not blamed at x: there the values may be those of
                    # a valid routing (a zero ReLU kills what a wrong one sends).
                    at = "tied values across inputs" if not t.blame else None
                    confirmed.append(
                        t.text + ". At x, fn kinks along the group's direction, which alone "
                        "proves nothing; but at a nearby point that keeps the tie (x +- 2^-12 "
                        "of each element's scale, one shift per value), where fn is "
                        "differentiable along it, the routing is wrong: "
                        + wrong.describe(at, _where(r, t))
                    )
                elif a is True and b is True:
                    gone.append(t)
                else:
                    unjudged.append(t)
            if gone:
                notes.append(
                    f"{len(gone)} tie group(s) failed only where fn kinks along the direction "
                    "that moves each together, as backprop's choices at combined kinks give "
                    "(ReLU'(0) = 0 into a tied max-pool: Kakade and Lee 2018); at the two "
                    "nearby points x +- shift (2^-12 of each element's scale, one shift per "
                    "value, so ties stay tied) they agree with the numerics"
                )
            if unjudged:
                notes.append(
                    f"{len(unjudged)} tie group(s) could not be judged jointly: fn kinks along "
                    "the direction that moves each together, at x and at the nearby points "
                    "that keep their ties (their elements tie in value only, in parts that "
                    "break apart differently); their elements were judged one by one"
                )
        else:
            standing += doubtful
            notes.append(
                f"{len(doubtful)} tie group(s) that failed where fn kinks along their direction "
                "could not be judged again at nearby points (fn or the derivative raises, or is "
                "not finite, at x +- a small shift); their failures stand"
            )
    for t in standing:
        if t.blame:
            _blame_tie_group(r, refs, grads, t.check)
        r.problems.append(t.text)
    r.problems += confirmed
    return objective.calls - calls0


#: The shift of the point without ties of :func:`_lost_elements_nearby`, relative to each
#: element's scale: far enough that the kinks it leaves (a ReLU whose input was exactly 0,
#: a tied window) are not within the steps of a ladder that starts at an eighth of it
#: (at 2^-12 a pixel of a conv-ReLU-max-pool still read as a kink, and an error planted
#: there passed).
GENERIC_SHIFT = 2.0**-6

#: Most elements judged with their group only that :func:`_lost_elements_nearby` judges alone.
MAX_LOST = 256


def _lost_elements_nearby(r, objective, lost, notes):
    """Elements judged with their group only, judged alone at a nearby point without ties.

    In a large group of tied values at kinks (the zero pixels of a digit
    under a convolution, a ReLU and a max-pool), an element outside every
    limiting slope sampled is judged with its group only
    (:func:`_widen_to_limiting_slopes`): backprop's routing need not be one
    of them. Where the group's direction kinks too, nothing judges it at
    ``x``, and an error planted at that element would pass. So each is
    judged alone at ``x + shift``, a shift of its own for every element
    (2^-6 of its scale, random signs): no ties, no accidental kinks there.
    Where the user's derivative of the element disagrees with the numerics
    there, away from any kink, the formula is wrong at that element: a
    problem. Each reason an element stays unjudged there (more than
    :data:`MAX_LOST` of them, ``fn`` or the derivative raising at the
    nearby point, a kink or no estimate there) is a note that the check was
    blind to an error at it. Returns the calls of ``fn``.
    """
    if not lost or objective.noise.kind is not None:
        # (In a coarse type the elements are lost to its resolution, not to combined kinks:
        # a float16 sort of values 2 units apart. The check says so already.)
        return 0
    rng = own_stream(r.seed, "shift")
    xs = [
        np.asarray(x, dtype=np.float64)
        + GENERIC_SHIFT * np.asarray(s) * rng.uniform(0.5, 1.0, np.shape(x))
        * rng.choice([-1.0, 1.0], np.shape(x))
        for x, s in zip(objective.point, objective.scales, strict=True)
    ]  # fmt: skip
    judged = lost[:MAX_LOST]
    blind = "judged with their group only at x (in groups of tied values at kinks), were "
    if len(lost) > MAX_LOST:
        notes.append(
            f"{len(lost) - MAX_LOST} element(s) {blind}not judged again at a nearby point "
            f"(only the first {MAX_LOST} are): the check is blind to an error there"
        )
    if not judged:
        return 0
    # (Not at points that keep the ties: there, a pixel of an overlapping max-pool still
    # sits at kinks that combine, and a correct routing lies outside its one-sided slopes.)
    obj = _moved(r, objective, xs)
    try:
        grads = r.derivative(r.direction, xs=xs)
        # Steps from below the shift: the kinks it left are about that far away.
        est = partials(obj, judged, t0=GENERIC_SHIFT / 8)
    except OraclesError:
        notes.append(
            f"{len(judged)} element(s) {blind}not judged at a nearby point either: fn or the "
            "derivative raised there; the check is blind to an error at them"
        )
        return obj.calls
    analytic = np.array([np.asarray(grads[i], dtype=np.float64).reshape(-1)[j] for i, j in judged])
    # Proof needs a margin: twice the tolerance, away from any kink.
    cmp = compare(analytic, est.value, 2.0 * est.error, atol=2.0 * r.atol, rtol=2.0 * r.rtol)
    unjudged = np.asarray(est.kink, dtype=bool) | ~np.isfinite(est.value)
    if unjudged.any():
        notes.append(
            f"{int(unjudged.sum())} element(s) {blind}at a kink or without an estimate at the "
            "nearby point too: the check is blind to an error at them"
        )
    bad = ~cmp.passed & ~np.asarray(est.kink, dtype=bool) & np.isfinite(est.value)
    wrong = [int(p) for p in np.flatnonzero(bad)]
    for p in wrong[:6]:
        r.problems.append(
            f"{_element_label(r, *judged[p])} sits in a group of tied values at kinks and was "
            "judged with its group only at x; at a nearby point without ties (x + 2^-6 of each "
            f"element's scale, random signs), its gradient is {analytic[p]:.17g} but the "
            f"numerics give {float(est.value[p]):.17g} (error estimate {float(est.error[p]):.2g})"
        )
    if len(wrong) > 6:
        r.problems.append(f"... and {len(wrong) - 6} more such element(s)")
    return obj.calls


def _element_label(r, i, j):
    """``name[i, j]`` of flat element ``j`` of input ``i``, as the report writes it."""
    shape = r.xs[i].shape
    at = np.unravel_index(j, shape) if shape else ()
    return f"{r.names[i]}[{', '.join(str(int(v)) for v in at)}]"


def _where(r, tie):
    """Labels of the elements of ``tie`` like the report's (None: its own indices)."""
    return None if tie.blame else [_element_label(r, i, j) for i, j in tie.elements[:6]]


def _vjp_autodiff(oracle, backend_fn, r):
    backend = _backend(oracle)
    run_vjp = backend.torch_vjp if oracle == "torch" else backend.jax_vjp
    return list(run_vjp(backend_fn, tuple(r.xs), r.direction[0])), (
        f"{oracle} reverse-mode autodiff, float64"
    )


VJP = Spec(
    kind="check_vjp",
    derivative="vjp",
    role="cotangent",
    on_output=True,
    oracles=("numeric", "torch", "jax", "complex", "taylor", "dot"),
    call=lambda vjp, d, xs: vjp(d[0], *xs),
    pieces=lambda r: [(n, x.shape) for n, x in zip(r.names, r.xs, strict=True)],
    normalize=lambda raw, r: normalize_gradients(raw, [x.shape for x in r.xs], r.names),
    numeric=_vjp_numeric,
    autodiff=_vjp_autodiff,
    uses_mode=True,
    taylor=taylor_vjp,
    dot=dot_vjp,
    partner="jvp",
)


def check_vjp(
    fn: Callable[..., ArrayLike],
    vjp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    *,
    direction: ArrayLike | None = None,
    against: str | Sequence[str] = "numeric",
    mode: Any = "auto",
    names: Sequence[str] | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    torch_fn: Callable[..., Any] | None = None,
    jax_fn: Callable[..., Any] | None = None,
    jvp: Callable[..., Any] | None = None,
    resolve: float | None = None,
    pitfalls: Any = None,
) -> Report:
    """Check a hand-written VJP against numerics and/or autodiff; return a report.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``, the forward function.
    vjp : callable
        ``vjp(cotangent, *inputs)`` -> one gradient per input (a bare array
        when there is one input, else a tuple).
    inputs : tuple of array_like
        The point at which to check, one entry per positional argument of
        ``fn`` (a bare ndarray or number counts as the only input). Anything
        NumPy turns into a real array works: arrays of any float or integer
        dtype, Python numbers, nested lists, 0-d and empty arrays, strided or
        read-only views. Copied to float64 (float32, float16 and integer
        inputs are evaluated in float64 and the report says so); never
        modified. ``fn`` and ``vjp`` receive fresh float64 copies.
    direction : array_like, optional
        The cotangent, shaped like ``fn(*inputs)``. Default: a standard
        normal draw from ``numpy.random.default_rng(seed)``.
    against : str or sequence of str
        Oracles among ``"numeric"`` (central differences, step ladder),
        ``"torch"``, ``"jax"`` (reverse-mode autodiff of ``torch_fn`` /
        ``jax_fn``) and ``"complex"`` (complex-step derivative of ``fn``
        itself, accurate to rounding; ``fn`` must accept complex input and
        be complex-analytic, see :mod:`oracles.numerics.complex_step`).
        Two step-free oracles: ``"taylor"`` (the Taylor remainder of ``fn``
        along a random direction per input must fall as ``h^2``, judged by
        its observed order; :mod:`oracles.numerics.taylor`) and ``"dot"``
        (the dot-product test ``<vjp(c), t> = <c, jvp(t)>`` against the
        ``jvp=`` you give, per input). Each compares one projection per
        input, not every element.
    mode : {"auto", "fast", "exhaustive", "ladder"} or a mode object
        How the numeric oracle works. ``"exhaustive"``: every element by a
        central difference at a step calibrated per input (about 2
        evaluations of ``fn`` per element), the full step ladder where that
        screen does not settle it. ``"ladder"``: the full step ladder for
        every element (10-25 evaluations each). ``"fast"``: random
        projections over all inputs, then bisection to name the elements
        that disagree, each confirmed by the ladder; elements never named
        are covered by the projections but not compared one by one.
        ``"auto"`` (default): ``"exhaustive"`` up to 5,000 elements in all,
        else ``"fast"``. Pass :class:`oracles.Exhaustive` or
        :class:`oracles.Fast` for their options (an executor, a progress
        bar, the number of directions).
    names : sequence of str, optional
        Names of the inputs in the report (default: ``fn``'s parameter names).
    seed : int, optional
        Seed of the random direction (default 0: reproducible).
    rtol, atol : float, optional
        Added to each oracle's own error estimate (default 0): an element
        fails when ``|analytic - reference| > atol + rtol * |reference| +
        error_estimate``.
    torch_fn, jax_fn : callable, optional
        ``fn`` written with the framework's own ops; needed for those oracles.
    jvp : callable, optional
        ``jvp(tangents, *inputs)``, your forward-mode derivative of ``fn``:
        needed by (and only by) ``against="dot"``.
    resolve : float, optional
        The relative error the check must be able to catch in a typical
        element of every input (default 1e-3). When it could not (a zero
        or degenerate cotangent, a reference gradient of about 0 everywhere
        although ``fn`` is not constant, elements judged only loosely,
        projections that cannot resolve an input), the status is
        ``"inconclusive"``, never ``"passed"``. ``inf`` switches that off.
    pitfalls : collection, optional
        A catalog of known mistakes (``reference.pitfalls.CATALOG``, or
        your own entries with ``name``, ``fn``, ``wrong_vjp`` and optionally
        ``kind``): on failure, the diagnosis names the entry the VJP
        reproduces (:mod:`oracles.diagnose`).

    Returns
    -------
    Report
        ``.status`` (``"passed"``, ``"failed"`` or ``"inconclusive"``),
        ``.ok`` (True only for passed), per-input errors and
        ``.sensitivity``, worst elements, ``.diagnoses`` on failure,
        ``str()`` readable.
        NaN or inf in a gradient, or a reference that could not be computed
        (``fn`` not finite at every perturbed point, an error estimate that
        overflowed), count as failures, never as agreement.

    Raises
    ------
    InvalidArgumentType
        An argument has the wrong type: ``fn``/``vjp`` not callable; an input
        or the direction that is boolean, complex, object, string, masked or
        not convertible to an array; a non-numeric ``rtol``/``atol``/``seed``.
    InvalidArgument
        An argument breaks a rule: NaN or inf in an input or the direction; a
        direction not shaped like ``fn``'s output; no inputs, or more/fewer
        than ``fn`` takes; an unknown or repeated oracle in ``against``; a
        negative or non-finite tolerance; a negative seed.
    UserFunctionError
        ``fn``, ``vjp``, ``torch_fn`` or ``jax_fn`` raised, or returned
        something unusable: ``vjp`` the wrong number of gradients, a gradient
        of the wrong shape or None or not numeric; ``fn`` None, a tuple,
        complex or non-numeric values, NaN/inf at the evaluation point, or
        another shape at a perturbed point. The message names the function,
        the input and what was expected; ``__cause__`` is the user's exception.
    NonDeterministicFunction
        ``fn`` (or ``vjp``) returned different results for the same arguments.

    Notes
    -----
    Failure modes of numerics, and what this function does about them:
    kinks (ReLU at 0, ``max``, ``abs``) are detected and any subgradient
    between the one-sided slopes is accepted; steps too small or too large
    for ``|x|`` are avoided by a ladder of steps whose rung is chosen by its
    error estimate; near-zero true gradients get an absolute error estimate
    from the rounding of ``fn`` (not a relative one); float32 inputs are
    evaluated in float64. A ``vjp`` that is not linear in its cotangent, or
    that writes into its arguments, fails with a problem that says so.

    Examples
    --------
    >>> import numpy as np
    >>> r = check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.array([0.5, 1.0]),))
    >>> r.ok
    True
    >>> r = check_vjp(np.sin, lambda g, x: g * np.cos(x) * (1 + 1e-6), (np.array([0.5, 1.0]),))
    >>> r.status, r.failed_inputs
    ('failed', ['x'])
    >>> check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.ones(2),), direction=np.zeros(2)).status
    'inconclusive'
    """
    __tracebackhide__ = True
    return run(
        VJP,
        fn,
        vjp,
        inputs,
        direction=direction,
        against=against,
        mode=mode,
        names=names,
        seed=seed,
        rtol=rtol,
        atol=atol,
        torch_fn=torch_fn,
        jax_fn=jax_fn,
        resolve=resolve,
        pitfalls=pitfalls,
        jvp=jvp,
    )


def assert_vjp(
    fn: Callable[..., ArrayLike],
    vjp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    **options: Any,
) -> Report:
    """Like :func:`check_vjp`, but raise :class:`~oracles.errors.GradientMismatch` when it fails.

    Returns the report when the check passes; raises
    :class:`~oracles.errors.InconclusiveCheck` when it could not have failed
    (see ``resolve=``). The exception's message is the readable report; the
    report object is ``exc.report``.

    Examples
    --------
    >>> import numpy as np
    >>> assert_vjp(np.exp, lambda g, x: g * np.exp(x), (np.zeros(3),)).ok
    True
    >>> assert_vjp(np.exp, lambda g, x: g * x, (np.zeros(3),))
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: check_vjp: FAILED: 3 of 3 elements of the gradient of x ...
    ...
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_vjp(fn, vjp, inputs, **options))


# --- forward mode: JVP, and HVP as a JVP of the gradient ----------------------------------------


def _forward_mode_numeric(evaluate, r, source):
    """The numeric reference of a forward-mode check: ``evaluate`` along the direction."""
    linear = None
    if not r.options.get("nonlinear"):

        def linear(d):
            return flat(r.derivative(d))

    result, evaluations = vector_ladder(evaluate, r.xs, r.direction, linear=linear)
    fields = {
        key: split(result[key], r.piece_shapes)
        for key in ("value", "error", "kink", "left", "right", "nonfinite")
    }
    refs = [
        Reference(**{key: fields[key][k] for key in fields}) for k in range(len(r.piece_shapes))
    ]
    method = f"central differences of {source} along the direction, step ladder + Richardson"
    return OracleResult(refs, method, evaluations)


def _jvp_normalize(raw, r):
    out = as_output(raw, "jvp")
    if out.shape != r.out.shape:
        raise UserFunctionError(
            f"jvp returned shape {out.shape}; the output tangent must have the shape of fn's "
            f"output {r.out.shape}"
        )
    return [out]


def _jvp_function(r):
    fn = r.guarded_fn()
    return lambda a: fn(*[x.copy() for x in a]).ravel()


def _jvp_numeric(r):
    return _forward_mode_numeric(_jvp_function(r), r, "fn")


def _jvp_autodiff(oracle, backend_fn, r):
    backend = _backend(oracle)
    if oracle == "torch":
        return [backend.torch_jvp(backend_fn, tuple(r.xs), tuple(r.direction))], (
            "torch.func.jvp, float64"
        )
    return [backend.jax_jvp(backend_fn, tuple(r.xs), tuple(r.direction))], "jax.jvp, float64"


JVP = Spec(
    kind="check_jvp",
    derivative="jvp",
    role="tangents",
    on_output=False,
    oracles=("numeric", "torch", "jax", "taylor", "dot"),
    call=lambda jvp, d, xs: jvp(_pack(d), *xs),
    pieces=lambda r: [(OUTPUT_NAME, r.out.shape)],
    normalize=_jvp_normalize,
    numeric=_jvp_numeric,
    autodiff=_jvp_autodiff,
    taylor=lambda r: taylor_forward(r, _jvp_function(r), "fn"),
    dot=dot_jvp,
    partner="vjp",
)


def check_jvp(
    fn: Callable[..., ArrayLike],
    jvp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    *,
    direction: Sequence[ArrayLike] | ArrayLike | None = None,
    against: str | Sequence[str] = "numeric",
    names: Sequence[str] | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    torch_fn: Callable[..., Any] | None = None,
    jax_fn: Callable[..., Any] | None = None,
    vjp: Callable[..., Any] | None = None,
    resolve: float | None = None,
) -> Report:
    """Check a hand-written Jacobian-vector product (forward mode); return a report.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``.
    jvp : callable
        ``jvp(tangents, *inputs) -> out_tangent``: the derivative of ``fn``
        at ``inputs`` along ``tangents``, shaped like ``fn``'s output.
        ``tangents`` is a bare array when there is one input, else a tuple
        with one array per input.
    inputs : tuple of array_like
        The point. Copied to float64; never modified.
    direction : array_like or tuple of array_like, optional
        The tangents, one per input and shaped like it (a bare array when
        there is one input). Default: standard normal from
        ``numpy.random.default_rng(seed)``.
    against : str or sequence of str
        Oracles among ``"numeric"``, ``"torch"`` (``torch.func.jvp``) and
        ``"jax"`` (``jax.jvp``), both in float64, and the step-free
        ``"taylor"`` (the Taylor remainder along the tangents) and ``"dot"``
        (``<c, jvp(t)> = <vjp(c), t>`` against the ``vjp=`` you give).
    vjp : callable, optional
        ``vjp(cotangent, *inputs)``, your reverse-mode derivative of ``fn``:
        needed by (and only by) ``against="dot"``.
    names, seed, rtol, atol, torch_fn, jax_fn, resolve
        As in :func:`check_vjp` (a zero tangent for an input makes the check
        inconclusive: how the JVP depends on it is never exercised).

    Returns
    -------
    Report
        ``kind`` ``"check_jvp"``; its one piece is the output tangent,
        named ``out_tangent``, compared element by element.

    Notes
    -----
    The numeric reference differentiates the whole output along the
    tangents on a ladder of steps (central differences, Richardson
    extrapolation), with an error estimate per output element, so one
    direction checks every output element at once (2 calls of ``fn`` per
    step, about 30 in all). At a kink along the tangents (ReLU at 0) any
    value between the one-sided derivatives is accepted. A JVP that is not
    linear in its tangents (the tangent left out of a product) fails with a
    problem that says so.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([0.5, 1.0])
    >>> check_jvp(np.sin, lambda t, x: np.cos(x) * t, (x,)).ok
    True
    >>> r = check_jvp(np.sin, lambda t, x: np.sin(x) * t, (x,))
    >>> r.ok, r.failed_inputs
    (False, ['out_tangent'])
    """
    __tracebackhide__ = True
    return run(
        JVP,
        fn,
        jvp,
        inputs,
        direction=direction,
        against=against,
        names=names,
        seed=seed,
        rtol=rtol,
        atol=atol,
        torch_fn=torch_fn,
        jax_fn=jax_fn,
        resolve=resolve,
        vjp=vjp,
    )


def assert_jvp(
    fn: Callable[..., ArrayLike],
    jvp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    **options: Any,
) -> Report:
    """Like :func:`check_jvp`, but raise :class:`~oracles.errors.GradientMismatch` when it fails.

    Examples
    --------
    >>> import numpy as np
    >>> assert_jvp(np.exp, lambda t, x: np.exp(x) * t, (np.zeros(3),)).ok
    True
    >>> assert_jvp(np.exp, lambda t, x: x * t, (np.ones(3),))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: check_jvp: FAILED: 3 of 3 elements of ... disagree ...
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_jvp(fn, jvp, inputs, **options))


def _hvp_validate(r):
    grad = r.options.get("grad")
    if grad is not None and not callable(grad):
        from oracles.errors import InvalidArgumentType

        raise InvalidArgumentType(f"grad must be callable, got {type(grad).__name__}")
    needs = [o for o in ("numeric", "taylor") if o in r.against]
    if needs and grad is None and not any(r.backends.values()):
        raise InvalidArgument(
            f"the {needs[0]} oracle of check_hvp differentiates a gradient along the direction: "
            "give grad= (a hand-written gradient of fn) or torch_fn= / jax_fn= (whose autodiff "
            "gradient is used)"
        )


def _hvp_gradient(r):
    """The gradient function the numeric and Taylor oracles differentiate, and its name."""
    from oracles._guards import Guarded

    grad = r.options.get("grad")
    shapes = [x.shape for x in r.xs]
    if grad is not None:
        source = "grad="

        def gradient(a):
            try:
                raw = call_user(grad, [np.array(x, copy=True) for x in a], "grad")
            except UserFunctionError as exc:  # raised by the user's errstate off the point
                if outside_the_domain(exc.__cause__, a, r.xs):
                    return np.full(sum(x.size for x in r.xs), np.nan)
                raise
            return flat(normalize_gradients(raw, shapes, r.names, who="grad"))

        if "grad_at_point" not in r.options:
            # grad= is the user's code as much as fn: the same guards before the numerics
            # differentiate it (no writing into its arguments; deterministic).
            passed = r.copies()
            raw = call_user(grad, passed, "grad")
            first = flat(normalize_gradients(raw, shapes, r.names, who="grad"))
            r.problems += mutations(r.xs, passed, r.names, "grad")
            check_repeatable(lambda: [gradient(r.xs)], [first], "grad", _GRAD_HINT, ["gradients"])
            r.options["grad_at_point"] = first
            _verify_grad(r, gradient)

    else:
        oracle = "torch" if r.backends["torch"] is not None else "jax"
        source = f"the {oracle} autodiff gradient"
        backend = _backend(oracle)
        run_grad = backend.torch_grad if oracle == "torch" else backend.jax_grad
        backend_fn = Guarded(r.backends[oracle], f"{oracle}_fn", r.xs, r.names)

        def gradient(a):
            return flat(run_grad(backend_fn, tuple(a)))

    return gradient, source


_GRAD_HINT = "Is a random generator drawn from inside grad=? It must be a deterministic gradient"


def _verify_grad(r, gradient):
    """Check ``grad=`` before the numerics differentiate it: a problem if it is not fn's gradient.

    The numeric and Taylor oracles differentiate ``grad=`` along the
    vectors: an HVP consistent with a wrong gradient (the Hessian of ``2 x^2``
    for ``fn = sum(x^3)``) would agree with them. One forward-mode check of
    ``fn`` at the point, along a random direction ``d`` of its own stream,
    with ``<grad(x), d>`` as the derivative (the check of :func:`check_jvp`,
    its tolerances and kink rules; about as many evaluations of ``fn`` as the
    HVP check makes of ``grad``) tells: failed, and the HVP check fails with a
    problem naming ``grad=``; inconclusive (``grad`` about 0 at the point: a
    stationary point), and a note says ``grad=`` was trusted.
    """
    from oracles._pipeline import run

    rng = own_stream(r.seed, "gradient")
    d = [rng.standard_normal(x.shape) for x in r.xs]
    shape = r.out.shape

    def along(t, *xs):  # <grad(xs), t>, shaped like fn's output (a scalar)
        return np.array(np.dot(gradient(list(xs)), flat(list(_unpack(t, len(xs)))))).reshape(shape)

    report = run(
        JVP,
        r.fn,
        along,
        tuple(r.xs),
        direction=_pack(d),
        names=r.names,
        seed=r.seed,
        rtol=r.rtol,
        atol=r.atol,
        resolve=r.resolve,
    )
    if report.status == "failed":
        (check,) = report.inputs[0].checks.values()
        worst = check.worst[0] if check.worst else None
        numbers = (
            f": <grad(x), d> = {worst.analytic:.17g}, but fn changes along d at "
            f"{worst.reference:.17g}"
            if worst is not None
            else ""
        )
        r.problems.append(
            f"grad= is not the gradient of fn at the point (along a random direction d"
            f"{numbers}); the numeric and Taylor oracles differentiate grad=, so the HVP was "
            "compared with the derivative of a wrong gradient. Check grad first (check_vjp(fn, "
            "lambda g, *x: g * grad(*x), inputs)), or give torch_fn= / jax_fn="
        )
    elif report.status == "inconclusive":
        r.notes.append(
            "grad= could not be verified at this point (fn's derivative along a random "
            "direction is about 0, as at a stationary point): it was trusted as fn's gradient. "
            "Check it elsewhere with check_vjp, or add torch or jax to against"
        )
    else:
        r.notes.append("grad= was verified: <grad(x), d> agrees with fn along a random direction d")


def _unpack(t, n):
    """The inverse of :func:`_pack`: a list of ``n`` arrays."""
    return [t] if n == 1 else list(t)


def _hvp_numeric(r):
    gradient, source = _hvp_gradient(r)
    result = _forward_mode_numeric(gradient, r, source)
    if "grad_at_point" in r.options:
        # Randomness the up-front calls missed, re-checked after the numerics as fn's is.
        first = r.options["grad_at_point"]
        check_repeatable(lambda: [gradient(r.xs)], [first], "grad", _GRAD_HINT, ["gradients"])
    return result


def _hvp_autodiff(oracle, backend_fn, r):
    backend = _backend(oracle)
    if oracle == "torch":
        return list(backend.torch_hvp(backend_fn, tuple(r.xs), tuple(r.direction))), (
            "torch.autograd.functional.hvp (double backward), float64"
        )
    return list(backend.jax_hvp(backend_fn, tuple(r.xs), tuple(r.direction))), (
        "jax.jvp of jax.grad (forward over reverse), float64"
    )


HVP = Spec(
    kind="check_hvp",
    derivative="hvp",
    role="vectors",
    on_output=False,
    oracles=("numeric", "torch", "jax", "taylor", "dot"),
    call=lambda hvp, d, xs: hvp(_pack(d), *xs),
    pieces=lambda r: [(f"Hv[{n}]", x.shape) for n, x in zip(r.names, r.xs, strict=True)],
    normalize=lambda raw, r: normalize_gradients(raw, [x.shape for x in r.xs], r.names, who="hvp"),
    numeric=_hvp_numeric,
    autodiff=_hvp_autodiff,
    scalar_output=True,
    validate=_hvp_validate,
    taylor=lambda r: taylor_forward(r, *_hvp_gradient(r)),
    dot=dot_hvp,
)


def check_hvp(
    fn: Callable[..., ArrayLike],
    hvp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    *,
    direction: Sequence[ArrayLike] | ArrayLike | None = None,
    grad: Callable[..., Any] | None = None,
    against: str | Sequence[str] = "numeric",
    names: Sequence[str] | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    torch_fn: Callable[..., Any] | None = None,
    jax_fn: Callable[..., Any] | None = None,
    resolve: float | None = None,
) -> Report:
    """Check a hand-written Hessian-vector product of a scalar ``fn``; return a report.

    ``H v`` is the derivative of the gradient along ``v``, so this is a
    forward-mode check of the gradient (:func:`check_jvp` of it): the numeric
    oracle differentiates a gradient function along ``v``; the torch oracle
    is ``torch.autograd.functional.hvp`` (double backward) and the jax
    oracle ``jax.jvp(jax.grad(f))`` (forward over reverse), both in float64.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> scalar``, the loss.
    hvp : callable
        ``hvp(vectors, *inputs) -> H v``, with ``vectors`` and the result a
        bare array when there is one input, else tuples with one array per
        input: the blocks ``(H v)_k = sum_j d^2 fn / dx_k dx_j v_j``.
    inputs : tuple of array_like
        The point. Copied to float64; never modified.
    direction : array_like or tuple of array_like, optional
        The vectors ``v``, one per input (a bare array when there is one
        input). Default: standard normal from ``numpy.random.default_rng(seed)``.
    grad : callable, optional
        ``grad(*inputs)`` -> the gradient of ``fn`` (an array, or a tuple
        with one per input): what the numeric oracle differentiates along
        ``v``. Default: the autodiff gradient of ``torch_fn`` (else
        ``jax_fn``); one of the three is needed for ``"numeric"``.
        Differentiating ``fn`` twice numerically would lose half the digits
        and is not offered.
    against, names, seed, rtol, atol, torch_fn, jax_fn, resolve
        As in :func:`check_jvp`; the report calls the blocks ``Hv[x]``.
        ``"taylor"`` tests the Taylor remainder of the gradient (it needs
        one, like ``"numeric"``); ``"dot"`` tests the symmetry ``<u, H v>
        = <H u, v>`` of the ``hvp`` itself, which needs no other function
        but passes a wrong HVP that is symmetric (off by a factor).

    Returns
    -------
    Report
        ``kind`` ``"check_hvp"``, one entry per block of ``H v``.

    Notes
    -----
    With ``grad=`` a hand-written gradient, a failure can mean the HVP or
    the gradient is wrong; check the gradient first (:func:`check_vjp`), or
    add ``"torch"``/``"jax"`` to ``against`` to tell them apart. ``grad=`` is
    verified before the numerics differentiate it (an HVP consistent with a
    wrong gradient would agree with them): one :func:`check_jvp` of ``fn``
    at the point along a random direction, with ``<grad(x), d>`` as the
    derivative. A wrong ``grad=`` fails the check with a problem that says
    so; where it cannot be told (``grad`` about 0: a stationary point) a
    note says it was trusted. A ``grad`` right at the point but wrong
    around it is not caught.

    Examples
    --------
    >>> import numpy as np
    >>> f = lambda x: np.sum(x**3)
    >>> g = lambda x: 3 * x**2
    >>> x = np.array([1.0, -2.0])
    >>> check_hvp(f, lambda v, x: 6 * x * v, (x,), grad=g).ok
    True
    >>> check_hvp(f, lambda v, x: 3 * x * v, (x,), grad=g).failed_inputs
    ['Hv[x]']
    """
    __tracebackhide__ = True
    return run(
        HVP,
        fn,
        hvp,
        inputs,
        direction=direction,
        against=against,
        names=names,
        seed=seed,
        rtol=rtol,
        atol=atol,
        torch_fn=torch_fn,
        jax_fn=jax_fn,
        resolve=resolve,
        grad=grad,
    )


def assert_hvp(
    fn: Callable[..., ArrayLike],
    hvp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    **options: Any,
) -> Report:
    """Like :func:`check_hvp`, but raise :class:`~oracles.errors.GradientMismatch` when it fails.

    Examples
    --------
    >>> import numpy as np
    >>> f, g = (lambda x: np.sum(np.exp(x))), (lambda x: np.exp(x))
    >>> assert_hvp(f, lambda v, x: np.exp(x) * v, (np.zeros(2),), grad=g).ok
    True
    >>> assert_hvp(f, lambda v, x: v, (np.ones(2),), grad=g)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: check_hvp: FAILED: 2 of 2 elements of Hv[x] disagree ...
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_hvp(fn, hvp, inputs, **options))
