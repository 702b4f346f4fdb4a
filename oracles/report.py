"""The report of one check: the verdict, what this run could have caught, and why it failed.

The model is ``numpy.testing.assert_allclose``: a verdict line, a table per
input and oracle, the worst elements first (input, index, analytic,
reference, absolute and relative error, tolerance), then the context.
Detailed element lists are built only for what failed or came closest.

Three answers beyond that:

* **The status**: ``"passed"``, ``"failed"`` or ``"inconclusive"``
  (:attr:`Report.status`). Inconclusive means every element agrees but the
  run could not have caught a relative error of ``resolve`` (default 1e-3)
  in some input; the report says why and what to do instead.
* **The sensitivity of each input** (:attr:`InputReport.sensitivity`, with
  the details in :attr:`InputReport.coverage`): the smallest relative error
  in a typical element that this run would have caught.
* **Diagnoses** on failure (:attr:`Report.diagnoses`, see
  :mod:`oracles.diagnose`): what kind of mistake it is, printed right after
  the verdict line.

Values are printed with as many significant digits as it takes to tell the
analytic value from the reference (up to 17), and :meth:`Report.to_dict`
gives everything as JSON-ready data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["STATUSES", "Agreement", "Coverage", "Element", "InputReport", "OracleCheck", "Report"]

WORST_LIMIT = 10

#: The values of :attr:`Report.status`.
STATUSES = ("passed", "failed", "inconclusive")

#: Elements whose own figure is this many times the typical one are listed apart.
LOOSE_FACTOR = 10.0


@dataclass(frozen=True)
class Element:
    """One element of one gradient, as compared with one oracle."""

    input_name: str
    input_number: int
    index: tuple
    oracle: str
    analytic: float
    reference: float
    abs_error: float
    rel_error: float
    tolerance: float
    passed: bool
    kink: bool = False
    #: For the step-free oracles: the projection compared (``"<x, d>"``), else None.
    projection: str | None = None

    def to_dict(self):
        return {
            "input": self.input_name,
            "index": list(self.index),
            "oracle": self.oracle,
            "analytic": _num(self.analytic),
            "reference": _num(self.reference),
            "abs_error": _num(self.abs_error),
            "rel_error": _num(self.rel_error),
            "tolerance": _num(self.tolerance),
            "passed": self.passed,
            "kink": self.kink,
            "projection": self.projection,
        }


@dataclass(frozen=True)
class Coverage:
    """What one run could have caught in one input: the details of its sensitivity.

    For each element the run used an absolute threshold ``tau`` (the
    tolerance it applied: the oracle's error estimate plus ``atol + rtol
    |reference|``; the smallest over the oracles asked for). An element
    whose reference is ``r`` catches a relative error ``e`` when
    ``e |r| > tau``. With ``m`` the median ``|r|`` of the elements that are
    non-zero to within their threshold, an element's figure is ``tau /
    max(|r|, m)``: relative to itself when it is of typical size or
    larger, relative to the typical size when it is smaller.

    Attributes
    ----------
    relative : float
        The sensitivity: the median figure, i.e. the smallest relative error
        that a typical element catches. ``inf`` when nothing relative could
        be caught (a zero direction, a reference of about 0 everywhere),
        ``nan`` when unknown (no oracle gave per-element thresholds).
    own : float
        The same from the oracles' own error estimates alone, without the
        ``atol``/``rtol`` the caller chose; this is what decides
        ``"inconclusive"``.
    elements : int
        Elements the figure is about.
    loose : int
        Elements that catch only much larger errors (their figure exceeds
        100 x the typical one): next to kinks, noisy, or left unresolved.
    loose_relative : float
        The largest figure among them.
    zeros : int
        Elements whose reference is 0 to within its threshold: checked in
        absolute terms only (``|analytic| <= tau``).
    kinks : int
        Elements at a kink, where any subgradient was accepted.
    exact_zero : bool
        The function does not depend on this input at all (its outputs do
        not move when it does): a gradient of 0 is checked absolutely and
        is not a reason for ``"inconclusive"``.
    reason : str or None
        Why nothing relative could be caught, when ``relative`` is ``inf``.
    """

    relative: float
    own: float
    elements: int = 0
    loose: int = 0
    loose_relative: float = math.nan
    zeros: int = 0
    kinks: int = 0
    exact_zero: bool = False
    reason: str | None = None

    def describe(self, name):
        """One line: ``"catches relative errors >= 3e-10 in W1 (12 elements: >= 1e-4 only)"``."""
        extra = []
        if self.loose:
            fig = (
                "not resolved"
                if not math.isfinite(self.loose_relative)
                else f">= {threshold_text(self.loose_relative)} only"
            )
            extra.append(f"{_count(self.loose)}: {fig}")
        if self.zeros and not self.exact_zero:
            extra.append(f"{_count(self.zeros)} 0 to within their tolerance, checked absolutely")
        if self.kinks:
            extra.append(f"{_count(self.kinks)} at kinks, any subgradient accepted")
        tail = f" ({'; '.join(extra)})" if extra else ""
        if self.exact_zero:
            return (
                f"{name}: fn does not depend on it here; its gradient must be 0 and was checked "
                f"absolutely{tail}"
            )
        if math.isnan(self.relative) and self.kinks:
            return (
                f"{name}: its derivative is non-zero only at kinks, where any subgradient "
                f"between the one-sided slopes is accepted{tail}"
            )
        if math.isnan(self.relative):
            return (
                f"{name}: sensitivity unknown (elements vouched for without a per-element "
                f"resolution){tail}"
            )
        if math.isinf(self.relative):
            return f"catches no relative error in {name} (the verdict says why)"
        return f"catches relative errors >= {threshold_text(self.relative)} in {name}{tail}"

    def to_dict(self):
        return {
            "relative": _num(self.relative),
            "own": _num(self.own),
            "elements": self.elements,
            "loose": self.loose,
            "loose_relative": _num(self.loose_relative),
            "zeros": self.zeros,
            "kinks": self.kinks,
            "exact_zero": self.exact_zero,
            "reason": self.reason,
        }


@dataclass
class OracleCheck:
    """The comparison of one input's gradient with one oracle."""

    oracle: str
    method: str
    n_checked: int
    n_failed: int
    max_abs_error: float
    max_rel_error: float
    max_tolerance_used: float
    kinks: int = 0
    worst: list = field(default_factory=list)
    #: What a step-free oracle measured (the Taylor remainder's orders, ...), else "".
    detail: str = ""
    #: Per element, ``|analytic - reference| / tolerance`` shaped like the input (above 1
    #: fails; NaN where this oracle compared no value, as in mode "fast"); None for the
    #: projection oracles, which judge one inner product.
    error_ratio: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self):
        return self.n_failed == 0

    def to_dict(self):
        return {
            "oracle": self.oracle,
            "method": self.method,
            "checked": self.n_checked,
            "failed": self.n_failed,
            "ok": self.ok,
            "max_abs_error": _num(self.max_abs_error),
            "max_rel_error": _num(self.max_rel_error),
            "max_tolerance": _num(self.max_tolerance_used),
            "kinks": self.kinks,
            "worst": [e.to_dict() for e in self.worst],
            "detail": self.detail,
        }


@dataclass
class InputReport:
    """Everything checked about the gradient of one input."""

    name: str
    number: int
    shape: tuple
    checks: dict = field(default_factory=dict)
    #: What this run could have caught in this input (see :class:`Coverage`).
    coverage: Coverage | None = None

    @property
    def ok(self):
        return all(c.ok for c in self.checks.values())

    @property
    def sensitivity(self):
        """The smallest relative error in a typical element this run would have caught.

        Derived from the thresholds the run actually applied (see
        :class:`Coverage`); ``inf`` when it could catch none, ``nan`` when
        unknown.
        """
        return math.nan if self.coverage is None else self.coverage.relative

    @property
    def max_abs_error(self):
        return max((c.max_abs_error for c in self.checks.values()), default=0.0)

    @property
    def max_rel_error(self):
        return max((c.max_rel_error for c in self.checks.values()), default=0.0)

    @property
    def worst(self):
        """Worst elements over all oracles, failures first."""
        els = [e for c in self.checks.values() for e in c.worst]
        els.sort(key=lambda e: (e.passed, -_ratio(e)))
        return els


@dataclass(frozen=True)
class Agreement:
    """Whether two oracles agree with each other on one input."""

    first: str
    second: str
    input_name: str
    max_abs_diff: float
    max_rel_diff: float
    agree: bool


def _ratio(e):
    if e.tolerance > 0:
        return e.abs_error / e.tolerance
    return np.inf if e.abs_error > 0 else 0.0


def _num(x):
    """A float for JSON: ``None`` where it is not finite (JSON has no inf or NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _count(n):
    return f"{n} element" if n == 1 else f"{n} elements"


def threshold_text(x):
    """A threshold in one significant digit, rounded up (``3e-10``): a claim never too bold.

    Examples
    --------
    >>> threshold_text(2.01e-10), threshold_text(1e-3)
    ('3e-10', '1e-3')
    """
    if not math.isfinite(x) or x <= 0:
        return f"{x:.0e}" if x == 0 else str(x)
    exponent = math.floor(math.log10(x))
    mantissa = math.ceil(x / 10.0**exponent - 1e-9)
    if mantissa >= 10:
        mantissa, exponent = 1, exponent + 1
    return f"{mantissa}e{exponent}"


def digits_to_tell_apart(a, b):
    """Significant digits that show ``a`` and ``b`` differ: 6 at least, 17 at most.

    Examples
    --------
    >>> digits_to_tell_apart(0.627657, 0.627657 * (1 + 1e-6))
    9
    >>> f"{0.627657:.9g} {0.627657 * (1 + 1e-6):.9g}"
    '0.627657 0.627657628'
    """
    if not (math.isfinite(a) and math.isfinite(b)) or a == b:
        return 6
    scale = max(abs(a), abs(b))
    rel = abs(a - b) / scale
    if rel == 0:
        return 17
    return int(min(17, max(6, math.ceil(-math.log10(rel)) + 2)))


def _fmt(x, digits=6):
    if x is None:
        return "-"
    if isinstance(x, float) and (np.isnan(x) or np.isinf(x)):
        return str(x)
    return f"{x:.{digits}g}"


def _fmt_err(x):
    if isinstance(x, float) and (np.isnan(x) or np.isinf(x)):
        return str(x)
    return f"{x:.2e}"


@dataclass
class Report:
    """Result of :func:`oracles.check_vjp` (and the other checks).

    Attributes
    ----------
    status : {"passed", "failed", "inconclusive"}
        ``"failed"``: some element disagrees with some oracle, or a problem
        (such as a modified argument) was found. ``"inconclusive"``: nothing
        disagrees, but for some input this run could not have caught a
        relative error of ``resolve`` in a typical element (the reasons are
        in ``inconclusive``, what to do instead in ``advice``).
        ``"passed"``: everything agrees, and every input was resolved.
    ok : bool
        True only for ``"passed"``.
    inputs : list of InputReport
        Per input: ``max_abs_error``, ``max_rel_error``, ``worst`` elements,
        ``sensitivity`` (and ``coverage``), and ``checks`` per oracle.
    diagnoses : tuple of oracles.diagnose.Diagnosis
        On failure only: what kind of mistake it looks like (``.kind``,
        ``.input``, ``.message``, ``.pitfall``). Empty when the check did not
        fail, or when no known signature fits.
    problems : list of str
        Findings that fail the check although no element disagrees (the VJP
        modified its cotangent in place, ...).
    inconclusive : list of str
        Why the check could not have failed (empty unless inconclusive).
    advice : list of str
        What to do instead, for an inconclusive check.
    notes : list of str
        Facts worth knowing that do not fail the check (float32 evaluated in
        float64, kinks accepted, ...).
    agreements : list of Agreement
        Pairwise agreement of the oracles themselves.
    context : dict
        Call context: functions, shapes, dtypes, seed, oracles, time spent.
    resolve : float
        The relative error every input had to be able to catch.
    """

    kind: str
    inputs: list
    oracles: tuple
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    agreements: list = field(default_factory=list)
    context: dict = field(default_factory=dict)
    inconclusive: list = field(default_factory=list)
    advice: list = field(default_factory=list)
    diagnoses: tuple = ()
    resolve: float = 1e-3

    @property
    def status(self):
        if self.problems or not all(r.ok for r in self.inputs):
            return "failed"
        if self.inconclusive:
            return "inconclusive"
        return "passed"

    @property
    def ok(self):
        return self.status == "passed"

    @property
    def failed_inputs(self):
        """Names of the inputs whose gradient disagrees with some oracle."""
        return [r.name for r in self.inputs if not r.ok]

    def input(self, name_or_number):
        """The :class:`InputReport` of one input, by name or position."""
        for r in self.inputs:
            if r.name == name_or_number or r.number == name_or_number:
                return r
        raise KeyError(name_or_number)

    @property
    def verdict(self):
        status = self.status
        if status == "passed":
            n = sum(c.n_checked for r in self.inputs for c in r.checks.values())
            return (
                f"{self.kind}: OK: {len(self.inputs)} input(s) agree with "
                f"{', '.join(self.oracles)} ({n} comparisons)"
            )
        if status == "inconclusive":
            return f"{self.kind}: INCONCLUSIVE: " + "; ".join(self.inconclusive)
        parts = []
        # A VJP or layer check compares gradients of inputs; a JVP or HVP check
        # compares the named output pieces themselves.
        what = "the gradient of " if self.kind in ("check_vjp", "check_layer") else ""
        for r in self.inputs:
            for c in r.checks.values():
                if not c.ok:
                    parts.append(
                        f"{c.n_failed} of {c.n_checked} elements of {what}{r.name} "
                        f"disagree with {c.oracle}"
                    )
        parts += self.problems
        return f"{self.kind}: FAILED: " + "; ".join(parts)

    def oracles_blame_derivation(self):
        """True when the oracles agree with each other but not with the derivation."""
        failing = {r.name for r in self.inputs if not r.ok}
        rel = [a for a in self.agreements if a.input_name in failing]
        return bool(rel) and all(a.agree for a in rel)

    def _worst_lines(self):
        worst = [e for r in self.inputs for e in r.worst]
        shown, seen = [], set()
        # Each failing element once, with the oracle it disagrees with most.
        for e in sorted((e for e in worst if not e.passed), key=lambda e: -_ratio(e)):
            if (e.input_number, e.index, e.projection) not in seen:
                seen.add((e.input_number, e.index, e.projection))
                shown.append(e)
        if not shown:
            return []
        rows = []
        for e in shown[:WORST_LIMIT]:
            idx = e.projection or "[" + ", ".join(str(i) for i in e.index) + "]"
            digits = digits_to_tell_apart(e.analytic, e.reference)
            rows.append((e, idx, _fmt(e.analytic, digits), _fmt(e.reference, digits)))
        w_idx = max(14, *(len(r[1]) for r in rows))
        w_val = max(14, *(len(r[2]) for r in rows), *(len(r[3]) for r in rows))
        lines = ["", "Worst elements (largest error / tolerance first):"]
        lines.append(
            f"  {'input':<14} {'index':<{w_idx}} {'oracle':<8} {'analytic':>{w_val}} "
            f"{'reference':>{w_val}} {'abs err':>9} {'rel err':>9} {'tolerance':>9}"
        )
        for e, idx, a, ref in rows:
            lines.append(
                f"  {e.input_name:<14} {idx:<{w_idx}} {e.oracle:<8} {a:>{w_val}} {ref:>{w_val}} "
                f"{_fmt_err(e.abs_error):>9} {_fmt_err(e.rel_error):>9} "
                f"{_fmt_err(e.tolerance):>9}" + ("  kink" if e.kink else "")
            )
        return lines

    def __str__(self):
        lines = [self.verdict]
        if self.diagnoses:
            lines += ["", "Diagnosis:"]
            for d in self.diagnoses:
                named = f" (pitfall: {d.pitfall})" if d.pitfall else ""
                where = f" {d.input}:" if d.input else ""
                lines.append(f"  - [{d.kind}]{where} {d.message}{named}")
        if self.advice:
            lines += ["", "What to do instead:"] + [f"  - {a}" for a in self.advice]
        lines.append("")
        header = (
            f"  {'input':<14} {'shape':<14} {'oracle':<8} {'max abs err':>11} "
            f"{'max rel err':>11} {'failed':>13}  verdict"
        )
        lines.append(header)
        for r in self.inputs:
            for c in r.checks.values():
                lines.append(
                    f"  {r.name:<14} {str(tuple(r.shape)):<14} {c.oracle:<8} "
                    f"{_fmt_err(c.max_abs_error):>11} {_fmt_err(c.max_rel_error):>11} "
                    f"{f'{c.n_failed}/{c.n_checked}':>13}  {'ok' if c.ok else 'FAIL'}"
                    + (f" ({c.kinks} kink(s) accepted)" if c.kinks else "")
                )
        details = [
            f"  {c.oracle} on {r.name}: {c.detail}"
            for r in self.inputs
            for c in r.checks.values()
            if c.detail
        ]
        if details:
            lines += [""] + details
        covered = [r for r in self.inputs if r.coverage is not None]
        if covered:
            lines += ["", "Sensitivity (the smallest relative error this run would have caught):"]
            lines += [f"  {r.coverage.describe(r.name)}" for r in covered]
        lines += self._worst_lines()
        if len(self.oracles) > 1 and self.agreements:
            lines.append("")
            for a in self.agreements:
                lines.append(
                    f"  {a.first} vs {a.second} on {a.input_name}: max abs diff "
                    f"{_fmt_err(a.max_abs_diff)}, max rel diff {_fmt_err(a.max_rel_diff)}: "
                    + ("agree" if a.agree else "DISAGREE")
                )
            if not self.ok and self.oracles_blame_derivation():
                lines.append(
                    "  The oracles agree with each other but not with the hand derivation: "
                    "the derivation is wrong, not the oracles."
                )
        if self.problems:
            lines += ["", "Problems:"] + [f"  - {p}" for p in self.problems]
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        if self.context:
            lines += ["", "Context:"] + [f"  {k}: {v}" for k, v in self.context.items()]
        return "\n".join(lines)

    def __repr__(self):
        return f"<Report {self.verdict}>"

    def to_dict(self):
        """Everything in the report as JSON-ready data (``json.dumps(report.to_dict())``).

        Non-finite numbers become ``None`` (JSON has no inf or NaN): a
        sensitivity of ``None`` with a ``coverage.reason`` means nothing
        relative could be caught.

        Examples
        --------
        >>> import json
        >>> import numpy as np
        >>> from oracles import check_vjp
        >>> d = check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.array([0.5, 1.0]),)).to_dict()
        >>> d["status"], d["inputs"][0]["name"], d["diagnoses"]
        ('passed', 'x', [])
        >>> 0 < d["inputs"][0]["sensitivity"] < 1e-6
        True
        >>> isinstance(json.dumps(d), str)
        True
        """
        return {
            "kind": self.kind,
            "status": self.status,
            "ok": self.ok,
            "resolve": _num(self.resolve),
            "verdict": self.verdict,
            "oracles": list(self.oracles),
            "inputs": [
                {
                    "name": r.name,
                    "shape": list(r.shape),
                    "ok": r.ok,
                    "sensitivity": _num(r.sensitivity),
                    "coverage": None if r.coverage is None else r.coverage.to_dict(),
                    "max_abs_error": _num(r.max_abs_error),
                    "max_rel_error": _num(r.max_rel_error),
                    "checks": {o: c.to_dict() for o, c in r.checks.items()},
                }
                for r in self.inputs
            ],
            "diagnoses": [d.to_dict() for d in self.diagnoses],
            "inconclusive": list(self.inconclusive),
            "advice": list(self.advice),
            "problems": list(self.problems),
            "notes": list(self.notes),
            "agreements": [
                {
                    "first": a.first,
                    "second": a.second,
                    "input": a.input_name,
                    "max_abs_diff": _num(a.max_abs_diff),
                    "max_rel_diff": _num(a.max_rel_diff),
                    "agree": a.agree,
                }
                for a in self.agreements
            ],
            "context": {k: str(v) for k, v in self.context.items()},
        }
