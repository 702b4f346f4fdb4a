"""check_vjp / assert_vjp: judge a hand-written vector-Jacobian product.

The flow of one check (see ``DESIGN.md``): validate the arguments and copy
the inputs to float64; run the user's ``vjp`` on fresh copies (and notice if
it writes into them); compute each reference the user asked for (numeric,
torch, jax), each with its own error estimate; compare elementwise; report.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles import numerics
from oracles._validation import (
    as_cotangent,
    as_inputs,
    as_output,
    check_arity,
    check_callable,
    check_names,
    check_seed,
    check_tolerance,
    input_dtypes,
    normalize_gradients,
)
from oracles.compare import compare
from oracles.errors import (
    GradientMismatch,
    InvalidArgument,
    InvalidArgumentType,
    NonDeterministicFunction,
    OraclesError,
    UserFunctionError,
)
from oracles.fast import resolve_mode
from oracles.report import WORST_LIMIT, Agreement, Element, InputReport, OracleCheck, Report

__all__ = ["ORACLES", "assert_vjp", "check_vjp"]

#: The oracles ``against=`` accepts.
ORACLES = ("numeric", "torch", "jax", "complex")

#: Above this magnitude the largest step of the numeric ladder (2^-3) is below
#: half an ulp of the input: x + t rounds back to x.
_STEP_LIMIT = 2.0**50


def _names(fn, n, names):
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


def _parse_against(against):
    if isinstance(against, str):
        against = (against,)
    try:
        against = tuple(against)
    except TypeError as exc:
        raise InvalidArgumentType(
            f"against must be one of {ORACLES} or a sequence of them, got {against!r}"
        ) from exc
    if not against:
        raise InvalidArgument(f"against is empty; name at least one of {ORACLES}")
    for a in against:
        if a not in ORACLES:
            raise InvalidArgument(f"against must name oracles among {ORACLES}, got {a!r}")
    if len(set(against)) != len(against):
        raise InvalidArgument(f"against names an oracle twice: {against!r}")
    return against


def _call_user(func, args, what):
    try:
        return func(*args)
    except (GradientMismatch, KeyboardInterrupt):
        raise
    except Exception as exc:  # the user's code raised: say whose code it was
        raise UserFunctionError(f"{what} raised {type(exc).__name__}: {exc}") from exc


class _Guarded:
    """``fn`` as the oracles call it: misbehaviour anywhere becomes a clear UserFunctionError.

    The numeric oracle calls ``fn`` at perturbed points, far from the first
    call: an exception, a non-array, a complex result or a changed shape
    there is reported naming the perturbed element, never as a traceback
    from inside the numerics. With ``shape=None`` only
    exceptions are converted (autodiff functions return framework tensors).
    """

    def __init__(self, fn, what, xs, names, shape=None):
        self.fn, self.what, self.xs, self.names, self.shape = fn, what, xs, names, shape
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def _where(self, args):
        for x, a, name in zip(self.xs, args, self.names, strict=False):
            try:
                a = np.asarray(a, dtype=np.float64)
            except Exception:  # a framework tensor: no element to name
                return "while the oracle evaluated it"
            if a.shape != x.shape:
                continue
            changed = np.flatnonzero(a != x)
            if changed.size:
                idx = tuple(int(i) for i in np.unravel_index(int(changed[0]), x.shape))
                return (
                    f"at a perturbed point ({name}[{', '.join(map(str, idx))}] = {float(a[idx])!r} "
                    f"instead of {float(x[idx])!r})"
                )
        return "at the evaluation point"

    def __call__(self, *args):
        try:
            out = self.fn(*args)
        except (GradientMismatch, OraclesError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise UserFunctionError(
                f"{self.what} raised {type(exc).__name__} {self._where(args)}: {exc}"
            ) from exc
        if self.shape is None:
            return out
        if not (isinstance(out, np.ndarray) and out.dtype.kind in "fiub"):
            out = as_output(out, self.what, self._where(args))
        if out.shape != self.shape:
            raise UserFunctionError(
                f"{self.what} returned shape {out.shape} {self._where(args)}, but {self.shape} at "
                "the evaluation point"
            )
        return out


def _distrust_unbounded(refs):
    """Elements whose reference or error estimate is not finite cannot pass: make them NaN.

    An infinite error estimate (values near the float64 limit, ~1.8e308,
    overflowing inside the numerics) would otherwise accept any analytic
    value. Returns the notes for the report.
    """
    notes = []
    for oracle, per_input in refs.items():
        n = 0
        for r in per_input:
            bad = ~(np.isfinite(r["value"]) & np.isfinite(r["error"]))
            if not bad.any():
                continue
            n += int(np.count_nonzero(bad & np.isfinite(r["value"])))
            r["value"] = np.where(bad, np.nan, r["value"])
            if r.get("kink") is not None:
                r["kink"] = r["kink"] & ~bad
        if n:
            notes.append(
                f"the {oracle} oracle's error estimate is not finite for {n} element(s) (values "
                "near the float64 limit, ~1.8e308, overflow inside the oracle); they cannot be "
                "judged and count as failures. Rescale the inputs or the function"
            )
    return notes


def _loose_elements(refs, names):
    """Notes for elements the numeric oracle could only judge loosely.

    An error estimate above 1% of the largest reference value of its tensor
    means the numerics could not resolve that element (a noisy ``fn``, a kink
    closer than the steps): it passes anything that close, so say so.
    """
    notes = []
    for r, name in zip(refs.get("numeric", []), names, strict=False):
        value, error = np.asarray(r["value"]), np.asarray(r["error"])
        if r.get("checked") is not None:
            mask = np.asarray(r["checked"], dtype=bool).reshape(value.shape)
        else:
            mask = np.ones(value.shape, dtype=bool)
        if r.get("kink") is not None:
            mask = mask & ~np.asarray(r["kink"], dtype=bool).reshape(value.shape)
        finite = mask & np.isfinite(value) & np.isfinite(error)
        if not finite.any():
            continue
        scale = float(np.max(np.abs(value[finite])))
        loose = int(np.count_nonzero(error[finite] > 1e-2 * scale)) if scale > 0 else 0
        if loose:
            notes.append(
                f"{loose} element(s) of {name} were judged only loosely: the numeric error "
                "estimate exceeds 1% of the tensor's largest gradient (a noisy fn, or a kink "
                "within the step range). Check them against torch or jax"
            )
    return notes


def _first_change(before, after):
    diff = np.argwhere(~((before == after) | (np.isnan(before) & np.isnan(after))))
    idx = tuple(int(i) for i in diff[0]) if before.ndim else ()
    return idx, float(before[idx]), float(after[idx])


def _mutations(pristine, passed, names, who):
    """Problems for every argument ``who`` wrote into."""
    problems = []
    for p, a, name in zip(pristine, passed, names, strict=True):
        a = np.asarray(a)
        if a.shape != p.shape or not np.array_equal(p, a, equal_nan=True):
            if a.shape != p.shape:
                problems.append(f"{who} changed the shape of its argument {name} in place")
                continue
            idx, old, new = _first_change(p, a)
            problems.append(
                f"{who} modified its argument {name} in place (e.g. [{', '.join(map(str, idx))}] "
                f"changed from {old:.6g} to {new:.6g}): a caller's array would change. "
                "Compute into a new array instead."
            )
    return problems


def _numeric_reference(
    objective, analytic, mode, *, atol=0.0, rtol=0.0, seed=None, must_check=None
):
    """Numeric gradient of every input with error estimates, by ``mode`` (see :func:`check_vjp`).

    Returns ``(per-input dicts, method, evaluations, notes)``. A dict with a
    ``checked`` mask (mode ``"fast"``) carries numeric values only there;
    ``covered`` is how many elements the passing projections covered.
    """
    n = sum(x.size for x in objective.work)
    return resolve_mode(mode, n).reference(
        objective, analytic, atol=atol, rtol=rtol, seed=seed, must_check=must_check
    )


def _take(ref, pos):
    return {
        k: np.asarray(v).reshape(-1)[pos]
        for k, v in ref.items()
        if k not in ("checked", "covered") and v is not None
    }


def _checked_subset(analytic, ref):
    """``(analytic, ref, flat positions)`` restricted to the elements compared individually."""
    if ref.get("checked") is None:
        return analytic, ref, None
    pos = np.flatnonzero(np.asarray(ref["checked"]).reshape(-1))
    sub = _take(ref, pos)
    sub["covered"] = ref.get("covered", pos.size)
    return np.asarray(analytic).reshape(-1)[pos], sub, pos


def _common_checked(ra, rb):
    """Two references restricted to the elements both compared individually (mode "fast")."""
    masks = [np.asarray(r["checked"]).reshape(-1) for r in (ra, rb) if r.get("checked") is not None]
    if not masks:
        return ra, rb
    pos = np.flatnonzero(np.logical_and.reduce(masks))
    return _take(ra, pos), _take(rb, pos)


def _autodiff_reference(oracle, backend_fn, xs, cotangent, names):
    if backend_fn is None:
        raise InvalidArgument(
            f"against includes {oracle!r}, so {oracle}_fn= must be given: the function written "
            f"with {oracle}'s own ops (see oracles.native for the reference ops)"
        )
    if oracle == "torch":
        from oracles.torch_backend import torch_vjp as run
    else:
        from oracles.jax_backend import jax_vjp as run
    from oracles.torch_backend import error_estimate

    check_callable(backend_fn, f"{oracle}_fn")
    grads = run(_Guarded(backend_fn, f"{oracle}_fn", xs, names), tuple(xs), cotangent)
    if len(grads) != len(xs):
        raise UserFunctionError(f"{oracle}_fn gave {len(grads)} gradients for {len(xs)} inputs")
    grads = [np.asarray(g, dtype=np.float64) for g in grads]
    for g, x in zip(grads, xs, strict=True):
        if g.shape != x.shape:
            raise UserFunctionError(
                f"{oracle}_fn's gradient has shape {g.shape}, expected {x.shape}"
            )
    errors = error_estimate(grads, cotangent=cotangent)
    out = [{"value": g, "error": e} for g, e in zip(grads, errors, strict=True)]
    return out, f"{oracle} reverse-mode autodiff, float64"


def _oracle_check(oracle, method, name, number, analytic, ref, atol, rtol):
    shape = analytic.shape
    analytic, ref, positions = _checked_subset(analytic, ref)
    cmp = compare(
        analytic,
        ref["value"],
        ref["error"],
        atol=atol,
        rtol=rtol,
        kink=ref.get("kink"),
        left=ref.get("left"),
        right=ref.get("right"),
    )
    worst = []
    for flat in cmp.worst(WORST_LIMIT):
        idx = np.unravel_index(int(flat), analytic.shape) if analytic.ndim else ()
        idx = tuple(int(i) for i in idx)
        where = idx
        if positions is not None:  # mode "fast": back to the index in the whole gradient
            where = np.unravel_index(int(positions[int(flat)]), shape) if shape else ()
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
        n_checked=int(ref.get("covered", analytic.size)),
        n_failed=cmp.n_failed,
        max_abs_error=cmp.max_abs_error,
        max_rel_error=cmp.max_rel_error,
        max_tolerance_used=float(np.max(cmp.tolerance)) if cmp.tolerance.size else 0.0,
        kinks=int(np.count_nonzero(cmp.kink & cmp.passed)),
        worst=worst,
    )


def _agreements(refs, names):
    out = []
    keys = list(refs)
    for a_i in range(len(keys)):
        for b_i in range(a_i + 1, len(keys)):
            a, b = keys[a_i], keys[b_i]
            for k, name in enumerate(names):
                ra, rb = refs[a][k], refs[b][k]
                ra, rb = _common_checked(ra, rb)
                cmp = compare(
                    rb["value"],
                    ra["value"],
                    ra["error"] + rb["error"],
                    kink=ra.get("kink"),
                    left=ra.get("left"),
                    right=ra.get("right"),
                )
                out.append(Agreement(a, b, name, cmp.max_abs_error, cmp.max_rel_error, cmp.ok))
    return out


def _differs(first, again):
    """``(differs, max difference, scale)`` of two evaluations (NaN equals NaN)."""
    if again.shape != first.shape:
        return True, np.inf, np.nan
    if not first.size:
        return False, 0.0, 0.0
    same = (first == again) | (np.isnan(first) & np.isnan(again))
    if same.all():
        return False, 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        scale = float(np.max(np.abs(np.where(np.isfinite(first), first, 0.0))))
        diff = float(np.max(np.where(same, 0.0, np.abs(again - first))))
    return not diff <= 4 * numerics.EPS * scale, diff, scale


def _check_determinism(fn, xs, first, repeats=2):
    """Call ``fn`` ``repeats`` more times at the same point; raise if an output differs."""
    for _ in range(repeats):
        again = as_output(_call_user(fn, [x.copy() for x in xs], "fn"), "fn", "when called again")
        differs, diff, scale = _differs(first, again)
        if differs:
            what = (
                f"shape {first.shape}, then {again.shape}"
                if again.shape != first.shape
                else f"different outputs (max difference {diff:.3g} at output scale {scale:.3g})"
            )
            raise NonDeterministicFunction(
                f"fn is not deterministic: it returned {what} for the same inputs. Is dropout "
                "left on (training mode), or a random generator unseeded? A derivative of a random "
                "function cannot be checked; fix the randomness first (seed it inside fn, or "
                "switch dropout off)"
            )


def _check_vjp_determinism(vjp, cot, xs, analytic, names):
    """Call ``vjp`` once more on fresh copies; raise if a gradient differs."""
    raw = _call_user(vjp, [cot.copy(), *[x.copy() for x in xs]], "vjp")
    again = normalize_gradients(raw, [x.shape for x in xs], names)
    for a, b, name in zip(analytic, again, names, strict=True):
        differs, diff, scale = _differs(a, b)
        if differs:
            raise NonDeterministicFunction(
                f"vjp is not deterministic: it returned different gradients of {name} for the "
                f"same cotangent and inputs (max difference {diff:.3g} at scale {scale:.3g}). Is "
                "a random mask drawn inside vjp instead of reused from the forward pass?"
            )


def _build_report(kind, piece_names, analytic, refs, methods, against, atol, rtol, **extra):
    """The :class:`Report` of one check: per piece and oracle, agreements, the kink note.

    Shared by check_vjp, check_jvp and check_hvp; ``extra`` may hold
    ``problems``, ``notes`` and ``context``.
    """
    reports = []
    for k, (a, name) in enumerate(zip(analytic, piece_names, strict=True)):
        r = InputReport(name=name, number=k, shape=a.shape)
        for oracle in against:
            r.checks[oracle] = _oracle_check(
                oracle, methods[oracle], name, k, a, refs[oracle][k], atol, rtol
            )
        reports.append(r)
    notes = list(extra.get("notes", []))
    kinks = sum(c.kinks for r in reports for c in r.checks.values())
    if kinks:
        notes.append(
            f"{kinks} element(s) sit at a kink (one-sided derivatives differ); the analytic "
            "value was accepted as a subgradient between them"
        )
    return Report(
        kind=kind,
        inputs=reports,
        oracles=against,
        problems=list(extra.get("problems", [])),
        notes=notes,
        agreements=_agreements(refs, piece_names) if len(refs) > 1 else [],
        context=extra.get("context", {}),
    )


def _context(fn, user, user_role, names, xs, dtypes, direction, methods, against, atol, rtol):
    """The call context every check reports (``direction``: (label, description))."""
    return {
        "fn": getattr(fn, "__name__", type(fn).__name__),
        user_role: getattr(user, "__name__", type(user).__name__),
        "inputs": ", ".join(
            f"{n} {tuple(x.shape)} {dt}" for n, x, dt in zip(names, xs, dtypes, strict=True)
        ),
        direction[0]: direction[1],
        "oracles": ", ".join(f"{o} ({methods[o]})" for o in against),
        "tolerance": f"error estimate + atol {atol:g} + rtol {rtol:g} * |reference|",
    }


def _dtype_notes(names, dtypes):
    return [
        f"{name} was given as {dt}; it was evaluated in float64"
        for name, dt in zip(names, dtypes, strict=True)
        if dt != np.float64
    ]


def check_vjp(
    fn: Callable[..., ArrayLike],
    vjp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    *,
    cotangent: ArrayLike | None = None,
    against: str | Sequence[str] = "numeric",
    rtol: float | None = None,
    atol: float | None = None,
    seed: int | None = None,
    torch_fn: Callable[..., Any] | None = None,
    jax_fn: Callable[..., Any] | None = None,
    names: Sequence[str] | None = None,
    mode: Any = "auto",
) -> Report:
    """Check a hand-written VJP against numerics and/or autodiff; return a report.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``, the forward function.
    vjp : callable
        ``vjp(cotangent, *inputs)`` -> one gradient per input (a tuple, or a
        bare array when there is one input).
    inputs : tuple of array_like
        The point at which to check, one entry per positional argument of
        ``fn`` (a bare ndarray or number counts as the only input). Anything
        NumPy turns into a real array works: arrays of any float or integer
        dtype, Python numbers, nested lists, 0-d and empty arrays, strided or
        read-only views. Copied to float64 (float32, float16 and integer
        inputs are evaluated in float64 and the report says so); never
        modified. ``fn`` and ``vjp`` receive float64 copies.
    cotangent : array_like, optional
        Shaped like ``fn(*inputs)``. Default: a standard normal draw from
        ``numpy.random.default_rng(seed)``.
    against : str or sequence of str
        Oracles among ``"numeric"`` (central differences, step ladder),
        ``"torch"``, ``"jax"`` (reverse-mode autodiff of ``torch_fn`` /
        ``jax_fn``) and ``"complex"`` (complex-step derivative of ``fn``
        itself, accurate to rounding; ``fn`` must accept complex input and
        be complex-analytic, see :mod:`oracles.complex_step`).
    rtol, atol : float, optional
        Added to each oracle's own error estimate (default 0): an element
        fails when ``|analytic - reference| > atol + rtol * |reference| +
        error_estimate``.
    seed : int, optional
        Seed of the random cotangent (default 0: reproducible).
    torch_fn, jax_fn : callable, optional
        ``fn`` written with the framework's own ops; needed for those oracles.
    names : sequence of str, optional
        Names of the inputs in the report (default: ``fn``'s parameter names).
    mode : {"auto", "fast", "exhaustive", "ladder"} or a mode object
        How the numeric oracle works. ``"exhaustive"``: every element by a
        central difference at a step calibrated per input (about 2
        evaluations of ``fn`` per element), the full step ladder where that
        screen does not settle it (:mod:`oracles.exhaustive`). ``"ladder"``:
        the full step ladder for every element (10-25 evaluations each).
        ``"fast"``: random Rademacher projections over all inputs, then
        bisection to name the elements that disagree, each confirmed by the
        ladder (:mod:`oracles.fast`); elements never named are covered by
        the projections but not compared one by one. ``"auto"`` (default):
        ``"exhaustive"`` up to 5,000 elements in all, else ``"fast"``. Pass
        ``oracles.exhaustive.Exhaustive(executor=..., progress=...)`` or
        ``oracles.fast.Fast(directions=...)`` for their options (e.g. run
        the chunks of an exhaustive check on a process pool).

    Returns
    -------
    Report
        ``.ok``, per-input errors, worst elements, ``str()`` readable.
        NaN or inf in a gradient, or a reference that could not be computed
        (``fn`` not finite at every perturbed point, an error estimate that
        overflowed), count as failures, never as agreement.

    Raises
    ------
    InvalidArgumentType
        An argument has the wrong type: ``fn``/``vjp`` not callable; an input
        or the cotangent that is boolean, complex, object, string, masked or
        not convertible to an array; a non-numeric ``rtol``/``atol``/``seed``.
    InvalidArgument
        An argument breaks a rule: NaN or inf in an input or the cotangent; a
        cotangent not shaped like ``fn``'s output; no inputs, or more/fewer
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
    evaluated in float64.

    Examples
    --------
    >>> import numpy as np
    >>> r = check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.array([0.5, 1.0]),))
    >>> r.ok
    True
    >>> r = check_vjp(np.sin, lambda g, x: g * np.cos(x) * (1 + 1e-6), (np.array([0.5, 1.0]),))
    >>> r.ok, r.failed_inputs
    (False, ['x'])
    """
    __tracebackhide__ = True
    started = time.perf_counter()
    check_callable(fn, "fn")
    check_callable(vjp, "vjp")
    against = _parse_against(against)
    resolve_mode(mode, 0)  # an unknown mode fails here, before any user code runs
    rtol = check_tolerance(rtol, "rtol") or 0.0
    atol = check_tolerance(atol, "atol") or 0.0
    seed = check_seed(seed)
    xs = as_inputs(inputs)
    dtypes = input_dtypes(inputs)
    names = _names(fn, len(xs), names)
    rule = "inputs is a tuple with one array per positional argument of fn (a single array: (x,))"
    check_arity(fn, len(xs), "fn", rule)
    check_arity(vjp, len(xs) + 1, "vjp", "it is called as vjp(cotangent, *inputs)")
    notes, problems = [], []

    # The forward at the evaluation point, on fresh copies.
    passed = [x.copy() for x in xs]
    out = as_output(_call_user(fn, passed, "fn"))
    problems += _mutations(xs, passed, names, "fn")
    if not np.all(np.isfinite(out)):
        raise UserFunctionError(
            "fn returned NaN or inf at the evaluation point; a derivative can only be checked "
            "where the function is finite"
        )
    _check_determinism(fn, xs, out)

    if cotangent is None:
        rng = np.random.default_rng(0 if seed is None else seed)
        cot = rng.standard_normal(out.shape)
        cot_desc = f"random normal (seed {0 if seed is None else seed})"
    else:
        cot = as_cotangent(cotangent, out.shape)
        cot_desc = "given"

    # The derivation under test, on fresh copies.
    passed = [x.copy() for x in xs]
    cot_passed = cot.copy()
    raw = _call_user(vjp, [cot_passed, *passed], "vjp")
    analytic = normalize_gradients(raw, [x.shape for x in xs], names)
    problems += _mutations([cot], [cot_passed], ["cotangent"], "vjp")
    problems += _mutations(xs, passed, names, "vjp")
    _check_vjp_determinism(vjp, cot, xs, analytic, names)
    for g, name in zip(analytic, names, strict=True):
        if not np.all(np.isfinite(g)):
            notes.append(f"vjp returned NaN or inf in the gradient of {name}; those elements fail")

    refs, methods, evaluations = {}, {}, 0
    for oracle in against:
        if oracle == "numeric":
            objective = numerics.ScalarObjective(_Guarded(fn, "fn", xs, names, out.shape), xs, cot)
            safe = [np.where(np.isfinite(g), g, 0.0) for g in analytic]
            refs[oracle], methods[oracle], n_eval, num_notes = _numeric_reference(
                objective,
                safe,
                mode,
                atol=atol,
                rtol=rtol,
                seed=seed,
                must_check=[~np.isfinite(g) for g in analytic],
            )
            evaluations += n_eval
            notes += num_notes
            n_nonfinite = sum(int(np.count_nonzero(r["nonfinite"])) for r in refs[oracle])
            if n_nonfinite:
                notes.append(
                    f"fn returned NaN or inf at perturbed points for {n_nonfinite} element(s); "
                    "those used the remaining steps, or fail when none was finite"
                )
        elif oracle == "complex":
            from oracles.complex_step import complex_step_reference

            refs[oracle], methods[oracle] = complex_step_reference(
                fn, xs, cot, seed=0 if seed is None else seed
            )
        else:
            backend_fn = torch_fn if oracle == "torch" else jax_fn
            refs[oracle], methods[oracle] = _autodiff_reference(oracle, backend_fn, xs, cot, names)
    notes += _distrust_unbounded(refs)
    notes += _loose_elements(refs, names)

    if "numeric" in against:
        for x, name in zip(xs, names, strict=True):
            if x.size and float(np.max(np.abs(x))) >= _STEP_LIMIT:
                notes.append(
                    f"{name} has elements of magnitude >= {_STEP_LIMIT:.3g}, where the numeric "
                    "oracle's absolute steps (<= 0.125) vanish in rounding: those elements cannot "
                    "be judged numerically. Rescale the input, or check against torch or jax"
                )
    context = _context(
        fn, vjp, "vjp", names, xs, dtypes, ("cotangent", cot_desc), methods, against, atol, rtol
    )
    context["fn evaluations"] = evaluations
    context["seconds"] = f"{time.perf_counter() - started:.3f}"
    report = _build_report(
        "check_vjp",
        names,
        analytic,
        refs,
        methods,
        against,
        atol,
        rtol,
        problems=problems,
        notes=notes + _dtype_notes(names, dtypes),
        context=context,
    )
    if "numeric" in against:
        # Randomness that the up-front calls missed (dropout on a small
        # output can repeat its mask) would show up as a mismatch, or as
        # error estimates wide enough to accept anything: rule it out, more
        # thoroughly when the check failed.
        _check_determinism(fn, xs, out, repeats=2 if report.ok else 8)
    return report


def assert_vjp(
    fn: Callable[..., ArrayLike],
    vjp: Callable[..., Any],
    inputs: Sequence[ArrayLike] | ArrayLike,
    **kwargs: Any,
) -> Report:
    """Like :func:`check_vjp`, but raise :class:`GradientMismatch` when it fails.

    Returns the report when the check passes. The exception's message is the
    readable report; the report object is ``exc.report``.

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
    report = check_vjp(fn, vjp, inputs, **kwargs)
    if not report.ok:
        raise GradientMismatch(report)
    return report
