"""check_hvp / assert_hvp: judge a hand-written Hessian-vector product of a scalar loss.

``H v`` is the derivative of the gradient along ``v``. So the check is a
forward-mode check of the gradient: the numeric oracle differentiates a
gradient function along ``v`` (central differences per output element on the
step ladder, :func:`oracles.jvp._vector_ladder`); the torch oracle is
``torch.autograd.functional.hvp`` (double backward) and the jax oracle
``jax.jvp(jax.grad(f))`` (forward over reverse), both in float64.

Which gradient the numeric oracle differentiates: ``grad=`` if given (a
hand-written gradient, e.g. a reference VJP with cotangent 1: then the
check also tells whether the HVP is consistent with that gradient), else
the autodiff gradient of ``torch_fn`` or ``jax_fn``. Differentiating ``fn``
twice numerically would lose half the digits and is not offered.
"""

from __future__ import annotations

import time

import numpy as np

from oracles._validation import normalize_gradients
from oracles.check import (
    _build_report,
    _call_user,
    _check_determinism,
    _context,
    _dtype_notes,
    _mutations,
)
from oracles.errors import GradientMismatch, InvalidArgument, UserFunctionError
from oracles.jvp import (
    _as_directions,
    _as_output,
    _autodiff_refs,
    _common_arguments,
    _flat,
    _linearity_problem,
    _numeric_refs,
    _vector_ladder,
)

__all__ = ["assert_hvp", "check_hvp"]


def _pack(directions):
    """What the user's ``hvp`` receives: a bare array for one input, else a tuple."""
    return directions[0] if len(directions) == 1 else tuple(directions)


def _torch_hvp(torch_fn, xs, vs):
    from oracles.torch_backend import _import_torch

    torch = _import_torch()
    primals = tuple(torch.tensor(x, dtype=torch.float64) for x in xs)
    tangents = tuple(torch.tensor(v, dtype=torch.float64) for v in vs)
    _, hv = torch.autograd.functional.hvp(torch_fn, primals, tangents)
    return _flat([h.detach().cpu().numpy() for h in hv])


def _torch_grad(torch_fn, xs):
    from oracles.torch_backend import torch_vjp

    return _flat(torch_vjp(torch_fn, tuple(xs), 1.0))


def _jax_hvp(jax_fn, xs, vs):
    from oracles.jax_backend import _import_jax, _x64_enabled

    jax = _import_jax()
    import jax.numpy as jnp

    with _x64_enabled(jax):
        primals = tuple(jnp.asarray(x, dtype=jnp.float64) for x in xs)
        tangents = tuple(jnp.asarray(v, dtype=jnp.float64) for v in vs)
        grad = jax.grad(jax_fn, argnums=tuple(range(len(xs))))
        _, hv = jax.jvp(grad, primals, tangents)
        return _flat([np.array(h, dtype=np.float64) for h in hv])


def _jax_grad(jax_fn, xs):
    from oracles.jax_backend import jax_vjp

    return _flat(jax_vjp(jax_fn, tuple(xs), 1.0))


def check_hvp(
    fn,
    hvp,
    inputs,
    *,
    vectors=None,
    grad=None,
    against="numeric",
    rtol=None,
    atol=None,
    seed=None,
    torch_fn=None,
    jax_fn=None,
    names=None,
):
    """Check a hand-written Hessian-vector product of a scalar ``fn``; return a report.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> scalar``, the loss.
    hvp : callable
        ``hvp(v, *inputs) -> H v``. With one input, ``v`` is an array and
        the result an array shaped like the input; with several, ``v`` is a
        tuple with one array per input and the result a tuple of the blocks
        ``(H v)_k = sum_j d^2 fn / dx_k dx_j v_j``.
    inputs : tuple of array_like
        The point. Copied to float64; never modified.
    vectors : tuple of array_like, optional
        The direction ``v``, one array per input (a bare array when there is
        one input). Default: standard normal from
        ``numpy.random.default_rng(seed)``.
    grad : callable, optional
        ``grad(*inputs)`` -> the gradient of ``fn`` (an array, or a tuple
        with one per input): what the numeric oracle differentiates along
        ``v``. Default: the autodiff gradient of ``torch_fn`` (else
        ``jax_fn``); one of the three is needed for ``"numeric"``.
    against : str or sequence of str
        Oracles among ``"numeric"``, ``"torch"``, ``"jax"``.
    rtol, atol : float, optional
        Added to each oracle's error estimate: an element fails when
        ``|analytic - reference| > atol + rtol * |reference| + error_estimate``.
    seed : int, optional
        Seed of the random direction (default 0).
    torch_fn, jax_fn : callable, optional
        ``fn`` written with torch's / jax's ops.
    names : sequence of str, optional
        Names of the inputs (default: ``fn``'s parameter names); the report
        calls the blocks of ``H v`` ``Hv[x]``.

    Returns
    -------
    Report
        ``kind`` ``"check_hvp"``, one entry per block of ``H v``.

    Notes
    -----
    With ``grad=`` a hand-written gradient, a failure can mean the HVP or
    the gradient is wrong; check the gradient first (:func:`oracles.check_vjp`),
    or add ``"torch"``/``"jax"`` to ``against`` to tell them apart. The
    numeric oracle's notes apply (kinks along ``v``, outputs far below 1,
    float32 evaluated in float64): see :func:`oracles.check_jvp`. An HVP
    that is not linear in ``v`` is reported as a problem.

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
    started = time.perf_counter()
    against, rtol, atol, seed, xs, dtypes, names = _common_arguments(
        fn, hvp, "hvp", inputs, against, rtol, atol, seed, names
    )
    vs, vec_desc = _as_directions(vectors, xs, "vectors", seed)
    shapes = [x.shape for x in xs]
    block_names = [f"Hv[{n}]" for n in names]
    problems, notes = [], []

    passed = [x.copy() for x in xs]
    out = _as_output(_call_user(fn, passed, "fn"), "fn")
    problems += _mutations(xs, passed, names, "fn")
    if out.size != 1:
        raise UserFunctionError(
            f"fn must return a scalar loss (a Hessian-vector product needs one), got shape "
            f"{out.shape}"
        )
    if not np.all(np.isfinite(out)):
        raise UserFunctionError("fn returned NaN or inf at the evaluation point")
    _check_determinism(fn, xs, out)

    def call_hvp(directions, record=False):
        p = [x.copy() for x in xs]
        d = [np.array(u, dtype=np.float64, copy=True) for u in directions]
        raw = _call_user(hvp, [_pack(d), *p], "hvp")
        blocks = normalize_gradients(raw, shapes, names, who="hvp")
        if record:
            problems.extend(_mutations(xs, p, names, "hvp"))
            problems.extend(
                _mutations(
                    directions,
                    d,
                    [f"v[{k}]" if len(xs) > 1 else "v" for k in range(len(xs))],
                    "hvp",
                )
            )
        return blocks

    analytic = call_hvp(vs, record=True)
    if not all(np.all(np.isfinite(a)) for a in analytic):
        notes.append("hvp returned NaN or inf; those elements fail")
    lin_problem = _linearity_problem(lambda d: _flat(call_hvp(d)), vs, "hvp")
    if lin_problem:
        problems.append(lin_problem)

    refs, methods, evaluations = {}, {}, 0
    for oracle in against:
        if oracle == "numeric":
            if grad is not None:
                source = "grad="

                def gradient(a):
                    raw = _call_user(grad, [np.array(x, copy=True) for x in a], "grad")
                    return _flat(normalize_gradients(raw, shapes, names, who="grad"))

            elif torch_fn is not None:
                source = "torch autodiff"

                def gradient(a):
                    return _torch_grad(torch_fn, a)

            elif jax_fn is not None:
                source = "jax autodiff"

                def gradient(a):
                    return _jax_grad(jax_fn, a)

            else:
                raise InvalidArgument(
                    "the numeric oracle differentiates a gradient function along v: give grad= "
                    "(a hand-written gradient of fn) or torch_fn= / jax_fn= (whose autodiff "
                    "gradient is used)"
                )
            result, evaluations = _vector_ladder(
                gradient, xs, vs, linear=None if lin_problem else (lambda d: _flat(call_hvp(d)))
            )
            refs[oracle] = _numeric_refs(result, shapes)
            methods[oracle] = (
                f"central differences of the gradient ({source}) along v, step ladder + Richardson"
            )
            n_nonfinite = int(np.count_nonzero(result["nonfinite"]))
            if n_nonfinite:
                notes.append(
                    f"the gradient was NaN or inf at perturbed points for {n_nonfinite} "
                    "element(s); those used the remaining steps, or fail when none was finite"
                )
        elif oracle == "torch":
            refs[oracle] = _autodiff_refs(
                "torch", torch_fn, lambda: _torch_hvp(torch_fn, xs, vs), shapes, vs
            )
            methods[oracle] = "torch.autograd.functional.hvp (double backward), float64"
        else:
            refs[oracle] = _autodiff_refs(
                "jax", jax_fn, lambda: _jax_hvp(jax_fn, xs, vs), shapes, vs
            )
            methods[oracle] = "jax.jvp of jax.grad (forward over reverse), float64"

    context = _context(
        fn, hvp, "hvp", names, xs, dtypes, ("v", vec_desc), methods, against, atol, rtol
    )
    context["gradient evaluations"] = evaluations
    context["seconds"] = f"{time.perf_counter() - started:.3f}"
    return _build_report(
        "check_hvp",
        block_names,
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


def assert_hvp(fn, hvp, inputs, **kwargs):
    """Like :func:`check_hvp`, but raise :class:`GradientMismatch` when it fails.

    Returns the report when the check passes; the exception's message is the
    readable report and ``exc.report`` the report object.

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
    report = check_hvp(fn, hvp, inputs, **kwargs)
    if not report.ok:
        raise GradientMismatch(report)
    return report
