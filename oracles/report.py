"""The report of one check: what was compared, what disagreed, and where.

The model is ``numpy.testing.assert_allclose``: a verdict line, a table per
input and oracle, the worst elements first (input, index, analytic,
reference, absolute and relative error, tolerance), then the context.
Detailed element lists are built only for what failed or came closest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Agreement", "Element", "InputReport", "OracleCheck", "Report"]

WORST_LIMIT = 10


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

    @property
    def ok(self):
        return self.n_failed == 0


@dataclass
class InputReport:
    """Everything checked about the gradient of one input."""

    name: str
    number: int
    shape: tuple
    checks: dict = field(default_factory=dict)

    @property
    def ok(self):
        return all(c.ok for c in self.checks.values())

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


def _fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float) and (np.isnan(x) or np.isinf(x)):
        return str(x)
    return f"{x:.6g}"


def _fmt_err(x):
    if isinstance(x, float) and (np.isnan(x) or np.isinf(x)):
        return str(x)
    return f"{x:.2e}"


@dataclass
class Report:
    """Result of :func:`oracles.check_vjp` (and the other checks).

    Attributes
    ----------
    ok : bool
        True when every element of every gradient agrees with every oracle
        asked for and no problem (such as a modified argument) was found.
    inputs : list of InputReport
        Per input: ``max_abs_error``, ``max_rel_error``, ``worst`` elements,
        and ``checks`` per oracle.
    problems : list of str
        Findings that fail the check although no element disagrees (the VJP
        modified its cotangent in place, ...).
    notes : list of str
        Facts worth knowing that do not fail the check (float32 evaluated in
        float64, kinks accepted, ...).
    agreements : list of Agreement
        Pairwise agreement of the oracles themselves.
    context : dict
        Call context: functions, shapes, dtypes, seed, oracles, time spent.
    """

    kind: str
    inputs: list
    oracles: tuple
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    agreements: list = field(default_factory=list)
    context: dict = field(default_factory=dict)

    @property
    def ok(self):
        return not self.problems and all(r.ok for r in self.inputs)

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
        if self.ok:
            n = sum(c.n_checked for r in self.inputs for c in r.checks.values())
            return (
                f"{self.kind}: OK: {len(self.inputs)} input(s) agree with "
                f"{', '.join(self.oracles)} ({n} comparisons)"
            )
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

    def __str__(self):
        lines = [self.verdict, ""]
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
        worst = [e for r in self.inputs for e in r.worst]
        shown, seen = [], set()
        # Each failing element once, with the oracle it disagrees with most.
        for e in sorted((e for e in worst if not e.passed), key=lambda e: -_ratio(e)):
            if (e.input_number, e.index) not in seen:
                seen.add((e.input_number, e.index))
                shown.append(e)
        if shown:
            lines += ["", "Worst elements (largest error / tolerance first):"]
            lines.append(
                f"  {'input':<14} {'index':<14} {'oracle':<8} {'analytic':>14} {'reference':>14} "
                f"{'abs err':>9} {'rel err':>9} {'tolerance':>9}"
            )
            for e in shown[:WORST_LIMIT]:
                idx = "[" + ", ".join(str(i) for i in e.index) + "]"
                lines.append(
                    f"  {e.input_name:<14} {idx:<14} {e.oracle:<8} {_fmt(e.analytic):>14} "
                    f"{_fmt(e.reference):>14} {_fmt_err(e.abs_error):>9} "
                    f"{_fmt_err(e.rel_error):>9} {_fmt_err(e.tolerance):>9}"
                    + ("  kink" if e.kink else "")
                )
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
