"""The objective every numeric derivative differentiates, and its rounding-noise model.

``phi(x) = <cotangent, fn(*x)>`` over float64 working copies of the inputs
(:class:`ScalarObjective`), the constants of the step ladder, and the result
type of the numeric methods (:class:`Estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oracles.errors import UserFunctionError

__all__ = ["EPS", "N_RUNGS", "NOISE_SAFETY", "T0", "Estimate", "ScalarObjective", "changed_noise"]

EPS = float(np.finfo(np.float64).eps)


#: Largest step of the ladder, absolute (see the module notes for why not relative).
T0 = 2.0**-3


#: Number of rungs; 2^-3 .. 2^-27 (7.5e-9).
N_RUNGS = 25


#: Safety factor on the rounding-noise model of one evaluation of phi.
NOISE_SAFETY = 8.0


@dataclass
class Estimate:
    """Numeric derivatives with their error estimates, one entry per probe.

    Attributes
    ----------
    value : ndarray
        The derivative estimate (Richardson-extrapolated central difference).
    error : ndarray
        Its estimated absolute error (truncation + rounding). ``inf`` where no
        rung gave a finite value.
    step : ndarray
        The step of the rung that was chosen.
    kink : ndarray of bool
        True where the one-sided slopes differ by a jump that does not shrink
        with the step: the function is not differentiable there.
    left, right : ndarray
        One-sided slopes ``(phi(x) - phi(x - t)) / t`` and
        ``(phi(x + t) - phi(x)) / t`` at the smallest rung evaluated (only
        meaningful where ``kink`` is True; ``nan`` elsewhere).
    nonfinite : ndarray of bool
        True where ``fn`` returned NaN or inf at some perturbed point used.
    evaluations : int
        Number of calls of ``fn`` spent.
    """

    value: np.ndarray
    error: np.ndarray
    step: np.ndarray
    kink: np.ndarray
    left: np.ndarray
    right: np.ndarray
    nonfinite: np.ndarray
    evaluations: int = 0
    notes: list = field(default_factory=list)


class ScalarObjective:
    """``phi(xs) = sum(cotangent * fn(*xs))`` over float64 working copies.

    Rounding-noise model: an output element ``f`` that changed carries noise
    ``eps * max(|f|, 1)``: the intermediates it was computed from are taken
    to be of magnitude at least 1 (``log(1 + 1e-14)`` is tiny but rounded
    at the scale of the 1). Functions whose every intermediate is far below
    1 get error estimates that are conservative by that factor; rescale
    such inputs for a sharper check.

    Holds the working copies of the inputs (float64, C-contiguous, owned by
    this object) and hands ``fn`` a fresh copy of them on every call, so that
    ``fn`` can neither change them nor keep references that the next
    perturbation would change (an ``fn`` that returns its input, or a view of
    it, must not see its earlier outputs move). The copies cost about 4% of
    a forward pass of the 784-128-10 MLP.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``.
    inputs : sequence of ndarray
        Float64 arrays; copied.
    cotangent : ndarray
        Shaped like ``fn(*inputs)``.
    """

    def __init__(self, fn, inputs, cotangent):
        self.fn = fn
        self.work = [np.array(x, dtype=np.float64, order="C", copy=True) for x in inputs]
        self.cotangent = np.array(cotangent, dtype=np.float64, copy=True)
        self.calls = 0
        self.notes = []
        out = self.output(self.work)
        if out.shape != self.cotangent.shape:
            raise UserFunctionError(
                f"fn(*inputs) returned shape {out.shape}, but the cotangent has shape "
                f"{self.cotangent.shape}; they must match"
            )
        self.base_output = out
        self.base = self._contract(out)
        #: sum |c * f|: the scale of the rounding error of the contraction itself.
        self.scale = float(np.sum(np.abs(self.cotangent * out)))

    def output(self, xs):
        """``fn(*xs)`` on fresh copies, as a float64 array (``xs`` are not modified)."""
        self.calls += 1
        # Perturbed points may leave fn's domain (log of a negative at the
        # largest step): such rungs are skipped, not warned about.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            out = self.fn(*[x.copy() for x in xs])
        return np.asarray(out, dtype=np.float64)

    def _contract(self, out):
        if out.shape != self.cotangent.shape:
            raise UserFunctionError(
                f"fn returned shape {out.shape} at a perturbed point but {self.cotangent.shape} at "
                "the evaluation point"
            )
        return float(np.vdot(self.cotangent.ravel(), out.ravel()))

    def __call__(self, xs):
        return self._contract(self.output(xs))

    def difference(self, xs_plus, xs_minus, mask):
        """``phi(xs_plus) - phi(xs_minus)`` and its rounding noise.

        The outputs are subtracted elementwise *before* contracting with the
        cotangent: elements of ``fn``'s output that the perturbation does not
        touch cancel exactly, so the rounding noise is only that of the
        elements that changed, ``eps * sum |c| (|f+| + |f-|)`` over them,
        not that of the whole sum. ``mask`` (bool, shaped like the output)
        accumulates the elements that changed, across the rungs of one probe.
        Non-finite outputs give ``nan``.
        """
        fp = self.output(xs_plus)
        fm = self.output(xs_minus)
        if fp.shape != self.cotangent.shape or fm.shape != self.cotangent.shape:
            raise UserFunctionError(
                f"fn returned shape {fp.shape if fp.shape != self.cotangent.shape else fm.shape} "
                "at a "
                f"perturbed point but {self.cotangent.shape} at the evaluation point"
            )
        diff = fp - fm
        if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
            return np.nan, np.inf
        noise = changed_noise(self.cotangent, fp, fm, mask)
        return float(np.vdot(self.cotangent, diff)), noise

    def hidden_noise(self, mask, t0):
        """Bound on the derivative hidden by quantization in outputs that never changed.

        An output element ``f_i`` that stayed bitwise equal even at the
        largest step ``t0`` can still depend on the probe, by less than the
        rounding of the intermediates it was computed from, over ``t0``.
        (Softmax at logits of scale 500: a logit's effect on the normalizer
        is 1e-200 relative; a cross-entropy of 1e-44 rounds to exactly 0.)
        The intermediates are taken to be at least of magnitude 1, or
        ``|f_i|`` when larger: ``2 eps sum |c_i| max(|f_i|, 1) / t0`` over
        the unseen outputs.
        """
        unseen = ~mask
        level = float(
            np.sum(
                np.abs(self.cotangent[unseen]) * np.maximum(np.abs(self.base_output[unseen]), 1.0)
            )
        )
        return 2.0 * EPS * level / t0

    def input_noise(self, grads=None):
        """Rounding noise of ``phi`` caused by the magnitude of the inputs.

        ``eps * ||x * grad||_2`` with ``grad`` an estimate of ``d phi / d x``
        (e.g. the analytic gradient): functions that are shift-invariant
        compute with the inputs' full magnitude internally (``x - max(x)``
        in a softmax at ``x ~ 1e6`` loses everything below ``1e-10``), so
        their outputs carry that much noise whatever their own size.
        """
        if grads is None:
            return 0.0
        # eps * x * g elementwise first, then a scaled 2-norm: no overflow
        # for |x * g| up to the float64 maximum.
        parts = [
            np.abs((EPS * x) * np.asarray(g, dtype=np.float64)).ravel()
            for x, g in zip(self.work, grads, strict=True)
            if g is not None
        ]
        v = np.concatenate(parts) if parts else np.zeros(0)
        v = v[np.isfinite(v)]
        top = float(np.max(v)) if v.size else 0.0
        if top == 0.0:
            return 0.0
        return NOISE_SAFETY * top * float(np.sqrt(np.sum((v / top) ** 2)))


def changed_noise(cot, fp, fm, mask):
    """Rounding noise of ``<cot, fp - fm>`` from the output elements that depend on the probe.

    ``mask`` accumulates (in place) the output elements seen to change at any
    rung of this probe; the ladder starts with its largest step, so an
    element that depends on the perturbation at all is in it before the
    steps are small enough for ``f(x + t) == f(x - t)`` by quantization.
    """
    mask |= fp != fm
    c = np.abs(cot[mask])
    level = np.maximum(np.abs(fp[mask]), 1.0) + np.maximum(np.abs(fm[mask]), 1.0)
    return NOISE_SAFETY * EPS * float(np.sum(c * level))
