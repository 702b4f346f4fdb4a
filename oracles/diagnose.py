"""What kind of mistake it is: diagnoses of a failed check.

When a check fails, the comparison says *where* the derivative is wrong.
Most published mistakes also have a *signature*: a constant factor, a sign,
a transpose, a Jacobian cut to its diagonal, an upstream gradient that is
never used. :func:`diagnose` tests the signatures below on a failed check
and returns what fits, as :class:`Diagnosis` objects, in
:attr:`oracles.report.Report.diagnoses`, printed right after the verdict.
A check that did not fail gets no diagnosis.

==========================  ====================================================================
kind                        signature
==========================  ====================================================================
``ignores_cotangent``       the derivative returns the same result for the cotangent ``g``, for
                            ``2 g`` and for an unrelated cotangent (``ignores_tangent``,
                            ``ignores_vector`` for JVPs and HVPs)
``not_linear_in_cotangent`` ``vjp(2 g) != 2 vjp(g)`` or ``vjp(g1 + g2) != vjp(g1) + vjp(g2)``
                            (``not_linear_in_tangent``, ``not_linear_in_vector``)
``in_place``                the derivative wrote into one of its arguments
``zero``                    the result is 0 everywhere, the reference is not
``sign``                    the result is minus the reference
``factor``                  a constant ratio to the reference, named as 2, 1/2, N or 1/N when
                            ``N`` is a dimension of the inputs or of the output
``transpose``               the result is the transpose of the reference (or of its axes), or
                            the correct result with a square input used transposed
``swapped_inputs``          the results for two inputs of the same shape are each other's
``diagonal_only``           the derivative is elementwise in its direction (a diagonal
                            Jacobian, the diagonal entries right) where the true Jacobian is not
                            diagonal: softmax-like Jacobians cut to ``a (1 - a)``
``region``                  the errors are confined to a subset that can be described: a sign
                            of an input, the kink elements, tied values, the border, some
                            rows, columns or time steps
``formula``                 (only from a catalog, below) a catalogued mistake with no simpler
                            signature: a wrong formula
==========================  ====================================================================

The step-free signatures (``ignores_*``, ``not_linear_*``, ``in_place``) call
the user's derivative again at ``2 g``, ``g1 + g2`` and an unrelated
direction: they need no numerics. The value signatures compare the
analytic result with the most precise reference of the check, element by
element, within the tolerance that reference carries. ``diagonal_only``
tests whether the true Jacobian is diagonal with two evaluations of ``fn``
(perturb a random half of the input: do the other outputs move?) and the
diagonal entries by central differences at a few sampled elements;
``transpose`` of an input costs one directional derivative per square input.

Naming a catalogued mistake
---------------------------
``check_vjp(..., pitfalls=catalog)`` (and ``check_layer``) also names the
entry of a catalog of known mistakes that the derivative reproduces, in
:attr:`Diagnosis.pitfall`. The library does not know any catalog: an entry
is any object with ``name``, ``fn`` and ``wrong_vjp`` attributes (and
optionally ``kind``, ``summary``, ``correct``, ``wrong_input`` and
``mutates_cotangent``), such as the entries of ``reference.pitfalls.CATALOG``.
An entry matches when its ``fn`` gives the checked function's output at the
checked point and its ``wrong_vjp`` reproduces the checked derivative's
result for the check's cotangent (to 1e-8 relative), and, for an entry that
``mutates_cotangent``, the derivative also wrote into its cotangent. That is
a behavioural signature: the catalog declares the mistake by the code that
makes it, so a user's own code that makes the same mistake is named too,
and two mistakes of the same kind (two missing factors 2) are told apart.
The entry's declared ``kind`` is the kind of its diagnosis.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KINDS", "Diagnosis", "diagnose"]

#: The documented kinds (see the module notes); ``ignores_*`` and
#: ``not_linear_*`` take the check's direction in their name.
KINDS = (
    "ignores_cotangent",
    "ignores_tangent",
    "ignores_vector",
    "not_linear_in_cotangent",
    "not_linear_in_tangent",
    "not_linear_in_vector",
    "in_place",
    "zero",
    "sign",
    "factor",
    "transpose",
    "swapped_inputs",
    "diagonal_only",
    "region",
    "formula",
)

#: Relative agreement that counts as "the same value" for a signature: far
#: looser than rounding, far tighter than any mistake it is meant to name.
SAME_RTOL = 1e-7
#: Elements whose diagonal Jacobian entry is sampled for ``diagonal_only``.
DIAGONAL_SAMPLES = 6
#: The agreement of a sampled diagonal entry with its central difference.
DIAGONAL_RTOL = 1e-4
#: A region must be at least this full of errors to be named.
REGION_FILL = 0.5

_EPS = float(np.finfo(np.float64).eps)
_SUFFIX = {"cotangent": "cotangent", "tangents": "tangent", "vectors": "vector"}


@dataclass(frozen=True)
class Diagnosis:
    """What kind of mistake a failed check looks like.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS` (or the ``kind`` a catalog entry declares).
    input : str or None
        The input (the piece compared: ``x``, ``Hv[x]``, ``out_tangent``)
        the diagnosis is about.
    message : str
        What was found and what the correct form usually is.
    pitfall : str or None
        The name of the catalogued mistake it reproduces (see the module
        notes), or None.
    evidence : dict
        The numbers behind it (``{"factor": 0.5}``, ``{"axis": 0, ...}``).
    """

    kind: str
    input: str | None
    message: str
    pitfall: str | None = None
    evidence: dict = field(default_factory=dict, compare=False)

    def to_dict(self):
        def plain(v):
            if isinstance(v, (np.integer, np.floating)):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, (list, tuple)):
                return [plain(u) for u in v]
            return v

        return {
            "kind": self.kind,
            "input": self.input,
            "message": self.message,
            "pitfall": self.pitfall,
            "evidence": {k: plain(v) for k, v in self.evidence.items()},
        }


@dataclass
class Evidence:
    """What :func:`diagnose` may look at: built by the pipeline on failure.

    ``refs`` holds, per piece, ``(value, tau, kink)`` flat arrays of the most
    precise reference (``nan`` value and ``inf`` tau where it has none);
    ``failed`` the per-element failures against it (None: no per-element
    comparison); ``derivative(direction) -> list of pieces`` and
    ``forward(xs) -> output`` call the user's code on fresh copies;
    ``mutated`` lists ``(who, argument, is_direction)`` for every argument
    the derivative wrote into.
    """

    kind: str
    role: str
    who: str
    on_output: bool
    names: list
    piece_names: list
    xs: list
    out: np.ndarray
    direction: list
    analytic: list
    refs: list
    failed: list
    piece_failed: list
    derivative: Any
    forward: Any
    seed: int = 0
    mutated: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    pitfalls: Any = None


# --- helpers ------------------------------------------------------------------------------------


def _close(a, model, tau, scale=1.0):
    """``a`` equals ``model`` elementwise within the reference's own tolerance (finite only)."""
    a, model, tau = (np.asarray(v, dtype=np.float64).ravel() for v in (a, model, tau))
    known = np.isfinite(model) & np.isfinite(tau)
    if not known.any():
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.abs(a[known] - model[known])
        bound = 4.0 * scale * tau[known] + SAME_RTOL * np.abs(model[known]) + 1e-300
    return bool(np.all(gap <= bound))


def _same(a, b, rtol=SAME_RTOL):
    """Two results of the user's code agree to ``rtol`` of their scale (rounding aside)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return False
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return bool(np.array_equal(a, b, equal_nan=True))
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    return bool(np.all(np.abs(a - b) <= rtol * scale + 1e-300))


def _dimensions(ev):
    """``{size: description}`` of every axis (and total size) of the inputs and the output."""
    dims = {}
    arrays = list(zip(ev.names, ev.xs, strict=True)) + [("the output", ev.out)]
    for name, x in arrays:
        x = np.asarray(x)
        for axis, n in enumerate(x.shape):
            if n > 1:
                dims.setdefault(int(n), f"axis {axis} of {name} {tuple(x.shape)}")
        if x.ndim > 1 and x.size > 1:
            dims.setdefault(int(x.size), f"the size of {name} {tuple(x.shape)}")
    return dims


def _name_factor(c, dims):
    """``(text, evidence)`` naming the constant ``c``: 2, 1/2, N, 1/N, or its value."""

    def near(u, v):
        return abs(u - v) <= 1e-6 * abs(v)

    sign = "-" if c < 0 else ""
    m = abs(c)
    for value, text in ((2.0, "2"), (0.5, "1/2")):
        if near(m, value):
            return sign + text, {"factor": c, "named": sign + text}
    for n, where in sorted(dims.items()):
        if near(m, float(n)):
            return f"{sign}{n} (N = {n}, {where})", {"factor": c, "named": f"{sign}N", "N": n}
        if near(m, 1.0 / n):
            return f"{sign}1/{n} (1/N, N = {n}, {where})", {
                "factor": c,
                "named": f"{sign}1/N",
                "N": n,
            }
    return f"{c:.10g}", {"factor": c, "named": None}


def _factor_hint(evidence):
    named = (evidence.get("named") or "").lstrip("-")
    if named == "1/2":
        return (
            "a factor 2 is missing: the derivative of a square is 2 (p - t); the 2 cancels only "
            "against a 1/2 in the loss"
        )
    if named == "2":
        return "a factor 2 too many: the loss has a 1/2 (or a mean) that the derivative ignores"
    if named == "N":
        return (
            "a 1/N is missing: the forward divides by N (a mean over that axis), so the "
            "derivative must divide by N too"
        )
    if named == "1/N":
        return (
            "divided by N once too often: a mean where the forward sums (every row adds to the "
            "result, so every row's gradient adds up)"
        )
    return "a constant factor is off: a scale, a normalization or a step size in the derivation"


# --- the step-free signatures -------------------------------------------------------------------


def _call(ev, direction):
    try:
        with np.errstate(all="ignore"):
            return [np.asarray(p, dtype=np.float64) for p in ev.derivative(direction)]
    except Exception:  # the user's code failed on a new direction: no signature from it
        return None


def _cotangent_use(ev):
    """``ignores_*`` and ``not_linear_in_*``, per piece: the derivative called 3 more times."""
    rng = np.random.default_rng(ev.seed + 7919)
    d = ev.direction
    other = [rng.standard_normal(u.shape) * (np.std(u) if u.size and np.std(u) > 0 else 1.0)
             for u in d]
    if all(not np.any(u) for u in d):
        return []
    a = ev.analytic
    twice = _call(ev, [2.0 * u for u in d])
    b = _call(ev, other)
    both = _call(ev, [u + v for u, v in zip(d, other, strict=True)])
    if twice is None or b is None or both is None:
        return []
    suffix = _SUFFIX.get(ev.role, ev.role)
    out = []
    for k, name in enumerate(ev.piece_names):
        if not np.any(a[k]) and not np.any(b[k]):
            continue
        if _same(twice[k], a[k], 1e-12) and _same(b[k], a[k], 1e-12):
            out.append(
                Diagnosis(
                    kind=f"ignores_{suffix}",
                    input=name,
                    message=(
                        f"{ev.who} returns the same {_what(ev, name)} for the {ev.role} d, for 2 d "
                        f"and for an unrelated {ev.role}: it never uses its {ev.role} argument. "
                        f"Multiply by it (a backward(dout=1) that returns (y - t) / N is right "
                        f"only when dout is 1)"
                    ),
                    evidence={"calls": 3},
                )
            )
            continue
        scale = max(
            float(np.max(np.abs(a[k]), initial=0.0)), float(np.max(np.abs(b[k]), initial=0.0))
        )
        gap_scale = float(np.max(np.abs(twice[k] - 2.0 * a[k]), initial=0.0))
        gap_add = float(np.max(np.abs(both[k] - a[k] - b[k]), initial=0.0))
        if max(gap_scale, gap_add) > 1e-6 * scale:
            which = (
                f"{ev.who}(2 d) differs from 2 {ev.who}(d) by up to {gap_scale:.3g}"
                if gap_scale > 1e-6 * scale
                else f"{ev.who}(d1 + d2) differs from {ev.who}(d1) + {ev.who}(d2) by up to "
                f"{gap_add:.3g}"
            )
            out.append(
                Diagnosis(
                    kind=f"not_linear_in_{suffix}",
                    input=name,
                    message=(
                        f"{ev.who} is not linear in its {ev.role} ({which}, at scale "
                        f"{scale:.3g}): a derivative along a direction is linear in it. Was the "
                        f"{ev.role} squared, added instead of multiplied, or used in a max or a "
                        "mask?"
                    ),
                    evidence={"scale_gap": gap_scale, "additivity_gap": gap_add},
                )
            )
    return out


def _what(ev, name):
    return f"gradient of {name}" if ev.on_output else name


def _in_place(ev):
    out = []
    for who, arg, _ in ev.mutated:
        out.append(
            Diagnosis(
                kind="in_place",
                input=arg,
                message=(
                    f"{who} writes into its argument {arg} (g[x <= 0] = 0 on the upstream "
                    "gradient, a += on a cached array): the values may be right, but the "
                    "caller's array changes under it. Compute into a new array"
                ),
                evidence={"who": who},
            )
        )
    return out


# --- the value signatures -----------------------------------------------------------------------


def _known(ev, k):
    value, tau, _ = ev.refs[k]
    return np.isfinite(value) & np.isfinite(tau)


def _zero_sign_factor(ev, k):
    value, tau, _ = ev.refs[k]
    a = np.asarray(ev.analytic[k], dtype=np.float64).ravel()
    known = _known(ev, k) & np.isfinite(a)
    if not known.any():
        return None
    r, ak, tk = value[known], a[known], tau[known]
    name = ev.piece_names[k]
    rr = float(np.dot(r, r))
    if rr == 0.0 or not np.any(np.abs(r) > tk):
        return None
    if not np.any(ak):
        return Diagnosis(
            kind="zero",
            input=name,
            message=(
                f"the {_what(ev, name)} is 0 in every element, the reference is not: a gradient "
                "never accumulated or returned (an empty slice, a forgotten +=, the wrong "
                "variable returned)"
            ),
        )
    c = float(np.dot(ak, r) / rr)
    if not math.isfinite(c) or abs(c - 1.0) <= 1e-6 or c == 0.0:
        return None
    if not _close(ak, c * r, tk, max(1.0, abs(c))):
        return None
    if abs(c + 1.0) <= 1e-6:
        return Diagnosis(
            kind="sign",
            input=name,
            message=(
                f"the {_what(ev, name)} is minus the reference in every element: a sign is "
                "flipped (gradient ascent instead of descent, y - t for t - y, a minus lost in "
                "the chain rule)"
            ),
            evidence={"factor": c},
        )
    text, evidence = _name_factor(c, _dimensions(ev))
    return Diagnosis(
        kind="factor",
        input=name,
        message=(
            f"the {_what(ev, name)} is {text} times the reference in every element: "
            + _factor_hint(evidence)
        ),
        evidence=evidence,
    )


def _transposed_result(ev, k):
    """The result is the reference with its axes permuted (``dW = G^T X`` for ``X^T G``)."""
    value, tau, _ = ev.refs[k]
    a = np.asarray(ev.analytic[k], dtype=np.float64)
    shape = a.shape
    if a.ndim < 2 or a.ndim > 4 or not _known(ev, k).all():
        return None
    ref = value.reshape(shape)
    t = tau.reshape(shape)
    name = ev.piece_names[k]
    for perm in itertools.permutations(range(a.ndim)):
        if perm == tuple(range(a.ndim)):
            continue
        if tuple(shape[i] for i in perm) != shape:
            continue
        model = np.transpose(ref, perm)
        if _close(a, model, np.maximum(t, np.transpose(t, perm))):
            axes = "the transpose" if a.ndim == 2 else f"the reference with axes {perm}"
            return Diagnosis(
                kind="transpose",
                input=name,
                message=(
                    f"the {_what(ev, name)} is {axes} of the reference: the factors of a "
                    "matrix product in the wrong order (G^T X for X^T G)"
                ),
                evidence={"axes": list(perm)},
            )
    return None


def _transposed_input(ev, k):
    """The result is the correct one with a square input transposed (``G W`` for ``G W^T``)."""
    if not ev.on_output:
        return None
    from oracles.numerics.directional import directional
    from oracles.numerics.objective import ScalarObjective

    a = np.asarray(ev.analytic[k], dtype=np.float64)
    rng = np.random.default_rng(ev.seed + 104729)
    for j, x in enumerate(ev.xs):
        if x.ndim != 2 or x.shape[0] != x.shape[1] or x.shape[0] < 2 or np.allclose(x, x.T):
            continue
        xs = [np.array(v, copy=True) for v in ev.xs]
        xs[j] = np.ascontiguousarray(x.T)
        u = [np.zeros(v.shape) for v in xs]
        u[k] = rng.standard_normal(a.shape)
        try:
            with np.errstate(all="ignore"):
                objective = ScalarObjective(lambda *a: ev.forward(list(a)), xs, ev.direction[0])
                est = directional(objective, [tuple(u)])
        except Exception:  # fn refuses the transposed point: no signature from it
            continue
        value, error = float(est.value[0]), float(est.error[0])
        if not (math.isfinite(value) and math.isfinite(error)):
            continue
        claimed = float(np.vdot(a.ravel(), u[k].ravel()))
        if abs(value) > 10 * error and abs(claimed - value) <= 4 * error + SAME_RTOL * abs(value):
            name = ev.piece_names[k]
            return Diagnosis(
                kind="transpose",
                input=name,
                message=(
                    f"the {_what(ev, name)} is what the correct derivative gives with "
                    f"{ev.names[j]} transposed: {ev.names[j]} is used where {ev.names[j]}^T "
                    "belongs (G W instead of G W^T; it only runs because the matrix is square)"
                ),
                evidence={"transposed": ev.names[j]},
            )
    return None


def _swapped(ev, k):
    a_k = ev.analytic[k]
    for j in range(len(ev.piece_names)):
        if j == k or ev.analytic[j].shape != a_k.shape or not ev.piece_failed[j]:
            continue
        vk, tk, _ = ev.refs[k]
        vj, tj, _ = ev.refs[j]
        if _close(a_k, vj, tj) and _close(ev.analytic[j], vk, tk):
            n1, n2 = ev.piece_names[k], ev.piece_names[j]
            return Diagnosis(
                kind="swapped_inputs",
                input=n1,
                message=(
                    f"the results for {n1} and {n2} are each other's: returned in the wrong "
                    f"order (return d{n2}, d{n1} for d{n1}, d{n2}?)"
                ),
                evidence={"with": n2},
            )
    return None


def _diagonal_only(ev, k):
    """Elementwise in the direction, where the true Jacobian is not diagonal."""
    if ev.on_output:
        if ev.out.shape != ev.xs[k].shape or len(ev.direction) != 1:
            return None
        d_index, x_index = 0, k
    else:
        if len(ev.xs) != 1 or ev.out.shape != ev.xs[0].shape or k != 0:
            return None
        d_index, x_index = 0, 0
    d = ev.direction[d_index]
    a = np.asarray(ev.analytic[k], dtype=np.float64)
    if d.size < 2 or a.shape != d.shape:
        return None
    rng = np.random.default_rng(ev.seed + 1299709)
    mask = rng.random(d.shape) < 0.5
    mask.reshape(-1)[0], mask.reshape(-1)[-1] = True, False
    direction = [np.array(u, copy=True) for u in ev.direction]
    direction[d_index] = d * mask
    masked = _call(ev, direction)
    if masked is None or not _same(masked[k], a * mask, 1e-10):
        return None  # not elementwise in its direction
    # Is the true Jacobian diagonal? Move a random half of the input: if
    # outputs outside it move, it is not.
    x = ev.xs[x_index]
    scale = float(np.sqrt(np.mean(x**2))) if x.size else 1.0
    h = 1e-3 * (scale if scale > 0 else 1.0)
    u = rng.standard_normal(x.shape) * mask
    xs_p = [np.array(v, copy=True) for v in ev.xs]
    xs_m = [np.array(v, copy=True) for v in ev.xs]
    xs_p[x_index] = x + h * u
    xs_m[x_index] = x - h * u
    try:
        with np.errstate(all="ignore"):
            moved = np.asarray(ev.forward(xs_p), dtype=np.float64) - np.asarray(
                ev.forward(xs_m), dtype=np.float64
            )
    except Exception:  # fn refuses the perturbed point
        return None
    inside = float(np.max(np.abs(moved[mask]), initial=0.0))
    outside = float(np.max(np.abs(moved[~mask]), initial=0.0))
    noise = 64 * _EPS * float(np.max(np.abs(ev.out), initial=1.0))
    if not (outside > 1e-6 * inside and outside > noise):
        return None  # the Jacobian is diagonal: an elementwise formula that is wrong
    # The diagonal entries the derivative uses, against central differences.
    flat_d = d.reshape(-1)
    candidates = np.flatnonzero(np.abs(flat_d) > 0.1 * float(np.max(np.abs(flat_d))))
    if candidates.size == 0:
        return None
    picks = rng.choice(candidates, size=min(DIAGONAL_SAMPLES, candidates.size), replace=False)
    for j in picks:
        used = float(a.reshape(-1)[j] / flat_d[j])
        xj = float(x.reshape(-1)[j])
        step = 1e-5 * max(1.0, abs(xj))
        xs_p = [np.array(v, copy=True) for v in ev.xs]
        xs_m = [np.array(v, copy=True) for v in ev.xs]
        xs_p[x_index].reshape(-1)[j] += step
        xs_m[x_index].reshape(-1)[j] -= step
        taken = xs_p[x_index].reshape(-1)[j] - xs_m[x_index].reshape(-1)[j]
        try:
            with np.errstate(all="ignore"):
                fp = np.asarray(ev.forward(xs_p), dtype=np.float64).reshape(-1)[j]
                fm = np.asarray(ev.forward(xs_m), dtype=np.float64).reshape(-1)[j]
        except Exception:  # fn refuses the perturbed point
            return None
        true = float((fp - fm) / taken)
        if not abs(used - true) <= DIAGONAL_RTOL * max(abs(true), 1e-12) + 1e-9 * max(
            abs(float(ev.out.reshape(-1)[j])), 1.0
        ):
            return None
    name = ev.piece_names[k]
    return Diagnosis(
        kind="diagonal_only",
        input=name,
        message=(
            f"{ev.who} is elementwise in its {ev.role} (element j of the {_what(ev, name)} "
            f"depends only on element j of the {ev.role}, through the Jacobian's diagonal, "
            "which is right), but the true Jacobian is not diagonal: every output moves with "
            "every input of its group. The off-diagonal terms were dropped (softmax: "
            "g * a (1 - a) instead of a * (g - <g, a>))"
        ),
        evidence={"sampled": int(picks.size)},
    )


def _index_text(values, limit=6):
    values = sorted(int(v) for v in values)
    shown = ", ".join(map(str, values[:limit]))
    return shown + (", ..." if len(values) > limit else "")


def _at_ties_or_kinks(ev, k):
    """Errors only at tied values or kinks: there, a reference is one subgradient among many."""
    d = _region(ev, k, only=("ties", "kinks"))
    return d


def _region(ev, k, only=None):
    """Errors confined to a describable subset of the elements (``only``: those kinds)."""
    value, tau, kink = ev.refs[k]
    failed = ev.failed[k]
    if failed is None:
        return None
    known = _known(ev, k)
    failed = np.asarray(failed, dtype=bool).ravel() & known
    n_fail, n_known = int(failed.sum()), int(known.sum())
    if n_fail < (1 if only else 2) or (n_fail == n_known and not only):
        return None
    shape = np.asarray(ev.analytic[k]).shape
    candidates = []
    own = k if (ev.on_output or ev.kind == "check_hvp") else None
    # The signs of the piece's own input first, then of every other input of its shape.
    order = ([own] if own is not None and own < len(ev.xs) else []) + [
        j for j in range(len(ev.xs)) if j != own
    ]
    for j in order:
        if ev.xs[j].shape != shape:
            continue
        x = np.asarray(ev.xs[j], dtype=np.float64).ravel()
        xname = ev.names[j]
        for mask, text in (
            (x < 0, f"{xname} < 0"),
            (x > 0, f"{xname} > 0"),
            (x == 0, f"{xname} == 0"),
            (x != 0, f"{xname} != 0"),
            (x <= 0, f"{xname} <= 0"),
            (x >= 0, f"{xname} >= 0"),
        ):
            candidates.append((mask, f"the elements where {text}", {"where": text}))
        if j == own:
            _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
            tied = counts[inverse.ravel()] > 1
            candidates.append(
                (tied, f"the elements of {xname} with tied values", {"where": "ties"})
            )
    if kink is not None and np.any(kink):
        candidates.append((np.asarray(kink, dtype=bool).ravel(), "the kink elements", {
            "where": "kinks"
        }))
    if len(shape) >= 2:
        idx = np.indices(shape)
        border = np.zeros(shape, dtype=bool)
        for axis in (len(shape) - 2, len(shape) - 1):
            border |= (idx[axis] == 0) | (idx[axis] == shape[axis] - 1)
        candidates.append((border.ravel(), "the border (first and last rows and columns)", {
            "where": "border"
        }))
    if len(shape) >= 1:
        idx = np.indices(shape).reshape(len(shape), -1)
        labels = {0: "row", 1: "column"} if len(shape) == 2 else {}
        for axis, n in enumerate(shape):
            if n < 2:
                continue
            used = np.unique(idx[axis][failed])
            if used.size >= n:
                continue
            mask = np.isin(idx[axis], used)
            word = labels.get(axis, "index")
            text = (
                f"{word}(s) {_index_text(used)} (axis {axis})"
                if word != "index"
                else f"index {_index_text(used)} along axis {axis}"
            )
            candidates.append((mask, text, {"axis": axis, "indices": [int(i) for i in used]}))
    best = None
    for mask, text, evidence in candidates:
        if only is not None and evidence.get("where") not in only:
            continue
        mask = np.asarray(mask, dtype=bool).ravel() & known
        size = int(mask.sum())
        if size == 0 or (size >= n_known and not only) or np.any(failed & ~mask):
            continue
        if n_fail / size < REGION_FILL:
            continue
        if best is None or size < best[0]:
            best = (size, text, evidence)
    if best is None:
        return None
    size, text, evidence = best
    name = ev.piece_names[k]
    hint = {
        "ties": (
            "At tied values a subgradient routes the upstream gradient once (to one of them, "
            "argmax, or split among them), never to every tied element (x == max) or to none"
        ),
        "kinks": (
            "At a kink any value between the one-sided slopes is a subgradient; these lie "
            "outside it"
        ),
    }.get(
        evidence.get("where"),
        "Look at how the derivation treats that case (a mask, a branch, an index, a boundary)",
    )
    return Diagnosis(
        kind="region",
        input=name,
        message=(
            f"the errors are confined to {text}: {n_fail} of the {size} elements there are "
            f"wrong, none of the other {n_known - size}. {hint}"
        ),
        evidence={**evidence, "failed": n_fail, "region": size},
    )


_VALUE_TESTS = (
    _at_ties_or_kinks,
    _zero_sign_factor,
    _transposed_result,
    _swapped,
    _diagonal_only,
    _region,
)

#: The joint test of tied values (:mod:`oracles.numerics.ties`) reports failures as problems.
_TIE_PROBLEM = re.compile(r"^tie group of (.+?) \(value ")


def _ties(ev):
    """``region`` at tied values, from the joint tie tests that failed."""
    out, seen = [], set()
    for p in ev.problems:
        m = _TIE_PROBLEM.match(p)
        if not m or m.group(1) in seen:
            continue
        name = m.group(1)
        seen.add(name)
        n = sum(1 for q in ev.problems if q.startswith(f"tie group of {name} (value "))
        out.append(
            Diagnosis(
                kind="region",
                input=name,
                message=(
                    f"the errors are at tied values of {name} ({n} group(s) of equal elements): "
                    "summed over a group, the gradient is not the derivative along the direction "
                    "that moves the group together. A backward that routes the upstream gradient "
                    "to every tied element (a max-pool mask x == max), or to none; route it to "
                    "one of them (argmax) or split it"
                ),
                evidence={"where": "ties", "groups": n},
            )
        )
    return out


# --- catalogued mistakes ------------------------------------------------------------------------


def _as_list(result):
    if isinstance(result, (tuple, list)):
        return [np.asarray(g, dtype=np.float64) for g in result]
    return [np.asarray(result, dtype=np.float64)]


def _matches(entry, ev):
    fn = getattr(entry, "fn", None)
    wrong = getattr(entry, "wrong_vjp", None)
    if not (callable(fn) and callable(wrong)) or not ev.on_output:
        return False
    if getattr(entry, "mutates_cotangent", False) and not any(d for _, _, d in ev.mutated):
        return False
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(fn(*[np.array(x, copy=True) for x in ev.xs]), dtype=np.float64)
            if out.shape != ev.out.shape or not _same(out, ev.out, 1e-9):
                return False
            xs = [np.array(x, copy=True) for x in ev.xs]
            got = _as_list(wrong(np.array(ev.direction[0], copy=True), *xs))
    except Exception:  # the entry does not apply to these inputs
        return False
    if len(got) != len(ev.analytic):
        return False
    return all(
        g.shape == a.shape and _same(g, a, 1e-8) for g, a in zip(got, ev.analytic, strict=True)
    )


def _name_pitfalls(ev, found):
    for entry in ev.pitfalls:
        if not _matches(entry, ev):
            continue
        name = str(entry.name)
        kind = getattr(entry, "kind", None)
        k = getattr(entry, "wrong_input", None)
        piece = ev.piece_names[k] if isinstance(k, int) and 0 <= k < len(ev.piece_names) else None
        if piece is None and getattr(entry, "mutates_cotangent", False):
            piece = ev.role
        for i, d in enumerate(found):
            if (kind is None or d.kind == kind) and (piece is None or d.input == piece):
                named = Diagnosis(d.kind, d.input, d.message, name, d.evidence)
                return [named] + found[:i] + found[i + 1 :]
        summary = getattr(entry, "summary", "") or ""
        correct = getattr(entry, "correct", "") or ""
        message = f"a catalogued mistake: {summary}" + (f" Correct: {correct}" if correct else "")
        return [Diagnosis(kind or "formula", piece, message, name)] + found
    return found


def diagnose(ev):
    """The diagnoses of a failed check, most specific first (see the module notes).

    Parameters
    ----------
    ev : Evidence
        Built by the pipeline (:mod:`oracles._pipeline`) when a check fails.

    Returns
    -------
    tuple of Diagnosis
        Empty when no signature fits. Never raises because of the user's
        code: a signature whose extra calls fail is skipped.

    Examples
    --------
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> x = np.random.default_rng(0).normal(size=(4, 3))
    >>> r = check_vjp(lambda x: np.sum(x**2), lambda g, x: g * x, (x,))
    >>> [(d.kind, d.input, d.evidence["named"]) for d in r.diagnoses]
    [('factor', 'x', '1/2')]
    """
    found = _in_place(ev)
    step_free = _cotangent_use(ev)
    found += step_free
    done = {d.input for d in step_free}
    # Tied values are judged jointly: where no element fails on its own, the
    # joint test is what failed, and the errors are at the ties.
    elementwise = {
        name
        for name, f in zip(ev.piece_names, ev.failed, strict=True)
        if f is not None and np.any(f)
    }
    ties = [d for d in _ties(ev) if d.input not in done | elementwise]
    found += ties
    done |= {d.input for d in ties}
    for k, name in enumerate(ev.piece_names):
        if not ev.piece_failed[k] or name in done:
            continue
        for test in _VALUE_TESTS:
            try:
                d = test(ev, k)
            except Exception:  # a signature that cannot be evaluated here is skipped
                d = None
            if d is not None:
                found.append(d)
                if d.kind == "swapped_inputs":
                    done.add(d.evidence["with"])
                break
        else:
            try:
                d = _transposed_input(ev, k)
            except Exception:  # as above
                d = None
            if d is not None:
                found.append(d)
    if ev.pitfalls is not None:
        found = _name_pitfalls(ev, found)
    return tuple(found)
