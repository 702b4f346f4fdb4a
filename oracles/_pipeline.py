"""The one pipeline every check runs.

::

    validate -> forward -> direction -> analytic -> references -> guards -> compare
             -> coverage -> power -> report -> diagnoses (on failure)

A check is a :class:`Spec`: how the user's derivative is called and what it
returns, which pieces are compared, and how the numeric and autodiff oracles
compute the same pieces. :func:`run` does everything else, the same way for
every check: argument validation, fresh copies for every call of user code,
mutation detection, determinism before and after, linearity of the
derivative in its direction, non-finite estimates that never pass, loosely
judged elements, the step limit, the comparison and the report; then what
this run could have caught in each input (its *coverage* and sensitivity,
from the thresholds it actually applied), whether that was enough for the
check to mean anything (``resolve=``: else the status is
``"inconclusive"``), and on failure what kind of mistake it is
(:mod:`oracles.diagnose`).

Two kinds of oracle feed the comparison. Per-element oracles (numeric,
torch, jax, complex) give a :class:`~oracles.compare.Reference` per piece,
compared element by element. Step-free projection oracles (``"taylor"``,
``"dot"``) give a :class:`Projected` per piece: one inner product with a
verdict of its own, and the per-element resolution it had.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oracles._guards import (
    Guarded,
    call_user,
    check_repeatable,
    mutations,
    own_stream,
    users_state,
)
from oracles._validation import (
    SMALL_DIRECTION,
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
    normalize_gradients,
    parse_against,
    rescaled_direction,
)
from oracles.backends.rounding import ROUNDING_FACTOR, error_estimate
from oracles.compare import Reference, compare
from oracles.errors import (
    GradientMismatch,
    InconclusiveCheck,
    InvalidArgument,
    InvalidArgumentType,
    UserFunctionError,
)
from oracles.numerics.fast import UNEXPLAINED
from oracles.numerics.modes import resolve_mode
from oracles.numerics.objective import (
    EPS,
    REDUCED_UNIT,
    TYPE_DISTINCT,
    _reduced_kind,
    element_scales,
)
from oracles.report import (
    LOOSE_FACTOR,
    WORST_LIMIT,
    Agreement,
    Coverage,
    Element,
    InputReport,
    OracleCheck,
    Report,
)

__all__ = [
    "ORACLES",
    "RESOLVE",
    "OracleResult",
    "Projected",
    "Run",
    "Spec",
    "flat",
    "raise_unless_passed",
    "run",
    "split",
]

#: The oracles ``against=`` may name (each check supports a subset: :attr:`Spec.oracles`).
ORACLES = ("numeric", "torch", "jax", "complex", "taylor", "dot")

#: Oracles that compare one projection per piece, not every element.
PROJECTION_ORACLES = ("taylor", "dot")

#: The autodiff oracles: one subgradient of their own choosing at kinks and ties.
AUTODIFF = ("torch", "jax")

#: Default of ``resolve=``: the relative error every input must be able to catch.
RESOLVE = 1e-3

#: The sensitivity is this quantile of the elements' figures: what 9 elements in 10 catch.
TYPICAL_QUANTILE = 0.9

#: A reference of 0 within this (absolute) error counts as an exact 0, checked absolutely.
EXACT_ZERO = 1e-300

#: Elements within this factor of the median magnitude count as typical for the sensitivity.
TYPICAL_SPAN = 100.0

#: ... and of those with a reference of their own, only the central 80% of the magnitudes
#: (10th to 90th percentile, ranks rounded outwards: all of up to 10 elements). The
#: per-element thresholds grow with the element's magnitude, so the 90th percentile of the
#: thresholds over the whole band is set by the largest tenth of the elements, which for
#: softmax of 3 * normal reach 20 m: at its own cotangent (seed 7, shape (40, 5)) the figure
#: was 8.3e-8 where the ten elements nearest the median have thresholds of 2.5e-9 to 6.5e-9
#: times m (every one of them caught at a tenth of the figure); trimmed, 4.7e-8. Over 384
#: constructions (tests/meta/test_sensitivity.py's 7 functions at n = 3, 10, 40, log_softmax
#: at offsets 1e3 and 1e6 and softmax against torch, seeds 0-15, errors planted at the
#: check's own cotangent) the figure failed the caught-at-1.5x / caught-at-most-3-in-10-at-
#: a-tenth test in 41 untrimmed and 35 trimmed, a subset, all of them pessimistic (arrays
#: of 3 to 10 elements whose magnitudes span more than 15x, and tanh at seed 12, whose
#: median-sized elements' thresholds span 40x). Trimming to the middle half (0.25) failed
#: 16 of the 192 at seeds 0-7 (20 untrimmed, 17 at 0.4) but 2 of them optimistic (1.4x, in
#: 9-element arrays, whose largest elements it leaves out): never claimed sharper wins.
TYPICAL_HALF = 0.4

#: Above this magnitude float64 inputs are 1/4 apart or more: the steps (relative to the
#: element, in both modes) cannot resolve a fn that varies on a scale of 1 there.
STEP_LIMIT = 2.0**50

#: Elements per chunk of the loops over a whole piece (no temporaries the size of a piece).
CHUNK = 1 << 16

#: Relative tolerance of the linearity test of a derivative (scaling by 2 or -1 is exact).
LINEARITY_RTOL = 4 * float(np.finfo(np.float64).eps)

#: ... except where a product underflows: float32 results below its smallest normal (a softmax's
#: VJP at logits of scale 100) round to a grid of 2^-149, whatever the factor, so ``2 vjp(d)``
#: and ``vjp(2 d)`` can differ by a unit of it. A few such units are allowed.
LINEARITY_ATOL = 8 * float(np.finfo(np.float32).smallest_subnormal)

_FN_HINT = (
    "Is dropout left on (training mode), or a random generator unseeded? A derivative of a "
    "random function cannot be checked; fix the randomness first (seed it inside fn, or switch "
    "dropout off)"
)


@dataclass
class Projected:
    """What a projection oracle found for one piece: one inner product, judged.

    Attributes
    ----------
    label : str
        What was compared, for the report (``"<x, d>"``).
    analytic, reference : float
        The projection of the user's result, and the oracle's value of it.
    tolerance : float
        The largest ``|analytic - reference|`` the oracle accepts (its
        resolution, for the Taylor test).
    passed : bool
        The oracle's verdict (the Taylor test judges by the observed order).
    resolution : ndarray
        Per element of the piece, the smallest error in that element alone
        that would have failed the test (``inf`` where the projection does
        not see the element).
    detail : str
        What the oracle measured, in one line.
    """

    label: str
    analytic: float
    reference: float
    tolerance: float
    passed: bool
    resolution: np.ndarray
    detail: str = ""


@dataclass
class OracleResult:
    """What one oracle computed: a :class:`Reference` (or a :class:`Projected`) per piece."""

    refs: list
    method: str
    evaluations: int = 0
    notes: list = field(default_factory=list)
    #: Per piece, for the projection oracles ("taylor", "dot"); ``refs`` is then empty.
    projections: list | None = None
    #: The float type whose rounding an autodiff reference's error estimate allows
    #: (``"float32"`` where ``torch_fn``/``jax_fn`` computes in it, :func:`_reference_kind`).
    kind: str = "float64"
    #: Elements at which an autodiff oracle was judged by the subgradient rule, at kinks
    #: and ties the numerics found (:func:`_autodiff_at_kinks`).
    subgradient: int = 0


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
    taylor, dot : callable, optional
        ``taylor(run) -> OracleResult`` and ``dot(run) -> OracleResult``
        with :attr:`OracleResult.projections`: the step-free oracles
        ``against="taylor"`` (:mod:`oracles.numerics.taylor`) and
        ``against="dot"`` (the dot-product test).
    partner : str, optional
        The keyword of the other derivative the dot-product test needs
        (``"jvp"`` for a VJP check, ``"vjp"`` for a JVP check; None when
        the derivative is its own adjoint, as an HVP is).
    analytic_error : callable, optional
        ``analytic_error(run) -> list of arrays`` (one per piece): the
        absolute uncertainty of the derivative under test itself (the
        rounding of a float32 backward), added to every per-element
        oracle's error estimate before the comparison.
    rounding : callable, optional
        ``rounding(directions) -> list of arrays``: the random direction
        (drawn when ``direction=None``) as the derivative under test
        receives it (rounded to a float32 output's dtype), so that every
        oracle takes exactly that direction.
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
    taylor: Callable | None = None
    dot: Callable | None = None
    partner: str | None = None
    analytic_error: Callable | None = None
    rounding: Callable | None = None


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
    resolve: float = RESOLVE
    pitfalls: tuple | None = None
    #: ``(who, argument, is_direction)`` for every argument the derivative wrote into.
    mutated: list = field(default_factory=list)
    #: ``(oracle, piece) -> _PerElement``: what each comparison applied, element by element.
    per_element: dict = field(default_factory=dict)
    inconclusive: list = field(default_factory=list)
    advice: list = field(default_factory=list)
    #: The inputs' step scales, measured once per check and shared by its objectives.
    scales: list | None = None

    def copies(self):
        return [x.copy() for x in self.xs]

    def forward(self, xs=None):
        """``fn`` on fresh copies, as a float64 array (a fresh one)."""
        return as_output(call_user(self.fn, [x.copy() for x in (xs or self.xs)], "fn"))

    def derivative(self, direction, record=False, xs=None):
        """The user's derivative along ``direction`` on fresh copies, as validated pieces.

        At ``xs`` when given (another point; not with ``record``), else at the inputs.
        """
        xs = self.copies() if xs is None else [np.array(x, dtype=np.float64) for x in xs]
        d = [np.array(u, dtype=np.float64, copy=True) for u in direction]
        raw = call_user(lambda *a: self.spec.call(self.user, d, xs), [], self.spec.derivative)
        if not record:
            del xs  # not needed any more: one copy of the inputs less while the result is copied
        pieces = self.spec.normalize(raw, self)
        if record:
            who = self.spec.derivative
            self.problems += mutations(self.xs, xs, self.names, who)
            self.problems += mutations(direction, d, self.direction_names(), who)
            for before, after, name, is_dir in [
                *zip(self.xs, xs, self.names, [False] * len(xs), strict=True),
                *zip(direction, d, self.direction_names(), [True] * len(d), strict=True),
            ]:
                after = np.asarray(after)
                if after.shape != before.shape or not np.array_equal(before, after, True):
                    self.mutated.append((who, name, is_dir))
        return pieces

    def direction_names(self):
        role = self.spec.role
        if self.spec.on_output or len(self.xs) == 1:
            return [role]
        return [f"{role}[{k}]" for k in range(len(self.xs))]

    def guarded_fn(self):
        return Guarded(self.fn, "fn", self.xs, self.names, self.out.shape)

    def objective(self):
        """``<direction, fn(x)>`` as a numeric objective, with the step scales of the check.

        The scales of inputs that are 0 everywhere are measured on the first
        objective (:func:`~oracles.numerics.objective.measured_scales`) and
        reused by the others, so every oracle of the check steps alike.
        """
        from oracles.numerics.objective import ScalarObjective

        objective = ScalarObjective(
            self.guarded_fn(), self.xs, self.direction[0], base_output=self.out, scales=self.scales
        )
        if self.scales is None:
            self.scales = objective.scales
        return objective


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
    resolve,
    pitfalls,
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
    resolve = check_resolve(resolve)
    pitfalls = check_pitfalls(pitfalls)
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
        resolve=resolve,
        pitfalls=pitfalls,
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
    if spec.partner is not None:
        other = options.get(spec.partner)
        if "dot" in against:
            if other is None:
                raise InvalidArgument(
                    f"against includes 'dot', so {spec.partner}= must be given: the dot-product "
                    f"test compares {spec.derivative} with its adjoint {spec.partner}"
                )
            check_callable(other, spec.partner)
            check_arity(
                other,
                n_args,
                spec.partner,
                f"it is called as {spec.partner}(direction, *inputs)",
            )
        elif other is not None:
            raise InvalidArgument(
                f"{spec.partner}= is used only by the dot-product test: add 'dot' to against"
            )
    if spec.validate is not None:
        spec.validate(r)
    r.options["direction"] = direction
    return r


def check_resolve(value):
    """``resolve=``: ``None`` (default: :data:`RESOLVE`) or a real number > 0 (``inf`` allowed)."""
    if value is None:
        return RESOLVE
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentType(
            f"resolve must be a real number > 0 (a relative error), got {value!r}"
        )
    value = float(value)
    if not value > 0:
        raise InvalidArgument(
            f"resolve must be > 0: the relative error every input must be able to catch (inf: "
            f"never inconclusive), got {value!r}"
        )
    return value


def check_pitfalls(pitfalls):
    """``pitfalls=``: ``None`` or a collection of entries with ``name``, ``fn``, ``wrong_vjp``."""
    if pitfalls is None:
        return None
    if isinstance(pitfalls, (str, bytes)) or not hasattr(pitfalls, "__iter__"):
        raise InvalidArgumentType(
            "pitfalls must be a collection of catalog entries (such as "
            f"reference.pitfalls.CATALOG), got {type(pitfalls).__name__}"
        )
    entries = tuple(pitfalls)
    for entry in entries:
        missing = [a for a in ("name", "fn", "wrong_vjp") if not hasattr(entry, a)]
        if missing or not (callable(entry.fn) and callable(entry.wrong_vjp)):
            raise InvalidArgumentType(
                "every entry of pitfalls must have a name and callable fn and wrong_vjp "
                f"attributes; {entry!r} has not ({', '.join(missing) or 'not callable'})"
            )
    return entries


def _forward(r):
    passed = r.copies()
    r.out = as_output(call_user(r.fn, passed, "fn"))
    r.problems += mutations(r.xs, passed, r.names, "fn")
    del passed  # one copy of the inputs less while fn runs again
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
        rng = own_stream(r.seed, "direction")
        shapes = [r.out.shape] if r.spec.on_output else [x.shape for x in r.xs]
        r.direction = [rng.standard_normal(s) for s in shapes]
        r.direction_desc = f"random normal (seed {r.seed})"
        if r.spec.rounding is not None:
            r.direction = [np.asarray(u, dtype=np.float64) for u in r.spec.rounding(r.direction)]
            r.direction_desc += ", rounded to the derivative's dtype"
    elif r.spec.on_output:
        r.direction = [as_cotangent(given, r.out.shape, "direction")]
        r.direction_desc = "given"
    else:
        r.direction = as_directions(given, r.xs, "direction")
        r.direction_desc = "given"
    r.direction, k = rescaled_direction(r.direction)
    if k:
        r.direction_desc += f", scaled by 2^{k}"
        r.notes.append(
            f"the {r.spec.role} given is tiny (below {SMALL_DIRECTION:.3g}): it was multiplied "
            f"by 2^{k}, exactly, and the check ran with that (every {r.spec.derivative} is "
            f"linear in its {r.spec.role}; products with a subnormal one keep too few bits to "
            "judge)"
        )


def _first_nonlinear(a, b, factor):
    """``(flat index, b_i, factor a_i)`` of the worst element where ``b != factor a``, or None."""
    offset = 0
    for pa, pb in zip(a, b, strict=True):
        for k in range(0, pa.size, CHUNK):
            ca, cb = pa[k : k + CHUNK], pb[k : k + CHUNK]
            with np.errstate(invalid="ignore", over="ignore"):
                gap = np.abs(cb - factor * ca)
                bound = LINEARITY_RTOL * np.abs(factor * ca) + LINEARITY_ATOL
            finite = np.isfinite(ca) & np.isfinite(cb)
            bad = finite & ~(gap <= bound)
            if np.any(bad):
                j = int(np.argmax(np.where(bad, gap - bound, -np.inf)))
                return offset + k + j, float(cb[j]), float(factor * ca[j])
        offset += pa.size
    return None


def linearity_problem(linear, direction, who, first=None):
    """A problem if ``linear`` (the user's derivative along a direction) is not linear, else None.

    Scaling a direction by 2 or by -1 is exact in floating point, so a linear
    formula gives exactly twice (minus) its result; additivity would only
    hold up to rounding. Catches a direction left out of a product
    (``f'(x)`` instead of ``f'(x) t``), added (``f'(x) + t``) or squared.
    ``linear(d)`` returns a list of arrays; ``first``, when given, is
    ``linear(direction)`` already computed (one call of the derivative less).
    The comparison runs chunk by chunk, and one result is held at a time: no
    temporaries the size of the result.
    """
    a = linear(direction) if first is None else first
    a = [np.asarray(p, dtype=np.float64).reshape(-1) for p in a]
    for factor in (2.0, -1.0):
        b = linear([factor * u for u in direction])
        b = [np.asarray(p, dtype=np.float64).reshape(-1) for p in b]
        sizes = [p.size for p in b]
        found = _first_nonlinear(a, b, factor) if sizes == [p.size for p in a] else (None,)
        del b  # before the next call
        if found is None:
            continue
        if found == (None,):
            return (
                f"{who} is not linear in its direction argument: {who}({factor:g} d) has "
                f"{sum(sizes)} elements but {who}(d) {sum(p.size for p in a)}"
            )
        i, bi, ai = found
        return (
            f"{who} is not linear in its direction argument: {who}({factor:g} d) = "
            f"{bi:.17g} but {factor:g} {who}(d) = {ai:.17g} at element {i} of its flattened "
            "result. A derivative along a direction is linear in it: was the direction left "
            "out of a product, or added instead of multiplied?"
        )
    return None


def _analytic(r):
    who = r.spec.derivative
    r.analytic = r.derivative(r.direction, record=True)
    # Linear in its direction means deterministic too: two more calls at 2d and -d that
    # return exactly 2 and -1 times the first result could not have drawn another mask
    # (one call of the derivative less than a separate repeat). Where they do not, the
    # repeat tells nondeterminism (the likelier cause) from a formula that is not linear.
    problem = linearity_problem(r.derivative, r.direction, who, first=r.analytic)
    if problem:
        check_repeatable(
            lambda: r.derivative(r.direction),
            r.analytic,
            who,
            f"Is a random mask drawn inside {who} instead of reused from the forward pass?",
            [f"gradients of {n}" if r.spec.on_output else n for n in r.piece_names],
        )
    if problem:
        r.problems.append(problem)
        r.options["nonlinear"] = True
    for g, name in zip(r.analytic, r.piece_names, strict=True):
        if not np.all(np.isfinite(g)):
            what = f"the gradient of {name}" if r.spec.on_output else name
            r.notes.append(f"{who} returned NaN or inf in {what}; those elements fail")


def _autodiff(r, oracle):
    backend_fn = Guarded(r.backends[oracle], f"{oracle}_fn", r.xs, r.names)
    # The caller's warnings filters are put back as they were: torch's first
    # autograd call imports sympy, which adds one.
    with warnings.catch_warnings():
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
    natural = _natural_scales(r)
    errors = error_estimate(values, cotangent=flat(r.direction), natural=natural)
    kind = _reference_kind(values)
    if kind is not None:
        errors = _reduced_errors(errors, values, natural, kind)
        method += (
            f"; every value it returned is a {kind} value: {oracle}_fn computes in {kind}, "
            f"and the rounding of a {kind} gradient is allowed ({REDUCED_ROUNDING:g} {kind} eps "
            f"of the gradient's magnitude, {REDUCED_NATURAL:g} of its natural scale)"
        )
    refs = [Reference(value=v, error=e) for v, e in zip(values, errors, strict=True)]
    return OracleResult(refs, method, kind=kind or "float64")


#: ``k`` of the magnitude terms of :func:`_reduced_errors`, in units of the reduced type's
#: epsilon. Measured on float32 MLPs with softmax cross-entropy, layer norms, softmax
#: cross-entropies and unsaturated tanh layers (5 sizes, 6 seeds, torch and jax): a correct
#: float32 derivation differed from the float32 framework gradient by at most 3.7 eps32
#: times ``|g| + max|g|``; 16 leaves room for longer reductions. (Saturated units lose more,
#: ``1 - y^2`` from a rounded ``y``: the natural-scale term and the terms' second look,
#: :func:`_terms_second_look`, in the reference's epsilon.)
REDUCED_ROUNDING = 16.0

#: ``k`` of the natural-scale term of :func:`_reduced_errors`, in units of the reduced type's
#: epsilon. The natural scale (``max|c f| / s_j``, :func:`_natural_scales`) stands for what a
#: derivative computed from a rounded output loses (``1 - y^2`` of a saturated tanh): a few
#: units of the type, as hand derivation and framework round ``y`` each once. At the
#: float64 bound's factor (64) it made a float32 MLP's check blind to 2e-3 in a typical
#: element (its loss is 1.4 where the elements of dW1 are 1e-2).
REDUCED_NATURAL = 8.0


def _reduced_errors(errors, values, natural, kind):
    """The float64 bounds widened by the rounding of a gradient computed in ``kind``.

    ``REDUCED_ROUNDING eps_kind (|g| + max|g|) + REDUCED_NATURAL eps_kind natural``
    per element, added to the float64 bound of
    :func:`~oracles.backends.rounding.error_estimate`: the reference and a
    correct derivation in that type each round every term once.
    """
    unit = 2.0 * REDUCED_UNIT[kind]
    out = []
    for e, v, nat in zip(errors, values, natural, strict=True):
        a = np.abs(np.asarray(v, dtype=np.float64))
        peak = float(np.max(a)) if a.size else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            extra = REDUCED_ROUNDING * unit * (a + peak) + REDUCED_NATURAL * unit * np.abs(nat)
        out.append(np.asarray(e, dtype=np.float64) + np.broadcast_to(extra, a.shape))
    return out


def _reference_kind(values):
    """The reduced float type an autodiff reference was computed in, or None (float64).

    A ``torch_fn`` or ``jax_fn`` that casts to float32 inside computes its
    gradient in float32 too (the cast's backward only widens it): every value
    it returns is a float32 value. Recognised as the numeric oracle recognises
    a reduced-precision ``fn`` (:data:`~oracles.numerics.objective.TYPE_DISTINCT`
    distinct non-zero values that all belong to the type; a float64 result is
    one with odds of about 2^-29 each), so its own rounding is allowed, not
    blamed on the derivation: a correct float32 VJP of a float32 MLP failed
    against torch's float32 gradient at 1e-7 relative against a float64 bound.
    """
    v = np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in values] or [[]])
    v = v[np.isfinite(v) & (v != 0)]
    if np.unique(v).size < TYPE_DISTINCT:
        return None
    kind = _reduced_kind(v)
    return kind if kind in REDUCED_UNIT else None


def _disagreeing(r, res):
    """Per piece, the flat elements where the analytic result misses ``res`` (its own bound)."""
    out = []
    for a, ref in zip(r.analytic, res.refs, strict=True):
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        v = np.asarray(ref.value, dtype=np.float64).reshape(-1)
        e = np.asarray(ref.error, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~(np.abs(a - v) <= e + r.atol + r.rtol * np.abs(v))
        out.append(bad & np.isfinite(v))
    return out


def _autodiff_at_kinks(r, results):
    """Judge the autodiff oracles by the subgradient rule where the numerics found kinks or ties.

    At a kink (ReLU at 0, ``abs`` at 0, a clip at its bound) or a tie (tied
    maxima of a max-pool, equal values in a sort or top-k) torch and jax each
    return one subgradient of their own choice (``relu'(0) = 0``, the first
    of tied maxima, a split between tied arguments), and they need not agree
    with each other. A hand-written VJP that picks another valid one is
    right, and one element-by-element comparison with the framework's choice
    would fail it. So at every element where the numeric machinery found a
    kink, or widened a tied element to the limiting slopes of its group
    (:func:`oracles.checks.tie_stages`), the autodiff reference takes the
    numerics' one-sided slopes and their error: any value between them
    passes, and the report says which elements were judged so. The tie
    groups themselves are judged jointly by the numerics (a routing to every
    tied maximum, or to none, fails there, whichever oracle is named), and a
    group that failed is blamed element by element, so its elements are
    compared with the framework's value again.

    Without ``"numeric"`` in ``against``, the numerics take a second look only
    when some element disagrees with an autodiff oracle: the numeric oracle
    is run then (in the check's mode), its tie stages included, and only its
    kinks and ties are used. Returns the calls of ``fn``.
    """
    autodiff = [o for o in r.against if o in AUTODIFF and o in results]
    if not autodiff or not any(np.any(u) for u in r.direction):
        return 0
    own = {o: [ref.error for ref in results[o].refs] for o in autodiff}
    evaluations = 0
    numeric = results.get("numeric")
    if numeric is None:
        disagree = {o: _disagreeing(r, results[o]) for o in autodiff}
        n = max(sum(int(b.sum()) for b in d) for d in disagree.values())
        if not n:
            return 0
        numeric = r.spec.numeric(r)
        evaluations = numeric.evaluations
        r.notes += numeric.notes
        r.notes.append(
            f"{n} element(s) disagree with {' or '.join(autodiff)}: the numeric oracle took a "
            "second look (in this mode), and where it found a kink or a tie the element was "
            "judged by the subgradient rule (between the one-sided slopes), not by the "
            "framework's own choice of subgradient"
        )
    for o in autodiff:
        res = results[o]
        judged = 0
        for k, (ref, nref) in enumerate(zip(res.refs, numeric.refs, strict=True)):
            if nref.kink is None or nref.left is None or nref.right is None:
                continue
            shape = np.shape(ref.value)
            left = np.broadcast_to(np.asarray(nref.left, dtype=np.float64), shape)
            right = np.broadcast_to(np.asarray(nref.right, dtype=np.float64), shape)
            kink = np.broadcast_to(np.asarray(nref.kink, dtype=bool), shape)
            kink = kink & np.isfinite(left) & np.isfinite(right)
            if nref.checked is not None:
                kink = kink & np.broadcast_to(np.asarray(nref.checked, dtype=bool), shape)
            if not kink.any():
                continue
            nerr = np.broadcast_to(np.asarray(nref.error, dtype=np.float64), shape)
            error = np.where(kink, np.fmax(ref.error, nerr), ref.error)
            res.refs[k] = dataclasses.replace(
                ref, error=error, kink=kink, left=np.array(left), right=np.array(right)
            )
            judged += int(np.count_nonzero(kink))
        res.subgradient = judged
    evaluations += _kinks_nearby(r, [results[o] for o in autodiff], numeric)
    evaluations += _not_at_the_kink(r, results, own)
    for o in autodiff:
        res = results[o]
        if res.subgradient:
            res.method += (
                f"; at {res.subgradient} element(s) where the numerics found a kink or a tie, "
                "judged by the subgradient rule (between the numerics' one-sided slopes)"
            )
    return evaluations


#: Most elements per check whose one-sided slopes :func:`_kinks_nearby` measures.
KINK_LOOK_ELEMENTS = 4096

#: :func:`_kinks_nearby` stops after this many elements without a kink, when it found none.
KINK_LOOK_GIVE_UP = 4


def _kinks_nearby(r, autodiff, numeric):
    """One-sided slopes of the elements that still disagree with an autodiff oracle.

    The numeric oracle flags a kink only where its own comparison needs one:
    a central difference at a tie of a max is the mean of the one-sided
    slopes, so a backward that splits the gradient between tied maxima
    (equally, as jax's ``max`` does) passes its screen without a kink being
    seen, while torch routes to the first maximum and disagrees with it. Each
    element that disagrees with an autodiff oracle outside every kink found
    gets a full step ladder (:func:`~oracles.numerics.ladder.partials`),
    whose kink test asks that the jump between the one-sided slopes stay the
    same as the step halves (a jump that shrinks with the step is curvature,
    and noise in a float32 ``fn`` does not pass it either); where it finds a
    kink, the element is judged between its one-sided slopes by every
    autodiff oracle. (Its tie group was judged jointly by the numerics
    already.) Elsewhere the element stays compared with the framework's
    value, which a wrong element then fails. When none of the first
    :data:`KINK_LOOK_GIVE_UP` sits at a kink the rest are not looked at: the
    derivation is off, not at kinks. Not where the numeric oracle itself fails
    the element (a tie group it blamed: a routing to every tied maximum).
    VJPs only. Returns the calls of ``fn``.
    """
    if not r.spec.on_output or len(r.direction) != 1:
        return 0

    def failing(a, ref):
        cmp = compare(
            a, ref.value, ref.error, atol=r.atol, rtol=r.rtol,
            kink=ref.kink, left=ref.left, right=ref.right,
        )  # fmt: skip
        return ~cmp.passed.reshape(-1) & np.isfinite(np.asarray(ref.value).reshape(-1))

    todo = set()
    for res in autodiff:
        for k, (a, ref) in enumerate(zip(r.analytic, res.refs, strict=True)):
            bad = failing(a, ref) & ~failing(a, numeric.refs[k])
            todo.update((k, int(j)) for j in np.flatnonzero(bad))
    if not todo:
        return 0
    from oracles.numerics.ladder import partials

    try:
        objective = r.objective()
    except (UserFunctionError, ValueError, ArithmeticError):
        return 0
    todo = sorted(todo)[:KINK_LOOK_ELEMENTS]
    calls0 = objective.calls
    # The first few on their own: where none of them sits at a kink, the rest are not looked at.
    for batch in (todo[:KINK_LOOK_GIVE_UP], todo[KINK_LOOK_GIVE_UP:]):
        if not batch:
            break
        try:
            est = partials(objective, batch)
        except (UserFunctionError, ValueError, ArithmeticError):
            break
        at = np.asarray(est.kink, dtype=bool) & np.isfinite(est.left) & np.isfinite(est.right)
        for p in np.flatnonzero(at):
            k, j = batch[p]
            for res in autodiff:
                _judge_between(res, k, j, est.left[p], est.right[p], est.error[p])
        if not at.any():
            break
    return objective.calls - calls0


#: Steps (times the element's scale) of :func:`_not_at_the_kink`: far below the ladders'
#: smallest (about 2^-27), still far above float64's spacing of the element.
NEAR_KINK_STEPS = (2.0**-36, 2.0**-40)

#: Most elements per check that :func:`_not_at_the_kink` looks at.
NEAR_KINK_ELEMENTS = 1024


def _not_at_the_kink(r, results, own):
    """Undo the subgradient rule at elements that sit next to a kink, not at it.

    The numerics' ladders cannot tell a kink at the element from one within
    their smallest steps (about 1e-8 of the element's scale): ``relu`` at
    ``x = 1e-10`` reads as a kink, and any value between the one-sided
    slopes passes, where torch and jax give the exact derivative of the
    smooth piece (a kink closer than about 1e-11 of the scale stays
    unresolved: a known limit). Each element that passes an autodiff oracle only by the
    subgradient rule (it disagrees with the framework's value by more than
    the framework's own bound, ``own``) gets its two one-sided slopes at
    steps of :data:`NEAR_KINK_STEPS` of its scale (4 evaluations): where
    both agree with the framework's value at both steps, within float64's
    rounding of the differences and well below the jump the numerics saw,
    ``fn`` is smooth there and the element is compared with the framework's
    value again (a backward that zeroes ``relu'`` below ``1e-8`` fails).
    Where they differ, the element sits at the kink (or the steps cannot
    tell: a ``fn`` that computes in a coarse type), and the rule stands.
    VJPs only; returns the calls of ``fn``.
    """
    if not r.spec.on_output or len(r.direction) != 1:
        return 0
    todo = []
    for o, mine in own.items():
        for k, (a, ref) in enumerate(zip(r.analytic, results[o].refs, strict=True)):
            if ref.kink is None:
                continue
            a = np.asarray(a, dtype=np.float64).reshape(-1)
            v = np.asarray(ref.value, dtype=np.float64).reshape(-1)
            e = np.broadcast_to(np.asarray(mine[k], dtype=np.float64), np.shape(ref.value))
            with np.errstate(invalid="ignore", over="ignore"):
                far = ~(np.abs(a - v) <= e.reshape(-1) + r.atol + r.rtol * np.abs(v))
            at = np.asarray(ref.kink, dtype=bool).reshape(-1) & far & np.isfinite(v)
            todo += [(o, k, int(j)) for j in np.flatnonzero(at)]
    if not todo:
        return 0
    try:
        objective = r.objective()
    except (UserFunctionError, ValueError, ArithmeticError):
        return 0
    cot = np.abs(objective.cotangent)
    f0 = objective.base_output
    slopes = {}
    for o, k, j in todo[:NEAR_KINK_ELEMENTS]:
        if (k, j) not in slopes:
            slopes[(k, j)] = _tiny_slopes(objective, k, j, cot, f0)
        found = slopes[(k, j)]
        if found is None:
            continue
        ref = results[o].refs[k]
        v = float(np.asarray(ref.value).reshape(-1)[j])
        e = float(np.broadcast_to(own[o][k], np.shape(ref.value)).reshape(-1)[j])
        jump = abs(float(ref.right.reshape(-1)[j]) - float(ref.left.reshape(-1)[j]))
        if all(
            noise < jump / 8 and abs(up - v) <= noise + e and abs(down - v) <= noise + e
            for up, down, noise in found
        ):
            kink = np.array(ref.kink, dtype=bool)
            error = np.array(ref.error, dtype=np.float64)
            kink.reshape(-1)[j] = False
            error.reshape(-1)[j] = e
            results[o].refs[k] = dataclasses.replace(ref, kink=kink, error=error)
            results[o].subgradient -= 1
    return objective.calls


def _tiny_slopes(objective, k, j, cot, f0):
    """``[(up, down, noise)]`` of element ``j`` of input ``k`` at :data:`NEAR_KINK_STEPS`.

    None where a step does not move the element, an output is not finite,
    or ``fn`` computes in a coarse type (its noise, not float64's, would
    bound the differences).
    """
    flat = objective.work[k].reshape(-1)
    x0 = flat[j]
    s = float(objective.scales[k].reshape(-1)[j])
    out = []
    try:
        for t in NEAR_KINK_STEPS:
            xp, xm = x0 + t * s, x0 - t * s
            if not xm < x0 < xp:
                return None
            flat[j] = xp
            fp = objective.output(objective.work)
            flat[j] = xm
            fm = objective.output(objective.work)
            flat[j] = x0
            if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
                return None
            up = float(np.vdot(objective.cotangent, fp - f0)) / (xp - x0)
            down = float(np.vdot(objective.cotangent, f0 - fm)) / (x0 - xm)
            size = float(np.vdot(cot, np.abs(f0) + np.maximum(np.abs(fp), np.abs(fm))))
            noise = 8 * EPS * size / min(xp - x0, x0 - xm)
            out.append((up, down, noise))
    finally:
        flat[j] = x0
    if objective.noise.kind is not None:
        return None
    return out


def _judge_between(res, k, j, left, right, error):
    """Element ``j`` of piece ``k`` of ``res`` is judged between ``left`` and ``right``."""
    ref = res.refs[k]
    shape = np.shape(ref.value)
    kink = np.zeros(shape, dtype=bool) if ref.kink is None else np.array(ref.kink, dtype=bool)
    lo = np.full(shape, np.nan) if ref.left is None else np.array(ref.left, dtype=np.float64)
    hi = np.full(shape, np.nan) if ref.right is None else np.array(ref.right, dtype=np.float64)
    err = np.array(ref.error, dtype=np.float64)
    kink.reshape(-1)[j] = True
    lo.reshape(-1)[j], hi.reshape(-1)[j] = left, right
    err.reshape(-1)[j] = max(err.reshape(-1)[j], error)
    res.refs[k] = dataclasses.replace(ref, error=err, kink=kink, left=lo, right=hi)
    res.subgradient += 1


def _natural_scales(r):
    """Per piece, the derivative's natural scale in its own units (see ``error_estimate``).

    What the derivative would be where ``fn`` changes by its own size over
    the scale of its inputs (:func:`~oracles.numerics.objective.element_scales`):
    ``max|c f| / s_j`` for a VJP, ``|f_i| max|t / s|`` for a JVP,
    ``|f| max|v / s| / s_j`` for an HVP. Autodiff that computes a derivative
    from a rounded output (``tanh'`` as ``1 - y^2``) loses ``eps`` of it.
    """
    scales = element_scales(r.xs) if r.scales is None else r.scales
    f = np.abs(np.asarray(r.out, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        if r.spec.on_output:
            peak = float(np.max(np.abs(flat(r.direction)) * f.ravel(), initial=0.0))
            return [peak / s for s in scales]
        pairs = zip(r.direction, scales, strict=True)
        ratio = max((float(np.max(np.abs(d) / s, initial=0.0)) for d, s in pairs), default=0.0)
        if r.spec.scalar_output:
            return [float(np.max(f, initial=0.0)) * ratio / s for s in scales]
        return [f * ratio]


#: Most elements per check whose VJP terms get a second look (:func:`_terms_second_look`).
TERMS_ELEMENTS = 16

#: Disagreements below this, relative to the larger value, get a second look.
TERMS_BELOW = 1e-3

#: The second look stops after this many elements it did not explain, when it explained none.
TERMS_GIVE_UP = 2

#: Steps (times the element's scale) over which the size of the VJP's terms is taken.
TERMS_STEPS = tuple(2.0**-k for k in range(3, 25))

#: The smallest of :data:`TERMS_STEPS` at which the outputs' rates ``|f''/f'|``
#: are measured (:func:`~oracles.backends.rounding.output_rates`). A rate that
#: rounding noise ``sigma`` fakes is at most ``sigma / (|f'| T^2)``; for a fn
#: that computes in float32 (``sigma ~ 6e-8 |f|``, far above the float64
#: rounding the rates are judged against) at ``T = 2^-13`` of a scale ``s``
#: on which ``f`` varies that is ``~4 / s``, a bound near the natural one
#: (``|c f| / s``); at ``2^-24`` it would be ``1e7 / s``. A saturated unit's
#: rate is exact at any step that resolves it.
RATE_SMALLEST = 2.0**-13


def _terms_second_look(r, results):
    """Widen the bounds to the size of the VJP's terms where a small disagreement needs it.

    A hand derivation and an autodiff framework both compute a derivative
    from rounded intermediates: ``1 - tanh^2`` and ``y (1 - y)`` from an
    output that rounds near 1. Their rounding is ``eps`` times the size of
    the terms, which the bounds take at the scale of the inputs
    (:func:`_natural_scales`, and the numeric ladder's terms at its steps).
    A layer fed inputs of 1e3 (raw pixels) varies on the scale of its
    pre-activations instead; where one is near 14, ``1 - tanh^2`` has lost
    five digits, the derivation and torch round differently, and a correct
    VJP was blamed at 8e-5 relative against a bound of 1e-16 (and a
    sigmoid's ``y (1 - y)`` against the numeric oracle, which measured the
    true derivative). For elements that disagree with an oracle by less than
    :data:`TERMS_BELOW` relative (a wrong formula disagrees by far more, and
    costs nothing here), the size of the VJP's terms ``max_T sum_i |c_i
    (f_i(x + T e_j) - f_i(x - T e_j))| / 2T`` over the steps ``T`` of
    :data:`TERMS_STEPS` times the element's scale is measured (44
    evaluations each, at most :data:`TERMS_ELEMENTS` elements, the smallest
    disagreements first; after :data:`TERMS_GIVE_UP` that it does not
    explain and none that it does, it stops: a derivation off by 1e-5
    everywhere costs 88 evaluations), and every oracle's bound there becomes
    at least ``ROUNDING_FACTOR eps`` times it.
    Where ``fn`` varies on the scale of its inputs that is about ``sum |c_i
    df_i / dx_j|``, and the bounds stay at rounding level.
    Steps that do not leave the saturation (pixels of 0..255 stepped by 1/8
    of their scale move a pre-activation near 8 by 4) see terms as small as
    the derivative; what ``1 - y^2`` lost is then ``eps |f_i|`` times the
    rate ``|f_i'' / f_i'|`` at which the unit saturates, which the same
    evaluations measure (:func:`~oracles.backends.rounding.output_rates`, at
    steps down to :data:`RATE_SMALLEST`): the bound is also at least
    ``OUTPUT_ROUNDING eps sum_i |c_i f_i| rate_i`` (a correct tanh layer fed
    raw pixels failed against JAX at 2.8e-16 against a bound of 2.1e-16;
    this gives 5.6e-15). For an autodiff reference computed in float32
    (:attr:`OracleResult.kind`) the terms' bound is in float32's epsilon
    (the rates' stays in float64's: see the known limits in README).
    Returns the number of evaluations.
    """
    if not r.spec.on_output or len(r.direction) != 1:
        return 0
    oracles = [o for o in r.against if o in results and o not in PROJECTION_ORACLES]
    tau = {}  # (piece, element) -> {oracle: disagreement}
    for o in oracles:
        for k, ref in enumerate(results[o].refs):
            a = np.asarray(r.analytic[k], dtype=np.float64).reshape(-1)
            v = np.asarray(ref.value, dtype=np.float64).reshape(-1)
            e = np.asarray(ref.error, dtype=np.float64).reshape(-1)
            if v.shape != a.shape or e.shape != a.shape:
                continue
            # Only elements with a value of their own can disagree (mode fast: the
            # ones compared individually; elsewhere the value is NaN).
            at = None if ref.checked is None else np.flatnonzero(ref.checked)
            if at is not None:
                a, v, e = a[at], v[at], e[at]
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(a - v)
                slack = e + r.atol + r.rtol * np.abs(v)
                small = (diff > slack) & (diff <= TERMS_BELOW * np.maximum(np.abs(a), np.abs(v)))
            if ref.kink is not None:
                kink = np.asarray(ref.kink, dtype=bool).reshape(-1)
                small &= ~(kink if at is None else kink[at])
            for p in np.flatnonzero(small):
                j = int(p if at is None else at[p])
                tau.setdefault((k, j), {})[o] = float(diff[p])
    if not tau:
        return 0
    from oracles.backends.rounding import OUTPUT_ROUNDING, output_rates

    def smallest(kj):  # in float64's units: a float32 reference's count eps32 / eps less
        return min(d / _unit_ratio(results[o]) for o, d in tau[kj].items())

    elements = sorted(tau, key=smallest)[:TERMS_ELEMENTS]
    try:
        objective = r.objective()
    except (UserFunctionError, ValueError, ArithmeticError):
        return 0
    cot = objective.cotangent
    base = objective.base_output
    calls0 = objective.calls
    rescued = missed = 0
    for k, j in elements:
        if missed >= TERMS_GIVE_UP and not rescued:
            break  # the smallest disagreements are not rounding: the derivation is off
        flat = objective.work[k].reshape(-1)
        x0 = flat[j]
        s = float(objective.scales[k].reshape(-1)[j])
        terms = 0.0
        rates = None  # per output, the largest |f''/f'| measured (output_rates)
        try:
            for t in TERMS_STEPS:
                with np.errstate(over="ignore", invalid="ignore"):
                    xp, xm = x0 + t * s, x0 - t * s
                if not (np.isfinite(xp) and np.isfinite(xm)) or not xm < x0 < xp:
                    continue
                flat[j] = xp
                fp = objective.output(objective.work)
                flat[j] = xm
                fm = objective.output(objective.work)
                with np.errstate(over="ignore", invalid="ignore"):
                    size = float(np.vdot(np.abs(cot), np.abs(fp - fm))) / (xp - xm)
                if np.isfinite(size):
                    terms = max(terms, size)
                if t >= RATE_SMALLEST:
                    rate = output_rates(fp - base, base - fm, base, xp - x0)
                    rates = rate if rates is None else np.maximum(rates, rate)
        finally:
            flat[j] = x0
        bound = {"terms": ROUNDING_FACTOR * EPS * terms, "rates": 0.0}
        if rates is not None:  # the rounding of a derivative computed from the output
            with np.errstate(over="ignore", invalid="ignore"):
                size = float(np.vdot(np.abs(cot), np.abs(base) * rates.reshape(base.shape)))
            if np.isfinite(size):
                bound["rates"] = OUTPUT_ROUNDING * EPS * size

        def bound_of(o, bound=bound):
            # The terms' rounding in the reference's own epsilon; the rates' in float64's
            # only: |f_i'' / f_i'| is large wherever an output's derivative is small (a
            # scalar loss at a small element, a layer norm's outputs through its mean), not
            # only at a saturated unit, and in float32's epsilon it hid a dx off by 1e-3.
            return max(bound["terms"] * _unit_ratio(results[o]), bound["rates"])

        if any(d <= bound_of(o) for o, d in tau[(k, j)].items()):
            rescued += 1
        else:
            missed += 1
        for o in oracles:
            ref = results[o].refs[k]
            error = np.array(ref.error, dtype=np.float64, copy=True)
            if error.size != flat.size:
                continue
            error.reshape(-1)[j] = max(error.reshape(-1)[j], bound_of(o))
            results[o].refs[k] = dataclasses.replace(ref, error=error)
    return objective.calls - calls0


def _unit_ratio(res):
    """The epsilon of the type ``res`` was computed in, in units of float64's."""
    return 1.0 if res.kind not in REDUCED_UNIT else 2.0 * REDUCED_UNIT[res.kind] / EPS


def _zero_direction_references(r):
    """Every oracle's answer along an all-zero direction: exactly 0, no call needed.

    A derivative along a zero direction is exactly zero (it is linear in the
    direction), so nothing is evaluated: the analytic result must be 0, and
    the check is inconclusive at best (see :func:`_power`).
    """
    refs = [
        Reference(value=np.zeros(shape), error=np.zeros(shape)) for shape in r.piece_shapes
    ]
    method = f"the {r.spec.role} {'is' if r.spec.on_output else 'are'} all zero: every derivative "
    method += "along it is exactly 0 (nothing evaluated)"
    return {o: OracleResult([Reference(x.value, x.error) for x in refs], method) for o in r.against}


def _references(r):
    from oracles.numerics.complex_step import complex_step_reference

    if not any(np.any(u) for u in r.direction):
        return _zero_direction_references(r), 0
    results, evaluations = {}, 0
    for oracle in r.against:
        if oracle == "numeric":
            res = r.spec.numeric(r)
            evaluations += res.evaluations
            r.notes += res.notes
            if UNEXPLAINED in res.notes:
                # Evidence of an error that no element checked on its own confirmed: not a
                # pass (a wrong element fails the check before this counts).
                r.inconclusive.append(
                    "mode fast's random projections disagreed with the numerics beyond their "
                    "error estimates, round after round, and no element checked on its own was "
                    "found wrong: the error they saw is below what the per-element checks "
                    "resolve here"
                )
                r.advice.append(_other_oracles_advice(r, "kinks and noise"))
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
        elif oracle in PROJECTION_ORACLES:
            res = getattr(r.spec, oracle)(r)
            evaluations += res.evaluations
            r.notes += res.notes
        else:
            res = _autodiff(r, oracle)
        results[oracle] = res
    return results, evaluations


def _widen(results, extra):
    """Add the derivative's own uncertainty (:attr:`Spec.analytic_error`) to every reference."""
    for res in results.values():
        for k, ref in enumerate(res.refs):
            e = np.asarray(extra[k], dtype=np.float64).reshape(np.shape(ref.error))
            res.refs[k] = dataclasses.replace(ref, error=np.asarray(ref.error) + e)


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
            if not (
                np.any(bad & np.isfinite(ref.value))
                or (ref.kink is not None and np.any(bad & np.asarray(ref.kink, dtype=bool)))
            ):
                continue  # NaN already wherever it is bad (mode fast: the elements not compared)
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
        if scale <= float(np.max(error[finite])):
            continue  # the reference is 0 to within its errors: the coverage says so
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
                f"{name} has elements of magnitude >= {STEP_LIMIT:.3g}, where float64 inputs "
                "are 1/4 apart or more: a fn that varies on a scale of 1 there (sin, a "
                "softmax of such logits) cannot be judged numerically, its steps follow the "
                "magnitude. Rescale the input, or check against torch or jax"
            )
    return notes


# --- the step-free oracles: Taylor remainder and dot-product test -------------------------------


def _step_scale(x):
    """The scale on which to step an input: its spread, else its magnitude, else 1."""
    x = np.asarray(x, dtype=np.float64)
    spread = float(np.std(x)) if x.size > 1 else 0.0
    return spread or float(np.max(np.abs(x), initial=0.0)) or 1.0


def _rounding(values, weights):
    """``sum |weights| * (rounding bound of values)``: what rounding moves ``<weights, values>``."""
    (bound,) = error_estimate([values], cotangent=np.ravel(weights))
    return float(np.sum(np.abs(weights) * bound.reshape(np.shape(weights))))


def _taylor_projection(res, label, weights):
    with np.errstate(divide="ignore"):
        resolution = res.resolution / np.abs(weights)
    return Projected(
        label=label,
        analytic=res.slope,
        reference=res.slope + res.residual,
        tolerance=res.resolution,
        passed=res.passed,
        resolution=resolution,
        detail=res.describe(),
    )


def taylor_vjp(r):
    """The Taylor-remainder oracle of a VJP: ``phi = <cotangent, fn>`` along each input alone."""
    from oracles.numerics.taylor import taylor_test

    fn = r.guarded_fn()
    c, f0 = r.direction[0], r.out
    rng = np.random.default_rng(r.seed + 4242)
    eps = float(np.finfo(np.float64).eps)
    projections, evaluations = [], 0
    for k, (x, a, name) in enumerate(zip(r.xs, r.analytic, r.piece_names, strict=True)):
        d = rng.standard_normal(x.shape)
        # Intermediates at the inputs' own magnitude round by eps |x| (as in
        # ScalarObjective.input_noise): a 2-norm, the errors being independent.
        base = 8 * eps * float(np.linalg.norm(np.where(np.isfinite(a), x * a, 0.0)))
        seen = []

        def increment(h, k=k, x=x, a=a, d=d, base=base, seen=seen):
            xs = r.copies()
            xs[k] = x + h * d
            step = xs[k] - x
            fh = fn(*[v.copy() for v in xs])
            diff = fh - f0
            changed = diff != 0
            if not seen:
                seen.append(changed)
            elif np.any(seen[0] & ~changed):
                return 0.0, 0.0, math.inf  # below the function's resolution
            noise = 8 * eps * float(np.sum(np.abs(c[changed]) * (np.abs(fh) + np.abs(f0))[changed]))
            return (
                float(np.vdot(c, diff)),
                float(np.vdot(a, step)),
                noise + 8 * eps * float(np.sum(np.abs(a * step))) + base,
            )

        allowance = float(np.sum(np.abs(d) * (r.atol + r.rtol * np.abs(a))))
        res = taylor_test(increment, h0=0.25 * _step_scale(x), allowance=allowance)
        evaluations += res.evaluations
        projections.append(_taylor_projection(res, f"<{name}, d>", d))
    method = (
        "Taylor remainder |phi(x + h d) - phi(x) - h <g, d>| along a random normal d per input, "
        "judged by its observed order (2: right, 1: wrong)"
    )
    return OracleResult([], method, evaluations, projections=projections)


def taylor_forward(r, evaluate, source):
    """The Taylor-remainder oracle of a forward-mode check (JVP, HVP).

    ``evaluate(xs) -> flat vector`` is the function the check differentiates
    along its direction (``fn`` for a JVP, a gradient for an HVP); each piece
    is tested as ``<w, evaluate>`` with a random normal ``w`` over that piece.
    """
    from oracles.numerics.taylor import taylor_test

    rng = np.random.default_rng(r.seed + 4242)
    eps = float(np.finfo(np.float64).eps)
    t = r.direction
    f0 = np.asarray(evaluate(r.copies()), dtype=np.float64)
    a_flat = flat(r.analytic)
    sizes = [int(np.prod(s, dtype=np.int64)) for s in r.piece_shapes]
    starts = np.cumsum([0] + sizes)
    moving = [(x, u) for x, u in zip(r.xs, t, strict=True) if np.any(u)]
    # Inputs of magnitude |x| round intermediates by eps |x|: along t that moves the
    # output by about eps (|x| / |t|) |J t|.
    reach = max((float(np.max(np.abs(x))) / float(np.max(np.abs(u))) for x, u in moving), default=0)
    h0 = 0.25 * min((_step_scale(x) for x, _ in moving), default=1.0)
    projections, evaluations = [], 1
    for k, name in enumerate(r.piece_names):
        w = np.zeros(f0.size)
        w[starts[k] : starts[k + 1]] = rng.standard_normal(sizes[k])
        base = 8 * eps * reach * float(np.sum(np.abs(w * a_flat)))
        seen = []

        def increment(h, w=w, base=base, seen=seen):
            xs = [x + h * u for x, u in zip(r.xs, t, strict=True)]
            steps = [xh - x for xh, x in zip(xs, r.xs, strict=True)]
            fh = np.asarray(evaluate(xs), dtype=np.float64)
            diff = fh - f0
            changed = diff != 0
            if not seen:
                seen.append(changed)
            elif np.any(seen[0] & ~changed):
                return 0.0, 0.0, math.inf  # below the function's resolution
            lin = flat(r.derivative(steps))
            noise = 8 * eps * float(np.sum(np.abs(w[changed]) * (np.abs(fh) + np.abs(f0))[changed]))
            return (
                float(np.vdot(w, diff)),
                float(np.vdot(w, lin)),
                noise + 8 * eps * float(np.sum(np.abs(w * lin))) + base,
            )

        piece = np.asarray(r.analytic[k], dtype=np.float64)
        wk = w[starts[k] : starts[k + 1]].reshape(piece.shape)
        allowance = float(np.sum(np.abs(wk) * (r.atol + r.rtol * np.abs(piece))))
        res = taylor_test(increment, h0=h0, allowance=allowance)
        evaluations += res.evaluations
        projections.append(_taylor_projection(res, f"<w, {name}>", wk))
    method = (
        f"Taylor remainder of {source} along the direction, contracted with a random normal w "
        "per piece, judged by its observed order (2: right, 1: wrong)"
    )
    return OracleResult([], method, evaluations, projections=projections)


def _dot_projection(label, lhs, rhs, tol, weights):
    gap = abs(lhs - rhs)
    passed = bool(math.isfinite(lhs) and math.isfinite(rhs) and gap <= tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        resolution = (tol + (gap if math.isfinite(gap) else math.inf)) / np.abs(weights)
    return Projected(
        label=label,
        analytic=lhs,
        reference=rhs,
        tolerance=tol,
        passed=passed,
        resolution=resolution,
        detail=f"{label}: {lhs:.17g} vs {rhs:.17g} (rounding bound {tol:.2g})",
    )


def dot_vjp(r):
    """``<vjp(c), t> = <c, jvp(t)>`` per input, with the ``jvp=`` given (each input alone)."""
    jvp = r.options["jvp"]
    c = r.direction[0]
    rng = np.random.default_rng(r.seed + 2718)
    projections = []
    for k, (x, a, name) in enumerate(zip(r.xs, r.analytic, r.piece_names, strict=True)):
        t = [np.zeros(v.shape) for v in r.xs]
        t[k] = rng.standard_normal(x.shape)
        packed = t[0] if len(t) == 1 else tuple(t)
        raw = call_user(jvp, [packed, *r.copies()], "jvp")
        jt = as_output(raw, "jvp")
        if jt.shape != r.out.shape:
            raise UserFunctionError(
                f"jvp returned shape {jt.shape}; the output tangent must have the shape of fn's "
                f"output {r.out.shape}"
            )
        lhs, rhs = float(np.vdot(a, t[k])), float(np.vdot(c, jt))
        tol = (
            _rounding(a, t[k])
            + _rounding(jt, c)
            + float(np.sum(np.abs(t[k]) * (r.atol + r.rtol * np.abs(a))))
        )
        projections.append(_dot_projection(f"<{name}, t> = <c, jvp(t)>", lhs, rhs, tol, t[k]))
    method = "dot-product test <vjp(c), t> = <c, jvp(t)> with the given jvp, t random per input"
    return OracleResult([], method, 0, projections=projections)


def dot_jvp(r):
    """``<c, jvp(t)> = sum_k <vjp(c)_k, t_k>``, with the ``vjp=`` given."""
    vjp = r.options["vjp"]
    rng = np.random.default_rng(r.seed + 2718)
    c = rng.standard_normal(r.out.shape)
    raw = call_user(vjp, [np.array(c, copy=True), *r.copies()], "vjp")
    grads = normalize_gradients(raw, [x.shape for x in r.xs], r.names, who="vjp")
    a = np.asarray(r.analytic[0], dtype=np.float64)
    lhs = float(np.vdot(c, a))
    rhs = float(sum(np.vdot(g, u) for g, u in zip(grads, r.direction, strict=True)))
    tol = (
        _rounding(a, c)
        + sum(_rounding(g, u) for g, u in zip(grads, r.direction, strict=True))
        + float(np.sum(np.abs(c) * (r.atol + r.rtol * np.abs(a))))
    )
    proj = _dot_projection(f"<c, {r.piece_names[0]}> = <vjp(c), t>", lhs, rhs, tol, c)
    method = "dot-product test <c, jvp(t)> = <vjp(c), t> with the given vjp, c random normal"
    return OracleResult([], method, 0, projections=[proj])


def dot_hvp(r):
    """Symmetry of the Hessian: ``<u, H v> = <H u, v>``, ``u`` random over each block alone."""
    rng = np.random.default_rng(r.seed + 2718)
    projections = []
    for k, (x, a, name) in enumerate(zip(r.xs, r.analytic, r.piece_names, strict=True)):
        u = [np.zeros(v.shape) for v in r.xs]
        u[k] = rng.standard_normal(x.shape)
        hu = r.derivative(u)
        lhs = float(np.vdot(u[k], a))
        rhs = float(sum(np.vdot(h, v) for h, v in zip(hu, r.direction, strict=True)))
        tol = (
            _rounding(a, u[k])
            + sum(_rounding(h, v) for h, v in zip(hu, r.direction, strict=True))
            + float(np.sum(np.abs(u[k]) * (r.atol + r.rtol * np.abs(a))))
        )
        projections.append(_dot_projection(f"<u, {name}> = <H u, v>", lhs, rhs, tol, u[k]))
    method = (
        "symmetry test <u, H v> = <H u, v> of the hvp itself (u random per block): a wrong "
        "but symmetric hvp passes it"
    )
    return OracleResult([], method, 0, projections=projections)


# --- compare and report -------------------------------------------------------------------------


@dataclass
class _PerElement:
    """What one comparison applied to every element of one piece (flat arrays)."""

    value: np.ndarray  # the reference (nan where it has none)
    tau: np.ndarray  # the threshold applied: an error above it fails (inf: not judged)
    own: np.ndarray  # the oracle's own part of it (without atol/rtol)
    kink: np.ndarray  # accepted as a subgradient at a kink
    failed: np.ndarray | None  # per element (None: a projection, no per-element verdict)
    #: Covered (vouched for by projections) without a resolution of their own.
    unresolved: np.ndarray | None = None


def _oracle_check(oracle, method, name, number, analytic, ref, atol, rtol, store=None):
    shape = analytic.shape
    full = np.asarray(analytic).reshape(-1)
    positions = None
    if ref.checked is not None:
        positions = np.flatnonzero(np.asarray(ref.checked).reshape(-1))
        covered = ref.covered if ref.covered is not None else positions.size
        whole = ref
        analytic = full[positions]
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
    uniform = None if positions is None or positions.size else _uniform(whole.error)
    if store is not None and uniform is not None:
        # Mode fast, nothing compared one by one: every element has the
        # projections' resolution, in read-only broadcast arrays (no memory).
        n = full.size
        store[(oracle, number)] = _PerElement(
            value=np.broadcast_to(np.float64(np.nan), (n,)),
            tau=np.broadcast_to(np.float64(uniform), (n,)),
            own=np.broadcast_to(np.float64(uniform), (n,)),
            kink=np.broadcast_to(np.False_, (n,)),
            failed=np.broadcast_to(np.False_, (n,)),
            unresolved=np.broadcast_to(np.bool_(not math.isfinite(uniform)), (n,)),
        )
    elif store is not None:
        n = full.size
        per = _PerElement(
            value=np.full(n, np.nan),
            tau=np.full(n, np.inf),
            own=np.full(n, np.inf),
            kink=np.zeros(n, dtype=bool),
            failed=np.zeros(n, dtype=bool),
        )
        at = slice(None) if positions is None else positions
        if positions is not None:
            # Elements covered by projections but not compared one by one: the
            # mode's resolution for them, where it gives one (a finite error).
            rest = np.ones(n, dtype=bool)
            rest[positions] = False
            res = np.asarray(whole.error, dtype=np.float64).reshape(-1)
            per.tau[rest] = res[rest]
            per.own[rest] = res[rest]
            per.unresolved = rest & ~np.isfinite(res)
        with np.errstate(invalid="ignore"):
            per.value[at] = np.where(np.isfinite(cmp.reference), cmp.reference, np.nan).ravel()
            per.tau[at] = np.where(np.isfinite(cmp.tolerance), cmp.tolerance, np.inf).ravel()
            per.own[at] = np.asarray(cmp.error_estimate, dtype=np.float64).ravel()
        per.kink[at] = (cmp.kink & cmp.passed).ravel()
        per.failed[at] = (~cmp.passed).ravel()
        store[(oracle, number)] = per
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
        error_ratio=_error_ratio(cmp, positions, full.size).reshape(shape),
    )


def _uniform(a):
    """The one value of a broadcast (zero-strided) array of at least one element, else None."""
    a = np.asarray(a)
    if a.size and not any(a.strides):
        return float(a.reshape(-1)[0])
    return None


def _error_ratio(cmp, positions, n):
    """``abs_error / tolerance`` per element of the whole piece (NaN where not compared).

    Where nothing was compared one by one (mode fast), a read-only broadcast
    array of NaN: no memory.
    """
    if positions is not None and not positions.size:
        return np.broadcast_to(np.float64(np.nan), (n,))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(cmp.abs_error == 0, 0.0, cmp.abs_error / cmp.tolerance).ravel()
    unknown = np.isnan(ratio)  # a NaN never agrees; inf / inf passed at the tolerance
    ratio[unknown] = np.where(cmp.passed.ravel()[unknown], 1.0, np.inf)
    if positions is None:
        return ratio
    out = np.full(n, np.nan)
    out[positions] = ratio
    return out


def _projected_check(oracle, method, name, number, analytic, proj, store=None):
    """The :class:`OracleCheck` of a projection oracle: one comparison per piece."""
    gap = abs(proj.analytic - proj.reference)
    if not math.isfinite(gap):
        gap = math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = 0.0 if gap == 0 else gap / abs(proj.reference) if proj.reference else math.inf
    if store is not None:
        n = int(np.asarray(analytic).size)
        res = np.broadcast_to(np.asarray(proj.resolution, dtype=np.float64), analytic.shape)
        store[(oracle, number)] = _PerElement(
            value=np.full(n, np.nan),
            tau=np.array(res, dtype=np.float64).reshape(-1),
            own=np.array(res, dtype=np.float64).reshape(-1),
            kink=np.zeros(n, dtype=bool),
            failed=None,
        )
    element = Element(
        input_name=name,
        input_number=number,
        index=(),
        oracle=oracle,
        analytic=float(proj.analytic),
        reference=float(proj.reference),
        abs_error=float(gap),
        rel_error=float(rel),
        tolerance=float(proj.tolerance),
        passed=bool(proj.passed),
        projection=proj.label,
    )
    return OracleCheck(
        oracle=oracle,
        method=method,
        n_checked=1,
        n_failed=0 if proj.passed else 1,
        max_abs_error=float(gap),
        max_rel_error=float(rel),
        max_tolerance_used=float(proj.tolerance),
        worst=[element],
        detail=proj.detail,
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
    keys = [k for k in results if results[k].projections is None]
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


# --- coverage, power, diagnoses ------------------------------------------------------------------


def _best(r, k):
    """Per element of piece ``k``: the comparison with the smallest threshold (the sharpest)."""
    pers = [r.per_element[(o, k)] for o in r.against if (o, k) in r.per_element]
    if not pers:
        return None
    if len(pers) == 1:
        only = pers[0]
        unresolved = only.unresolved
        if unresolved is not None:
            unresolved = unresolved & ~np.isfinite(only.tau)
        return dataclasses.replace(only, unresolved=unresolved)
    tau = np.stack([p.tau for p in pers])
    pick = np.argmin(np.where(np.isnan(tau), np.inf, tau), axis=0)
    cols = np.arange(tau.shape[1])

    def take(field):
        return np.stack([getattr(p, field) for p in pers])[pick, cols]

    # An element some oracle vouched for without a resolution, and no other
    # oracle judged: what it could have caught there is unknown.
    unresolved = None
    if any(p.unresolved is not None for p in pers):
        unresolved = np.logical_or.reduce(
            [p.unresolved for p in pers if p.unresolved is not None]
        ) & ~np.isfinite(tau[pick, cols])

    failed = None
    if any(p.failed is not None for p in pers):
        failed = np.stack(
            [p.failed if p.failed is not None else np.zeros(tau.shape[1], bool) for p in pers]
        )[pick, cols]
    return _PerElement(
        value=take("value"),
        tau=tau[pick, cols],
        own=take("own"),
        kink=take("kink"),
        failed=failed,
        unresolved=unresolved,
    )


def _movement_scale(r, k):
    """How large piece ``k`` could be here: the typical element of a derivative this size.

    From two evaluations at ``x +- h u`` (``u`` random normal over piece
    ``k``'s input for a VJP, the tangents for forward mode): ``|<c, f(x + h
    u) - f(x - h u)>|``-like magnitudes over ``2 h |u|``, per element. None
    when it cannot be measured (an HVP without ``grad=``).
    """
    rng = np.random.default_rng(r.seed + 27182)
    if r.spec.kind == "check_hvp":
        grad = r.options.get("grad")
        if grad is None:
            return None

        def evaluate(xs):
            raw = call_user(grad, [x.copy() for x in xs], "grad")
            return flat(raw if isinstance(raw, (tuple, list)) else [raw])

    else:
        evaluate = r.forward
    xs_p, xs_m = r.copies(), r.copies()
    norm = 0.0
    if r.spec.on_output:
        moved = [(k, rng.standard_normal(r.xs[k].shape))]
    else:
        moved = [(j, u) for j, u in enumerate(r.direction) if np.any(u)]
    for j, u in moved:
        h = 2.0**-10 * _step_scale(r.xs[j]) / (float(np.max(np.abs(u))) or 1.0)
        xs_p[j] = r.xs[j] + h * u
        xs_m[j] = r.xs[j] - h * u
        norm += float(np.sum(((xs_p[j] - xs_m[j]) / 2.0) ** 2))
    if norm == 0.0:
        return None
    try:
        with np.errstate(all="ignore"):
            moved_out = np.asarray(evaluate(xs_p), dtype=np.float64) - np.asarray(
                evaluate(xs_m), dtype=np.float64
            )
    except (UserFunctionError, ValueError, ArithmeticError):
        return None
    size = int(np.prod(r.piece_shapes[k], dtype=np.int64)) or 1
    change = float(np.linalg.norm(moved_out)) / (2.0 * math.sqrt(norm))
    if r.spec.on_output:
        weight = float(np.linalg.norm(r.direction[0]))
        return weight * change / math.sqrt(size)
    return change / math.sqrt(size)


def _independent(r, k):
    """True when ``fn`` (or the gradient, for an HVP) does not move at all with piece ``k``'s input.

    Evaluations far from the point (``x +- s u`` with a random ``u`` at the
    input's own spread ``s``, a small step, and ``-x``): a function that
    does not depend on the input returns bitwise the same output at all of
    them. A function that is only flat here (``tanh`` at 40, a ReLU at
    negative inputs) moves at one of them, and a zero gradient there is not
    evidence of anything.
    """
    rng = np.random.default_rng(r.seed + 31337)
    if r.spec.on_output or r.spec.kind == "check_hvp":
        moved = [k] if k < len(r.xs) else []
    else:
        moved = [j for j in range(len(r.xs)) if np.any(r.direction[j])]
    if not moved:
        return False
    if r.spec.kind == "check_hvp":
        grad = r.options.get("grad")
        if grad is None:
            return False

        def evaluate(xs):
            raw = call_user(grad, [x.copy() for x in xs], "grad")
            return flat(raw if isinstance(raw, (tuple, list)) else [raw])

    else:
        evaluate = r.forward
    base = evaluate(r.xs)
    # Far steps too, up to the edge of the float64 range: an output below its
    # resolution (``1 + 1e-38 x``) first moves at ``x ~ 1e22``.
    for step in (2.0**-10, 1.0, -1.0, None, 2.0**64, -(2.0**256), 2.0**1000):
        xs = r.copies()
        for j in moved:
            x = xs[j]
            if step is None:
                xs[j] = -x
                continue
            u = r.direction[j] if not (r.spec.on_output or r.spec.kind == "check_hvp") else None
            u = rng.standard_normal(x.shape) if u is None else u
            with np.errstate(all="ignore"):
                xs[j] = x + step * _step_scale(x) * u
        if not all(np.all(np.isfinite(xs[j])) for j in moved):
            continue  # beyond the float64 range: nothing to learn there
        try:
            with np.errstate(all="ignore"):
                moved_out = evaluate(xs)
        except (UserFunctionError, ValueError, ArithmeticError):
            return False  # fn refuses points far away: it does depend on the input
        if not np.array_equal(moved_out, base):
            return False
    return True


#: Typical elements per input whose full-ladder threshold is measured (mode exhaustive).
LADDER_SAMPLES = 4


def _ladder_thresholds(r, results):
    """Per piece, the full ladder's thresholds at a few typical elements, or None.

    The exhaustive mode screens every element with one central difference;
    an element the screen flags gets the full ladder, which decides. So the
    smallest error it catches is the *ladder's* threshold wherever that is
    the larger: a planted error above the screen's tolerance but below the
    ladder's passes. The exhaustive mode measures it on its own calibration
    samples nearest the median magnitude (``typical`` of its references, no
    evaluation of its own); for a piece whose reference does not carry it
    (rebuilt by a later stage), the ladder is run here (about 20 evaluations
    each) at the elements nearest the median magnitude, which stand for a
    typical one.
    """
    if "numeric" not in results or not r.spec.uses_mode or not r.spec.on_output:
        return None
    from oracles.numerics.exhaustive import Exhaustive, sharp_partials

    mode = resolve_mode(r.mode, sum(x.size for x in r.xs))
    if not (isinstance(mode, Exhaustive) and mode.screen):
        return None
    refs = results["numeric"].refs
    out = [None] * len(refs)
    elements = []
    for k, ref in enumerate(refs):
        known = getattr(ref, "typical", None)
        if known is not None:
            if len(known[0]):
                out[k] = [(int(j), float(e)) for j, e in zip(*known, strict=True)]
            continue
        value = np.asarray(ref.value, dtype=np.float64).reshape(-1)
        mag = np.abs(np.where(np.isfinite(value), value, 0.0))
        if ref.kink is not None:
            mag = np.where(np.asarray(ref.kink).reshape(-1), 0.0, mag)
        nz = np.flatnonzero(mag > 0)
        if nz.size <= LADDER_SAMPLES:
            continue  # small inputs get the ladder for every element already
        m = float(np.median(mag[nz]))
        picks = nz[np.argsort(np.abs(mag[nz] - m), kind="stable")[:LADDER_SAMPLES]]
        elements += [(k, int(j)) for j in picks]
    if elements:
        safe = [np.where(np.isfinite(a), a, 0.0) for a in r.analytic]
        try:
            objective = r.objective()
            est = sharp_partials(objective, elements, safe)
        except (UserFunctionError, ValueError, ArithmeticError):
            return None
        for p, (k, j) in enumerate(elements):
            out[k] = [] if out[k] is None else out[k]
            out[k].append((j, float(est["error"][p])))
    return out if any(o for o in out) else None


def _coverage(r, k, name, ladder=None):
    """What this run could have caught in piece ``k`` (see :class:`~oracles.report.Coverage`)."""
    best = _best(r, k)
    size = int(np.prod(r.piece_shapes[k], dtype=np.int64))
    if best is None or size == 0:
        return None
    analytic = np.asarray(r.analytic[k], dtype=np.float64).reshape(-1)
    # |reference| where it has a value, else |analytic|; built in one array (the
    # elements of a piece can number 1e7: every temporary here is a copy of it).
    mag = np.abs(analytic)
    if _uniform(best.value) is None or not math.isnan(_uniform(best.value)):
        has = np.isfinite(best.value)
        mag[has] = np.abs(np.asarray(best.value)[has])
        del has
    judged = np.isfinite(best.tau)
    kink = best.kink & judged
    base = judged & ~kink & np.isfinite(mag)
    del judged
    nonzero = base & (mag > best.own)
    zero_direction = not any(np.any(u) for u in r.direction)
    if not zero_direction and best.unresolved is not None and best.unresolved.any():
        # Mode fast without a per-element resolution for the elements its
        # projections covered: the ones it compared alone are the hard ones, so
        # a figure from them alone would mislead.
        return Coverage(math.nan, math.nan, kinks=int(kink.sum()))
    if zero_direction or not nonzero.any():
        if not zero_direction and (kink.any() or not base.any()):
            # Nothing but kinks (ties at a max, ReLU at 0): judged by the
            # subgradient rule there (and jointly at ties), not relatively.
            return Coverage(math.nan, math.nan, zeros=int(base.sum()), kinks=int(kink.sum()))
        exact = base & (best.value == 0.0) & (best.own <= EXACT_ZERO)
        flat_here = base.any() and np.array_equal(exact, base)
        if not zero_direction and (flat_here or _independent(r, k)):
            # Either fn does not move with the input at all, or every element's
            # reference is 0 to within a bound far below any float64 gradient
            # one could care about (outputs that are exactly 0 and stay 0 at
            # every step, to one quantum: a dead ReLU): any other result fails.
            return Coverage(
                math.nan,
                math.nan,
                zeros=int(base.sum()),
                kinks=int(kink.sum()),
                exact_zero=True,
            )
        who = "gradient of " if r.spec.on_output else ""
        role = r.spec.role
        are = "is" if role == "cotangent" else "are"
        if zero_direction and not r.spec.on_output:
            role, are = f"{role} for every input", "are"
        scale = None if zero_direction else _movement_scale(r, k)
        if zero_direction:
            it = "it" if are == "is" else "them"
            reason = f"the {role} {are} all zero, so every derivative along {it} is 0"
        elif scale is not None and scale > 0 and np.median(best.own[base]) > 1e-3 * scale:
            reason = (
                f"the error estimates of {name} are as large as the {who}{name} itself could "
                "be here (a noisy fn, a kink within the steps, reduced precision inside), so "
                "nothing is resolved"
            )
        elif r.direction_desc == "given":
            reason = (
                f"the reference {who}{name} is 0 to within its error estimate in every element, "
                f"although fn depends on it: the {role} given {are} orthogonal to how fn moves "
                "here (an all-ones cotangent on a normalized output?), or the point is "
                "stationary or saturated; a zero result would pass too"
            )
        else:
            reason = (
                f"the reference {who}{name} is 0 to within its error estimate in every element, "
                "although fn depends on it: the point is stationary or saturated (logits at a "
                "large scale, tanh or sigmoid far out), so a zero result would pass too"
            )
        return Coverage(
            math.inf, math.inf, zeros=int(base.sum()), kinks=int(kink.sum()), reason=reason
        )
    picked = mag[nonzero]
    # One copy, partially sorted in place by each call (the values stay the same).
    low = float(np.quantile(picked, 0.5 - TYPICAL_HALF, method="lower", overwrite_input=True))
    high = float(np.quantile(picked, 0.5 + TYPICAL_HALF, method="higher", overwrite_input=True))
    m = float(np.median(picked, overwrite_input=True))
    del picked
    # A typical element is one of the median magnitude m: what it catches is
    # its threshold over m, and the thresholds vary from element to element.
    # Typical elements are those within TYPICAL_SPAN of the median magnitude:
    # the gradients of one input can span many decades (sigmoid at 0 and at
    # -100), and the thresholds of elements 1e40 larger say nothing about an
    # element of the median size. Of those compared element by element, only
    # the central 80% of the magnitudes (see TYPICAL_HALF): thresholds grow with
    # the element, and the 90th percentile of a band reaching 100 m is that of
    # elements 10-100 times the median one.
    typical_size = (mag <= TYPICAL_SPAN * m) & (mag >= m / TYPICAL_SPAN)
    near = nonzero & typical_size & (mag >= low) & (mag <= high)
    # An element with no reference of its own (covered by mode fast's projections)
    # whose analytic value is of a typical size but below its error is typical
    # too, and unresolved, not 0 to within its error: projections that cover most
    # of an input at 20 times the gradient's size (hard sigmoids at a scale of
    # 1e-3, steps across their kinks) must not leave the sensitivity to the few
    # elements compared one by one. (An element whose analytic value is 0 or tiny
    # stays one that is 0 to within its error.)
    unresolved = base & ~nonzero & ~np.isfinite(best.value) & typical_size
    del typical_size
    near |= unresolved
    floors = []
    if ladder:
        # Where the numeric oracle is the sharpest at a sampled element, its
        # decisive threshold there is the ladder's (see _ladder_thresholds).
        # Only samples of a typical size count: an absolute threshold of an
        # element 1e290 larger says nothing about one of the median size (a
        # cotangent of 1 and 3e-294 in one array).
        numeric = r.per_element.get(("numeric", k))
        sharpest = [
            (j, e)
            for j, e in ladder
            if numeric is not None
            and near[j]
            and best.tau[j] >= numeric.tau[j]
            and math.isfinite(e)
        ]
        if sharpest:
            errors = np.array([e for _, e in sharpest])
            allowed = np.array([r.atol + r.rtol * mag[j] for j, _ in sharpest])
            floors = [
                float(np.quantile(errors + allowed, TYPICAL_QUANTILE)),
                float(np.quantile(errors, TYPICAL_QUANTILE)),
            ]

    def typical(values, floor, near=near):
        picked = np.asarray(values)[near]
        if floor is not None:
            np.maximum(picked, floor, out=picked)
        return float(np.quantile(picked, TYPICAL_QUANTILE, overwrite_input=True)) / m

    relative = typical(best.tau, floors[0] if floors else None)
    own = typical(best.own, floors[1] if floors else None)
    del near
    # sigma = tau / max(|reference|, m), in the array of the magnitudes.
    sigma = np.maximum(mag, m, out=mag)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(best.tau, sigma, out=sigma)
    loose = base & (sigma > LOOSE_FACTOR * relative)
    n_loose = int(loose.sum())
    loose_relative = float(np.max(sigma[loose])) if n_loose else math.nan
    zeros = base & ~nonzero & ~loose & ~unresolved
    return Coverage(
        relative=relative,
        own=own,
        elements=int(nonzero.sum() + unresolved.sum()),
        loose=n_loose,
        loose_relative=loose_relative,
        zeros=int(zeros.sum()),
        kinks=int(kink.sum()),
    )


def _power(r, reports):
    """Why this check could not have failed (``r.inconclusive``) and what to do (``r.advice``)."""
    role, who = r.spec.role, r.spec.derivative
    random_direction = (
        f"pass direction=None: a random normal {role} (from seed=) exercises every output"
        if r.spec.on_output
        else f"pass direction=None: random normal {role} (from seed=) move every input"
    )
    if not any(int(np.prod(shape, dtype=np.int64)) for shape in r.piece_shapes):
        # Zero elements compared: the check could not have failed.
        what = "input" if r.spec.on_output else "output"
        r.inconclusive.append(
            f"there is nothing to compare: the {who} has no elements (every {what} it is taken "
            f"over is empty), so any {who} passes"
        )
        r.advice.append(f"check at inputs with at least one element; an empty {what} has no {who}")
        return
    zero_parts = False
    if not r.spec.on_output and len(r.xs) > 1:
        for j, u in enumerate(r.direction):
            if not np.any(u) and r.xs[j].size:
                zero_parts = True
                r.inconclusive.append(
                    f"the {role}[{j}] for {r.names[j]} is all zero: how {who} depends on it is "
                    f"never exercised, so any {who} passes there"
                )
                r.advice.append(random_direction)
    for ir in reports:
        cov = ir.coverage
        if cov is None or cov.exact_zero or math.isnan(cov.own) or cov.own <= r.resolve:
            continue
        if math.isinf(cov.own):
            if zero_parts and "all zero" in (cov.reason or ""):
                continue
            r.inconclusive.append(f"{ir.name}: {cov.reason}")
            if "all zero" in (cov.reason or ""):
                r.advice.append(random_direction)
            elif "nothing is resolved" in (cov.reason or ""):
                r.advice.append(_other_oracles_advice(r, "kinks and noise"))
            elif r.direction_desc == "given":
                r.advice.append(
                    f"use a random {role} (direction=None) rather than a structured one such as "
                    "all ones, or check at another point (away from a stationary one)"
                )
            else:
                r.advice.append(
                    "check at another point, where the derivative is not about 0 (smaller "
                    "logits, pre-activations nearer 0)"
                )
            continue
        oracles = [o for o in r.against if o in ir.checks]
        fast = (
            "numeric" in oracles
            and r.spec.uses_mode
            and type(resolve_mode(r.mode, sum(x.size for x in r.xs))).__name__ == "Fast"
        )
        r.inconclusive.append(
            f"a typical element of {ir.name} could only have caught relative errors >= "
            f"{cov.own:.1g} (resolve={r.resolve:g}): the error estimates of "
            f"{', '.join(oracles)} are that wide here"
            + (" (the projections of mode fast)" if fast else "")
        )
        if fast:
            r.advice.append(
                'use mode="exhaustive" (every element compared on its own), or against torch or '
                "jax"
            )
        r.advice.append(_other_oracles_advice(r, "kinks and saturation"))
    r.advice = list(dict.fromkeys(r.advice))


def _other_oracles_advice(r, away):
    """What to try where the oracles could not resolve: autodiff if unused, another point."""
    if any(o in ("torch", "jax") for o in r.against):
        # Autodiff was asked already: it too is limited by the rounding of fn's outputs
        # there (a logit 500 below its row's max moves its output by e^-500 of a step).
        return f"check at another point, away from {away}"
    return (
        'check against autodiff: against=("numeric", "torch") with torch_fn= (or "jax" with '
        f"jax_fn=), or at another point, away from {away}"
    )


_MUTATION = re.compile(r"^(\S+) modified its argument (\S+) in place")


def _diagnoses(r, reports):
    from oracles.diagnose import Evidence, diagnose

    refs, failed = [], []
    for k in range(len(r.piece_names)):
        best = _best(r, k)
        size = int(np.prod(r.piece_shapes[k], dtype=np.int64))
        if best is None:
            refs.append((np.full(size, np.nan), np.full(size, np.inf), np.zeros(size, bool)))
            failed.append(None)
        else:
            # Copies: the diagnoses get arrays of their own (not read-only broadcasts).
            refs.append((np.array(best.value), np.array(best.tau), np.array(best.kink)))
            failed.append(None if best.failed is None else np.array(best.failed))
    mutated = list(r.mutated)
    for p in r.problems:
        m = _MUTATION.match(p)
        if m and not any(arg == m.group(2) for _, arg, _ in mutated):
            mutated.append((m.group(1), m.group(2), m.group(2) == "dout"))
    ev = Evidence(
        kind=r.spec.kind,
        role=r.spec.role,
        who=r.spec.derivative,
        on_output=r.spec.on_output,
        names=list(r.names),
        piece_names=list(r.piece_names),
        xs=r.copies(),
        out=np.array(r.out, copy=True),
        direction=[np.array(u, copy=True) for u in r.direction],
        analytic=[np.asarray(a, dtype=np.float64) for a in r.analytic],
        refs=refs,
        failed=failed,
        piece_failed=[not ir.ok for ir in reports],
        derivative=lambda d: r.derivative(d),
        forward=lambda xs: r.forward(xs),
        seed=r.seed,
        mutated=mutated,
        problems=list(r.problems),
        pitfalls=r.pitfalls if r.spec.on_output else None,
    )
    # The diagnoses fit models to whatever the user's derivative returned
    # (huge, tiny, NaN): overflow there is a misfit, not news for the user.
    with np.errstate(all="ignore"):
        return diagnose(ev)


def _report(r, kind, results, evaluations, started):
    reports = []
    for k, (a, name) in enumerate(zip(r.analytic, r.piece_names, strict=True)):
        ir = InputReport(name=name, number=k, shape=a.shape)
        for oracle in r.against:
            res = results[oracle]
            if res.projections is not None:
                ir.checks[oracle] = _projected_check(
                    oracle, res.method, name, k, a, res.projections[k], r.per_element
                )
            else:
                ir.checks[oracle] = _oracle_check(
                    oracle, res.method, name, k, a, res.refs[k], r.atol, r.rtol, r.per_element
                )
        reports.append(ir)
    ladder = _ladder_thresholds(r, results) if all(ir.ok for ir in reports) else None
    for k, ir in enumerate(reports):
        ir.coverage = _coverage(r, k, ir.name, None if ladder is None else ladder[k])
    _power(r, reports)
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
    report = Report(
        kind=kind,
        inputs=reports,
        oracles=r.against,
        problems=list(dict.fromkeys(r.problems)),
        notes=notes,
        agreements=_agreements(results, r.piece_names) if len(results) > 1 else [],
        context=context,
        inconclusive=list(dict.fromkeys(r.inconclusive)),
        advice=list(r.advice),
        resolve=r.resolve,
    )
    if report.status == "failed":
        report.diagnoses = _diagnoses(r, reports)
    return report


def run(spec, fn, user, inputs, **kwargs):
    """Run one check of kind ``spec`` and return its :class:`~oracles.report.Report`.

    The user's code runs under the caller's NumPy error state and warnings
    filters, and the caller's global state (NumPy's random state among it) is
    restored afterwards, bitwise, whatever the user's ``fn`` or derivative did
    over the check's many calls, however the check ends
    (:func:`~oracles._guards.users_state`; ``check_layer`` does the same
    around its layer). See :func:`_run`.
    """
    __tracebackhide__ = True
    with users_state():
        return _run(spec, fn, user, inputs, **kwargs)


def _run(
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
    resolve=None,
    pitfalls=None,
    kind=None,
    problems=None,
    **options,
):
    """Run one check of kind ``spec`` and return its :class:`~oracles.report.Report`.

    ``kind`` overrides the report's kind (``check_layer`` runs the VJP spec);
    ``problems`` is a list the caller's own wrappers append to while their
    code runs (the layer adapter's hygiene findings); ``options`` go to the
    spec's stages (``grad=`` of a Hessian check, ``jvp=``/``vjp=`` of the
    dot-product test).
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
        resolve=resolve,
        pitfalls=pitfalls,
        options=options,
    )
    _forward(r)
    _direction(r)
    _analytic(r)
    results, evaluations = _references(r)
    evaluations += _terms_second_look(r, results)
    evaluations += _autodiff_at_kinks(r, results)
    r.notes += _distrust_unbounded(results)
    r.notes += _loose_elements(results, r.piece_names)
    r.notes += _step_limit(r)
    if spec.analytic_error is not None:  # after the notes on the oracles' own estimates
        _widen(results, spec.analytic_error(r))
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
            repeats=2 if report.status != "failed" else 8,
        )
    return report


def raise_unless_passed(report):
    """The ``assert_*`` form of every check: the report, or the exception of its status.

    :class:`~oracles.errors.GradientMismatch` when it failed,
    :class:`~oracles.errors.InconclusiveCheck` when it could not have failed.
    """
    __tracebackhide__ = True
    if report.status == "failed":
        raise GradientMismatch(report)
    if report.status == "inconclusive":
        raise InconclusiveCheck(report)
    return report
