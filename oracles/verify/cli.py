"""Command line: ``python -m oracles report`` and ``python -m oracles mnist``.

``report`` verifies every reference derivation (:mod:`oracles.verify.cases`)
against each oracle and prints one line per op, input and oracle: the max
absolute and relative error and a verdict. It exits with status 1 when any
derivation fails, so it can guard CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main"]


def _report_parser(sub):
    p = sub.add_parser("report", help="verify every reference derivation against every oracle")
    p.add_argument(
        "--oracles",
        default="numeric,torch,jax",
        help="comma-separated oracles among numeric, torch, jax (default: all three)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and cotangents")
    p.add_argument(
        "--mode",
        default="exhaustive",
        choices=["exhaustive", "fast", "auto", "ladder"],
        help="numeric mode (default exhaustive: every element compared on its own)",
    )
    p.add_argument("--no-mlp", action="store_true", help="skip the MNIST MLP step cases")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--verbose", action="store_true", help="print the full report of every case")
    return p


def _report_main(args):
    from tqdm import tqdm

    from oracles.verify.cases import reference_cases
    from oracles import check_vjp

    against = tuple(a.strip() for a in args.oracles.split(",") if a.strip())
    cases = reference_cases(seed=args.seed, include_mlp=not args.no_mlp)
    rows, failures = [], 0
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
        )
        seconds = time.perf_counter() - t0
        failures += not report.ok
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
                        "seconds": seconds,
                    }
                )
    _print_table(rows)
    total = time.perf_counter() - started
    verdict = "ALL DERIVATIONS VERIFIED" if not failures else f"{failures} CASE(S) FAILED"
    print(f"\n{verdict}: {len(cases)} cases, oracles {', '.join(against)}, {total:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"oracles": against, "seed": args.seed, "rows": rows}, fh, indent=1)
        print(f"results written to {args.json}")
    return 1 if failures else 0


def _print_table(rows):
    head = (
        f"{'op':<14} {'case':<42} {'input':<7} {'oracle':<8} "
        f"{'max abs err':>11} {'max rel err':>11}  verdict"
    )
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        key = (r["op"], r["case"])
        op, case = (r["op"], r["case"]) if key != last else ("", "")
        last = key
        verdict = "ok" if r["ok"] else f"FAIL ({r['failed']}/{r['checked']})"
        if r["ok"] and r["kinks"]:
            verdict += f" ({r['kinks']} kink(s) accepted)"
        print(
            f"{op:<14} {case[:42]:<42} {r['input']:<7} {r['oracle']:<8} "
            f"{r['max_abs_error']:>11.2e} {r['max_rel_error']:>11.2e}  {verdict}"
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
