"""Fuzzing findings on oracles.torch, pinned: tied maxima in float32 kernels, warning filters.

* A float32 max-pool written the usual way (windows gathered with reshape / permute, then
  ``max``) must fail when its backward routes the gradient to every tied maximum, as it does
  in float64. The Monte-Carlo rounding allowance moved the copy a reshape makes
  (``aten._unsafe_view``) by an ulp, which broke the ties in the data, so the tied elements'
  allowance was their whole gradient and the joint tie test got it as its atol: the wrong
  routing passed at every seed, size and scale tried.
* ``torch.autograd.grad`` imports sympy on its first call, which appends a filter to
  ``warnings.filters``: a first check in a fresh interpreter must leave the caller's filters
  as they were.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import oracles.torch as ot

pytestmark = pytest.mark.torch


def _max_pool(route_to_every_tie):
    """A 2x2 / stride-2 max-pool over (N, H, W) as a custom Function."""

    class MaxPool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            n, h, w = x.shape
            b = x.reshape(n, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4)
            b = b.reshape(n, h // 2, w // 2, 4)
            out, idx = b.max(-1)
            ctx.save_for_backward(b, out, idx)
            ctx.shape = (n, h, w)
            return out

        @staticmethod
        def backward(ctx, g):
            b, out, idx = ctx.saved_tensors
            n, h, w = ctx.shape
            if route_to_every_tie:
                mask = (b == out[..., None]).to(g.dtype)
            else:
                mask = torch.nn.functional.one_hot(idx, 4).to(g.dtype)
            d = (mask * g[..., None]).reshape(n, h // 2, w // 2, 2, 2)
            return d.permute(0, 1, 3, 2, 4).reshape(n, h, w)

    return MaxPool.apply


def _tied_pixels(seed, shape, scale):
    """Integer pixels in which every 2x2 window holds its maximum exactly twice."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    x = rng.integers(0, 3, size=shape).astype(np.float64)
    for i in range(0, h, 2):
        for j in range(0, w, 2):
            cells = [(i, j), (i, j + 1), (i + 1, j), (i + 1, j + 1)]
            for k in range(n):
                a, c = rng.choice(4, size=2, replace=False)
                top = x[k, i : i + 2, j : j + 2].max() + 1
                x[k][cells[a]] = x[k][cells[c]] = top
    return torch.tensor(x * scale, dtype=torch.float32)


@pytest.mark.parametrize(
    ("seed", "shape", "scale"), [(0, (1, 2, 4), 1.0), (1, (2, 2, 2), 1e-3), (2, (1, 4, 2), 1e3)]
)
def test_a_float32_max_pool_routing_to_every_tie_fails(seed, shape, scale):
    x = _tied_pixels(seed, shape, scale)
    r = ot.check(_max_pool(True), (x.requires_grad_(),), seed=seed)
    assert r.status == "failed", str(r)
    assert "tie group" in str(r), str(r)


@pytest.mark.parametrize(("seed", "shape", "scale"), [(3, (1, 2, 4), 1.0), (4, (1, 2, 2), 1e3)])
def test_a_correct_float32_max_pool_at_ties_passes(seed, shape, scale):
    x = _tied_pixels(seed, shape, scale)
    before = x.clone()
    r = ot.check(_max_pool(False), (x.requires_grad_(),), seed=seed)
    assert r.status == "passed", str(r)
    assert torch.equal(x.detach(), before)


def _run_fresh(code):
    """Run ``code`` in a fresh interpreter (torch not yet called); it must print ok."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_first_check_in_a_fresh_interpreter_leaves_the_warning_filters_alone():
    code = """
import sys, warnings
import torch
import oracles.torch as ot

class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g

assert "sympy" not in sys.modules, "the test needs a first call of torch.autograd.grad"
before = list(warnings.filters)
x = torch.linspace(-1, 1, 4, dtype=torch.float64, requires_grad=True)
assert ot.check(Cube.apply, (x,)).status == "passed"
assert ot.gradcheck(Cube.apply, (x,))
added = [f for f in warnings.filters if f not in before]
assert warnings.filters == before, added
print("ok")
"""
    _run_fresh(code)


def test_check_vjp_against_torch_leaves_the_warning_filters_alone():
    """The same in ``check_vjp(..., against="torch")``: the autodiff oracles of the pipeline."""
    code = """
import sys, warnings
import numpy as np
import torch
from oracles import check_vjp

assert "sympy" not in sys.modules, "the test needs a first call of torch.autograd.grad"
before = list(warnings.filters)
x = np.linspace(-1, 1, 4)
r = check_vjp(lambda x: x**3, lambda g, x: 3 * x**2 * g, (x,),
              against=("numeric", "torch"), torch_fn=lambda t: t**3)
assert r.status == "passed", str(r)
added = [f for f in warnings.filters if f not in before]
assert warnings.filters == before, added
print("ok")
"""
    _run_fresh(code)
