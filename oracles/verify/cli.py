"""Command line: ``python -m oracles report`` and ``python -m oracles mnist``.

``report`` verifies every reference derivation (:mod:`oracles.verify.cases`)
against each oracle and prints one line per op, input and oracle: the max
absolute and relative error and a verdict. It exits with status 1 when any
derivation fails, so it can guard CI.

Exit status, for both commands: 0 when everything was verified, 1 when a
derivation failed, 2 for a usage error. Every option is checked before any
work is done (an unknown, repeated or empty oracle in ``--oracles``; a
``--json`` or ``--html`` path whose directory is missing or not writable, or
that is a directory; ``--html`` without matplotlib): argparse prints the
option and the rule and exits with 2.

``--html PATH`` also writes one self-contained page (:mod:`oracles._html`):
per derivation its verdict, the sensitivity of each input, a histogram and a
heatmap of ``|error| / tolerance`` per element and, on failure, the
diagnosis; plots embedded, nothing loaded from elsewhere.
Output files are written through :mod:`oracles._files` (a temporary file in
the same directory moved into place), never through a symlink planted at
the output path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
import time

from oracles._files import open_atomic, output_file_problem

__all__ = ["main"]

ORACLES = ("numeric", "torch", "jax")


def _oracle_list(text):
    """``--oracles``: a comma-separated list of distinct names among :data:`ORACLES`."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(
            f"must name at least one of {', '.join(ORACLES)}, got {text!r}"
        )
    for name in names:
        if not name:
            raise argparse.ArgumentTypeError(f"must not contain an empty name, got {text!r}")
        if name not in ORACLES:
            raise argparse.ArgumentTypeError(
                f"must name oracles among {', '.join(ORACLES)}; {name!r} is not one of them"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"must name each oracle once; {', '.join(repeated)} is repeated in {text!r}"
        )
    return tuple(names)


def _int_at_least(minimum):
    """An argparse ``type``: an int ``>= minimum``, named in the error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def _import_jax():
    """``import jax``; :func:`oracles.backends.jax.import_jax` keeps NumPy's random state.

    Raises :class:`oracles.BackendUnavailable` naming the extra when JAX is
    not installed.
    """
    from oracles.backends.jax import import_jax

    return import_jax()


def _output_file(text):
    """``--json``, ``--html``: a file that can be written (its directory exists, accepts files)."""
    problem = output_file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write the results there: {problem}")
    return text


def _html_file(text):
    """``--html``: as :func:`_output_file`, and matplotlib (the ``plot`` extra) is installed."""
    text = _output_file(text)
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError(
            "the HTML report draws its plots with matplotlib, which is not installed: pip install "
            '"backprop-oracles[plot]"'
        )
    return text


def _report_parser(sub):
    p = sub.add_parser("report", help="verify every reference derivation against every oracle")
    p.add_argument(
        "--oracles",
        type=_oracle_list,
        default=ORACLES,
        help="comma-separated distinct oracles among numeric, torch, jax (default: all three)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, help="seed of the inputs and cotangents"
    )
    p.add_argument(
        "--mode",
        default="exhaustive",
        choices=["exhaustive", "fast", "auto", "ladder"],
        help="numeric mode (default exhaustive: every element compared on its own)",
    )
    p.add_argument("--no-mlp", action="store_true", help="skip the MNIST MLP step cases")
    p.add_argument(
        "--json", metavar="PATH", type=_output_file, help="also write the results as JSON"
    )
    p.add_argument(
        "--html",
        metavar="PATH",
        type=_html_file,
        help="also write one self-contained HTML page: per derivation the verdict, the "
        "sensitivity, a plot of the error per element and, on failure, the diagnosis",
    )
    p.add_argument("--verbose", action="store_true", help="print the full report of every case")
    return p


def _report_main(args):
    from tqdm import tqdm

    from oracles import check_vjp
    from oracles.verify.cases import reference_cases
    from reference.pitfalls import CATALOG

    against = args.oracles
    if "jax" in against:
        with contextlib.suppress(ImportError):  # check_vjp reports a missing jax
            _import_jax()  # first imported here, so that np.random stays as it was
    cases = reference_cases(seed=args.seed, include_mlp=not args.no_mlp)
    rows, failures, entries = [], 0, []
    started = time.perf_counter()
    for case in tqdm(cases, desc="checking derivations", unit="case", file=sys.stderr, leave=False):
        t0 = time.perf_counter()
        report = check_vjp(
            case.fn,
            case.vjp,
            case.inputs,
            against=against,
            torch_fn=case.torch_fn,
            jax_fn=case.jax_fn,
            names=case.names,
            seed=args.seed,
            mode=args.mode,
            pitfalls=CATALOG,
        )
        seconds = time.perf_counter() - t0
        failures += not report.ok
        if args.html:
            from oracles._html import summarize

            entries.append(summarize(report, case.label))
        if args.verbose or not report.ok:
            tqdm.write(str(report) + "\n", file=sys.stderr)
        for r in report.inputs:
            for oracle, c in r.checks.items():
                rows.append(
                    {
                        "op": case.op,
                        "case": case.variant,
                        "input": r.name,
                        "shape": list(r.shape),
                        "oracle": oracle,
                        "max_abs_error": c.max_abs_error,
                        "max_rel_error": c.max_rel_error,
                        "max_tolerance": c.max_tolerance_used,
                        "failed": c.n_failed,
                        "checked": c.n_checked,
                        "kinks": c.kinks,
                        "ok": c.ok,
                        "status": report.status,
                        "sensitivity": r.sensitivity if math.isfinite(r.sensitivity) else None,
                        "diagnoses": [d.to_dict() for d in report.diagnoses if d.input == r.name],
                        "seconds": seconds,
                    }
                )
    _print_table(rows)
    total = time.perf_counter() - started
    verdict = "ALL DERIVATIONS VERIFIED" if not failures else f"{failures} CASE(S) FAILED"
    print(f"\n{verdict}: {len(cases)} cases, oracles {', '.join(against)}, {total:.1f} s")
    if args.json:
        with open_atomic(args.json, "w") as fh:
            json.dump({"oracles": against, "seed": args.seed, "rows": rows}, fh, indent=1)
        print(f"results written to {args.json}")
    if args.html:
        _write_html(args, entries, verdict, len(cases), total)
        print(f"HTML report written to {args.html}")
    return 1 if failures else 0


def _write_html(args, entries, verdict, n_cases, seconds):
    from oracles._html import write_html

    command = ["python -m oracles report", f"--oracles {','.join(args.oracles)}"]
    command += [f"--seed {args.seed}", f"--mode {args.mode}"]
    command += ["--no-mlp"] if args.no_mlp else []
    write_html(
        args.html,
        entries,
        title="backprop-oracles: verification report",
        subtitle="Every reference derivation (reference/) checked against "
        + ", ".join(args.oracles),
        meta=[
            ("command", " ".join(command)),
            ("verdict", f"{verdict}: {n_cases} cases in {seconds:.1f} s"),
            ("oracles", ", ".join(args.oracles)),
            ("seed", str(args.seed)),
            ("mode", args.mode),
        ],
    )


def _catches(r):
    """The sensitivity column: the smallest relative error the run would have caught."""
    from oracles.report import threshold_text

    s = r.get("sensitivity")
    return "-" if s is None else f">= {threshold_text(s)}"


def _print_table(rows):
    head = (
        f"{'op':<14} {'case':<42} {'input':<7} {'oracle':<8} "
        f"{'max abs err':>11} {'max rel err':>11} {'catches':>9}  verdict"
    )
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        key = (r["op"], r["case"])
        op, case = (r["op"], r["case"]) if key != last else ("", "")
        last = key
        verdict = "ok" if r["ok"] else f"FAIL ({r['failed']}/{r['checked']})"
        if r["ok"] and r.get("status") == "inconclusive":
            verdict = "INCONCLUSIVE"
        if r["ok"] and r["kinks"]:
            verdict += f" ({r['kinks']} kink(s) accepted)"
        print(
            f"{op:<14} {case[:42]:<42} {r['input']:<7} {r['oracle']:<8} "
            f"{r['max_abs_error']:>11.2e} {r['max_rel_error']:>11.2e} {_catches(r):>9}  {verdict}"
        )


def main(argv=None):
    """Run the command line; returns the exit status.

    Examples
    --------
    >>> status = main(["report", "--no-mlp", "--oracles", "numeric"])  # doctest: +ELLIPSIS
    op ...
    ALL DERIVATIONS VERIFIED: 22 cases, oracles numeric, ...
    >>> status
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m oracles",
        description="Is my gradient right? Verification reports for hand-derived backprop.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _report_parser(sub)
    sub.add_parser(
        "mnist",
        help="train the reference MLP on real digits, lockstep with torch and jax, plots",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "mnist":
        from oracles.verify.mnist import main as mnist_main

        return mnist_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return _report_main(args)
