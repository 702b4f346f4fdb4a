"""The one pipeline every check runs.

::

    validate -> forward -> direction -> analytic -> references -> guards -> compare -> report

A check is a :class:`Spec`: how the user's derivative is called and what it
returns, which pieces are compared, and how the numeric and autodiff oracles
compute the same pieces. :func:`run` does everything else, the same way for
every check: argument validation, fresh copies for every call of user code,
mutation detection, determinism before and after, linearity of the
derivative in its direction, non-finite estimates that never pass, loosely
judged elements, the step limit, the comparison and the report.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oracles._guards import Guarded, call_user, check_repeatable, mutations
from oracles._validation import (
    as_cotangent,
    as_directions,
    as_inputs,
    as_output,
    check_arity,
    check_callable,
    check_names,
    check_seed,
    check_tolerance,
    input_dtypes,
    parse_against,
)
from oracles.backends.rounding import error_estimate
from oracles.compare import Reference, compare
from oracles.errors import GradientMismatch, InvalidArgument, UserFunctionError
from oracles.numerics.modes import resolve_mode
from oracles.report import WORST_LIMIT, Agreement, Element, InputReport, OracleCheck, Report

__all__ = ["ORACLES", "OracleResult", "Run", "Spec", "flat", "raise_unless_passed", "run", "split"]

#: The oracles ``against=`` may name (each check supports a subset: :attr:`Spec.oracles`).
ORACLES = ("numeric", "torch", "jax", "complex")

#: Above this magnitude the largest step of the numeric ladder (2^-3) is below
#: half an ulp of the input: x + t rounds back to x.
STEP_LIMIT = 2.0**50

#: Relative tolerance of the linearity test of a derivative (scaling by 2 or -1 is exact).
LINEARITY_RTOL = 4 * float(np.finfo(np.float64).eps)

_FN_HINT = (
    "Is dropout left on (training mode), or a random generator unseeded? A derivative of a "
    "random function cannot be checked; fix the randomness first (seed it inside fn, or switch "
    "dropout off)"
)


@dataclass
class OracleResult:
    """What one oracle computed: a :class:`Reference` per piece, and how."""

    refs: list
    method: str
    evaluations: int = 0
    notes: list = field(default_factory=list)


@dataclass(frozen=True)
class Spec:
    """One kind of check, as data (see the module notes).

    Attributes
    ----------
    kind : str
        The check's name in reports (``"check_vjp"``).
    derivative : str
        The user's derivative's name in messages (``"vjp"``).
    role : str
        What the direction is, in messages (``"cotangent"``, ``"tangents"``).
    on_output : bool
        The direction lives in ``fn``'s output space (a cotangent) rather
        than its input space (tangents, HVP vectors).
    oracles : tuple of str
        The values of ``against=`` this check supports.
    call : callable
        ``call(derivative, direction, xs)``: the calling convention.
        ``direction`` is the list of direction arrays (one for an output
        direction, one per input otherwise).
    pieces : callable
        ``pieces(run) -> [(name, shape), ...]``: what is compared.
    normalize : callable
        ``normalize(raw, run) -> list of arrays``: the derivative's result,
        validated, as the pieces.
    numeric : callable
        ``numeric(run) -> OracleResult``.
    autodiff : callable
        ``autodiff(oracle, backend_fn, run) -> (list of arrays, method)``: the
        pieces by ``"torch"`` or ``"jax"``, and a one-line description.
    scalar_output : bool
        ``fn`` must return a scalar (a Hessian needs one).
    uses_mode : bool
        ``mode=`` applies (a per-element numeric search over the inputs).
    validate : callable, optional
        ``validate(run)``: checks of arguments particular to this kind.
    """

    kind: str
    derivative: str
    role: str
    on_output: bool
    oracles: tuple
    call: Callable
    pieces: Callable
    normalize: Callable
    numeric: Callable
    autodiff: Callable
    scalar_output: bool = False
    uses_mode: bool = False
    validate: Callable | None = None


@dataclass
class Run:
    """The state of one check as it goes through the pipeline."""

    spec: Spec
    fn: Any
    user: Any
    xs: list
    names: list
    dtypes: list
    against: tuple
    mode: Any
    rtol: float
    atol: float
    seed: int
    backends: dict
    options: dict
    out: np.ndarray | None = None
    direction: list | None = None
    direction_desc: str = ""
    analytic: list | None = None
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    piece_names: list = field(default_factory=list)
    piece_shapes: list = field(default_factory=list)

    def copies(self):
        return [x.copy() for x in self.xs]

    def forward(self, xs=None):
        """``fn`` on fresh copies, as a float64 array (a fresh one)."""
        return as_output(call_user(self.fn, [x.copy() for x in (xs or self.xs)], "fn"))

    def derivative(self, direction, record=False):
        """The user's derivative along ``direction`` on fresh copies, as validated pieces."""
        xs = self.copies()
        d = [np.array(u, dtype=np.float64, copy=True) for u in direction]
        raw = call_user(lambda *a: self.spec.call(self.user, d, xs), [], self.spec.derivative)
        pieces = self.spec.normalize(raw, self)
        if record:
            who = self.spec.derivative
            self.problems += mutations(self.xs, xs, self.names, who)
            self.problems += mutations(direction, d, self.direction_names(), who)
        return pieces

    def direction_names(self):
        role = self.spec.role
        if self.spec.on_output or len(self.xs) == 1:
            return [role]
        return [f"{role}[{k}]" for k in range(len(self.xs))]

    def guarded_fn(self):
        return Guarded(self.fn, "fn", self.xs, self.names, self.out.shape)


def flat(pieces):
    """Concatenate arrays into one flat float64 vector."""
    if not pieces:
        return np.zeros(0)
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in pieces])


def split(vector, shapes):
    """The inverse of :func:`flat`: views of ``vector`` shaped like ``shapes``."""
    out, pos = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(np.asarray(vector)[pos : pos + size].reshape(shape))
        pos += size
    return out


def input_names(fn, n, names):
    """``names`` validated, else ``fn``'s positional parameter names, else ``inputs[k]``."""
    names = check_names(names, n)
    if names is not None:
        return names
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= n and not any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return positional[:n]
    return [f"inputs[{k}]" for k in range(n)]


# --- the stages ---------------------------------------------------------------------------------


def _validate(
    spec,
    fn,
    user,
    inputs,
    *,
    direction,
    against,
    mode,
    names,
    seed,
    rtol,
    atol,
    torch_fn,
    jax_fn,
    options,
):
    check_callable(fn, "fn")
    check_callable(user, spec.derivative)
    against = parse_against(against, spec.oracles, spec.kind)
    if spec.uses_mode:
        resolve_mode(mode, 0)  # an unknown mode fails here, before any user code runs
    elif mode is not None:
        raise InvalidArgument(
            f"{spec.kind} has no mode= (its numeric oracle differentiates along the one "
            "direction); mode= applies to check_vjp and check_layer"
        )
    rtol = check_tolerance(rtol, "rtol") or 0.0
    atol = check_tolerance(atol, "atol") or 0.0
    seed = check_seed(seed)
    seed = 0 if seed is None else seed
    backends = {"torch": torch_fn, "jax": jax_fn}
    for oracle, backend_fn in backends.items():
        if backend_fn is not None:
            check_callable(backend_fn, f"{oracle}_fn")
        elif oracle in against:
            raise InvalidArgument(
                f"against includes {oracle!r}, so {oracle}_fn= must be given: fn written with "
                f"{oracle}'s own operations"
            )
    xs = as_inputs(inputs)
    r = Run(
        spec=spec,
        fn=fn,
        user=user,
        xs=xs,
        names=input_names(fn, len(xs), names),
        dtypes=input_dtypes(inputs),
        against=against,
        mode=mode,
        rtol=rtol,
        atol=atol,
        seed=seed,
        backends=backends,
        options=options,
    )
    check_arity(
        fn,
        len(xs),
        "fn",
        "inputs is a tuple with one array per positional argument of fn (a single array: (x,))",
    )
    n_args = len(xs) + 1
    check_arity(
        user,
        n_args,
        spec.derivative,
        f"it is called as {spec.derivative}({spec.role}, *inputs)",
    )
    if spec.validate is not None:
        spec.validate(r)
    r.options["direction"] = direction
    return r


def _forward(r):
    passed = r.copies()
    r.out = as_output(call_user(r.fn, passed, "fn"))
    r.problems += mutations(r.xs, passed, r.names, "fn")
    if r.spec.scalar_output and r.out.size != 1:
        raise UserFunctionError(
            f"fn must return a scalar for {r.spec.kind} (a Hessian needs a scalar loss), got "
            f"shape {r.out.shape}"
        )
    if not np.all(np.isfinite(r.out)):
        raise UserFunctionError(
            "fn returned NaN or inf at the evaluation point; a derivative can only be checked "
            "where the function is finite"
        )
    check_repeatable(lambda: [r.forward()], [r.out], "fn", _FN_HINT, ["outputs"])
    names_shapes = r.spec.pieces(r)
    r.piece_names = [n for n, _ in names_shapes]
    r.piece_shapes = [tuple(s) for _, s in names_shapes]


def _direction(r):
    given = r.options.pop("direction")
    if given is None:
        rng = np.random.default_rng(r.seed)
        shapes = [r.out.shape] if r.spec.on_output else [x.shape for x in r.xs]
        r.direction = [rng.standard_normal(s) for s in shapes]
        r.direction_desc = f"random normal (seed {r.seed})"
    elif r.spec.on_output:
        r.direction = [as_cotangent(given, r.out.shape, "direction")]
        r.direction_desc = "given"
    else:
        r.direction = as_directions(given, r.xs, "direction")
        r.direction_desc = "given"


def linearity_problem(linear, direction, who):
    """A problem if ``linear`` (the user's derivative along a direction) is not linear, else None.

    Scaling a direction by 2 or by -1 is exact in floating point, so a linear
    formula gives exactly twice (minus) its result; additivity would only
    hold up to rounding. Catches a direction left out of a product
    (``f'(x)`` instead of ``f'(x) t``), added (``f'(x) + t``) or squared.
    """
    a = linear(direction)
    for factor in (2.0, -1.0):
        b = linear([factor * u for u in direction])
        with np.errstate(invalid="ignore", over="ignore"):
            gap = np.abs(b - factor * a)
            bound = LINEARITY_RTOL * np.abs(factor * a) + 1e-300
        finite = np.isfinite(a) & np.isfinite(b)
        bad = finite & ~(gap <= bound)
        if np.any(bad):
            i = int(np.argmax(np.where(bad, gap - bound, -np.inf)))
            return (
                f"{who} is not linear in its direction argument: {who}({factor:g} d) = "
                f"{b[i]:.17g} but {factor:g} {who}(d) = {factor * a[i]:.17g} at element {i} of "
                "its flattened result. A derivative along a direction is linear in it: was the "
                "direction left out of a product, or added instead of multiplied?"
            )
    return None


def _analytic(r):
    who = r.spec.derivative
    r.analytic = r.derivative(r.direction, record=True)
    check_repeatable(
        lambda: r.derivative(r.direction),
        r.analytic,
        who,
        f"Is a random mask drawn inside {who} instead of reused from the forward pass?",
        [f"gradients of {n}" if r.spec.on_output else n for n in r.piece_names],
    )
    problem = linearity_problem(lambda d: flat(r.derivative(d)), r.direction, who)
    if problem:
        r.problems.append(problem)
        r.options["nonlinear"] = True
    for g, name in zip(r.analytic, r.piece_names, strict=True):
        if not np.all(np.isfinite(g)):
            what = f"the gradient of {name}" if r.spec.on_output else name
            r.notes.append(f"{who} returned NaN or inf in {what}; those elements fail")


def _autodiff(r, oracle):
    backend_fn = Guarded(r.backends[oracle], f"{oracle}_fn", r.xs, r.names)
    pieces, method = r.spec.autodiff(oracle, backend_fn, r)
    if len(pieces) != len(r.piece_shapes):
        raise UserFunctionError(
            f"{oracle}_fn gave {len(pieces)} result(s) for {len(r.piece_shapes)} piece(s)"
        )
    values = []
    for p, shape, name in zip(pieces, r.piece_shapes, r.piece_names, strict=True):
        p = np.asarray(p, dtype=np.float64)
        if p.size != int(np.prod(shape, dtype=np.int64)):
            raise UserFunctionError(
                f"{oracle}_fn's derivative for {name} has shape {p.shape}, expected {shape}"
            )
        values.append(p.reshape(shape))
    errors = error_estimate(values, cotangent=flat(r.direction))
    refs = [Reference(value=v, error=e) for v, e in zip(values, errors, strict=True)]
    return OracleResult(refs, method)


def _references(r):
    from oracles.numerics.complex_step import complex_step_reference

    results, evaluations = {}, 0
    for oracle in r.against:
        if oracle == "numeric":
            res = r.spec.numeric(r)
            evaluations += res.evaluations
            r.notes += res.notes
            n_nonfinite = sum(
                int(np.count_nonzero(ref.nonfinite))
                for ref in res.refs
                if ref.nonfinite is not None
            )
            if n_nonfinite:
                r.notes.append(
                    f"fn returned NaN or inf at perturbed points for {n_nonfinite} element(s); "
                    "those used the remaining steps, or fail when none was finite"
                )
        elif oracle == "complex":
            refs, method = complex_step_reference(r.fn, r.xs, r.direction[0], seed=r.seed)
            res = OracleResult(refs, method)
        else:
            res = _autodiff(r, oracle)
        results[oracle] = res
    return results, evaluations


def _distrust_unbounded(results):
    """Elements whose reference or error estimate is not finite cannot pass: make them NaN.

    An infinite error estimate (values near the float64 limit, ~1.8e308,
    overflowing inside the numerics) would otherwise accept any analytic
    value. Returns the notes for the report.
    """
    notes = []
    for oracle, res in results.items():
        n = 0
        for k, ref in enumerate(res.refs):
            bad = ~(np.isfinite(ref.value) & np.isfinite(ref.error))
            if not bad.any():
                continue
            n += int(np.count_nonzero(bad & np.isfinite(ref.value)))
            kink = None if ref.kink is None else ref.kink & ~bad
            res.refs[k] = Reference(
                value=np.where(bad, np.nan, ref.value),
                error=ref.error,
                kink=kink,
                left=ref.left,
                right=ref.right,
                nonfinite=ref.nonfinite,
                checked=ref.checked,
                covered=ref.covered,
            )
        if n:
            notes.append(
                f"the {oracle} oracle's error estimate is not finite for {n} element(s) (values "
                "near the float64 limit, ~1.8e308, overflow inside the oracle); they cannot be "
                "judged and count as failures. Rescale the inputs or the function"
            )
    return notes


def _loose_elements(results, names):
    """Notes for elements the numeric oracle could only judge loosely.

    An error estimate above 1% of the largest reference value of its piece
    means the numerics could not resolve that element (a noisy ``fn``, a kink
    closer than the steps): it passes anything that close, so say so.
    """
    notes = []
    if "numeric" not in results:
        return notes
    for ref, name in zip(results["numeric"].refs, names, strict=True):
        value, error = np.asarray(ref.value), np.asarray(ref.error)
        mask = np.ones(value.shape, dtype=bool)
        if ref.checked is not None:
            mask &= np.asarray(ref.checked, dtype=bool).reshape(value.shape)
        if ref.kink is not None:
            mask &= ~np.asarray(ref.kink, dtype=bool).reshape(value.shape)
        finite = mask & np.isfinite(value) & np.isfinite(error)
        if not finite.any():
            continue
        scale = float(np.max(np.abs(value[finite])))
        loose = int(np.count_nonzero(error[finite] > 1e-2 * scale)) if scale > 0 else 0
        if loose:
            notes.append(
                f"{loose} element(s) of {name} were judged only loosely: the numeric error "
                "estimate exceeds 1% of the largest value (a noisy fn, or a kink within the step "
                "range). Check them against torch or jax"
            )
    return notes


def _step_limit(r):
    notes = []
    if "numeric" not in r.against:
        return notes
    for x, name in zip(r.xs, r.names, strict=True):
        if x.size and float(np.max(np.abs(x))) >= STEP_LIMIT:
            notes.append(
                f"{name} has elements of magnitude >= {STEP_LIMIT:.3g}, where the numeric "
                "oracle's absolute steps (<= 0.125) vanish in rounding: those elements cannot "
                "be judged numerically. Rescale the input, or check against torch or jax"
            )
    return notes


# --- compare and report -------------------------------------------------------------------------


def _oracle_check(oracle, method, name, number, analytic, ref, atol, rtol):
    shape = analytic.shape
    positions = None
    if ref.checked is not None:
        positions = np.flatnonzero(np.asarray(ref.checked).reshape(-1))
        covered = ref.covered if ref.covered is not None else positions.size
        analytic = np.asarray(analytic).reshape(-1)[positions]
        ref = ref.subset(positions)
    else:
        covered = analytic.size
    cmp = compare(
        analytic,
        ref.value,
        ref.error,
        atol=atol,
        rtol=rtol,
        kink=ref.kink,
        left=ref.left,
        right=ref.right,
    )
    worst = []
    for flat_i in cmp.worst(WORST_LIMIT):
        idx = np.unravel_index(int(flat_i), analytic.shape) if analytic.ndim else ()
        idx = tuple(int(i) for i in idx)
        where = idx
        if positions is not None:  # mode "fast": back to the index in the whole piece
            where = np.unravel_index(int(positions[int(flat_i)]), shape) if shape else ()
            where = tuple(int(i) for i in where)
        worst.append(
            Element(
                input_name=name,
                input_number=number,
                index=where,
                oracle=oracle,
                analytic=float(cmp.analytic[idx]),
                reference=float(cmp.reference[idx]),
                abs_error=float(cmp.abs_error[idx]),
                rel_error=float(cmp.rel_error[idx]),
                tolerance=float(cmp.tolerance[idx]),
                passed=bool(cmp.passed[idx]),
                kink=bool(cmp.kink[idx]),
            )
        )
    return OracleCheck(
        oracle=oracle,
        method=method,
        n_checked=int(covered),
        n_failed=cmp.n_failed,
        max_abs_error=cmp.max_abs_error,
        max_rel_error=cmp.max_rel_error,
        max_tolerance_used=float(np.max(cmp.tolerance)) if cmp.tolerance.size else 0.0,
        kinks=int(np.count_nonzero(cmp.kink & cmp.passed)),
        worst=worst,
    )


def _common(ra, rb):
    """Two references restricted to the elements both compared individually (mode "fast")."""
    masks = [np.asarray(r.checked).reshape(-1) for r in (ra, rb) if r.checked is not None]
    if not masks:
        return ra, rb
    pos = np.flatnonzero(np.logical_and.reduce(masks))
    return ra.subset(pos), rb.subset(pos)


def _agreements(results, names):
    out = []
    keys = list(results)
    for a_i in range(len(keys)):
        for b_i in range(a_i + 1, len(keys)):
            a, b = keys[a_i], keys[b_i]
            for k, name in enumerate(names):
                ra, rb = _common(results[a].refs[k], results[b].refs[k])
                cmp = compare(
                    rb.value,
                    ra.value,
                    ra.error + rb.error,
                    kink=ra.kink,
                    left=ra.left,
                    right=ra.right,
                )
                out.append(Agreement(a, b, name, cmp.max_abs_error, cmp.max_rel_error, cmp.ok))
    return out


def _report(r, kind, results, evaluations, started):
    reports = []
    for k, (a, name) in enumerate(zip(r.analytic, r.piece_names, strict=True)):
        ir = InputReport(name=name, number=k, shape=a.shape)
        for oracle in r.against:
            res = results[oracle]
            ir.checks[oracle] = _oracle_check(
                oracle, res.method, name, k, a, res.refs[k], r.atol, r.rtol
            )
        reports.append(ir)
    notes = list(dict.fromkeys(r.notes))
    kinks = sum(c.kinks for ir in reports for c in ir.checks.values())
    if kinks:
        notes.append(
            f"{kinks} element(s) sit at a kink (one-sided derivatives differ); the analytic "
            "value was accepted as a subgradient between them"
        )
    notes += [
        f"{name} was given as {dt}; it was evaluated in float64"
        for name, dt in zip(r.names, r.dtypes, strict=True)
        if dt != np.float64
    ]
    who = r.spec.derivative
    context = {
        "fn": getattr(r.fn, "__name__", type(r.fn).__name__),
        who: getattr(r.user, "__name__", type(r.user).__name__),
        "inputs": ", ".join(
            f"{n} {tuple(x.shape)} {dt}" for n, x, dt in zip(r.names, r.xs, r.dtypes, strict=True)
        ),
        "direction": r.direction_desc,
        "oracles": ", ".join(f"{o} ({results[o].method})" for o in r.against),
        "tolerance": f"error estimate + atol {r.atol:g} + rtol {r.rtol:g} * |reference|",
        "fn evaluations": evaluations,
        "seconds": f"{time.perf_counter() - started:.3f}",
    }
    return Report(
        kind=kind,
        inputs=reports,
        oracles=r.against,
        problems=list(dict.fromkeys(r.problems)),
        notes=notes,
        agreements=_agreements(results, r.piece_names) if len(results) > 1 else [],
        context=context,
    )


def run(
    spec,
    fn,
    user,
    inputs,
    *,
    direction=None,
    against="numeric",
    mode=None,
    names=None,
    seed=None,
    rtol=None,
    atol=None,
    torch_fn=None,
    jax_fn=None,
    kind=None,
    problems=None,
    **options,
):
    """Run one check of kind ``spec`` and return its :class:`~oracles.report.Report`.

    ``kind`` overrides the report's kind (``check_layer`` runs the VJP spec);
    ``problems`` is a list the caller's own wrappers append to while their
    code runs (the layer adapter's hygiene findings); ``options`` go to the
    spec's stages (``grad=`` of a Hessian check).
    """
    __tracebackhide__ = True
    started = time.perf_counter()
    r = _validate(
        spec,
        fn,
        user,
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
        options=options,
    )
    _forward(r)
    _direction(r)
    _analytic(r)
    results, evaluations = _references(r)
    r.notes += _distrust_unbounded(results)
    r.notes += _loose_elements(results, r.piece_names)
    r.notes += _step_limit(r)
    if problems:
        r.problems = list(problems) + r.problems
    report = _report(r, kind or spec.kind, results, evaluations, started)
    if "numeric" in r.against:
        # Randomness that the up-front calls missed (dropout on a small
        # output can repeat its mask) would show up as a mismatch, or as
        # error estimates wide enough to accept anything: rule it out, more
        # thoroughly when the check failed.
        check_repeatable(
            lambda: [r.forward()],
            [r.out],
            "fn",
            _FN_HINT,
            ["outputs"],
            repeats=2 if report.ok else 8,
        )
    return report


def raise_unless_passed(report):
    """The ``assert_*`` form of every check: the report, or :class:`GradientMismatch`."""
    __tracebackhide__ = True
    if not report.ok:
        raise GradientMismatch(report)
    return report
