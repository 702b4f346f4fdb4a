"""check_jvp / assert_jvp: judge a hand-written Jacobian-vector product (forward mode).

A JVP pushes a tangent forward: ``jvp(primals, tangents)`` returns
``J(x) t``, the derivative of ``fn`` at ``x`` along ``t``, shaped like
``fn``'s output. The signature is ``jax.jvp``'s argument structure: a tuple
of the inputs and a tuple of one tangent per input (but only the output
tangent is returned, not the output too).

The numeric reference is the derivative of the **whole output** along the
tangent: central differences ``(fn(x + h t) - fn(x - h t)) / 2h`` on the
step ladder of :mod:`oracles.numerics`, with Richardson extrapolation and an
error estimate **per output element** (:func:`_vector_ladder` runs the
scalar ladder's rules, :func:`oracles.numerics._ladder`, on every element).
The torch oracle is ``torch.func.jvp`` and the jax oracle ``jax.jvp``, both
in float64.
"""

from __future__ import annotations

import time

import numpy as np

from oracles import numerics
from oracles._validation import as_inputs, check_callable, check_tolerance, input_dtypes
from oracles.check import (
    _build_report,
    _call_user,
    _check_determinism,
    _context,
    _dtype_notes,
    _mutations,
    _names,
    _parse_against,
)
from oracles.errors import (
    GradientMismatch,
    InvalidArgument,
    InvalidArgumentType,
    UserFunctionError,
)

__all__ = ["assert_jvp", "check_jvp"]

#: Name of the one "input" of a JVP report: the output tangent.
OUTPUT_NAME = "out_tangent"
#: Relative tolerance of the linearity check of a user's JVP (scaling by 2 is exact).
LINEARITY_RTOL = 4 * numerics.EPS


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise InvalidArgumentType(f"seed must be an int or None, got {seed!r}")
    return 0 if seed is None else int(seed)


def _as_directions(directions, xs, name, seed):
    """One float64 direction per input (random normal when ``directions`` is None)."""
    if directions is None:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(x.shape) for x in xs], f"random normal (seed {seed})"
    if len(xs) == 1 and (isinstance(directions, np.ndarray) or np.isscalar(directions)):
        directions = (directions,)
    if not isinstance(directions, (tuple, list)):
        raise InvalidArgumentType(
            f"{name} must be a tuple with one array per input, got {type(directions).__name__}"
        )
    if len(directions) != len(xs):
        raise InvalidArgument(
            f"{name} must give one array per input ({len(xs)}), got {len(directions)}"
        )
    out = as_inputs(tuple(directions), [f"{name}[{k}]" for k in range(len(xs))])
    for k, (u, x) in enumerate(zip(out, xs, strict=True)):
        if u.shape != x.shape:
            raise InvalidArgument(
                f"{name}[{k}] must have the shape of inputs[{k}] {x.shape}, got {u.shape}"
            )
    return out, "given"


def _as_output(value, who):
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UserFunctionError(
            f"{who} returned {type(value).__name__}, which is not a real numeric array"
        ) from exc


def _flat(pieces):
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in pieces])


def _split(flat, shapes):
    out, pos = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[pos : pos + size].reshape(shape))
        pos += size
    return out


def _changed_noise(fp, fm, mask):
    """Per-element rounding noise of ``fp - fm`` where an element was seen to change.

    ``mask`` accumulates (in place) the elements that changed at any rung.
    """
    mask |= fp != fm
    level = np.maximum(np.abs(fp), 1.0) + np.maximum(np.abs(fm), 1.0)
    with np.errstate(invalid="ignore"):
        return np.where(mask, numerics.NOISE_SAFETY * numerics.EPS * level, 0.0)


def _vector_ladder(evaluate, xs, us, *, linear=None, t0=numerics.T0, n_rungs=numerics.N_RUNGS):
    """Derivative of a vector function along ``us``, per output element, with error estimates.

    ``evaluate(list of arrays) -> flat float64 vector``. Rung ``k`` (step
    ``h = t0 / 2^k``) is the central difference ``(f(x + h u) - f(x - h u)) /
    2h``; each output element then runs the scalar ladder's rules
    (:func:`oracles.numerics._ladder`: Richardson between neighbouring
    rungs, error = the larger of the last two extrapolant changes plus the
    rounding noise, the rung with the smallest error wins, consistency across
    rungs) and the kink test (:func:`oracles.numerics._kink`) on its own
    column. Rungs are evaluated lazily: as many as the slowest element needs.

    ``x + h u`` cannot be stepped exactly in floating point: the step taken
    is ``(x + h u) - (x - h u) = 2 h u + delta``. When ``linear`` (the
    analytic JVP, ``linear(list of tangents) -> flat vector``) is given, the
    effect of ``delta``, ``J delta / 2h``, is removed with it, as
    :func:`oracles.numerics.directional` does with the analytic gradient; an
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
                numerics.NOISE_SAFETY
                * numerics.EPS
                * (np.maximum(np.abs(fp), 1.0) + np.maximum(np.abs(f0), 1.0))
                / h
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

        v, e, k_best, n_eval, nf = numerics._ladder(quotient, n_rungs=n_rungs)
        value[i], error[i] = v, e
        nonfinite[i] = nf or not np.isfinite(v)
        if k_best >= 0:
            evals = {
                k: (r[3][i], r[4][i], r[5][i])
                for k, r in rungs.items()
                if k < n_eval and not r[6][i]
            }
            kink[i], left[i], right[i] = numerics._kink(evals, k_best)
    # An output element that never changed, even at the largest step, can still
    # depend on the direction by less than its own rounding: bound it.
    hidden = np.where(mask, 0.0, 2.0 * numerics.EPS * np.maximum(np.abs(f0), 1.0) / t0)
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


def _linearity_problem(linear, us, who):
    """A problem if ``linear`` (a user's JVP/HVP in its direction) is not linear, else None.

    Scaling a direction by 2 or by -1 is exact in floating point, so a linear
    formula gives exactly twice (minus) its result; additivity would only
    hold up to rounding, which can be large relative to an output that
    cancels (a saturated softmax). Catches a direction left out of a product
    (``f'(x)`` instead of ``f'(x) t``), added (``f'(x) + t``) or squared.
    """
    a = linear(us)
    for factor in (2.0, -1.0):
        b = linear([factor * u for u in us])
        gap = np.abs(b - factor * a)
        bound = LINEARITY_RTOL * np.abs(factor * a) + 1e-300
        if not np.all(gap <= bound):
            i = int(np.argmax(gap - bound))
            return (
                f"{who} is not linear in its direction argument: {who}({factor:g} u) = "
                f"{b[i]:.6g} but {factor:g} {who}(u) = {factor * a[i]:.6g} at output element {i}. "
                "A derivative along a direction is linear in it: was the direction left out of "
                "a product, or added instead of multiplied?"
            )
    return None


def _torch_jvp(torch_fn, xs, us):
    from oracles.torch_backend import _import_torch

    torch = _import_torch()
    primals = tuple(torch.tensor(x, dtype=torch.float64) for x in xs)
    tangents = tuple(torch.tensor(u, dtype=torch.float64) for u in us)
    try:
        _, out_t = torch.func.jvp(torch_fn, primals, tangents)
    except (NotImplementedError, RuntimeError):
        # An op without a forward-mode formula: the double-backward trick instead.
        _, out_t = torch.autograd.functional.jvp(torch_fn, primals, tangents)
    if not isinstance(out_t, torch.Tensor):
        raise UserFunctionError(
            f"torch_fn must return one torch.Tensor, got {type(out_t).__name__}"
        )
    return np.array(out_t.detach().cpu().numpy(), dtype=np.float64)


def _jax_jvp(jax_fn, xs, us):
    from oracles.jax_backend import _import_jax, _x64_enabled

    jax = _import_jax()
    import jax.numpy as jnp

    with _x64_enabled(jax):
        primals = tuple(jnp.asarray(x, dtype=jnp.float64) for x in xs)
        tangents = tuple(jnp.asarray(u, dtype=jnp.float64) for u in us)
        _, out_t = jax.jvp(jax_fn, primals, tangents)
        if not isinstance(out_t, jax.Array):
            raise UserFunctionError(f"jax_fn must return one jax array, got {type(out_t).__name__}")
        return np.array(out_t, dtype=np.float64)


def _autodiff_refs(oracle, backend_fn, run, pieces_shapes, directions):
    """Reference from an autodiff ``run() -> flat vector``, with the rounding bound."""
    from oracles.torch_backend import error_estimate

    if backend_fn is None:
        raise InvalidArgument(
            f"against includes {oracle!r}, so {oracle}_fn= must be given: the function written "
            f"with {oracle}'s own ops (see oracles.native for the reference ops)"
        )
    flat = run()
    expected = sum(int(np.prod(s, dtype=np.int64)) for s in pieces_shapes)
    if flat.size != expected:
        raise UserFunctionError(
            f"{oracle}_fn's derivative has {flat.size} elements, expected {expected}"
        )
    (err,) = error_estimate([flat], cotangent=_flat(directions))
    return [
        {"value": v, "error": e}
        for v, e in zip(_split(flat, pieces_shapes), _split(err, pieces_shapes), strict=True)
    ]


def _numeric_refs(result, pieces_shapes):
    out = []
    for field in ("value", "error", "kink", "left", "right", "nonfinite"):
        for k, piece in enumerate(_split(result[field], pieces_shapes)):
            if len(out) <= k:
                out.append({})
            out[k][field] = piece
    return out


def _common_arguments(fn, user, user_name, inputs, against, rtol, atol, seed, names):
    check_callable(fn, "fn")
    check_callable(user, user_name)
    against = _parse_against(against)
    rtol = check_tolerance(rtol, "rtol") or 0.0
    atol = check_tolerance(atol, "atol") or 0.0
    seed = _check_seed(seed)
    xs = as_inputs(inputs)
    dtypes = input_dtypes(inputs)
    names = _names(fn, len(xs), names)
    return against, rtol, atol, seed, xs, dtypes, names


def check_jvp(
    fn,
    jvp,
    inputs,
    *,
    tangents=None,
    against="numeric",
    rtol=None,
    atol=None,
    seed=None,
    torch_fn=None,
    jax_fn=None,
    names=None,
):
    """Check a hand-written JVP against numerics and/or autodiff; return a report.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``.
    jvp : callable
        ``jvp(primals, tangents) -> out_tangent``: ``primals`` and
        ``tangents`` are tuples with one array per input; the result is the
        derivative of ``fn`` at ``primals`` along ``tangents``, shaped like
        ``fn``'s output (as the second result of ``jax.jvp``).
    inputs : tuple of array_like
        The point. Copied to float64; never modified.
    tangents : tuple of array_like, optional
        One per input, shaped like it (a bare array when there is one
        input). Default: standard normal from ``numpy.random.default_rng(seed)``.
    against : str or sequence of str
        Oracles among ``"numeric"``, ``"torch"``, ``"jax"``.
    rtol, atol : float, optional
        Added to each oracle's error estimate: an output element fails when
        ``|analytic - reference| > atol + rtol * |reference| + error_estimate``.
    seed : int, optional
        Seed of the random tangents (default 0).
    torch_fn, jax_fn : callable, optional
        ``fn`` written with torch's / jax's own ops; needed for those oracles
        (``torch.func.jvp`` / ``jax.jvp``, float64).
    names : sequence of str, optional
        Names of the inputs (default: ``fn``'s parameter names).

    Returns
    -------
    Report
        ``kind`` ``"check_jvp"``; its one "input" is the output tangent,
        named ``out_tangent``, compared element by element.

    Notes
    -----
    The numeric reference differentiates the whole output along the tangent
    on a ladder of steps (central differences, Richardson extrapolation),
    with an error estimate per output element, so one tangent checks every
    output element at once (2 calls of ``fn`` per step, about 30 in all).
    Failure modes: at a kink along the tangent (ReLU at 0) any value between
    the one-sided derivatives is accepted; output elements far below 1
    get error estimates at the scale of 1 (rescale for a sharper check);
    float32 inputs are evaluated in float64. A JVP that is not linear in the
    tangent (the tangent left out of a product) is reported as a problem.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([0.5, 1.0])
    >>> check_jvp(np.sin, lambda xs, ts: np.cos(xs[0]) * ts[0], (x,)).ok
    True
    >>> r = check_jvp(np.sin, lambda xs, ts: np.sin(xs[0]) * ts[0], (x,))
    >>> r.ok, r.failed_inputs
    (False, ['out_tangent'])
    """
    __tracebackhide__ = True
    started = time.perf_counter()
    against, rtol, atol, seed, xs, dtypes, names = _common_arguments(
        fn, jvp, "jvp", inputs, against, rtol, atol, seed, names
    )
    us, tan_desc = _as_directions(tangents, xs, "tangents", seed)
    problems = []

    passed = [x.copy() for x in xs]
    out = _as_output(_call_user(fn, passed, "fn"), "fn")
    problems += _mutations(xs, passed, names, "fn")
    if not np.all(np.isfinite(out)):
        raise UserFunctionError(
            "fn returned NaN or inf at the evaluation point; a derivative can only be checked "
            "where the function is finite"
        )
    _check_determinism(fn, xs, out)

    def call_jvp(directions, record=False):
        p = tuple(x.copy() for x in xs)
        t = tuple(np.array(d, dtype=np.float64, copy=True) for d in directions)
        res = _as_output(_call_user(jvp, [p, t], "jvp"), "jvp")
        if res.shape != out.shape:
            raise UserFunctionError(
                f"jvp returned shape {res.shape}; the output tangent must have the shape of "
                f"fn's output {out.shape}"
            )
        if record:
            problems.extend(_mutations(xs, p, names, "jvp"))
            problems.extend(
                _mutations(directions, t, [f"tangents[{k}]" for k in range(len(xs))], "jvp")
            )
        return res

    analytic = call_jvp(us, record=True)
    notes = []
    if not np.all(np.isfinite(analytic)):
        notes.append("jvp returned NaN or inf; those elements fail")
    lin_problem = _linearity_problem(lambda d: call_jvp(d).ravel(), us, "jvp")
    if lin_problem:
        problems.append(lin_problem)

    refs, methods, evaluations = {}, {}, 0
    shapes = [out.shape]
    for oracle in against:
        if oracle == "numeric":
            result, evaluations = _vector_ladder(
                lambda a: _as_output(_call_user(fn, a, "fn"), "fn").ravel(),
                xs,
                us,
                linear=None if lin_problem else (lambda d: call_jvp(d).ravel()),
            )
            refs[oracle] = _numeric_refs(result, shapes)
            methods[oracle] = "central differences along the tangent, step ladder + Richardson"
            n_nonfinite = int(np.count_nonzero(result["nonfinite"]))
            if n_nonfinite:
                notes.append(
                    f"fn returned NaN or inf at perturbed points for {n_nonfinite} output "
                    "element(s); those used the remaining steps, or fail when none was finite"
                )
        elif oracle == "torch":
            refs[oracle] = _autodiff_refs(
                "torch", torch_fn, lambda: _torch_jvp(torch_fn, xs, us).ravel(), shapes, us
            )
            methods[oracle] = "torch.func.jvp, float64"
        else:
            refs[oracle] = _autodiff_refs(
                "jax", jax_fn, lambda: _jax_jvp(jax_fn, xs, us).ravel(), shapes, us
            )
            methods[oracle] = "jax.jvp, float64"

    context = _context(
        fn, jvp, "jvp", names, xs, dtypes, ("tangents", tan_desc), methods, against, atol, rtol
    )
    context["fn evaluations"] = evaluations
    context["seconds"] = f"{time.perf_counter() - started:.3f}"
    return _build_report(
        "check_jvp",
        [OUTPUT_NAME],
        [analytic],
        refs,
        methods,
        against,
        atol,
        rtol,
        problems=problems,
        notes=notes + _dtype_notes(names, dtypes),
        context=context,
    )


def assert_jvp(fn, jvp, inputs, **kwargs):
    """Like :func:`check_jvp`, but raise :class:`GradientMismatch` when it fails.

    Returns the report when the check passes; the exception's message is the
    readable report and ``exc.report`` the report object.

    Examples
    --------
    >>> import numpy as np
    >>> assert_jvp(np.exp, lambda xs, ts: np.exp(xs[0]) * ts[0], (np.zeros(3),)).ok
    True
    >>> assert_jvp(np.exp, lambda xs, ts: xs[0] * ts[0], (np.ones(3),))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: check_jvp: FAILED: 3 of 3 elements of ... disagree ...
    """
    __tracebackhide__ = True
    report = check_jvp(fn, jvp, inputs, **kwargs)
    if not report.ok:
        raise GradientMismatch(report)
    return report
