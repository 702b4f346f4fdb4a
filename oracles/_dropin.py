"""What :mod:`oracles.torch` and :mod:`oracles.jax` share: the framework's own derivative as a spec.

Both drop-ins check the derivative a framework computes through the user's
code (``torch.autograd.grad`` through a custom ``autograd.Function``,
``jax.vjp`` / ``jax.jvp`` through a ``custom_vjp`` / ``custom_jvp``)
against this project's numerics on the same function in float64. They run
the one pipeline (:mod:`oracles._pipeline`) with the VJP or JVP spec of
:mod:`oracles.checks`, renamed and given two things a hand-written NumPy
derivative does not need:

Reduced precision (:class:`Precision`, :func:`rounding_tolerance`)
    A derivative computed in float32, bfloat16 or float16 is compared with a
    float64 reference along the same direction (rounded to the dtype the
    derivative receives it in). What it may be off by is its own rounding,
    which depends on the dtype and on the conditioning of the computation.
    Both are measured by Monte-Carlo arithmetic: the derivative is
    recomputed ``N_PERTURB`` times with the result of every operation that
    rounds moved by one ulp of its dtype, with a random sign (and the inputs
    of every operation that sums many terms inside, a matmul or a fused
    kernel, moved likewise): torch ops under a dispatch mode
    (:func:`oracles.torch._jitter`), jax primitives by a jaxpr interpreter
    (:func:`oracles.jax._jittered`). The spread of those results, element
    by element, is the measured effect of rounding. An element's allowance
    is ``max(SAFETY * spread_j, FLOOR_SAFETY * eps * (|g_j| + max |g|))``
    (4 and 16): the spread, never less than the rounding of the element
    itself and of the largest element of its tensor (what a sum that
    cancels keeps). A planted error
    does not move under jitter, so it never widens its own allowance.
    Measured in float32 against the float64 backward of the same function
    (affine maps with sums of up to 4096 terms, softmax cross-entropy with
    logits up to 1e4, layer norms, ReLUs; torch and jax; 60-300 seeds per
    function): the largest error seen was 0.17 of the allowance.
    The allowance is the pipeline's :attr:`~oracles._pipeline.Spec.analytic_error`.

The report note (:func:`precision_note`)
    ``"float32 kernel: agrees within 3.1 float32 ulps of the scaled gradient;
    would catch relative errors >= 2e-05"``: the largest difference from the
    reference in units of ``eps * max |g|`` of each tensor, and the
    sensitivity the run had (:attr:`oracles.report.InputReport.sensitivity`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from oracles._pipeline import RESOLVE, OracleResult
from oracles.checks import JVP, VJP, tie_stages
from oracles.numerics.exhaustive import Exhaustive
from oracles.numerics.modes import resolve_mode

__all__ = [
    "FLOOR_SAFETY",
    "N_PERTURB",
    "SAFETY",
    "Precision",
    "forward_spec",
    "named",
    "precision_note",
    "reverse_spec",
    "rounding_tolerance",
    "snap_subnormal",
]

#: Safety factor on the measured spread of a reduced-precision derivative under jitter. The
#: jitter moves every rounded result by a whole ulp, about 3.5 times the standard deviation of
#: a rounding error (uniform in +-0.5 ulp), so the spread over the runs already overstates it.
SAFETY = 4.0

#: Safety factor on the floor ``eps (|g| + max |g|)``, where the jitter sees little (a sum
#: inside one opaque kernel).
FLOOR_SAFETY = 16.0

#: Perturbed recomputations that measure it.
N_PERTURB = 8

#: float64's machine epsilon.
EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Precision:
    """The working precision of the derivative under test: a dtype's name and epsilon."""

    name: str
    eps: float
    #: The smallest normal number of the dtype.
    tiny: float = float(np.finfo(np.float64).tiny)

    @property
    def subnormal(self):
        """The spacing of the dtype's subnormal numbers."""
        return self.tiny * self.eps

    @property
    def reduced(self):
        """True below float64 (float32, bfloat16, float16)."""
        return self.eps > 2 * EPS64

    def resolve(self, resolve):
        """The default ``resolve=`` at this precision: 1e-3, or 256 eps when that is coarser.

        256 eps is 3e-5 for float32 (so 1e-3 applies), 0.25 for float16 and
        2 for bfloat16: at those precisions only gross errors (a factor, a
        sign) are within reach.
        """
        if resolve is not None:
            return resolve
        return max(RESOLVE, 256 * self.eps) if self.reduced else None


def named(method, name):
    """``method`` as a function called ``name``: what the report calls the user's code.

    Examples
    --------
    >>> named(abs, "forward").__name__
    'forward'
    """

    def call(*args):
        return method(*args)

    call.__name__ = name
    call.__qualname__ = name
    return call


def snap_subnormal(result, first, factor, tiny):
    """``result`` (the derivative along ``factor`` times the first direction), with every
    element whose first value was below ``tiny`` (the dtype's smallest normal number, one per
    piece) replaced by ``factor`` times that value.

    Scaling by 2 or -1 is exact in floating point except among subnormal
    numbers, whose grid is uniform: the pipeline's linearity test of the
    derivative would otherwise blame a float32 backward for the rounding of
    values below 1.2e-38 (a softmax probability of e^-100).

    Examples
    --------
    >>> tiny = [2.0**-126]
    >>> snap_subnormal([np.array([2.0, 3e-45])], [np.array([1.0, 1e-45])], 2.0, tiny)[0].tolist()
    [2.0, 2e-45]
    """
    out = []
    for r, g, t in zip(result, first, tiny, strict=True):
        r, g = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        out.append(np.where(np.abs(g) < t, factor * g, r))
    return out


def rounding_tolerance(base, perturbed, eps, safety=SAFETY, subnormal=0.0):
    """Per piece, the allowance of a reduced-precision derivative (see the module notes).

    Parameters
    ----------
    base : list of ndarray
        The derivative at the point, one array per piece.
    perturbed : list of list of ndarray
        The derivative recomputed at perturbed points: one list of pieces per point.
    eps : float
        The dtype's machine epsilon.
    subnormal : float
        The spacing of the dtype's subnormal numbers (``tiny * eps``): an
        absolute floor, where relative rounding no longer applies.

    Examples
    --------
    >>> g = [np.array([1.0, -2.0, 0.0])]
    >>> again = [[np.array([1.0 + 1e-5, -2.0, 0.0])]]
    >>> tol = rounding_tolerance(g, again, 2.0**-23)
    >>> bool(np.isclose(tol[0][0], SAFETY * 1e-5)), bool(tol[0][2] == FLOOR_SAFETY * 2.0**-22)
    (True, True)
    """
    out = []
    for k, g in enumerate(base):
        g = np.asarray(g, dtype=np.float64)
        finite = np.isfinite(g)
        spread = np.zeros(g.shape)
        for pieces in perturbed:
            p = np.asarray(pieces[k], dtype=np.float64).reshape(g.shape)
            with np.errstate(invalid="ignore"):
                d = np.abs(p - g)
            spread = np.fmax(spread, np.where(np.isfinite(d), d, 0.0))
        mag = np.abs(np.where(finite, g, 0.0))
        peak = float(np.max(mag)) if mag.size else 0.0
        out.append(np.maximum(safety * spread, FLOOR_SAFETY * (eps * (mag + peak) + subnormal)))
    return out


def _numeric(r, state):
    """The VJP spec's numeric oracle; the joint test of tied values widened by the allowance.

    The per-element modes run as in :func:`oracles.check_vjp`: their screens
    accept a cheap central difference as an element's reference only where
    it already agrees with the derivative within the tolerance the final
    comparison applies to that element, so they keep ``atol`` as it is
    (a screen widened by the largest allowance would hand an element with a
    small allowance a reference too coarse for it). For a reduced-precision
    derivative they compare with the same derivative in float64 where it can
    be had (:func:`_float64_screen`; the float32 one would send every element
    to the full ladder), and ``mode="auto"`` compares every element
    (projections pass only within the numerics' own error, which a float32
    derivative never reaches). The
    joint test of tied values is a verdict of its own: it gets the largest
    allowance on top of ``atol``.
    """
    objective = r.objective()
    safe = [np.where(np.isfinite(g), g, 0.0) for g in r.analytic]
    slack = 0.0
    screen = safe
    if state.precision.reduced:
        slack = _tie_slack(r.xs, state.analytic_error(r))
        screen = _float64_screen(state, r, safe)
    n = sum(x.size for x in r.xs)
    mode = r.mode
    if state.precision.reduced and mode == "auto":
        mode = Exhaustive()
    refs, method, evaluations, notes = resolve_mode(mode, n).reference(
        objective,
        screen,
        atol=r.atol,
        rtol=r.rtol,
        seed=r.seed,
        must_check=[~np.isfinite(g) for g in r.analytic],
    )
    atol = r.atol
    r.atol = atol + slack
    try:
        evaluations += tie_stages(r, objective, safe, refs, notes)
    finally:
        r.atol = atol
    return OracleResult(refs, method, evaluations, notes)


def _tie_slack(xs, allowances):
    """The rounding allowance the joint tie test adds to ``atol``: the largest of the input.

    Not at the tied elements themselves: their measured spread is tie-breaking,
    not rounding (equal values that come out of a rounding op, ``3 * x`` before
    a max, are no longer equal once every result moves by an ulp, and the
    gradient jumps between them: the spread is the whole gradient, which
    would accept a routing to every tie). There the floor of the allowance
    counts (the rounding of the element and of the largest of its tensor).

    Examples
    --------
    >>> x = [np.array([1.0, 1.0, 2.0, 0.5])]
    >>> allowance = [np.array([3.0, 3.0, 1e-6, 2e-6])]
    >>> _tie_slack(x, allowance)
    2e-06
    """
    slack = 0.0
    for x, e in zip(xs, allowances, strict=False):
        e = np.asarray(e, dtype=np.float64)
        if not e.size:
            continue
        x = np.asarray(x)
        if x.shape == e.shape:
            _, inverse, counts = np.unique(x.reshape(-1), return_inverse=True, return_counts=True)
            tied = (counts[inverse] > 1).reshape(e.shape)
            # Every allowance is at least the rounding of the tensor's largest element, and the
            # floor of a tied element at most twice that.
            floor = 2.0 * float(np.min(e))
            e = np.where(tied, floor, e)
        slack = max(slack, float(np.max(e)))
    return slack


def _float64_screen(state, r, analytic):
    """What the numeric modes compare their cheap differences with, for a reduced-precision
    derivative: the same derivative computed in float64 (``state.float64_gradient``: the
    framework's backward through the float64 reference function), where it can be had.

    The per-element screen accepts one central difference as an element's reference where
    it agrees with this gradient within the difference's own error (float64-sized); the
    float32 derivative never does (it is off by its rounding), so every element went to the
    full step ladder (about 17 times the evaluations). The float64 backward of the same
    rule carries the same mistakes as the float32 one, so a wrong element still disagrees
    and goes to the ladder; the verdict is the pipeline's comparison of the float32
    derivative with the references, within the measured allowance, as before. It is also
    the modes' estimate of the gradient's magnitude (noise model). Falls back to the
    derivative under test when the float64 backward is not available, raises, or is not
    finite where the derivative is.
    """
    probe = getattr(state, "float64_gradient", None)
    if probe is None:
        return analytic
    try:
        wide = probe(r)
    except Exception:  # noqa: BLE001 - the user's code in float64: only a shortcut is lost
        return analytic
    if wide is None or len(wide) != len(analytic):
        return analytic
    out = []
    for w, a in zip(wide, analytic, strict=True):
        w = np.asarray(w, dtype=np.float64)
        if w.shape != np.shape(a) or not np.all(np.isfinite(w)):
            return analytic
        out.append(w)
    return out


def reverse_spec(kind, who, oracle, autodiff, state):
    """The VJP spec for a framework's reverse mode (``who`` names it in messages)."""
    return dataclasses.replace(
        VJP,
        kind=kind,
        derivative=who,
        oracles=("numeric", oracle),
        numeric=lambda r: _numeric(r, state),
        autodiff=autodiff,
        taylor=None,
        dot=None,
        partner=None,
        analytic_error=state.analytic_error if state.precision.reduced else None,
        rounding=state.rounding if state.precision.reduced else None,
    )


def forward_spec(kind, who, oracle, autodiff, state):
    """The JVP spec for a framework's forward mode."""
    return dataclasses.replace(
        JVP,
        kind=kind,
        derivative=who,
        oracles=("numeric", oracle),
        autodiff=autodiff,
        taylor=None,
        dot=None,
        partner=None,
        analytic_error=state.analytic_error if state.precision.reduced else None,
        rounding=state.rounding if state.precision.reduced else None,
    )


def _up(x):
    """``x`` in one significant digit, rounded up (``2e-05``): a claim never too bold."""
    exponent = math.floor(math.log10(x))
    mantissa = math.ceil(x / 10.0**exponent - 1e-9)
    if mantissa >= 10:
        mantissa, exponent = 1, exponent + 1
    return f"{mantissa}e{exponent:+03d}"


def precision_note(report, precision, analytic, tolerance, reference):
    """The reduced-precision line of the report (see the module notes), first among the notes."""
    ulps, typical = [], []
    for ir, g, tol in zip(report.inputs, analytic, tolerance, strict=True):
        g = np.abs(np.asarray(g, dtype=np.float64))
        g = g[np.isfinite(g)]
        scale = precision.eps * (float(np.max(g)) if g.size else 0.0)
        if scale == 0.0:
            continue
        check = ir.checks.get("numeric")
        errors = (
            [c.max_abs_error for c in ir.checks.values()]
            if check is None
            else [check.max_abs_error]
        )
        ulps.append(max(errors) / scale)
        typical.append(float(np.median(np.asarray(tol)) / scale))
    sens = [
        ir.sensitivity
        for ir in report.inputs
        if math.isfinite(ir.sensitivity) and ir.sensitivity > 0
    ]
    name = precision.name
    if ulps:
        worst = max(ulps)
        verb = "agrees within" if report.status != "failed" else "differs by up to"
        text = f"{name} kernel: {verb} {worst:.2g} {name} ulps of the scaled gradient"
    else:
        text = f"{name} kernel: the gradient is 0"
    if sens:
        text += f"; would catch relative errors >= {_up(max(sens))}"
    text += (
        f". Reference: {reference}. Allowance per element: {SAFETY:g} x the spread of the "
        f"derivative recomputed {N_PERTURB} times with every rounding moved by one {name} ulp "
        f"(at least {FLOOR_SAFETY:g} {name} eps x (|g| + max |g|)), about "
        f"{max(typical, default=0.0):.2g} ulps here"
    )
    report.notes.insert(0, text)
