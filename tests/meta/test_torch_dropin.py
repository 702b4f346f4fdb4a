"""oracles.torch: torch's backward through custom autograd Functions, judged; float32 kernels.

* The four Functions of the benchmark (affine, softmax-cross-entropy, layer
  norm, a ReLU at exact zeros) pass when right, at several sizes, scales
  and seeds, in float64 and float32, and fail with each planted error: one
  element off by 1e-6 relative (float64) or 1e-3 (float32), every element
  off by 1e-7 (float64).
* A correct float32 Function passes at every one of 32 seeds (no
  seed-dependent false alarm), and the report says how close it came.
* A float32-only kernel needs reference_func=; with it, it is checked.
* Guards: grad_output written in place, a non-reentrant backward (with
  torch's nondet_tol semantics), a gradient for an integer input, inputs
  modified, several outputs (undefined grads), batched cotangents.
* Signature compatibility: the drop-in and torch.autograd.gradcheck are
  called with the same arguments, and agree where both can see.
* Bad input raises the project's exception types; nothing of the caller's
  (tensors, torch and NumPy random states, warning filters) changes.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import oracles.torch as ot
from oracles.errors import (
    GradientMismatch,
    InvalidArgument,
    InvalidArgumentType,
    NonDeterministicFunction,
    UserFunctionError,
)

pytestmark = pytest.mark.torch


# --- the Functions: each with an optional planted error -----------------------------------------


def _planted(g, err, where):
    """``g`` off by a relative ``err``: in one flat element ``where``, or everywhere (None)."""
    if not err:
        return g
    if where is None:
        return g * (1 + err)
    g = g.clone()
    flat = g.view(-1)
    flat[where] = flat[where] * (1 + err)
    return g


def affine(err=0.0, where=None):
    class Affine(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W, b):
            ctx.save_for_backward(x, W)
            return x @ W + b

        @staticmethod
        def backward(ctx, g):
            x, W = ctx.saved_tensors
            return g @ W.T, _planted(x.T @ g, err, where), g.sum(0)

    return Affine


def softmax_ce(err=0.0, where=None):
    class SoftmaxCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, y):
            m = z.amax(dim=1, keepdim=True)
            lse = m + torch.log(torch.exp(z - m).sum(1, keepdim=True))
            ctx.save_for_backward(torch.exp(z - lse), y)
            return (lse.squeeze(1) - z.gather(1, y[:, None]).squeeze(1)).mean()

        @staticmethod
        def backward(ctx, g):
            p, y = ctx.saved_tensors
            d = p.clone()
            d[torch.arange(len(y)), y] -= 1
            return _planted(d * g / len(y), err, where), None

    return SoftmaxCE


def layernorm(err=0.0, where=None):
    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta):
            mu = x.mean(-1, keepdim=True)
            rstd = 1 / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
            xh = (x - mu) * rstd
            ctx.save_for_backward(xh, rstd, gamma)
            return xh * gamma + beta

        @staticmethod
        def backward(ctx, g):
            xh, rstd, gamma = ctx.saved_tensors
            gx = g * gamma
            dx = rstd * (gx - gx.mean(-1, keepdim=True) - xh * (gx * xh).mean(-1, keepdim=True))
            return _planted(dx, err, where), (g * xh).sum(0), g.sum(0)

    return LayerNorm


def relu(err=0.0, where=None):
    class Relu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return _planted(g * (x > 0).to(g.dtype), err, where)

    return Relu


def _inputs(name, seed, size, scale=1.0, dtype=torch.float64):
    """Inputs of one Function: shapes grow with ``size``; values scaled by ``scale``."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    if name == "affine":
        return (r(size, size + 1), r(size + 1, 2), r(2))
    if name == "softmax_ce":
        return (r(size, 5), torch.randint(0, 5, (size,), generator=gen))
    if name == "layernorm":
        return (r(size, 4), 1 + 0.1 * r(4), r(4))
    x = r(size, 3)
    x[x.abs() < 0.6 * scale] = 0.0  # a third of the elements at the kink, exactly
    x[0, 1] = abs(float(x[0, 1])) + scale  # one element active at least (else the gradient is 0)
    return (x,)


FUNCTIONS = {"affine": affine, "softmax_ce": softmax_ce, "layernorm": layernorm, "relu": relu}

#: Where the planted one-element error goes: the piece and a flat index that is not 0 there.
PLANT = {"affine": 1, "softmax_ce": 0, "layernorm": 0, "relu": 0}


def _checked(inputs):
    """The float tensors of ``inputs`` with requires_grad (the integer labels stay as they are)."""
    return tuple(t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs)


def _one_element(name, inputs):
    """A flat index of the piece with the planted error whose gradient is far from 0."""
    return 1


# --- correct Functions pass; planted errors fail --------------------------------------------------


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize(("seed", "size", "scale"), [(0, 2, 1.0), (1, 5, 30.0), (2, 3, 1e-3)])
def test_correct_float64_functions_pass(name, seed, size, scale):
    xs = _checked(_inputs(name, seed, size, scale))
    report = ot.check(FUNCTIONS[name]().apply, xs, seed=seed)
    assert report.status == "passed", str(report)
    assert ot.gradcheck(FUNCTIONS[name]().apply, xs, seed=seed) is True
    if name == "relu":
        assert any("kink" in n for n in report.notes), report.notes


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize(("err", "where"), [(1e-6, "one"), (-1e-6, "one"), (1e-7, None)])
def test_planted_float64_errors_fail(name, err, where):
    xs = _checked(_inputs(name, 3, 3))
    index = _one_element(name, xs) if where == "one" else None
    report = ot.check(FUNCTIONS[name](err, index).apply, xs)
    assert report.status == "failed", str(report)
    assert report.failed_inputs == [report.inputs[PLANT[name]].name]
    with pytest.raises(GradientMismatch, match="FAILED"):
        ot.gradcheck(FUNCTIONS[name](err, index).apply, xs)
    assert ot.gradcheck(FUNCTIONS[name](err, index).apply, xs, raise_exception=False) is False


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_float32_functions_pass_at_every_seed(name):
    """32 seeds, sizes 1-4, scales 1e-3 .. 30: no seed-dependent false alarm in float32."""
    failures = []
    for seed in range(32):
        xs = _checked(_inputs(name, seed, 1 + seed % 4, [1.0, 30.0, 1e-3][seed % 3], torch.float32))
        report = ot.check(FUNCTIONS[name]().apply, xs, seed=seed)
        if report.status != "passed":
            failures.append((seed, str(report)))
    assert not failures, failures[0][1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saturated_softmax_with_gradients_of_1e_57_passes(dtype):
    """Logits of scale 100: most probabilities are e^-100 and below, and so are their gradients.

    A numeric screen that accepted a cheap difference (exactly 0, error 0) for them, because the
    analytic value was within the largest allowance anywhere, failed them against their own.
    """
    xs = _checked(_inputs("softmax_ce", 23, 8, 100.0, dtype))
    report = ot.check(softmax_ce().apply, xs, seed=23)
    assert report.status == "passed", str(report)
    (g,) = torch.autograd.grad(softmax_ce().apply(*xs), xs[0])
    tiny = g.abs()[g != 0].min()
    assert tiny < (1e-40 if dtype == torch.float64 else 1e-20)


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_one_element_off_by_1e3_fails(name, seed):
    xs = _checked(_inputs(name, seed, 3, 1.0, torch.float32))
    report = ot.check(FUNCTIONS[name](1e-3, _one_element(name, xs)).apply, xs, seed=seed)
    assert report.status == "failed", str(report)
    assert report.failed_inputs == [report.inputs[PLANT[name]].name]
    assert report.notes[0].startswith("float32 kernel: differs by up to")


def test_float32_report_says_how_close_and_how_sharp():
    xs = _checked(_inputs("layernorm", 4, 3, 1.0, torch.float32))
    report = ot.check(layernorm().apply, xs)
    assert report.ok
    note = report.notes[0]
    assert note.startswith("float32 kernel: agrees within ")
    ulps = float(note.split("agrees within ")[1].split(" ")[0])
    assert 0 <= ulps < 64
    caught = float(note.split("would catch relative errors >= ")[1].split(". ")[0])
    assert 1e-7 < caught < 1e-3
    assert "x (3, 4) float32 cpu" in report.context["inputs"]
    # What the note claims, the check delivers: an error of 10 x that size in one element fails.
    bad = ot.check(layernorm(10 * caught, 1).apply, xs)
    assert bad.status == "failed", str(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kernels_pass_and_gross_errors_fail(dtype):
    for seed in range(4):
        xs = _checked(_inputs("affine", seed, 3, 1.0, dtype))
        assert ot.check(affine().apply, xs, seed=seed).status == "passed"
        bad = ot.check(affine(-2.0, 1).apply, xs, seed=seed)  # one element's sign flipped
        assert bad.status == "failed", str(bad)
    name = str(dtype).replace("torch.", "")
    assert ot.check(affine().apply, xs).notes[0].startswith(f"{name} kernel: agrees within")


# --- float32-only kernels and reference_func -----------------------------------------------------


def float32_only(err=0.0):
    """A 'kernel' that refuses any dtype but float32, as compiled kernels do."""

    class Kernel(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            if x.dtype != torch.float32:
                raise TypeError("the kernel is compiled for float32 only")
            ctx.save_for_backward(x, w)
            return torch.tanh(x * w)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            d = g * (1 - torch.tanh(x * w) ** 2)
            return d * w, _planted((d * x).sum(0), err, 0)

    return Kernel


def _tanh_reference(x, w):
    return torch.tanh(x * w)


def test_float32_only_kernel_needs_and_uses_reference_func():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, generator=gen).requires_grad_()
    w = torch.randn(4, generator=gen).requires_grad_()
    with pytest.raises(InvalidArgument, match="reference_func="):
        ot.check(float32_only().apply, (x, w))
    report = ot.check(float32_only().apply, (x, w), reference_func=_tanh_reference)
    assert report.status == "passed", str(report)
    assert report.oracles == ("numeric", "torch")
    assert "reference_func in float64" in report.notes[0]
    bad = ot.check(float32_only(1e-3).apply, (x, w), reference_func=_tanh_reference)
    assert bad.status == "failed"
    assert bad.failed_inputs == ["w"]
    assert bad.oracles_blame_derivation()


def test_reference_func_is_a_second_oracle_in_float64():
    xs = _checked(_inputs("affine", 6, 3))
    reference = lambda x, W, b: x @ W + b  # noqa: E731
    report = ot.check(affine().apply, xs, reference_func=reference)
    assert report.ok and report.oracles == ("numeric", "torch")
    bad = ot.check(affine(1e-6, 1).apply, xs, reference_func=reference)
    assert set(bad.input("W").checks) == {"numeric", "torch"}
    assert not bad.input("W").checks["torch"].ok and not bad.input("W").checks["numeric"].ok


# --- guards -------------------------------------------------------------------------------------


class WritesGradOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g[x <= 0] = 0  # right values, written into grad_output
        return g


class NotReentrant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.scale = 2.0
        return x**2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = ctx.scale * x * g
        ctx.scale *= 1.5  # state carried from one backward to the next
        return out


class ChangesSaved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x.clone())
        return x**2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = 2 * x * g
        x.mul_(1.5)  # a saved tensor changed in place: a second backward cannot run
        return out


def _jittery(scale):
    """A backward whose result varies by about ``scale`` between runs (atomics on a GPU, say)."""
    calls = iter(range(10**6))

    class Jittery(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return torch.cos(x) * g * (1 + scale * (next(calls) % 2))

    return Jittery


class GradForLabels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return 2 * g, torch.ones(3)  # a gradient for integer labels


class GradForConstant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t):
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        return g * t, g * x  # t does not require grad: torch discards its gradient


class ModifiesInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, g):
        (scale,) = ctx.saved_tensors
        out = g * scale
        scale.add_(1.0)  # a non-differentiable input, changed in place by backward
        return out, None


def _x(n=3, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_backward_writing_into_grad_output_fails():
    report = ot.check(
        WritesGradOutput.apply, (torch.tensor([-1.0, 0.5, 2.0]).double().requires_grad_(),)
    )
    assert report.status == "failed"
    assert any("wrote into its grad_output in place" in p for p in report.problems), report.problems
    assert any("WritesGradOutput" in p for p in report.problems)


def test_backward_writing_into_grad_output_inside_a_larger_function_fails():
    def func(x):
        return WritesGradOutput.apply(x * 3.0).sum() * 2.0

    report = ot.check(func, (torch.tensor([-1.0, 0.5, 2.0]).double().requires_grad_(),))
    assert any("wrote into its grad_output in place" in p for p in report.problems)


def test_non_reentrant_backward_fails_with_nondet_tol_semantics():
    report = ot.check(NotReentrant.apply, (_x().requires_grad_(),))
    assert report.status == "failed"
    assert any("not reentrant" in p and "nondet_tol=0" in p for p in report.problems)
    assert (
        ot.gradcheck(NotReentrant.apply, (_x().requires_grad_(),), raise_exception=False) is False
    )
    # torch's own gradcheck says the same thing.
    with pytest.raises(Exception, match="not reentrant"):
        torch.autograd.gradcheck(NotReentrant.apply, (_x().requires_grad_(),))
    report = ot.check(ChangesSaved.apply, (_x().requires_grad_(),))
    assert any("not reentrant" in p and "saved_tensors" in p for p in report.problems)


def test_nondet_tol_accepts_variation_within_it_and_no_more():
    x = _x()
    report = ot.check(_jittery(1e-10).apply, (x.clone().requires_grad_(),))
    assert report.status == "failed"
    nondet = [p for p in report.problems if "not reentrant" in p or "not deterministic" in p]
    assert nondet and all("nondet_tol=0" in p for p in nondet), report.problems
    with pytest.raises(Exception, match="not reentrant"):
        torch.autograd.gradcheck(_jittery(1e-10).apply, (x.clone().requires_grad_(),))
    report = ot.check(_jittery(1e-10).apply, (x.clone().requires_grad_(),), nondet_tol=1e-9)
    assert report.status == "passed", str(report)
    assert any("nondet_tol=1e-09" in n for n in report.notes)
    assert torch.autograd.gradcheck(
        _jittery(1e-10).apply, (x.clone().requires_grad_(),), nondet_tol=1e-9
    )
    report = ot.check(_jittery(1e-6).apply, (x.clone().requires_grad_(),), nondet_tol=1e-9)
    assert report.status == "failed"
    assert any("not reentrant" in p and "nondet_tol=1e-09" in p for p in report.problems)


def test_gradient_for_an_integer_input_fails_for_a_float_input_is_noted():
    x = _x().requires_grad_()
    report = ot.check(GradForLabels.apply, (x, torch.tensor([1, 0, 2])))
    assert report.status == "failed"
    assert any("labels" in p and "cannot have one" in p for p in report.problems), report.problems
    report = ot.check(GradForConstant.apply, (x, _x(seed=1)))
    assert report.status == "passed", str(report)
    assert any("does not require grad" in n and "t" in n for n in report.notes)


def test_inputs_modified_in_place_fail_and_callers_tensors_stay():
    x, scale = _x().requires_grad_(), _x(seed=2)
    before = scale.clone()
    report = ot.check(ModifiesInput.apply, (x, scale))
    assert any("modified its argument scale in place" in p for p in report.problems)
    assert torch.equal(scale, before)


class LeakyRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 0, x, 0.1 * x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.where(x > 0, torch.ones_like(x), torch.full_like(x, 0.1))


def test_kinks_at_exact_zeros_accepted_where_torch_raises_a_false_alarm():
    x = torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    report = ot.check(LeakyRelu.apply, (x,))
    assert report.status == "passed", str(report)
    assert report.inputs[0].checks["numeric"].kinks == 3
    assert ot.gradcheck(LeakyRelu.apply, (x,)) is True
    assert torch.autograd.gradcheck(LeakyRelu.apply, (x,), raise_exception=False) is False
    # A value outside the one-sided slopes (0.1 and 1) is no subgradient: it fails.
    wrong = ot.check(_leaky(2.0), (x,))
    assert wrong.status == "failed" and wrong.inputs[0].checks["numeric"].n_failed == 3


def _leaky(at_zero):
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.where(x > 0, x, 0.1 * x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            slope = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, 0.1))
            return g * torch.where(x == 0, torch.full_like(x, at_zero), slope)

    return Wrong.apply


def test_a_float32_constant_in_a_float64_backward_is_caught():
    """``torch.where(x > 0, 1.0, 0.1)`` makes a float32 tensor: 0.1 off by 1.5e-8 relative."""

    class Leaky32(LeakyRelu):
        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.where(x > 0, 1.0, 0.1).to(g.dtype)

    x = torch.tensor([0.5, -1.0, -2.0], dtype=torch.float64, requires_grad=True)
    report = ot.check(Leaky32.apply, (x,))
    assert report.status == "failed"
    rel = [e.rel_error for e in report.inputs[0].worst if not e.passed]
    assert len(rel) == 2 and all(abs(r - 1.49e-8) < 1e-9 for r in rel)
    assert torch.autograd.gradcheck(Leaky32.apply, (x,))  # torch cannot see it


def test_relu_at_exact_zeros_accepted():
    x = torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    assert ot.gradcheck(relu().apply, (x,)) is True


def test_nondeterministic_forward_raises():
    class Noisy(torch.autograd.Function):
        calls = iter(range(10**6))

        @staticmethod
        def forward(ctx, x):
            return x + 1e-3 * next(Noisy.calls)

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(NonDeterministicFunction):
        ot.check(Noisy.apply, (_x().requires_grad_(),))


# --- several outputs, undefined grads, batched cotangents ----------------------------------------


def two_outputs(materialize=True, none_safe=True, err=0.0):
    class SinCos(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(materialize)
            ctx.save_for_backward(x)
            return torch.sin(x), torch.cos(x)

        @staticmethod
        def backward(ctx, gs, gc):
            (x,) = ctx.saved_tensors
            if none_safe:
                gs = torch.zeros_like(x) if gs is None else gs
                gc = torch.zeros_like(x) if gc is None else gc
            return _planted(gs * torch.cos(x) - gc * torch.sin(x), err, 0)

    return SinCos


def test_several_outputs_each_get_a_cotangent():
    x = _x(4).requires_grad_()
    report = ot.check(two_outputs().apply, (x,))
    assert report.status == "passed", str(report)
    assert "output 0 (4,) float64, output 1 (4,) float64" in report.context["outputs"]
    assert ot.check(two_outputs(err=1e-6).apply, (x,)).status == "failed"


def test_undefined_grad_output_that_backward_cannot_handle_fails():
    x = _x(4).requires_grad_()
    broken = two_outputs(materialize=False, none_safe=False)
    report = ot.check(broken.apply, (x,))
    assert any("only output" in p and "undefined" in p for p in report.problems), report.problems
    assert ot.gradcheck(broken.apply, (x,), check_undefined_grad=False) is True
    assert ot.check(two_outputs(materialize=False).apply, (x,)).status == "passed"


class BatchUnsafe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        peak = float(g.abs().max())  # a Python number: impossible under vmap
        return torch.cos(x) * g * (1.0 if peak >= 0 else 2.0)


def test_batched_cotangents_checked_on_request():
    x = _x(3).requires_grad_()
    assert ot.gradcheck(affine().apply, _checked(_inputs("affine", 0, 2)), check_batched_grad=True)
    assert ot.gradcheck(BatchUnsafe.apply, (x,)) is True
    assert (
        ot.gradcheck(BatchUnsafe.apply, (x,), check_batched_grad=True, raise_exception=False)
        is False
    )
    with pytest.raises(GradientMismatch, match="batch of cotangents"):
        ot.gradcheck(BatchUnsafe.apply, (x,), check_batched_grad=True)
    assert (
        torch.autograd.gradcheck(
            BatchUnsafe.apply, (x,), check_batched_grad=True, raise_exception=False
        )
        is False
    )


# --- signature compatibility with torch.autograd.gradcheck ----------------------------------------


def test_signature_is_a_superset_of_torchs_with_the_same_kinds():
    ours = inspect.signature(ot.gradcheck).parameters
    theirs = inspect.signature(torch.autograd.gradcheck).parameters
    for name, p in theirs.items():
        assert name in ours, name
        assert ours[name].kind == p.kind, name
        if name not in ("atol", "rtol"):  # ours default to 0 + the numerics' own error
            assert ours[name].default == p.default, name
    assert list(ours)[:2] == ["func", "inputs"]


SAME_CALLS = [
    {},
    {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3},
    {"raise_exception": False},
    {"nondet_tol": 0.0, "check_undefined_grad": True, "check_grad_dtypes": True},
    {"check_batched_grad": True},
    {"fast_mode": True},
    {"check_backward_ad": True, "masked": None},
]


@pytest.mark.parametrize("kwargs", SAME_CALLS, ids=lambda k: ",".join(k) or "defaults")
def test_same_arguments_as_torch_gradcheck(kwargs):
    for name in ("affine", "layernorm"):
        xs = _checked(_inputs(name, 7, 3))
        func = FUNCTIONS[name]().apply
        assert torch.autograd.gradcheck(func, xs, **kwargs) is True
        assert ot.gradcheck(func, xs, **kwargs) is True
        # a tensor, not a tuple, as the inputs: both accept it
    x = _x(4).requires_grad_()
    assert torch.autograd.gradcheck(torch.sin, x, **kwargs) is True
    assert ot.gradcheck(torch.sin, x, **kwargs) is True


def test_gross_error_both_return_false_small_error_only_the_drop_in():
    xs = _checked(_inputs("affine", 8, 3))
    gross, small = affine(0.2, 1).apply, affine(1e-5, 1).apply
    for checker in (torch.autograd.gradcheck, ot.gradcheck):
        assert checker(gross, xs, raise_exception=False) is False
    assert torch.autograd.gradcheck(small, xs, raise_exception=False) is True
    assert ot.gradcheck(small, xs, raise_exception=False) is False
    with pytest.raises(AssertionError):  # GradientMismatch is an AssertionError
        ot.gradcheck(small, xs)


def test_non_tensor_arguments_pass_through():
    def scaled(x, k, name):
        assert isinstance(k, float) and name == "label"
        return torch.sin(x) * k

    x = _x().requires_grad_()
    assert torch.autograd.gradcheck(scaled, (x, 2.5, "label")) is True
    assert ot.gradcheck(scaled, (x, 2.5, "label")) is True


# --- bad input, state left alone ---------------------------------------------------------------


BAD = [
    (
        "no input requires grad",
        lambda: ot.check(torch.sin, (_x(),)),
        InvalidArgument,
        "requires_grad",
    ),
    (
        "func not callable",
        lambda: ot.check(3, (_x().requires_grad_(),)),
        InvalidArgumentType,
        "func",
    ),
    ("inputs a set", lambda: ot.check(torch.sin, {1}), InvalidArgumentType, "inputs"),
    (
        "complex input",
        lambda: ot.check(torch.sin, (torch.ones(2, dtype=torch.complex128, requires_grad=True),)),
        InvalidArgumentType,
        "complex",
    ),
    (
        "NaN input",
        lambda: ot.check(torch.sin, (torch.tensor([1.0, float("nan")]).double().requires_grad_(),)),
        InvalidArgument,
        "NaN",
    ),
    (
        "negative nondet_tol",
        lambda: ot.check(torch.sin, (_x().requires_grad_(),), nondet_tol=-1.0),
        InvalidArgument,
        "nondet_tol",
    ),
    (
        "negative atol",
        lambda: ot.gradcheck(torch.sin, (_x().requires_grad_(),), atol=-1.0),
        InvalidArgument,
        "atol",
    ),
    (
        "eps zero",
        lambda: ot.gradcheck(torch.sin, (_x().requires_grad_(),), eps=0.0),
        InvalidArgument,
        "eps",
    ),
    (
        "raise_exception not bool",
        lambda: ot.gradcheck(torch.sin, (_x().requires_grad_(),), raise_exception=1),
        InvalidArgumentType,
        "raise_exception",
    ),
    (
        "masked",
        lambda: ot.gradcheck(torch.sin, (_x().requires_grad_(),), masked=True),
        InvalidArgument,
        "masked",
    ),
    (
        "forward AD",
        lambda: ot.gradcheck(torch.sin, (_x().requires_grad_(),), check_forward_ad=True),
        InvalidArgument,
        "check_forward_ad",
    ),
    (
        "backward AD off",
        lambda: ot.gradcheck(torch.sin, (_x().requires_grad_(),), check_backward_ad=False),
        InvalidArgument,
        "check_backward_ad",
    ),
    (
        "reference_func not callable",
        lambda: ot.check(torch.sin, (_x().requires_grad_(),), reference_func="sin"),
        InvalidArgumentType,
        "reference_func",
    ),
    (
        "func raises",
        lambda: ot.check(lambda x: x.no_such_method(), (_x().requires_grad_(),)),
        UserFunctionError,
        "func raised AttributeError",
    ),
    (
        "func returns a number",
        lambda: ot.check(lambda x: 3.0, (_x().requires_grad_(),)),
        UserFunctionError,
        "tensor",
    ),
    (
        "no output depends on the inputs",
        lambda: ot.check(lambda x: torch.ones(2), (_x().requires_grad_(),)),
        UserFunctionError,
        "requires grad",
    ),
]


@pytest.mark.parametrize(("case", "call", "exc", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_the_projects_exceptions(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_callers_state_is_untouched():
    xs = _checked(_inputs("layernorm", 9, 3, 1.0, torch.float32))
    copies = [t.detach().clone() for t in xs]
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state
    filters = list(warnings.filters)
    errstate = np.geterr()
    grad_mode = torch.is_grad_enabled()
    assert ot.check(layernorm().apply, xs).ok
    assert ot.check(layernorm(1e-3, 1).apply, xs).status == "failed"
    assert all(torch.equal(a.detach(), b) for a, b in zip(xs, copies, strict=True))
    assert all(t.grad is None for t in xs)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert warnings.filters == filters and np.geterr() == errstate
    assert torch.is_grad_enabled() == grad_mode


def test_import_oracles_and_the_drop_in_load_no_torch():
    code = (
        "import sys, oracles, oracles.torch, oracles.jax\n"
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules\n"
        "import torch\n"
        "assert torch.__file__ != oracles.torch.__file__ and torch.autograd.gradcheck\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_plugin_fixture_checks_torch_functions(gradcheck):
    xs = _checked(_inputs("affine", 10, 2))
    assert gradcheck.torch(affine().apply, xs).ok
    with pytest.raises(GradientMismatch):
        gradcheck.torch(affine(1e-6, 1).apply, xs)
