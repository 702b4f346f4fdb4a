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
from oracles.verify.kernels import PLANTED as PLANT
from oracles.verify.kernels import (
    expected_statuses,
    float32_kernel_reference,
    plant_index,
    torch_function,
    torch_inputs,
)

pytestmark = pytest.mark.torch


# --- the Functions (oracles.verify.kernels): each with an optional planted error -------------


FUNCTIONS = ("affine", "softmax_ce", "layernorm", "relu")


def _one_element(name, inputs):
    """A flat index of the piece with the planted error whose gradient is far from 0."""
    return 1


# --- correct Functions pass; planted errors fail --------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(("seed", "size", "scale"), [(0, 2, 1.0), (1, 5, 30.0), (2, 3, 1e-3)])
def test_correct_float64_functions_pass(name, seed, size, scale):
    xs = torch_inputs(name, seed, size, scale)
    report = ot.check(torch_function(name).apply, xs, seed=seed)
    assert report.status == "passed", str(report)
    assert ot.gradcheck(torch_function(name).apply, xs, seed=seed) is True
    if name == "relu":
        assert any("kink" in n for n in report.notes), report.notes


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(("err", "where"), [(1e-6, "one"), (-1e-6, "one"), (1e-7, None)])
def test_planted_float64_errors_fail(name, err, where):
    xs = torch_inputs(name, 3, 3)
    index = _one_element(name, xs) if where == "one" else None
    report = ot.check(torch_function(name, err, index).apply, xs)
    assert report.status == "failed", str(report)
    assert report.failed_inputs == [report.inputs[PLANT[name]].name]
    with pytest.raises(GradientMismatch, match="FAILED"):
        ot.gradcheck(torch_function(name, err, index).apply, xs)
    assert ot.gradcheck(torch_function(name, err, index).apply, xs, raise_exception=False) is False


def _float32_is_off(name, xs):
    """Whether the float32 backward itself is off from the float64 one (the same Function on
    the same values in float64) by more than 1e-4 relative in an element that is not
    negligible (>= 1e-3 of the largest): where float32 rounding, not the check, limits what
    can be resolved (softmax-CE saturated: p - 1 for p near 1 in float32)."""
    wide = tuple(t.detach().double().requires_grad_() if t.is_floating_point() else t for t in xs)
    leaves32 = [t for t in xs if t.requires_grad]
    leaves64 = [t for t in wide if t.requires_grad]
    y32, y64 = torch_function(name).apply(*xs), torch_function(name).apply(*wide)
    c = torch.ones_like(y64)
    g32 = torch.autograd.grad(y32, leaves32, c.float())
    g64 = torch.autograd.grad(y64, leaves64, c)
    for a, b in zip(g32, g64, strict=True):
        a, b = a.double().abs().numpy(), b.abs().numpy()
        big = b >= 1e-3 * b.max()
        if np.any(np.abs(a - b)[big] > 1e-4 * b[big]):
            return True
    return False


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_functions_pass_at_every_seed(name):
    """12 seeds: every size 1-4 with every scale 1e-3, 1, 30: no seed-dependent false alarm in
    float32. Inconclusive only where the float32 backward itself cannot deliver 1e-4 relative
    (:func:`_float32_is_off`), and then the float64 check of the same values passes."""
    outcomes = []
    for seed in range(12):
        xs = torch_inputs(name, seed, 1 + seed % 4, [1.0, 30.0, 1e-3][seed % 3], torch.float32)
        report = ot.check(torch_function(name).apply, xs, seed=seed)
        assert report.status != "failed", str(report)
        if report.status == "inconclusive":
            assert _float32_is_off(name, xs), str(report)
            wide = torch_inputs(name, seed, 1 + seed % 4, [1.0, 30.0, 1e-3][seed % 3])
            assert ot.check(torch_function(name).apply, wide, seed=seed).ok
        outcomes.append(report.status)
    assert outcomes.count("passed") >= 9, outcomes


def test_saturated_float32_softmax_is_inconclusive_where_float32_cannot_resolve_it():
    """Logits of scale 30, the labels' logits the largest: p - 1 in float32 keeps 3 digits
    of a gradient of 1e-4. The float32 check says inconclusive, not passed or failed; the
    same values in float64 pass."""
    xs = torch_inputs("softmax_ce", 25, 2, 30.0, torch.float32)
    assert _float32_is_off("softmax_ce", xs)
    report = ot.check(torch_function("softmax_ce").apply, xs, seed=25)
    assert report.status == "inconclusive", str(report)
    assert report.notes[0].startswith("float32 kernel: agrees within")
    wide = torch_inputs("softmax_ce", 25, 2, 30.0)
    assert ot.check(torch_function("softmax_ce").apply, wide, seed=25).ok


def _scaled(F, out_scale):
    """``F.apply`` with its output multiplied by ``out_scale`` (the custom backward then sees a
    grad_output of that scale)."""

    def func(*xs):
        return F.apply(*xs) * out_scale

    func.__name__ = f"{F.__name__} x {out_scale:g}"
    return func


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("in_scale", "out_scale"), [(1e-6, 1e6), (1e6, 1e-6)])
def test_inputs_and_outputs_at_extreme_scales(name, dtype, in_scale, out_scale):
    """Inputs of scale 1e-6 with outputs multiplied by 1e6, and the other way round: correct
    passes, one element off by 1e-6 (float64) or 1e-3 (float32) fails. The one exception is
    softmax-CE in float32 at logits of 1e6, where one float32 ulp of a logit (0.06) moves a
    probability by 6%: there the check says inconclusive, for the right and the wrong backward
    alike, or fails the wrong one."""
    xs = torch_inputs(name, 1, 3, in_scale, dtype)
    leaves = [t for t in xs if t.requires_grad]
    y = _scaled(torch_function(name), out_scale)(*xs)
    g = torch.autograd.grad(y, leaves, torch.ones_like(y))[PLANT[name]]
    where = plant_index(g.detach().double().numpy())
    err = 1e-6 if dtype == torch.float64 else 1e-3
    right = ot.check(_scaled(torch_function(name), out_scale), xs, seed=1)
    wrong = ot.check(_scaled(torch_function(name, err, where), out_scale), xs, seed=1)
    right_may, wrong_may = expected_statuses(name, dtype == torch.float32, in_scale)
    assert right.status in right_may, str(right)
    assert wrong.status in wrong_may, str(wrong)
    if wrong.status == "failed":
        assert wrong.failed_inputs == [wrong.inputs[PLANT[name]].name]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saturated_softmax_with_gradients_of_1e_57_passes(dtype):
    """Logits of scale 100: most probabilities are e^-100 and below, and so are their gradients.

    A numeric screen that accepted a cheap difference (exactly 0, error 0) for them, because the
    analytic value was within the largest allowance anywhere, failed them against their own.
    """
    xs = torch_inputs("softmax_ce", 23, 8, 100.0, dtype)
    report = ot.check(torch_function("softmax_ce").apply, xs, seed=23)
    assert report.status == "passed", str(report)
    (g,) = torch.autograd.grad(torch_function("softmax_ce").apply(*xs), xs[0])
    tiny = g.abs()[g != 0].min()
    assert tiny < (1e-40 if dtype == torch.float64 else 1e-20)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_one_element_off_by_1e3_fails(name, seed):
    xs = torch_inputs(name, seed, 3, 1.0, torch.float32)
    report = ot.check(torch_function(name, 1e-3, _one_element(name, xs)).apply, xs, seed=seed)
    assert report.status == "failed", str(report)
    assert report.failed_inputs == [report.inputs[PLANT[name]].name]
    assert report.notes[0].startswith("float32 kernel: differs by up to")


def test_float32_report_says_how_close_and_how_sharp():
    xs = torch_inputs("layernorm", 4, 3, 1.0, torch.float32)
    report = ot.check(torch_function("layernorm").apply, xs)
    assert report.ok
    note = report.notes[0]
    assert note.startswith("float32 kernel: agrees within ")
    ulps = float(note.split("agrees within ")[1].split(" ")[0])
    assert 0 <= ulps < 64
    caught = float(note.split("would catch relative errors >= ")[1].split(". ")[0])
    assert 1e-7 < caught < 1e-3
    assert "x (3, 4) float32 cpu" in report.context["inputs"]
    # What the note claims, the check delivers: an error of 10 x that size in one element fails.
    bad = ot.check(torch_function("layernorm", 10 * caught, 1).apply, xs)
    assert bad.status == "failed", str(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kernels_pass_and_gross_errors_fail(dtype):
    for seed in range(4):
        xs = torch_inputs("affine", seed, 3, 1.0, dtype)
        assert ot.check(torch_function("affine").apply, xs, seed=seed).status == "passed"
        bad = torch_function("affine", -2.0, 1)  # one element's sign flipped
        bad = ot.check(bad.apply, xs, seed=seed)
        assert bad.status == "failed", str(bad)
    name = str(dtype).replace("torch.", "")
    note = ot.check(torch_function("affine").apply, xs).notes[0]
    assert note.startswith(f"{name} kernel: agrees within")


# --- float32-only kernels and reference_func -----------------------------------------------------


def test_float32_only_kernel_needs_and_uses_reference_func():
    kernel = torch_function("float32_kernel")
    for seed, size in [(5, 3), (6, 1), (7, 6)]:
        xs = torch_inputs("float32_kernel", seed, size, 1.0, torch.float32)
        with pytest.raises(InvalidArgument, match="reference_func="):
            ot.check(kernel.apply, xs)
        report = ot.check(kernel.apply, xs, reference_func=float32_kernel_reference, seed=seed)
        assert report.status == "passed", str(report)
        assert report.oracles == ("numeric", "torch")
        assert "reference_func in float64" in report.notes[0]
        bad = torch_function("float32_kernel", 1e-3, 1)
        bad = ot.check(bad.apply, xs, reference_func=float32_kernel_reference, seed=seed)
        assert bad.status == "failed", str(bad)
        assert bad.failed_inputs == ["x"]
        assert bad.oracles_blame_derivation()


def test_reference_func_is_a_second_oracle_in_float64():
    xs = torch_inputs("affine", 6, 3)
    reference = lambda x, W, b: x @ W + b  # noqa: E731
    report = ot.check(torch_function("affine").apply, xs, reference_func=reference)
    assert report.ok and report.oracles == ("numeric", "torch")
    bad = ot.check(torch_function("affine", 1e-6, 1).apply, xs, reference_func=reference)
    assert set(bad.input("W").checks) == {"numeric", "torch"}
    assert not bad.input("W").checks["torch"].ok and not bad.input("W").checks["numeric"].ok


# --- guards -------------------------------------------------------------------------------------


class WritesGradOutput(torch_function("relu")):
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
    assert ot.gradcheck(torch_function("relu").apply, (x,)) is True


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
            dx = gs * torch.cos(x) - gc * torch.sin(x)
            return torch.cat([dx[:1] * (1 + err), dx[1:]])

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
    xs = torch_inputs("affine", 0, 2)
    assert ot.gradcheck(torch_function("affine").apply, xs, check_batched_grad=True)
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
        xs = torch_inputs(name, 7, 3)
        func = torch_function(name).apply
        assert torch.autograd.gradcheck(func, xs, **kwargs) is True
        assert ot.gradcheck(func, xs, **kwargs) is True
        # a tensor, not a tuple, as the inputs: both accept it
    x = _x(4).requires_grad_()
    assert torch.autograd.gradcheck(torch.sin, x, **kwargs) is True
    assert ot.gradcheck(torch.sin, x, **kwargs) is True


def test_gross_error_both_return_false_small_error_only_the_drop_in():
    xs = torch_inputs("affine", 8, 3)
    gross, small = torch_function("affine", 0.2, 1).apply, torch_function("affine", 1e-5, 1).apply
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
    xs = torch_inputs("layernorm", 9, 3, 1.0, torch.float32)
    copies = [t.detach().clone() for t in xs]
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state
    filters = list(warnings.filters)
    errstate = np.geterr()
    grad_mode = torch.is_grad_enabled()
    assert ot.check(torch_function("layernorm").apply, xs).ok
    assert ot.check(torch_function("layernorm", 1e-3, 1).apply, xs).status == "failed"
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
    xs = torch_inputs("affine", 10, 2)
    assert gradcheck.torch(torch_function("affine").apply, xs).ok
    with pytest.raises(GradientMismatch):
        gradcheck.torch(torch_function("affine", 1e-6, 1).apply, xs)
