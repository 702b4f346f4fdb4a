"""JAX drop-in: ``custom_vjp`` / ``custom_jvp`` rules and float32 kernels, checked.

``check_grads(f, args, order=1, modes=("rev",), ...)`` takes
``jax.test_util.check_grads``' arguments and returns ``None`` or raises
:class:`~oracles.errors.GradientMismatch` with the readable report;
``check(f, args, ...)`` returns the :class:`~oracles.report.Report` of one
kind of derivative. Both run the one pipeline of this project
(:mod:`oracles._pipeline`):

* **The derivative under test** is JAX's own, through ``f``: ``jax.vjp``
  with a random normal cotangent (``ad="rev"``), ``jax.jvp`` along random
  normal tangents (``"fwd"``) or ``jax.linearize`` (``"lin"``), in the
  dtype JAX computes ``f`` in under the caller's configuration (float32
  unless ``jax_enable_x64`` is on). A ``custom_vjp`` or ``custom_jvp`` rule
  anywhere inside ``f`` is what this exercises.
* **The references** are this project's numerics on ``f`` evaluated in
  float64 (64-bit mode turned on for those evaluations only, then restored:
  :func:`oracles.backends.jax.x64_enabled`), element by element with error
  estimates; with ``reference_func=``, also ``jax.vjp`` / ``jax.jvp`` of that
  function (the same math without the custom rule) in float64.
* **Reduced precision** (float32, bfloat16, float16): the derivative is
  compared with the float64 reference within its measured rounding at its
  own precision (:mod:`oracles._dropin`), and the report says how close it
  came. A kernel that does not run in float64 needs ``reference_func=``.

Guards: the primal output of ``jax.vjp`` / ``jax.jvp`` (a ``custom_vjp``'s
``fwd``, a ``custom_jvp``'s rule) must equal ``f``'s own output, to the
rounding of the dtype; ``f`` must be deterministic. JAX arrays are
immutable, so nothing can be written in place.

``args`` may be pytrees (a dict of parameters): every floating leaf is
checked, named by its path (``args[0]['W']``). ``jax`` is imported only when
a check runs: ``import oracles`` never loads it.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from oracles._dropin import (
    N_PERTURB,
    Precision,
    forward_spec,
    named,
    precision_note,
    reverse_spec,
    rounding_tolerance,
    snap_subnormal,
)
from oracles._guards import call_user, check_repeatable, users_state
from oracles._pipeline import raise_unless_passed, run
from oracles._validation import check_callable, check_tolerance
from oracles.errors import (
    InvalidArgument,
    InvalidArgumentType,
    UserFunctionError,
)
from oracles.report import Report

__all__ = ["check", "check_grads"]

#: The kinds of derivative ``ad=`` names (and ``modes=`` lists).
ADS = ("rev", "fwd", "lin")

_WHO = {"rev": "jax.vjp", "fwd": "jax.jvp", "lin": "jax.linearize"}

_NONDETERMINISTIC_HINT = (
    "A derivative can only be checked against a function that repeats itself: fix its random "
    "key or seed, or remove the noise"
)


def _import():
    from oracles.backends.jax import import_jax, x64_enabled

    jax = import_jax()
    import jax.numpy as jnp

    return jax, jnp, x64_enabled


#: Primitives whose floating results are exact (no rounding): not jittered.
_EXACT_PRIMITIVES = frozenset(
    """
    copy copy_p neg abs max min select_n reduce_max reduce_min argmax argmin gather dynamic_slice
    dynamic_update_slice slice concatenate broadcast_in_dim reshape squeeze expand_dims
    transpose rev pad iota eq ne lt le gt ge sign stop_gradient sort clamp device_put
    """.split()
)

#: Primitives that sum many terms inside (contractions, reductions, custom kernels): their
#: inputs are jittered too.
_CONTRACTIONS = frozenset(
    """
    dot_general conv_general_dilated reduce_sum reduce_prod cumsum cumprod cumlogsumexp
    reduce_precision custom_call pallas_call triton_kernel_call
    """.split()
)

#: Call-like primitives whose body is interpreted (jittered) rather than bound whole.
_CALLS = (
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
)


def _exact_integers(x):
    """True when the floating array ``x`` holds integers whose sums are exact in its dtype."""
    import jax.numpy as jnp

    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        return False
    try:
        a = np.asarray(x, dtype=np.float64)
    except Exception:  # noqa: BLE001 - a tracer or an abstract value: not known to be exact
        return False
    if not np.all(a == np.round(a)):
        return False
    return float(np.sum(np.abs(a))) < 2.0 / float(jnp.finfo(x.dtype).eps)


def _jittered(jax, jnp, fun, args, rng, n):
    """``n`` evaluations of ``fun(*args)``, every rounded floating result moved by one ulp.

    Monte-Carlo arithmetic for JAX (see :func:`oracles.torch._jitter`): the
    function is traced to a jaxpr (:func:`jax.make_jaxpr`) once and
    interpreted here; the result of every primitive that rounds, in a dtype
    below float64, is multiplied by ``1 +- eps`` (random sign, from ``rng``).
    Bodies of ``jit`` and other calls are interpreted too; control flow
    (``scan``, ``cond``, ``while``) is bound whole and only its results are
    jittered. The function is traced once for the ``n`` runs. (Compiling
    the interpreter, the factors an argument, costs more than ``n`` eager
    runs once the primitives' own compilations are cached.)
    """
    from jax.extend import core

    def moved(x, before=None):
        """The epsilon of ``x``'s dtype when ``x`` is a rounded result to move, else None."""
        if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
            return None
        eps = float(jnp.finfo(x.dtype).eps)
        if eps < 1e-15 or not np.size(x):
            return None
        if before is not None:
            if jnp.issubdtype(before, jnp.bool_):
                return None  # from booleans: 0 and 1, exact
            if jnp.issubdtype(before, jnp.floating) and float(jnp.finfo(before).eps) >= eps:
                return None  # to a dtype as wide or wider: exact
        return eps

    def body(eqn):
        if eqn.primitive.name not in _CALLS:
            return None
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            sub = eqn.params.get(key)
            if isinstance(sub, core.ClosedJaxpr):
                sub_jaxpr, consts = sub.jaxpr, list(sub.consts)
            elif isinstance(sub, core.Jaxpr):
                sub_jaxpr, consts = sub, []
            else:
                continue
            if len(sub_jaxpr.invars) == len(eqn.invars) and len(sub_jaxpr.outvars) == len(
                eqn.outvars
            ):
                return sub_jaxpr, consts
        return None

    def evaluate(jaxpr, consts, args, jitter):
        env = {}

        def read(v):
            return v.val if isinstance(v, core.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            inner = body(eqn)
            if inner is not None:
                outs = evaluate(inner[0], inner[1], invals, jitter)
            else:
                exact = False
                if eqn.primitive.name in _CONTRACTIONS:
                    # Sums inside one primitive round many times: as a backward-stable
                    # sum does, take them as roundings of its inputs (not small integers,
                    # a 0/1 mask counted by cumsum: their sums are exact).
                    rounded = [moved(v) is not None for v in invals]
                    kept = [r and _exact_integers(v) for v, r in zip(invals, rounded, strict=True)]
                    exact = kept == rounded
                    invals = [v if k else jitter(v) for v, k in zip(invals, kept, strict=True)]
                outs = eqn.primitive.bind(*invals, **eqn.params)
                outs = list(outs) if eqn.primitive.multiple_results else [outs]
                name = eqn.primitive.name
                if exact and all(_exact_integers(o) for o in outs if moved(o) is not None):
                    pass  # small integers in, small integers out: nothing rounded
                elif name == "convert_element_type":
                    outs = [jitter(o, invals[0].dtype) for o in outs]
                elif name not in _EXACT_PRIMITIVES:
                    outs = [jitter(o) for o in outs]
            for v, o in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, core.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    closed, shapes = jax.make_jaxpr(fun, return_shape=True)(*args)
    leaves = jax.tree_util.tree_leaves(args)
    structure = jax.tree_util.tree_structure(shapes)

    def jitter(x, before=None):
        eps = moved(x, before)
        if eps is None:
            return x
        sign = rng.integers(0, 2, size=np.shape(x))
        return x * np.where(sign, 1.0 + eps, 1.0 - eps).astype(x.dtype)

    return [
        jax.tree_util.tree_unflatten(
            structure, evaluate(closed.jaxpr, list(closed.consts), leaves, jitter)
        )
        for _ in range(n)
    ]


class _Session:
    """One check: the flattened arguments, the float64 forward, JAX's derivative, guards."""

    def __init__(self, f, args, *, ad, reference_func, names):
        jax, jnp, x64_enabled = _import()
        self.jax, self.jnp, self.x64 = jax, jnp, x64_enabled
        check_callable(f, "f")
        if reference_func is not None:
            check_callable(reference_func, "reference_func")
        if ad not in ADS:
            raise InvalidArgument(f"ad must be one of {ADS}, got {ad!r}")
        self.f, self.reference_func, self.ad = f, reference_func, ad
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise InvalidArgumentType(
                f"args must be a tuple of f's arguments (arrays or pytrees of arrays), got "
                f"{type(args).__name__}"
            )
        self.args = tuple(args)
        if not self.args:
            raise InvalidArgument("args is empty; f needs at least one argument to differentiate")
        paths, self.treedef = jax.tree_util.tree_flatten_with_path(self.args)
        if not paths:
            raise InvalidArgument("args has no array leaves to differentiate")
        self.leaf_names = ["args" + jax.tree_util.keystr(p) for p, _ in paths]
        self.dtypes, self.arrays = [], []
        self.notes, self.problems = [], []
        for (_, leaf), name in zip(paths, self.leaf_names, strict=True):
            given = np.asarray(leaf).dtype if not isinstance(leaf, jax.Array) else leaf.dtype
            if given.kind == "c":
                raise InvalidArgumentType(
                    f"{name} has complex dtype {given}; only real arrays are checked"
                )
            if given.kind not in "f" and str(given) != "bfloat16":
                raise InvalidArgumentType(
                    f"{name} has dtype {given}; only floating arguments can be differentiated. "
                    "Close over the others (functools.partial)"
                )
            value = jnp.asarray(leaf)  # the dtype JAX computes in, under the caller's settings
            arr = np.array(value.astype(jnp.float32) if value.dtype == jnp.bfloat16 else value)
            arr = np.array(arr, dtype=np.float64, copy=True)
            if not np.all(np.isfinite(arr)):
                raise InvalidArgument(
                    f"{name} contains NaN or inf; a derivative can only be checked at a finite "
                    "point"
                )
            if value.dtype != given and given == np.float64:
                self.notes.append(
                    f"{name} was given as float64, but JAX computes it in {value.dtype} "
                    "(jax_enable_x64 is off): the derivative was checked in that precision"
                )
            self.dtypes.append(value.dtype)
            self.arrays.append(arr)
        self.names = names if names is not None else self._names()
        self._probe()
        self._tolerance = None
        self._analytic = None
        self._first = True
        self._first_direction = None

    def _names(self):
        """``f``'s parameter names when every argument is one array, else the leaf paths."""
        if len(self.arrays) != len(self.args):
            return list(self.leaf_names)
        try:
            params = list(inspect.signature(self.f).parameters.values())
        except (TypeError, ValueError):
            return list(self.leaf_names)
        positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(positional) >= len(self.args) and not any(
            p.kind == inspect.Parameter.VAR_POSITIONAL for p in params
        ):
            return positional[: len(self.args)]
        return list(self.leaf_names)

    # --- flattening ------------------------------------------------------------------------------

    def _leaves(self, xs, dtype=None):
        jnp = self.jnp
        return [
            jnp.asarray(np.asarray(x, dtype=np.float64), dtype=dtype or dt)
            for x, dt in zip(xs, self.dtypes, strict=True)
        ]

    def _call(self, func, leaves, who):
        args = self.jax.tree_util.tree_unflatten(self.treedef, leaves)
        return call_user(func, list(args), who)

    def _out_leaves(self, out, who="f"):
        jax, jnp = self.jax, self.jnp
        leaves, treedef = jax.tree_util.tree_flatten(out)
        for k, o in enumerate(leaves):
            if not isinstance(o, jax.Array) or not jnp.issubdtype(o.dtype, jnp.floating):
                kind = f"an array of dtype {o.dtype}" if isinstance(o, jax.Array) else type(o)
                kind = kind if isinstance(kind, str) else kind.__name__
                raise UserFunctionError(
                    f"{who} must return floating jax arrays (or a pytree of them); output leaf "
                    f"{k} is {kind}"
                )
        if getattr(self, "out_treedef", None) is not None:
            if treedef != self.out_treedef or [tuple(o.shape) for o in leaves] != self.shapes:
                raise UserFunctionError(
                    f"{who} returned outputs of another structure or shape than f at the "
                    "evaluation point"
                )
        return leaves, treedef

    def _flat(self, leaves):
        if len(leaves) == 1:
            return np.array(np.asarray(leaves[0], dtype=np.float64), copy=True)
        return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in leaves])

    def _probe(self):
        jnp = self.jnp
        self.out_treedef = None
        leaves, self.out_treedef = self._out_leaves(
            self._call(self.f, self._leaves(self.arrays), "f")
        )
        if not leaves:
            raise UserFunctionError("f returned no array: nothing to differentiate")
        self.shapes = [tuple(o.shape) for o in leaves]
        self.out_dtypes = [o.dtype for o in leaves]
        self.primal = [np.asarray(o, dtype=np.float64) for o in leaves]
        worst = max(self.dtypes + self.out_dtypes, key=lambda d: float(jnp.finfo(d).eps))
        info = jnp.finfo(worst)
        self.precision = Precision(str(np.dtype(worst)), float(info.eps), float(info.tiny))
        self.target, self.reference = self.f, "f in float64"
        self._compiled = {}
        if self.precision.reduced:
            try:
                with self.x64(self.jax):
                    out = self._call(self.f, self._leaves(self.arrays, jnp.float64), "f")
                bad = [o.dtype for o in self.jax.tree_util.tree_leaves(out) if o.dtype != "float64"]
                why = f"it returned {bad[0]} for float64 inputs" if bad else None
            except UserFunctionError as exc:
                why = str(exc)
            if why is not None:
                if self.reference_func is None:
                    raise InvalidArgument(
                        f"f computes in {self.precision.name} and does not run in float64 "
                        f"({why}): pass reference_func=, the same math in float64 without the "
                        "kernel, to check it against"
                    )
                self.target, self.reference = self.reference_func, "reference_func in float64"

    # --- what the pipeline calls -----------------------------------------------------------------

    def _float64(self, func, who):
        """``func`` on float64 leaves, jitted once (eagerly when it cannot be traced)."""
        jax = self.jax
        if who not in self._compiled:

            def flat(*leaves):
                args = jax.tree_util.tree_unflatten(self.treedef, list(leaves))
                return jax.tree_util.tree_leaves(func(*args))

            self._compiled[who] = [jax.jit(flat), flat]
        return self._compiled[who]

    def forward(self, *xs):
        """The float64 function the numeric oracle differentiates."""
        who = "reference_func" if self.target is self.reference_func else "f"
        jitted, eager = self._float64(self.target, who)
        with self.x64(self.jax):
            if jitted is not None:
                try:  # NumPy float64 arrays go straight in: jit converts them at once
                    out = jitted(*[np.asarray(x, dtype=np.float64) for x in xs])
                except Exception:  # noqa: BLE001 - not traceable: run it eagerly from now on
                    self._compiled[who][0] = jitted = None
            if jitted is None:
                out = call_user(eager, self._leaves(xs, self.jnp.float64), who)
            if len(out) == 1:  # the common case, without the pytree round trip
                o = out[0]
                if not (hasattr(o, "dtype") and o.dtype == np.float64) or o.shape != self.shapes[0]:
                    self._out_leaves(self.jax.tree_util.tree_unflatten(self.out_treedef, out), who)
                return np.array(o, dtype=np.float64, copy=True)
            tree = self.jax.tree_util.tree_unflatten(self.out_treedef, out)
            outs, _ = self._out_leaves(tree, who)
            return self._flat(outs)

    def reference_jax(self, *leaves):
        """``reference_func`` as the jax oracle wants it: the leaves in, one array out."""
        jnp = self.jnp
        outs = self.jax.tree_util.tree_leaves(
            self.reference_func(*self.jax.tree_util.tree_unflatten(self.treedef, list(leaves)))
        )
        if len(outs) == 1:
            return outs[0]
        return jnp.concatenate([jnp.ravel(o) for o in outs])

    def _cotangent_tree(self, c):
        jnp = self.jnp
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        leaves, pos = [], 0
        for shape, dt in zip(self.shapes, self.out_dtypes, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            piece = c[pos : pos + size].reshape(shape)
            leaves.append(jnp.asarray(piece, dtype=dt))
            pos += size
        return self.jax.tree_util.tree_unflatten(self.out_treedef, leaves)

    def _flat_f(self):
        jax = self.jax

        def flat(*leaves):
            return self.f(*jax.tree_util.tree_unflatten(self.treedef, list(leaves)))

        return flat

    def derivative(self, direction, *xs):
        """The derivative under test, at the caller's precision (and the primal guard)."""
        d = [
            np.asarray(u, dtype=np.float64)
            for u in (direction if isinstance(direction, (tuple, list)) else (direction,))
        ]
        pieces = self._derivative(xs, direction, guard=True)
        if self._first_direction is None:
            self._first_direction = (d, [p.copy() for p in pieces])
        else:
            d0, p0 = self._first_direction
            for f in (2.0, -1.0):
                if all(np.array_equal(u, f * u0) for u, u0 in zip(d, d0, strict=True)):
                    if self.ad == "rev":
                        tiny = [float(self.jnp.finfo(t).tiny) for t in self.dtypes]
                    else:
                        tiny = [min(float(self.jnp.finfo(t).tiny) for t in self.out_dtypes)]
                    pieces = snap_subnormal(pieces, p0, f, tiny)
        return pieces if self.ad == "rev" else pieces[0]

    def _derivative(self, xs, direction, *, guard, rng=None):
        jax = self.jax
        leaves = self._leaves(xs)
        flat = self._flat_f()
        who = _WHO[self.ad]
        if self.ad == "rev":

            def derive(leaves, cot):
                primal, pullback = jax.vjp(flat, *leaves)
                return primal, pullback(cot)

            second = self._cotangent_tree(direction)
        else:
            tangents = direction if isinstance(direction, (tuple, list)) else (direction,)
            second = tuple(self._leaves(tangents))

            def derive(leaves, tans):
                if self.ad == "fwd":
                    return jax.jvp(flat, tuple(leaves), tuple(tans))
                primal, lin = jax.linearize(flat, *leaves)
                return primal, lin(*tans)

        if rng is not None:  # N_PERTURB runs under Monte-Carlo arithmetic (no guards)
            runs = call_user(
                lambda *a: _jittered(jax, self.jnp, derive, a, rng, N_PERTURB),
                [tuple(leaves), second],
                who,
            )
            return [self._derivative_pieces(result, who) for _, result in runs]
        primal, result = call_user(derive, [tuple(leaves), second], who)
        result = self._derivative_pieces(result, who)
        if guard and self._first:
            self._first = False
            self._primal_guard(primal, who)
        return result

    def _derivative_pieces(self, result, who):
        """The derivative as float64 arrays: one per input (reverse), one flat (forward)."""
        if self.ad == "rev":
            return [np.array(np.asarray(g, dtype=np.float64), copy=True) for g in result]
        t_leaves, _ = self._out_leaves(result, who)
        return [self._flat(t_leaves)]

    def _primal_guard(self, primal, who):
        out, _ = self._out_leaves(primal, who)
        for k, (a, b) in enumerate(zip(out, self.primal, strict=True)):
            a = np.asarray(a, dtype=np.float64)
            scale = np.abs(b) + float(np.max(np.abs(b), initial=0.0))
            if not np.all(np.abs(a - b) <= 8 * self.precision.eps * scale + 1e-300):
                gap = float(np.max(np.abs(a - b)))
                self._repeatable()
                where = "" if len(out) == 1 else f" (output leaf {k})"
                rule = "custom_vjp's fwd" if self.ad == "rev" else "custom_jvp's rule"
                self.problems.append(
                    f"the primal output of {who}{where} differs from f's own output by up to "
                    f"{gap:.3g}: a {rule} must return the same primal output as the function"
                )

    def _repeatable(self):
        """Raise where ``f`` itself returns other outputs at the same arguments.

        Its primal output differing from ``jax.vjp``'s is a custom rule's bug only
        where ``f`` agrees with itself (``sin(x) + 1e-12 * rng.normal(...)`` has
        no rule, and differs from call to call).
        """

        def again():
            out, _ = self._out_leaves(self._call(self.f, self._leaves(self.arrays), "f"))
            return [np.asarray(o, dtype=np.float64) for o in out]

        labels = ["outputs"] * len(self.primal)
        check_repeatable(again, self.primal, "f", _NONDETERMINISTIC_HINT, labels, repeats=1)

    # --- reduced precision -----------------------------------------------------------------------

    def rounding(self, directions):
        """The pipeline's random direction rounded to the dtypes the derivative receives it in
        (the outputs' for a cotangent, the inputs' for tangents; see Spec.rounding)."""
        jnp = self.jnp
        if self.ad != "rev":
            return [
                np.asarray(jnp.asarray(u, dtype=d), dtype=np.float64)
                for u, d in zip(directions, self.dtypes, strict=True)
            ]
        (c,) = directions
        leaves = self.jax.tree_util.tree_leaves(self._cotangent_tree(c))
        return [self._flat(leaves).reshape(np.shape(c))]

    def float64_gradient(self, r):
        """The VJP along the pipeline's cotangent in float64, 64-bit mode on (the numeric
        screen's comparison, :func:`oracles._dropin._float64_screen`): ``jax.vjp`` of the
        float64 reference (``f``, or ``reference_func``); None for forward modes."""
        if self.ad != "rev":
            return None
        jax, jnp = self.jax, self.jnp
        target = self.target
        (c,) = r.direction
        with self.x64(jax):
            leaves = self._leaves(r.xs, jnp.float64)

            def flat(*ls):
                return target(*jax.tree_util.tree_unflatten(self.treedef, list(ls)))

            primal, pullback = jax.vjp(flat, *leaves)
            flat_c = np.asarray(c, dtype=np.float64).reshape(-1)
            pieces, pos = [], 0
            for o in jax.tree_util.tree_leaves(primal):
                size = int(np.size(o))
                pieces.append(jnp.asarray(flat_c[pos : pos + size].reshape(np.shape(o)), o.dtype))
                pos += size
            cot = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(primal), pieces)
            grads = pullback(cot)
        return [np.array(np.asarray(g, dtype=np.float64), copy=True) for g in grads]

    def analytic_error(self, r):
        """The measured rounding allowance of a reduced-precision derivative (cached)."""
        if self._tolerance is None:
            rng = np.random.default_rng(r.seed + 1618)
            direction = r.direction[0] if self.ad == "rev" else tuple(r.direction)
            again = self._derivative(r.xs, direction, guard=False, rng=rng)
            self._tolerance = rounding_tolerance(
                r.analytic, again, self.precision.eps, subnormal=self.precision.subnormal
            )
            self._analytic = [np.array(a, copy=True) for a in r.analytic]
        return self._tolerance

    def finish(self, report):
        report.context["inputs"] = ", ".join(
            f"{n} {x.shape} {np.dtype(d)}"
            for n, x, d in zip(self.names, self.arrays, self.dtypes, strict=True)
        )
        report.context["outputs"] = ", ".join(
            f"{s} {np.dtype(d)}" for s, d in zip(self.shapes, self.out_dtypes, strict=True)
        )
        report.context["fn"] = getattr(self.f, "__name__", type(self.f).__name__)
        report.notes += [n for n in dict.fromkeys(self.notes) if n not in report.notes]
        if self.precision.reduced and self._analytic is not None:
            precision_note(report, self.precision, self._analytic, self._tolerance, self.reference)
        return report


def _jax_vjp_autodiff(oracle, backend_fn, r):
    from oracles.backends.jax import jax_vjp

    return list(jax_vjp(backend_fn, tuple(r.xs), r.direction[0])), (
        "jax.vjp of reference_func, float64"
    )


def _jax_jvp_autodiff(oracle, backend_fn, r):
    from oracles.backends.jax import jax_jvp

    return [jax_jvp(backend_fn, tuple(r.xs), tuple(r.direction))], (
        "jax.jvp of reference_func, float64"
    )


def check(
    f: Callable[..., Any],
    args: Sequence[Any],
    *,
    ad: str = "rev",
    reference_func: Callable[..., Any] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    mode: Any = "auto",
    seed: int | None = None,
    names: Sequence[str] | None = None,
    resolve: float | None = None,
    kind: str | None = None,
) -> Report:
    """Check JAX's derivative of ``f`` (one kind) against float64 numerics; return a report.

    Parameters
    ----------
    f : callable
        ``f(*args)`` returns an array or a pytree of arrays, built with jax
        operations, ``custom_vjp`` or ``custom_jvp`` functions (jitted or not).
    args : tuple
        ``f``'s arguments: arrays or pytrees of arrays; every floating leaf
        is checked, in the dtype JAX computes it in. Never modified.
    ad : {"rev", "fwd", "lin"}
        The derivative checked: ``jax.vjp`` with a random normal cotangent,
        ``jax.jvp`` along random normal tangents, or ``jax.linearize``.
    reference_func : callable, optional
        The same math without the custom rule: ``jax.vjp`` / ``jax.jvp`` of
        it in float64 is a second oracle, and it is the float64 reference
        of a kernel that does not run in float64.
    atol, rtol : float, optional
        Added to each element's allowance (default 0), with NumPy's meaning.
    mode : {"auto", "fast", "exhaustive", "ladder"} or a mode object
        The numeric oracle's mode for ``ad="rev"`` (as in
        :func:`oracles.check_vjp`); forward modes differentiate along the
        tangents and take no mode.
    seed : int, optional
        Seed of the random directions and perturbations (default 0).
    names : sequence of str, optional
        Names of the leaves (default: ``f``'s parameter names, or the pytree paths).
    resolve : float, optional
        The relative error the check must be able to catch (default 1e-3;
        ``256 eps`` of a coarser dtype: 0.25 for float16, 2 for bfloat16).
    kind : str, optional
        The report's kind (default ``"oracles.jax.check"``).

    Returns
    -------
    Report

    Raises
    ------
    InvalidArgument, InvalidArgumentType
        Empty, complex, integer or non-finite arguments; an unknown ``ad``;
        a kernel that does not run in float64 without ``reference_func``.
    UserFunctionError
        ``f`` or its derivative raised (``jax.jvp`` of a ``custom_vjp``
        function, say), or returned non-floating outputs.

    Notes
    -----
    The numerics detect kinks and accept any subgradient between the
    one-sided slopes; a reduced-precision derivative may differ from the
    float64 reference by 4 times its measured rounding under Monte-Carlo
    arithmetic, at least 16 eps of its tensor's scale (:mod:`oracles._dropin`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> @jax.custom_vjp
    ... def cube(x):
    ...     return x**3
    >>> cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x**2 * g,))
    >>> x = np.linspace(-1.0, 1.0, 5, dtype=np.float32)
    >>> r = check(cube, (x,))
    >>> r.status, r.notes[0].split(";")[0][:24]
    ('passed', 'float32 kernel: agrees w')
    >>> cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x * g,))
    >>> check(cube, (x,)).status
    'failed'
    """
    __tracebackhide__ = True
    with users_state():  # the caller's global state, kept whatever f does
        s = _Session(f, args, ad=ad, reference_func=reference_func, names=names)
        against = ("numeric", "jax") if reference_func is not None else "numeric"
        label = kind or "oracles.jax.check"
        if ad == "rev":
            spec = reverse_spec(label, _WHO[ad], "jax", _jax_vjp_autodiff, s)
            extra = {"mode": mode}
        else:
            if mode != "auto":
                raise InvalidArgument(
                    'mode= applies to ad="rev" only (forward modes differentiate along the '
                    f"tangents), got mode={mode!r} with ad={ad!r}"
                )
            spec = forward_spec(label, _WHO[ad], "jax", _jax_jvp_autodiff, s)
            extra = {}
        report = run(
            spec,
            named(s.forward, getattr(f, "__name__", "f")),
            named(s.derivative, _WHO[ad]),
            tuple(s.arrays),
            against=against,
            names=list(s.names),
            seed=seed,
            rtol=rtol,
            atol=atol,
            jax_fn=s.reference_jax if reference_func is not None else None,
            resolve=s.precision.resolve(resolve),
            problems=s.problems,
            **extra,
        )
        return s.finish(report)


def _vjp_of(jax, f):
    """``jax.test_util.check_grads``' second-order reverse function: the VJP at the output."""
    if f is None:
        return None

    def f_vjp(*args):
        out, pullback = jax.vjp(f, *args)
        return pullback(out)

    f_vjp.__name__ = f"vjp of {getattr(f, '__name__', 'f')}"
    return f_vjp


def _jvp_of(jax, f, ad):
    """The second-order forward function: ``(primals, tangents) -> (out, out_tangent)``."""
    if f is None:
        return None

    def f_jvp(primals, tangents):
        if ad == "lin":
            out, lin = jax.linearize(f, *primals)
            return out, lin(*tangents)
        return jax.jvp(f, tuple(primals), tuple(tangents))

    f_jvp.__name__ = f"{'linearize' if ad == 'lin' else 'jvp'} of {getattr(f, '__name__', 'f')}"
    return f_jvp


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int = 1,
    modes: Sequence[str] = ("rev",),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    *,
    reference_func: Callable[..., Any] | None = None,
    seed: int | None = None,
) -> None:
    """``jax.test_util.check_grads``' drop-in: None, or :class:`GradientMismatch` with the report.

    The same arguments and recursion as ``jax.test_util.check_grads``: for
    every mode in ``modes``, the derivative of ``f`` is checked
    (:func:`check`), and for ``order > 1`` so is that of the derived
    function (reverse: ``args -> vjp(f, *args)(f(*args))``; forward:
    ``(primals, tangents) -> jvp(f, primals, tangents)``), up to ``order``.

    Parameters
    ----------
    f, args, reference_func, seed
        As in :func:`check` (``reference_func`` is derived the same way as
        ``f`` at higher orders).
    order : int
        Derivatives up to this order are checked (>= 1).
    modes : sequence of {"rev", "fwd", "lin"}
        Default ``("rev",)``: ``custom_vjp`` functions have no forward mode.
    atol, rtol : float, optional
        Added to each element's allowance (default 0: the numerics' own
        error estimate, which catches far smaller errors than JAX's
        defaults).
    eps : float, optional
        Accepted for compatibility and not used: the numeric oracle picks
        its steps on a ladder, per element.

    Raises
    ------
    GradientMismatch
        A derivative disagrees with the float64 reference; the message is
        the report (its kind says which: ``VJP``, ``JVP of VJP``, ...).
    InconclusiveCheck
        A check could not have caught a relative error of 1e-3.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> @jax.custom_vjp
    ... def softplus(x):
    ...     return jnp.logaddexp(x, 0.0)
    >>> softplus.defvjp(lambda x: (softplus(x), x), lambda x, g: (g * jax.nn.sigmoid(x),))
    >>> x = np.array([-2.0, 0.5, 3.0], dtype=np.float32)
    >>> check_grads(softplus, (x,), order=1)
    >>> softplus.defvjp(lambda x: (softplus(x), x), lambda x, g: (g * 1.001 * jax.nn.sigmoid(x),))
    >>> check_grads(softplus, (x,), order=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: oracles.jax.check_grads (VJP): FAILED: ...
    """
    __tracebackhide__ = True
    jax, _, _ = _import()
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
        raise InvalidArgument(f"order must be an int >= 1, got {order!r}")
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if not modes or any(m not in ADS for m in modes):
        raise InvalidArgument(f"modes must list some of {ADS}, got {modes!r}")
    if eps is not None and (
        isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0
    ):
        raise InvalidArgument(f"eps must be a number > 0 or None, got {eps!r}")
    check_tolerance(atol, "atol")
    check_tolerance(rtol, "rtol")
    args = tuple(args)

    def recurse(func, ref, args, order, label):
        for ad in modes:
            name = {"rev": "VJP", "fwd": "JVP", "lin": "LIN"}[ad]
            name = f"{name} of {label}" if label else name
            report = check(
                func,
                args,
                ad=ad,
                reference_func=ref,
                atol=atol,
                rtol=rtol,
                seed=seed,
                kind=f"oracles.jax.check_grads ({name})",
            )
            raise_unless_passed(report)
            if order > 1:
                if ad == "rev":
                    recurse(_vjp_of(jax, func), _vjp_of(jax, ref), args, order - 1, name)
                else:
                    recurse(
                        _jvp_of(jax, func, ad), _jvp_of(jax, ref, ad), (args, args), order - 1, name
                    )

    recurse(f, reference_func, args, order, "")
