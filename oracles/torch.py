"""PyTorch drop-in: custom ``autograd.Function`` backward passes and float32 kernels, checked.

``gradcheck(func, inputs, ...)`` takes ``torch.autograd.gradcheck``'s
arguments and returns ``True`` or raises :class:`~oracles.errors.GradientMismatch`
with the readable report; ``check(func, inputs, ...)`` returns the
:class:`~oracles.report.Report`. Both run the one pipeline of this project
(:mod:`oracles._pipeline`, the VJP spec):

* **The derivative under test** is PyTorch's own backward through ``func``:
  ``torch.autograd.grad`` of every differentiable output with a random
  normal cotangent each (``seed=``), on fresh leaf tensors of the inputs'
  own dtype and device. A custom ``autograd.Function`` anywhere inside
  ``func`` is what this exercises.
* **The references** are this project's numerics on ``func`` evaluated in
  float64 through the step ladder, each element with its error estimate
  (and, with ``reference_func=``, torch autograd of that function: the same
  math without the custom Function, in float64).
* **Reduced precision.** When the checked inputs or the outputs are
  float32, bfloat16 or float16 (a kernel), the backward runs at that
  precision and is compared with a float64 reference: ``func`` itself in
  float64 if it runs there (every floating tensor argument cast to
  float64), otherwise ``reference_func``. Each element may differ by its
  measured rounding at that precision (:mod:`oracles._dropin`), and the
  report says how close it came ("float32 kernel: agrees within 3.1
  float32 ulps of the scaled gradient; would catch relative errors >= 2e-05").

Guards (each a *problem* in the report, which fails the check): ``func`` or
its backward writing into an input; a backward that writes into its
``grad_output`` in place (found by hooks on every custom Function's node of
the graph); a backward that is not reentrant (run twice on the same graph
with the same ``grad_output``) or not deterministic (run on a fresh graph),
its results differing by more than ``nondet_tol`` (torch's semantics); a
backward that is not linear in ``grad_output`` (nonzero for a zero one, or
the outputs' parts not adding up when some gradients are undefined); a
gradient returned for an integer or boolean input, which has none. A
gradient returned for a floating input that does not require grad is
discarded by torch and noted. A forward that is not deterministic raises
:class:`~oracles.errors.NonDeterministicFunction`. Kinks (ReLU at exact
zeros) are the numerics' part: any subgradient between the one-sided
slopes passes.

``torch`` is imported only when a check runs: ``import oracles`` never
loads it.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from oracles._dropin import (
    N_PERTURB,
    Precision,
    named,
    precision_note,
    reverse_spec,
    snap_subnormal,
)
from oracles._dropin import rounding_tolerance as _rounding_tolerance
from oracles._guards import call_user, users_state
from oracles._pipeline import raise_unless_passed, run
from oracles._validation import check_callable, check_tolerance
from oracles.errors import (
    GradientMismatch,
    InconclusiveCheck,
    InvalidArgument,
    InvalidArgumentType,
    UserFunctionError,
)
from oracles.report import Report

__all__ = ["check", "gradcheck"]

#: ``torch.autograd.gradcheck``'s keyword defaults (compatibility; see :func:`gradcheck`).
TORCH_DEFAULTS = {
    "eps": 1e-6,
    "atol": 1e-5,
    "rtol": 1e-3,
    "raise_exception": True,
    "nondet_tol": 0.0,
    "check_undefined_grad": True,
    "check_grad_dtypes": False,
    "check_batched_grad": False,
    "check_batched_forward_grad": False,
    "check_forward_ad": False,
    "check_backward_ad": True,
    "fast_mode": False,
    "masked": None,
}

_REVERSE_KIND = "oracles.torch.check"
_FLOAT64_TINY = float(np.finfo(np.float64).tiny)


def _import_torch():
    from oracles.backends.torch import import_torch

    return import_torch()


def _label(func):
    owner = getattr(func, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__name__}.{getattr(func, '__name__', 'apply')}"
    return getattr(func, "__name__", type(func).__name__)


def _parameter_names(func, n):
    """Names of ``func``'s positional arguments: a Function's ``forward`` without ``ctx``."""
    owner = getattr(func, "__self__", None)
    target = getattr(owner, "forward", None) if isinstance(owner, type) else func
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if isinstance(owner, type) and params and params[0].name == "ctx":
        params = params[1:]
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < n or any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return positional[:n]


def _precision_of(torch, dtypes):
    worst = max(dtypes, key=lambda d: torch.finfo(d).eps)
    info = torch.finfo(worst)
    return Precision(str(worst).replace("torch.", ""), float(info.eps), float(info.tiny))


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def _flat(torch, tensors):
    return np.concatenate(
        [np.asarray(t.detach().to("cpu", torch.float64).reshape(-1).numpy()) for t in tensors]
        or [np.zeros(0)]
    )


#: aten ops whose floating results are exact (no rounding): not jittered.
_EXACT_OPS = frozenset(
    """
    clone _to_copy copy_ detach alias neg abs relu threshold_backward where max min amax amin
    maximum minimum gather index index_select cat stack select slice zeros zeros_like ones
    ones_like full full_like empty empty_like empty_strided new_zeros new_ones new_empty
    new_full scalar_tensor lift_fresh lift_fresh_copy masked_fill sign sgn clamp clamp_min
    clamp_max flip roll repeat index_put index_put_ scatter fill fill_ zero_ resize_ embedding
    masked_scatter _unsafe_index constant_pad_nd le lt ge gt eq ne argmax argmin sort topk
    _unsafe_view view_copy _reshape_copy reshape permute_copy transpose_copy t_copy expand_copy
    squeeze_copy unsqueeze_copy alias_copy select_copy slice_copy unfold_copy diagonal_copy
    as_strided_copy narrow_copy split_copy unbind_copy contiguous max_pool1d_with_indices
    max_pool2d_with_indices max_pool3d_with_indices take take_along_dim masked_select
    repeat_interleave tril triu
    """.split()
)


#: aten ops that sum many terms inside (contractions, reductions, fused kernels): their inputs
#: are jittered too. Ops outside the aten namespace (custom kernels) are treated the same way.
_CONTRACTIONS = frozenset(
    """
    mm addmm bmm baddbmm matmul dot vdot mv addmv addbmm addr convolution _convolution
    convolution_backward sum mean prod cumsum cumprod logsumexp _softmax _log_softmax
    _softmax_backward_data _log_softmax_backward_data native_layer_norm native_layer_norm_backward
    native_batch_norm native_batch_norm_backward var std var_mean std_mean norm
    linalg_vector_norm nll_loss_forward nll_loss_backward mse_loss mse_loss_backward
    binary_cross_entropy _scaled_dot_product_flash_attention
    _scaled_dot_product_efficient_attention _scaled_dot_product_attention_math
    """.split()
)


def _exact_integers(torch, t):
    """True when ``t`` holds integers whose sums are exact in its dtype.

    Every value is an integer and the sum of their magnitudes is below
    ``2^(mantissa bits)``: any sum or product-free contraction of them
    (``cumsum`` of a 0/1 mask) rounds nowhere.
    """
    if not bool(torch.all(t == torch.round(t))):
        return False
    total = float(t.detach().abs().double().sum())
    return total < 2.0 / torch.finfo(t.dtype).eps


def _jitter(torch, seed):
    """A dispatch mode that moves every rounded floating result by one ulp, random sign.

    Monte-Carlo arithmetic: under it, a float32 (bfloat16, float16)
    computation is recomputed as if every operation had rounded once more,
    the other way or not; the spread of such runs measures how rounding
    inside the computation moves the result. Ops that sum many terms
    (:data:`_CONTRACTIONS`, and custom ops outside ``aten``) get their
    inputs moved too, as the rounding of a backward-stable sum.
    Results that alias an input (views) and ops that do not round (copies,
    indexing, max, comparisons) are left alone; float64 results too. The
    random signs come from a generator of this mode's own: torch's global
    random state is untouched.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves, tree_map

    generator = torch.Generator().manual_seed(int(seed))

    def wanted(t):
        return (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and torch.finfo(t.dtype).eps > 1e-15
            and t.numel() > 0
        )

    def factor(t):
        eps = torch.finfo(t.dtype).eps
        sign = torch.randint(0, 2, tuple(t.shape), generator=generator).to(t.device)
        return (1 + (2 * sign - 1) * eps).to(t.dtype)

    def move(t):
        return t * factor(t) if wanted(t) else t


    class Jitter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            returns = func._schema.returns
            aliased = any(r.alias_info is not None for r in returns)
            exact = False
            if not aliased and (name in _CONTRACTIONS or func.namespace != "aten"):
                # Sums inside one op (a matmul, a fused kernel) round many times: as a
                # backward-stable op does, take them as roundings of its inputs.
                # Small integers (a 0/1 mask counted by cumsum) sum exactly: they are not
                # rounded inside, and moving them breaks exact comparisons downstream.
                kept = {
                    id(t) for t in tree_leaves((args, kwargs))
                    if wanted(t) and _exact_integers(torch, t)
                }  # fmt: skip
                exact = all(id(t) in kept for t in tree_leaves((args, kwargs)) if wanted(t))

                def move_inexact(t):
                    return t if id(t) in kept else move(t)

                args, kwargs = tree_map(move_inexact, args), tree_map(move_inexact, kwargs)
            out = func(*args, **kwargs)
            if name in _EXACT_OPS:
                return out
            if exact and all(_exact_integers(torch, t) for t in tree_leaves(out) if wanted(t)):
                return out  # small integers in, small integers out: nothing rounded
            if aliased:
                if any(r.alias_info is not None and r.alias_info.is_write for r in returns):
                    for t in out if isinstance(out, (tuple, list)) else [out]:
                        if wanted(t):
                            t.mul_(factor(t))
                return out
            return tree_map(move, out)

    return Jitter()


class _Session:
    """One check: the user's arguments, the float64 forward, the backward under test, guards."""

    def __init__(self, torch, func, inputs, *, reference_func, names, nondet_tol, check_dtypes):
        self.torch = torch
        check_callable(func, "func")
        if reference_func is not None:
            check_callable(reference_func, "reference_func")
        self.func, self.reference_func = func, reference_func
        self.nondet_tol = nondet_tol
        self.check_dtypes = check_dtypes
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise InvalidArgumentType(
                "inputs must be a tensor or a tuple of arguments of func (tensors with "
                f"requires_grad=True are checked), got {type(inputs).__name__}"
            )
        self.args = list(inputs)
        self.checked = [
            k for k, a in enumerate(self.args) if isinstance(a, torch.Tensor) and a.requires_grad
        ]
        if not self.checked:
            raise InvalidArgument(
                "inputs has no tensor with requires_grad=True: gradcheck checks the gradients "
                "of exactly those (set x.requires_grad_() on the inputs to check)"
            )
        labels = [f"inputs[{k}]" for k in range(len(self.args))]
        for k in self.checked:
            t = self.args[k]
            if t.layout != torch.strided:
                raise InvalidArgumentType(
                    f"{labels[k]} is a {t.layout} tensor; only dense (strided) tensors are checked"
                )
            if t.is_complex():
                raise InvalidArgumentType(
                    f"{labels[k]} has complex dtype {t.dtype}; only real tensors are checked. "
                    "Pass real and imaginary parts as separate real inputs"
                )
            if not bool(torch.isfinite(t.detach()).all()):
                raise InvalidArgument(
                    f"{labels[k]} contains NaN or inf; a derivative can only be checked at a "
                    "finite point"
                )
        self.arrays = [
            np.array(self.args[k].detach().to("cpu", torch.float64).numpy(), copy=True)
            for k in self.checked
        ]
        self.dtypes = [self.args[k].dtype for k in self.checked]
        self.devices = [self.args[k].device for k in self.checked]
        every = _parameter_names(func, len(self.args))
        if names is None:
            names = [every[k] if every else labels[k] for k in self.checked]
        self.names = names
        self.problems, self.notes = [], []
        self.label = _label(func)
        self._memo = None
        self._plan = None
        self._leaves = False  # func needs its inputs to require grad (a double backward)
        self._tolerance = None
        self._analytic = None
        self.undefined_grad, self.batched_grad = True, False
        self._probe()

    # --- arguments and outputs -----------------------------------------------------------------

    def _arguments(self, xs, *, dtype=None, leaves=False):
        """``func``'s arguments: ``xs`` at the checked positions, fresh copies of every tensor.

        ``dtype``: cast every floating tensor to it (the float64 reference).
        """
        torch = self.torch
        out, made = [], []
        pos = {k: j for j, k in enumerate(self.checked)}
        for k, a in enumerate(self.args):
            if k in pos:
                j = pos[k]
                x = np.asarray(xs[j], dtype=np.float64)
                t = torch.from_numpy(np.array(x, copy=True)).to(
                    device=self.devices[j], dtype=dtype or self.dtypes[j]
                )
                if leaves:
                    t.requires_grad_(True)
                made.append(t)
                out.append(t)
            elif isinstance(a, torch.Tensor):
                t = a.detach().clone()
                if t.is_floating_point() and dtype is not None:
                    t = t.to(dtype)
                out.append(t)
            else:
                out.append(a)
        return out, made

    def _outputs(self, raw, who="func"):
        torch = self.torch
        outs = list(raw) if isinstance(raw, (tuple, list)) else [raw]
        for k, o in enumerate(outs):
            if o is not None and not isinstance(o, torch.Tensor):
                if self.diff is None:
                    raise UserFunctionError(
                        f"{who} must return a tensor or a tuple of tensors, got "
                        f"{type(o).__name__} as output {k}"
                    )
        if self.diff is None:
            return outs
        if len(outs) != self.n_outputs:
            raise UserFunctionError(
                f"{who} returned {len(outs)} output(s), but func returned {self.n_outputs} "
                "at the evaluation point"
            )
        picked = [outs[i] for i in self.diff]
        for o, shape, i in zip(picked, self.shapes, self.diff, strict=True):
            if not isinstance(o, torch.Tensor) or tuple(o.shape) != shape:
                got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                raise UserFunctionError(
                    f"{who} returned {got} as output {i}, but func returned shape {shape} there"
                )
        return picked

    def _probe(self):
        """Run ``func`` once with grad: which outputs are differentiable, shapes and dtypes."""
        torch = self.torch
        self.diff = None
        args, _ = self._arguments(self.arrays, leaves=True)
        with torch.enable_grad():
            outs = self._outputs(call_user(self.func, args, "func"))
        self.n_outputs = len(outs)
        self.diff = [
            i
            for i, o in enumerate(outs)
            if isinstance(o, torch.Tensor) and o.requires_grad and o.is_floating_point()
        ]
        if not self.diff:
            raise UserFunctionError(
                f"none of the {len(outs)} output(s) of func requires grad: nothing depends on the "
                "inputs with requires_grad=True (did forward detach, or mark every output "
                "non-differentiable?)"
            )
        picked = [outs[i] for i in self.diff]
        self.shapes = [tuple(o.shape) for o in picked]
        self.out_dtypes = [o.dtype for o in picked]
        self.out_devices = [o.device for o in picked]
        self.precision = _precision_of(torch, self.dtypes + self.out_dtypes)
        self.target = self.func
        self.reference = "func in float64"
        if self.precision.reduced:
            self._float64_reference()

    def _float64_reference(self):
        """A kernel's float64 reference: func in float64 if it runs there, else reference_func."""
        torch = self.torch
        why = None
        try:
            args, _ = self._arguments(self.arrays, dtype=torch.float64)
            outs = self._outputs(self.func(*args))
            bad = [o.dtype for o in outs if o.dtype != torch.float64]
            if bad:
                why = f"it returned {bad[0]} for float64 inputs"
        except UserFunctionError as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - the kernel's own refusal of float64
            why = f"it raised {type(exc).__name__}: {exc}"
        if why is None:
            return
        if self.reference_func is None:
            raise InvalidArgument(
                f"func computes in {self.precision.name} and does not run in float64 ({why}): "
                "pass reference_func=, the same math in float64 without the kernel, to check it "
                "against"
            )
        self.target = self.reference_func
        self.reference = "reference_func in float64"

    # --- what the pipeline calls -----------------------------------------------------------------

    def forward(self, *xs):
        """The float64 function the numeric oracle differentiates (flat output).

        Called hundreds of times per check, so the work that does not depend
        on ``xs`` is done once (:meth:`_forward_plan`): which argument is
        checked, where it goes (device, dtype), the pass-through tensors
        already cast. Every call still gets fresh tensors.
        """
        torch = self.torch
        if self._plan is None:
            self._plan = self._forward_plan()
        args = []
        for kind, a, to in self._plan:
            if kind == "x":
                t = torch.from_numpy(np.array(xs[a], dtype=np.float64))
                t = t if to is None else t.to(**to)
                args.append(t.requires_grad_(True) if self._leaves else t)
            elif kind == "t":
                args.append(a.clone())
            else:
                args.append(a)
        who = "reference_func" if self.target is self.reference_func else "func"
        if self._leaves:
            with torch.enable_grad():
                got = self.target(*args)
        else:
            try:
                got = self.target(*args)
            except RuntimeError as exc:
                if "does not require grad" not in str(exc):
                    raise
                # func differentiates its own inputs (torch.autograd.grad(..., create_graph=True)
                # inside it, the way a double backward is checked): torch's gradcheck hands it
                # inputs that require grad, and so does every later call here.
                self._leaves = True
                return self.forward(*xs)
        outs = self._outputs(got, who)
        if len(outs) == 1:
            o = outs[0]
            if o.dtype == torch.float64 and o.device.type == "cpu":
                return np.array(o.detach().numpy(), copy=True)
            return _flat(torch, outs).reshape(self.shapes[0])
        return _flat(torch, outs)

    def _forward_plan(self):
        """Per argument of ``func``: ``("x", j, to)`` the checked input ``j`` (``to``: the
        device and dtype to move it to, None for float64 on the CPU), ``("t", tensor, None)``
        a pass-through tensor (cloned on every call), ``("o", value, None)`` anything else."""
        torch = self.torch
        reduced = self.precision.reduced
        pos = {k: j for j, k in enumerate(self.checked)}
        plan = []
        for k, a in enumerate(self.args):
            if k in pos:
                j = pos[k]
                dtype = torch.float64 if reduced else self.dtypes[j]
                device = self.devices[j]
                same = dtype == torch.float64 and device.type == "cpu"
                plan.append(("x", j, None if same else {"device": device, "dtype": dtype}))
            elif isinstance(a, torch.Tensor):
                t = a.detach().clone()
                if t.is_floating_point() and reduced:
                    t = t.to(torch.float64)
                plan.append(("t", t, None))
            else:
                plan.append(("o", a, None))
        return plan

    def reference_torch(self, *tensors):
        """``reference_func`` as the torch oracle wants it: the checked inputs in, one tensor."""
        torch = self.torch
        args, _ = self._arguments(self.arrays, dtype=torch.float64)
        pos = {k: j for j, k in enumerate(self.checked)}
        args = [
            tensors[pos[k]].to(self.devices[pos[k]]) if k in pos else a for k, a in enumerate(args)
        ]
        outs = self._outputs(self.reference_func(*args), "reference_func")
        if len(outs) == 1:
            return outs[0].to("cpu", torch.float64)
        return torch.cat([o.reshape(-1).to("cpu", torch.float64) for o in outs])

    def backward(self, cotangent, *xs):
        """The derivative under test: torch's backward through ``func`` (guarded).

        The pipeline calls it again with the first cotangent (determinism)
        and with 2 and -1 times it (linearity). Runs with the same cotangent
        are compared here, with ``nondet_tol`` (torch's semantics: a
        difference above it is a problem), and answered with the first
        result; with ``nondet_tol > 0`` the rescaled cotangents are too.
        """
        c = np.asarray(cotangent, dtype=np.float64)
        grads = self._backward(xs, c, guard=True)
        if self._memo is None:
            self._memo = (c.copy(), [g.copy() for g in grads])
            self._extra_guards(xs, c, grads)
            return grads
        c0, g0 = self._memo
        for f in (1.0, 2.0, -1.0):
            if c.shape == c0.shape and np.array_equal(c, f * c0):
                expected = [f * g for g in g0]
                self._same_runs(grads, expected)
                if f == 1.0 or self.nondet_tol > 0:
                    return expected
                tiny = [float(self.torch.finfo(d).tiny) for d in self.dtypes]
                return snap_subnormal(grads, g0, f, tiny)
        return grads

    def _normal(self, g, k):
        """``g`` with subnormal values of input ``k``'s dtype flushed to 0 (for comparisons:
        vectorized and scalar kernels may round them differently, in float64 too: NumPy's
        ``exp`` of a saturated softmax gave 0 in one run and 4.9e-324 in the next)."""
        tiny = float(self.torch.finfo(self.dtypes[k]).tiny)
        return np.where(np.abs(g) < tiny, 0.0, g)

    def _worst_gap(self, pairs):
        """The largest difference between two runs of the gradients, and of which input.

        ``pairs``: ``(k, (a, b))`` float64 arrays of input ``k`` from the two runs, or
        ``(k, None)`` where one run has a gradient and the other none. NaN counts as inf;
        subnormal values are flushed first (:meth:`_normal`), and differences below the
        smallest normal float64 do not count.
        """
        worst, where = 0.0, None
        for k, pair in pairs:
            if pair is None:
                m = float("inf")
            else:
                with np.errstate(invalid="ignore"):
                    d = np.abs(self._normal(pair[0], k) - self._normal(pair[1], k))
                # Subnormals that differed inside backward carry into normal values as
                # differences of subnormal size (6e-321 between gradients near 1e-305).
                d[d < _FLOAT64_TINY] = 0.0
                m = float(np.max(np.where(np.isnan(d), np.inf, d), initial=0.0))
            if m > worst:
                worst, where = m, self.names[k]
        return worst, where

    def _same_runs(self, grads, expected):
        worst, where = self._worst_gap(enumerate(zip(grads, expected, strict=True)))
        if worst > self.nondet_tol:
            self.problems.append(
                f"backward is not deterministic: run again on the same inputs and grad_output, "
                f"the gradient of {where} differs by up to {worst:.3g} "
                f"(nondet_tol={self.nondet_tol:g}). A random mask drawn in backward, or "
                "nondeterministic kernels? (For the latter, pass nondet_tol=.)"
            )

    def _backward(self, xs, cotangent, *, guard, rng=None):
        torch = self.torch
        args, leaves = self._arguments(xs, leaves=True)
        before = [t.detach().clone() for t in args if isinstance(t, torch.Tensor)]
        cots = self._cotangents(np.asarray(cotangent, dtype=np.float64))
        spare = [t.clone() for t in cots]
        jitter = contextlib.nullcontext() if rng is None else _jitter(torch, rng.integers(2**31))
        with torch.enable_grad(), jitter:
            outs = self._outputs(call_user(self.func, args, "func"))
            hooks = _Hooks(torch, self, outs, args) if guard else None
            try:
                grads = call_user(
                    lambda: torch.autograd.grad(
                        outs, leaves, grad_outputs=cots, allow_unused=True, retain_graph=guard
                    ),
                    [],
                    "backward",
                )
                if guard:
                    hooks.remove()
                    try:
                        again = torch.autograd.grad(
                            outs, leaves, grad_outputs=spare, allow_unused=True
                        )
                    except Exception as exc:  # noqa: BLE001 - the user's backward, reported
                        again = exc
            finally:
                if hooks is not None:
                    hooks.remove()
        if guard:
            self.problems += hooks.problems
            self.notes += hooks.notes
            self._reentrant(grads, again)
            self._unchanged(before, args)
            self._grad_dtypes(grads, leaves)
        return self._as_arrays(grads)

    # --- guards ----------------------------------------------------------------------------------

    def _reentrant(self, first, again):
        torch = self.torch
        if isinstance(again, Exception):
            self.problems.append(
                "backward is not reentrant: run a second time on the same graph with the same "
                f"grad_output, it raised {type(again).__name__}: {again}. Does backward modify "
                "ctx.saved_tensors in place?"
            )
            return
        pairs = [
            (k, None if (g1 is None) != (g2 is None) else (_flat(torch, [g1]), _flat(torch, [g2])))
            for k, (g1, g2) in enumerate(zip(first, again, strict=True))
            if g1 is not None or g2 is not None
        ]
        worst, where = self._worst_gap(pairs)
        if worst > self.nondet_tol:
            self.problems.append(
                f"backward is not reentrant: run twice on the same graph with the same "
                f"grad_output, the gradient of {where} differs by up to {worst:.3g} "
                f"(nondet_tol={self.nondet_tol:g}). Does backward modify ctx.saved_tensors or "
                "other state in place? (With a nondeterministic backward, pass nondet_tol=.)"
            )

    def _unchanged(self, before, args):
        torch = self.torch
        tensors = [(k, t) for k, t in enumerate(args) if isinstance(t, torch.Tensor)]
        every = _parameter_names(self.func, len(self.args))
        for (k, t), b in zip(tensors, before, strict=True):
            name = every[k] if every else f"inputs[{k}]"
            if t.shape != b.shape or not torch.equal(t.detach(), b):
                self.problems.append(
                    f"func or its backward modified its argument {name} in place: a caller's "
                    "tensor would change. Compute into a new tensor instead (clone before "
                    "writing)."
                )

    def _grad_dtypes(self, grads, leaves):
        if not self.check_dtypes:
            return
        for g, t, name in zip(grads, leaves, self.names, strict=True):
            if g is not None and (g.dtype != t.dtype or g.device != t.device):
                self.problems.append(
                    f"the gradient of {name} has dtype {g.dtype} on {g.device}, but {name} is "
                    f"{t.dtype} on {t.device} (check_grad_dtypes=True)"
                )

    def _graph(self, xs):
        """A fresh forward with grad: the leaves, the differentiable outputs."""
        torch = self.torch
        args, leaves = self._arguments(xs, leaves=True)
        with torch.enable_grad():
            outs = self._outputs(call_user(self.func, args, "func"))
        return leaves, outs

    def _cotangents(self, c):
        torch = self.torch
        cots, pos = [], 0
        where = zip(self.shapes, self.out_dtypes, self.out_devices, strict=True)
        for shape, dtype, device in where:
            size = int(np.prod(shape, dtype=np.int64))
            piece = np.asarray(c, dtype=np.float64).reshape(-1)[pos : pos + size].reshape(shape)
            cots.append(torch.from_numpy(np.array(piece, copy=True)).to(device=device, dtype=dtype))
            pos += size
        return cots

    def _close(self, a, b):
        """``a`` and ``b`` (lists of float64 arrays) agree to the rounding of this precision."""
        for x, y in zip(a, b, strict=True):
            scale = np.abs(x) + np.abs(y)
            peak = float(np.max(scale)) if scale.size else 0.0
            if not np.all(np.abs(x - y) <= 64 * self.precision.eps * (scale + peak) + 1e-300):
                return False
        return True

    def _as_arrays(self, grads):
        return [
            np.zeros(x.shape) if g is None else _flat(self.torch, [g]).reshape(np.shape(x))
            for g, x in zip(grads, self.arrays, strict=True)
        ]

    def _extra_guards(self, xs, c, grads):
        """torch's check_undefined_grad and check_batched_grad, judged against ``grads``."""
        torch = self.torch
        if self.undefined_grad:
            leaves, outs = self._graph(xs)
            try:
                zero = torch.autograd.grad(
                    outs,
                    leaves,
                    grad_outputs=self._cotangents(np.zeros(np.shape(c))),
                    allow_unused=True,
                )
            except Exception as exc:  # noqa: BLE001 - the user's backward, reported
                zero = None
                self.problems.append(
                    f"backward fails when every grad_output is zero: {type(exc).__name__}: {exc}"
                )
            if zero is not None and any(np.any(g != 0) for g in self._as_arrays(zero)):
                self.problems.append(
                    "backward returns a nonzero gradient when every grad_output is zero "
                    "(undefined): a gradient must be linear in grad_output (is a term added "
                    "instead of multiplied by it?)"
                )
        if self.undefined_grad and len(self.diff) > 1:
            leaves, outs = self._graph(xs)
            cots = self._cotangents(c)
            total = [np.zeros(x.shape) for x in self.arrays]
            for i, (o, ct) in enumerate(zip(outs, cots, strict=True)):
                try:
                    part = torch.autograd.grad(
                        [o], leaves, grad_outputs=[ct], allow_unused=True, retain_graph=True
                    )
                except Exception as exc:  # noqa: BLE001 - the user's backward, reported
                    self.problems.append(
                        f"backward fails when only output {self.diff[i]} is used (the gradients "
                        f"of the other outputs undefined): {type(exc).__name__}: {exc}. With "
                        "ctx.set_materialize_grads(False), treat a None grad_output as zeros"
                    )
                    break
                total = [t + p for t, p in zip(total, self._as_arrays(part), strict=True)]
            else:
                if not self._close(total, grads):
                    self.problems.append(
                        "the backward of each output alone (the others' gradients undefined) "
                        "does not add up to the backward of all outputs: is an undefined "
                        "grad_output treated as something other than zeros?"
                    )
        if self.batched_grad:
            rng = np.random.default_rng(7321)
            batch = [rng.standard_normal(np.shape(c)) for _ in range(3)]
            leaves, outs = self._graph(xs)
            per = [self._cotangents(b) for b in batch]
            stacked = [torch.stack([p[i] for p in per]) for i in range(len(outs))]
            try:
                together = torch.autograd.grad(
                    outs,
                    leaves,
                    grad_outputs=stacked,
                    allow_unused=True,
                    retain_graph=True,
                    is_grads_batched=True,
                )
            except Exception as exc:  # noqa: BLE001 - the user's backward under vmap, reported
                self.problems.append(
                    f"the backward fails on a batch of cotangents (is_grads_batched=True, vmap): "
                    f"{type(exc).__name__}: {exc}"
                )
                return
            for b, cb in enumerate(batch):
                one = self._as_arrays(
                    torch.autograd.grad(
                        outs, leaves, grad_outputs=per[b], allow_unused=True, retain_graph=True
                    )
                )
                got = [
                    np.zeros(x.shape) if g is None else _flat(torch, [g[b]]).reshape(x.shape)
                    for g, x in zip(together, self.arrays, strict=True)
                ]
                if not self._close(got, one):
                    self.problems.append(
                        "the backward on a batch of cotangents (is_grads_batched=True, vmap) "
                        f"differs from the backward of cotangent {b} alone: a batching rule "
                        "(vmap staticmethod) that does not match backward?"
                    )
                    return
                del cb

    # --- reduced precision -----------------------------------------------------------------------

    def rounding(self, directions):
        """The pipeline's random cotangent rounded to each output's dtype (see Spec.rounding)."""
        (c,) = directions
        return [_flat(self.torch, self._cotangents(c)).reshape(np.shape(c))]

    def float64_gradient(self, r):
        """The backward along the pipeline's cotangent in float64 (the numeric screen's
        comparison, :func:`oracles._dropin._float64_screen`): torch autograd through the
        float64 reference (``func`` with every floating tensor in float64, or
        ``reference_func``), on fresh leaves; no guards."""
        torch = self.torch
        args, leaves = self._arguments(r.xs, dtype=torch.float64, leaves=True)
        (c,) = r.direction
        with torch.enable_grad():
            outs = self._outputs(self.target(*args), "reference")
            cots = [t.to(torch.float64) for t in self._cotangents(c)]
            grads = torch.autograd.grad(outs, leaves, grad_outputs=cots, allow_unused=True)
        return self._as_arrays(grads)

    def analytic_error(self, r):
        """The measured rounding allowance of a reduced-precision backward (cached)."""
        if self._tolerance is None:
            rng = np.random.default_rng(r.seed + 1618)
            again = [
                self._backward(r.xs, r.direction[0], guard=False, rng=rng) for _ in range(N_PERTURB)
            ]
            self._tolerance = _rounding_tolerance(
                r.analytic, again, self.precision.eps, subnormal=self.precision.subnormal
            )
            self._analytic = [np.array(a, copy=True) for a in r.analytic]
        return self._tolerance

    # --- the report ------------------------------------------------------------------------------

    def finish(self, report, analytic):
        torch = self.torch
        described = [
            f"{n} {tuple(self.args[k].shape)} {str(self.args[k].dtype).replace('torch.', '')} "
            f"{self.args[k].device}"
            for n, k in zip(self.names, self.checked, strict=True)
        ]
        others = [
            f"inputs[{k}] ({type(a).__name__})"
            for k, a in enumerate(self.args)
            if k not in set(self.checked)
        ]
        report.context["inputs"] = ", ".join(described) + (
            f"; passed through: {', '.join(others)}" if others else ""
        )
        report.context["outputs"] = ", ".join(
            f"output {i} {s} {str(d).replace('torch.', '')}"
            for i, s, d in zip(self.diff, self.shapes, self.out_dtypes, strict=True)
        )
        report.context["fn"] = self.label
        report.notes += [n for n in dict.fromkeys(self.notes) if n not in report.notes]
        if self.precision.reduced and analytic is not None:
            precision_note(report, self.precision, analytic, self._tolerance, self.reference)
        del torch
        return report


class _Hooks:
    """Hooks on every custom Function node of one graph: grad_output writes, stray gradients."""

    def __init__(self, torch, session, outs, args):
        self.problems, self.notes = [], []
        self.handles = []
        custom = torch.autograd.function.BackwardCFunction
        top = None
        owner = getattr(session.func, "__self__", None)
        if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
            # func is F.apply: the root node's inputs are func's tensor arguments, in order.
            roots = {o.grad_fn for o in outs if o.grad_fn is not None}
            if len(roots) == 1:
                top = (next(iter(roots)), [a for a in args if isinstance(a, torch.Tensor)])
        every = _parameter_names(session.func, len(session.args))
        tensor_names = [
            (every[k] if every else f"inputs[{k}]")
            for k, a in enumerate(session.args)
            if isinstance(a, torch.Tensor)
        ]
        seen, stack = set(), [o.grad_fn for o in outs if o.grad_fn is not None]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(f for f, _ in node.next_functions)
            if isinstance(node, custom):
                self._watch(torch, node, top, tensor_names)

    def _watch(self, torch, node, top, tensor_names):
        record = {}
        cls = getattr(node, "_forward_cls", None)
        name = getattr(cls, "__name__", type(node).__name__)

        def pre(grad_outputs):
            record["in"] = [
                None if g is None else (g, g._version, g.detach().clone()) for g in grad_outputs
            ]

        def post(grad_inputs, grad_outputs):
            for i, entry in enumerate(record.get("in", [])):
                if entry is None:
                    continue
                g, version, copy = entry
                if g._version != version or not torch.equal(g.detach(), copy):
                    which = "grad_output" if len(record["in"]) == 1 else f"grad_output[{i}]"
                    self.problems.append(
                        f"the backward of {name} wrote into its {which} in place: autograd may "
                        "hand the same tensor to other nodes, whose gradients would change. "
                        "Compute into a new tensor instead (grad_output * mask, not "
                        "grad_output.mul_(mask) or grad_output[...] = 0)."
                    )
            for i, g in enumerate(grad_inputs):
                if g is None or node.next_functions[i][0] is not None:
                    continue
                if top is not None and node is top[0] and i < len(top[1]):
                    t = top[1][i]
                    label = tensor_names[i] if i < len(tensor_names) else f"input {i}"
                    if not (t.is_floating_point() or t.is_complex()):
                        self.problems.append(
                            f"the backward of {name} returned a gradient for {label}, which has "
                            f"dtype {t.dtype} and cannot have one: return None there (are the "
                            "gradients returned in the order of forward's inputs?)"
                        )
                    else:
                        self.notes.append(
                            f"the backward of {name} returned a gradient for {label}, which does "
                            "not require grad: torch discards it, and it was not checked (set "
                            f"requires_grad=True on {label} to check it)"
                        )
                else:
                    self.notes.append(
                        f"the backward of {name} returned a gradient for its input {i}, which "
                        "does not require grad: torch discards it"
                    )

        self.handles.append(node.register_prehook(pre))
        self.handles.append(node.register_hook(post))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def check(
    func: Callable[..., Any],
    inputs: Any,
    *,
    reference_func: Callable[..., Any] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    nondet_tol: float = 0.0,
    mode: Any = "auto",
    seed: int | None = None,
    names: Sequence[str] | None = None,
    resolve: float | None = None,
    check_grad_dtypes: bool = False,
) -> Report:
    """Check PyTorch's backward through ``func`` against float64 numerics; return a report.

    Parameters
    ----------
    func : callable
        ``func(*inputs)`` returns a tensor or a tuple of tensors, built with
        torch operations and custom ``autograd.Function``\\ s (``MyFn.apply``
        itself, or any function that calls it).
    inputs : tensor or tuple
        ``func``'s arguments. Tensors with ``requires_grad=True`` are
        checked (float64, float32, bfloat16 or float16, on any device);
        other arguments pass through unchanged (tensors as fresh copies).
        Never modified.
    reference_func : callable, optional
        The same math without the custom Function (same arguments and
        outputs): its torch autograd in float64 is a second oracle, and it
        is the float64 reference of a kernel that does not run in float64.
    atol, rtol : float, optional
        Added to each element's allowance (default 0): an element fails
        when ``|analytic - reference| > atol + rtol * |reference| +
        error_estimate`` (+ the measured rounding of a reduced-precision
        backward, and ``nondet_tol``).
    nondet_tol : float
        How much two backward runs with the same ``grad_output`` may
        differ (torch's meaning; default 0: exactly equal). It is also
        added to ``atol``.
    mode : {"auto", "fast", "exhaustive", "ladder"} or a mode object
        The numeric oracle's mode (as in :func:`oracles.check_vjp`); for a
        reduced-precision backward ``"auto"`` compares every element.
    seed : int, optional
        Seed of the random cotangents and perturbations (default 0).
    names : sequence of str, optional
        Names of the checked inputs (default: ``forward``'s or ``func``'s
        parameter names).
    resolve : float, optional
        The relative error the check must be able to catch (default 1e-3;
        ``256 eps`` of a coarser dtype: 0.25 for float16, 2 for bfloat16).
    check_grad_dtypes : bool
        A gradient whose dtype or device differs from its input's is a problem.

    Returns
    -------
    Report
        ``.status``, ``.ok``, per-input errors and sensitivity, the worst
        elements, problems, notes; ``str()`` readable.

    Raises
    ------
    InvalidArgument, InvalidArgumentType
        No input requires grad; a complex, sparse or non-finite input; a
        kernel that does not run in float64 without ``reference_func``.
    UserFunctionError
        ``func`` or its backward raised, or returned no differentiable output.
    NonDeterministicFunction
        ``func`` returned different outputs for the same inputs.

    Notes
    -----
    Numerics: the step ladder detects kinks (ReLU at exact zeros) and
    accepts any subgradient between the one-sided slopes; steps are scaled
    to each element; a function whose gradient is about 0 everywhere gives
    an inconclusive check. Reduced precision: each element may differ from
    the reference by 4 times its measured rounding under Monte-Carlo
    arithmetic, at least 16 eps of its tensor's scale (:mod:`oracles._dropin`);
    a kernel that saturates everywhere at its precision (tanh rounding to 1
    for every element) has a float32 gradient of 0 where float64 has a tiny
    one, and fails.

    Examples
    --------
    >>> import torch
    >>> class Cube(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x**3
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return 3 * x**2 * g
    >>> x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    >>> check(Cube.apply, (x,)).status
    'passed'
    >>> r = check(Cube.apply, (x.detach().float().requires_grad_(),))
    >>> r.status, r.notes[0].startswith("float32 kernel: agrees within")
    ('passed', True)
    """
    __tracebackhide__ = True
    return _check(
        func,
        inputs,
        reference_func=reference_func,
        atol=atol,
        rtol=rtol,
        nondet_tol=nondet_tol,
        mode=mode,
        seed=seed,
        names=names,
        resolve=resolve,
        check_grad_dtypes=check_grad_dtypes,
    )


def _check(func, inputs, **options):
    """:func:`_check_in`, with the caller's global state kept (see there for ``options``)."""
    __tracebackhide__ = True
    # torch.autograd.grad imports sympy on its first call, and sympy's import adds a filter to
    # warnings.filters: the caller's filters are put back as they were (so are torch's random
    # state and default dtype, whatever func draws or sets: oracles._guards.users_state).
    with users_state():
        return _check_in(func, inputs, **options)


def _check_in(
    func,
    inputs,
    *,
    reference_func,
    atol,
    rtol,
    nondet_tol,
    mode,
    seed,
    names,
    resolve,
    check_grad_dtypes,
    undefined_grad=True,
    batched_grad=False,
):
    __tracebackhide__ = True
    torch = _import_torch()
    nondet_tol = check_tolerance(nondet_tol, "nondet_tol") or 0.0
    if not isinstance(check_grad_dtypes, bool):
        raise InvalidArgumentType(
            f"check_grad_dtypes must be True or False, got {check_grad_dtypes!r}"
        )
    atol = check_tolerance(atol, "atol")
    s = _Session(
        torch,
        func,
        inputs,
        reference_func=reference_func,
        names=names,
        nondet_tol=nondet_tol,
        check_dtypes=check_grad_dtypes,
    )
    s.undefined_grad, s.batched_grad = undefined_grad, batched_grad
    if nondet_tol:
        atol = (atol or 0.0) + nondet_tol
        s.notes.append(
            f"nondet_tol={nondet_tol:g}: backward results may differ by that much between runs; "
            "it was added to atol, and repeated or rescaled cotangents were answered from the "
            "first backward"
        )
    spec = reverse_spec(_REVERSE_KIND, "backward", "torch", _torch_autodiff, s)
    report = run(
        spec,
        named(s.forward, s.label),
        named(s.backward, f"{s.label} backward"),
        tuple(s.arrays),
        against=("numeric", "torch") if reference_func is not None else "numeric",
        mode=mode,
        names=list(s.names),
        seed=seed,
        rtol=rtol,
        atol=atol,
        torch_fn=s.reference_torch if reference_func is not None else None,
        resolve=s.precision.resolve(resolve),
        problems=s.problems,
    )
    return s.finish(report, s._analytic)


def _torch_autodiff(oracle, backend_fn, r):
    from oracles.backends.torch import torch_vjp

    return list(torch_vjp(backend_fn, tuple(r.xs), r.direction[0])), (
        "torch autograd of reference_func, float64"
    )


def gradcheck(
    func: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float | None = None,
    rtol: float | None = None,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_batched_forward_grad: bool = False,
    check_forward_ad: bool = False,
    check_backward_ad: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
    reference_func: Callable[..., Any] | None = None,
    seed: int | None = None,
) -> bool:
    """``torch.autograd.gradcheck``'s drop-in: True, or :class:`GradientMismatch` with the report.

    Same arguments and the same conventions as ``torch.autograd.gradcheck``
    (``func`` returns a tensor or a tuple of tensors; ``inputs`` is a
    tensor or a tuple; ``requires_grad`` marks what is checked; other
    arguments pass through), judged by :func:`check`.

    Parameters
    ----------
    func, inputs, reference_func, nondet_tol, check_grad_dtypes, seed
        As in :func:`check`.
    eps : float
        Accepted for compatibility and not used: the numeric oracle picks
        its steps on a ladder, per element.
    atol, rtol : float, optional
        Default ``None`` (0): each element's allowance is the numerics'
        own error estimate (torch's defaults, 1e-5 and 1e-3, hide
        relative errors below about 1e-3). Given, they are added to it,
        with NumPy's meaning.
    raise_exception : bool
        ``False``: return ``False`` instead of raising
        :class:`GradientMismatch` (or :class:`InconclusiveCheck`).
    check_undefined_grad : bool
        For a function of several outputs, also run the backward of each
        output alone (the others' gradients undefined): it must not fail,
        and the parts must add up to the backward of all outputs.
    check_batched_grad : bool
        Also run the backward on a batch of 3 cotangents at once
        (``is_grads_batched=True``, i.e. vmap): it must equal the backward
        of each.
    check_forward_ad, check_batched_forward_grad, masked
        Not implemented here: ``True`` raises :class:`InvalidArgument`
        (use ``torch.autograd.gradcheck`` for those).
    check_backward_ad : bool
        Must be True (the backward is what this checks).
    fast_mode : bool
        ``True``: the numeric oracle's ``mode="fast"`` (random projections,
        then bisection), else ``"auto"``.

    Returns
    -------
    bool
        ``True`` when the check passed; ``False`` (only with
        ``raise_exception=False``) when it failed or was inconclusive.

    Raises
    ------
    GradientMismatch
        A gradient disagrees, or a guard found a problem; the message is the report.
    InconclusiveCheck
        The check could not have caught a relative error of ``resolve`` (1e-3).

    Examples
    --------
    >>> import torch
    >>> class Square(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return 2 * x * g * (1 + 1e-6)  # off by a relative 1e-6
    >>> x = torch.rand(4, dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradcheck(Square.apply, (x,))
    True
    >>> gradcheck(Square.apply, (x,), raise_exception=False)
    False
    """
    __tracebackhide__ = True
    for name, value in (
        ("raise_exception", raise_exception),
        ("check_undefined_grad", check_undefined_grad),
        ("check_grad_dtypes", check_grad_dtypes),
        ("check_batched_grad", check_batched_grad),
        ("check_batched_forward_grad", check_batched_forward_grad),
        ("check_forward_ad", check_forward_ad),
        ("check_backward_ad", check_backward_ad),
        ("fast_mode", fast_mode),
    ):
        if not isinstance(value, bool):
            raise InvalidArgumentType(f"{name} must be True or False, got {value!r}")
    if masked not in (None, False):
        raise InvalidArgument(
            "masked=True (sparse or masked tensors) is not supported: only dense tensors are "
            "checked; use torch.autograd.gradcheck for it"
        )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise InvalidArgument(f"eps must be a number > 0, got {eps!r}")
    for name, value in (
        ("check_forward_ad", check_forward_ad),
        ("check_batched_forward_grad", check_batched_forward_grad),
    ):
        if value:
            raise InvalidArgument(
                f"{name}=True is not supported by oracles.torch.gradcheck (it checks the "
                f"backward); run torch.autograd.gradcheck(..., {name}=True) for it"
            )
    if not check_backward_ad:
        raise InvalidArgument(
            "check_backward_ad=False leaves nothing to check: oracles.torch.gradcheck checks the "
            "backward"
        )
    report = _check(
        func,
        inputs,
        reference_func=reference_func,
        atol=atol,
        rtol=rtol,
        nondet_tol=nondet_tol,
        mode="fast" if fast_mode else "auto",
        seed=seed,
        names=None,
        resolve=None,
        check_grad_dtypes=check_grad_dtypes,
        undefined_grad=check_undefined_grad,
        batched_grad=check_batched_grad,
    )
    try:
        raise_unless_passed(report)
    except (GradientMismatch, InconclusiveCheck):
        if raise_exception:
            raise
        return False
    return True
