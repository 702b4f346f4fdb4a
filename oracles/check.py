"""check_vjp / assert_vjp: judge a hand-written vector-Jacobian product.

The flow of one check (see ``DESIGN.md``): validate the arguments and copy
the inputs to float64; run the user's ``vjp`` on fresh copies (and notice if
it writes into them); compute each reference the user asked for (numeric,
torch, jax), each with its own error estimate; compare elementwise; report.
"""

from __future__ import annotations

import inspect
import time

import numpy as np

from oracles import numerics
from oracles._validation import (
    as_cotangent,
    as_inputs,
    check_callable,
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
    UserFunctionError,
)
from oracles.report import WORST_LIMIT, Agreement, Element, InputReport, OracleCheck, Report

__all__ = ["ORACLES", "assert_vjp", "check_vjp"]

#: The oracles ``against=`` accepts.
ORACLES = ("numeric", "torch", "jax")


def _names(fn, n, names):
    if names is not None:
        if len(names) != n:
            raise InvalidArgument(f"names must give one name per input ({n}), got {len(names)}")
        return [str(x) for x in names]
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


def _numeric_reference(objective, analytic, mode):
    """Per-element numeric gradient of every input with error estimates."""
    if mode != "exhaustive":
        raise InvalidArgument(f"mode must be 'exhaustive', got {mode!r}")
    xs = objective.work
    indices = [(i, j) for i, x in enumerate(xs) for j in range(x.size)]
    est = numerics.partials(objective, indices, grads=analytic)
    out, pos = [], 0
    for x in xs:
        sl = slice(pos, pos + x.size)
        out.append(
            {
                "value": est.value[sl].reshape(x.shape),
                "error": est.error[sl].reshape(x.shape),
                "kink": est.kink[sl].reshape(x.shape),
                "left": est.left[sl].reshape(x.shape),
                "right": est.right[sl].reshape(x.shape),
                "nonfinite": est.nonfinite[sl].reshape(x.shape),
            }
        )
        pos += x.size
    method = "central differences per element, step ladder + Richardson"
    return out, method, est.evaluations, est.notes


def _autodiff_reference(oracle, backend_fn, xs, cotangent):
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

    grads = run(backend_fn, tuple(xs), cotangent)
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
        worst.append(
            Element(
                input_name=name,
                input_number=number,
                index=idx,
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
        n_checked=int(analytic.size),
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


def _check_determinism(fn, xs, first):
    again = np.asarray(_call_user(fn, [x.copy() for x in xs], "fn"), dtype=np.float64)
    if again.shape != first.shape:
        raise NonDeterministicFunction(
            f"fn returned shape {first.shape}, then {again.shape} for the same inputs"
        )
    scale = float(np.max(np.abs(first))) if first.size else 0.0
    diff = float(np.max(np.abs(again - first))) if first.size else 0.0
    if not diff <= 4 * numerics.EPS * scale:
        raise NonDeterministicFunction(
            "fn returned different outputs for the same inputs (max difference "
            f"{diff:.3g} at output scale {scale:.3g}): is dropout left on, or a random "
            "generator unseeded? A derivative of a random function cannot be checked; fix the "
            "randomness (seed it inside fn) first"
        )


def check_vjp(
    fn,
    vjp,
    inputs,
    *,
    cotangent=None,
    against="numeric",
    rtol=None,
    atol=None,
    seed=None,
    torch_fn=None,
    jax_fn=None,
    names=None,
    mode="exhaustive",
):
    """Check a hand-written VJP against numerics and/or autodiff; return a report.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``, the forward function.
    vjp : callable
        ``vjp(cotangent, *inputs)`` -> one gradient per input (a tuple, or a
        bare array when there is one input).
    inputs : tuple of array_like
        The point at which to check. Copied to float64 (float32, float16 and
        integer inputs are evaluated in float64 and the report says so);
        never modified.
    cotangent : array_like, optional
        Shaped like ``fn(*inputs)``. Default: a standard normal draw from
        ``numpy.random.default_rng(seed)``.
    against : str or sequence of str
        Oracles among ``"numeric"``, ``"torch"``, ``"jax"``.
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
    mode : {"exhaustive"}
        ``"exhaustive"``: every element by central differences.

    Returns
    -------
    Report
        ``.ok``, per-input errors, worst elements, ``str()`` readable.

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
    rtol = check_tolerance(rtol, "rtol") or 0.0
    atol = check_tolerance(atol, "atol") or 0.0
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise InvalidArgumentType(f"seed must be an int or None, got {seed!r}")
    xs = as_inputs(inputs)
    dtypes = input_dtypes(inputs)
    names = _names(fn, len(xs), names)
    notes, problems = [], []

    # The forward at the evaluation point, on fresh copies.
    passed = [x.copy() for x in xs]
    out = _call_user(fn, passed, "fn")
    try:
        out = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UserFunctionError(
            f"fn returned {type(out).__name__}, which is not a real numeric array"
        ) from exc
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
    for g, name in zip(analytic, names, strict=True):
        if not np.all(np.isfinite(g)):
            notes.append(f"vjp returned NaN or inf in the gradient of {name}; those elements fail")

    refs, methods, evaluations = {}, {}, 0
    for oracle in against:
        if oracle == "numeric":
            objective = numerics.ScalarObjective(fn, xs, cot)
            safe = [np.where(np.isfinite(g), g, 0.0) for g in analytic]
            refs[oracle], methods[oracle], n_eval, num_notes = _numeric_reference(objective, safe, mode)
            evaluations += n_eval
            notes += num_notes
            n_nonfinite = sum(int(np.count_nonzero(r["nonfinite"])) for r in refs[oracle])
            if n_nonfinite:
                notes.append(
                    f"fn returned NaN or inf at perturbed points for {n_nonfinite} element(s); "
                    "those used the remaining steps, or fail when none was finite"
                )
        else:
            backend_fn = torch_fn if oracle == "torch" else jax_fn
            refs[oracle], methods[oracle] = _autodiff_reference(oracle, backend_fn, xs, cot)

    reports = []
    for k, (x, name) in enumerate(zip(xs, names, strict=True)):
        r = InputReport(name=name, number=k, shape=x.shape)
        for oracle in against:
            r.checks[oracle] = _oracle_check(
                oracle, methods[oracle], name, k, analytic[k], refs[oracle][k], atol, rtol
            )
        reports.append(r)

    for name, dt in zip(names, dtypes, strict=True):
        if dt != np.float64:
            notes.append(f"{name} was given as {dt}; it was evaluated in float64")
    kinks = sum(c.kinks for r in reports for c in r.checks.values())
    if kinks:
        notes.append(
            f"{kinks} element(s) sit at a kink (one-sided slopes differ); the analytic value was "
            "accepted as a subgradient between them"
        )
    context = {
        "fn": getattr(fn, "__name__", type(fn).__name__),
        "vjp": getattr(vjp, "__name__", type(vjp).__name__),
        "inputs": ", ".join(f"{n} {tuple(x.shape)} {dt}" for n, x, dt in zip(names, xs, dtypes, strict=True)),
        "cotangent": cot_desc,
        "oracles": ", ".join(f"{o} ({methods[o]})" for o in against),
        "tolerance": f"error estimate + atol {atol:g} + rtol {rtol:g} * |reference|",
        "fn evaluations": evaluations,
        "seconds": f"{time.perf_counter() - started:.3f}",
    }
    return Report(
        kind="check_vjp",
        inputs=reports,
        oracles=against,
        problems=problems,
        notes=notes,
        agreements=_agreements(refs, names) if len(refs) > 1 else [],
        context=context,
    )


def assert_vjp(fn, vjp, inputs, **kwargs):
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
    oracles.errors.GradientMismatch: check_vjp: FAILED: 3 of 3 elements of the gradient of x disagree with numeric
    ...
    """
    __tracebackhide__ = True
    report = check_vjp(fn, vjp, inputs, **kwargs)
    if not report.ok:
        raise GradientMismatch(report)
    return report
