"""Mutation testing of the hand-written backward functions with mutmut: the score, reproducibly.

mutmut (3.x) changes one thing at a time in the code (``*`` to ``/``, ``1.0``
to ``2.0``, ``axis=-1`` to ``axis=None``, a dropped argument...) and runs
the tests that call the changed function; a mutant the tests do not fail on
"survived". Only the backward (VJP) functions of :mod:`reference` are
mutated:

=====================  =====================================================
``activations``        ``tanh_vjp``, ``sigmoid_vjp``, ``relu_vjp``
``softmax``            ``softmax_vjp``, ``log_softmax_vjp``
``losses``             ``cross_entropy_vjp``, ``_one_minus_softmax``,
                       ``squared_error_vjp``
``affine``             ``affine_vjp``
``mlp``                ``backward``, ``mlp_loss_vjp``
=====================  =====================================================

The run happens in a temporary copy of the repository (mutmut writes a
``mutants/`` directory and reads its configuration from ``setup.cfg``), so
the working tree is never touched. One core (``--max-children 1``),
``OPENBLAS_NUM_THREADS=1``, the derandomized Hypothesis profile ``ci``
(25 examples per property, the same examples every run), ``-x``.

Tests marked ``jax`` are deselected (``-m "not jax"``): mutmut forks a
process per mutant, and a process forked after JAX has started its CPU
backend can deadlock (JAX warns so), which would show up as a "timeout"
counted as a kill. The torch-marked tests, which check the same native
equivalents, stay in (with ``OMP_NUM_THREADS=1``).

Run from the repository root::

    python benchmarks/mutation.py            # ~10-20 minutes on one core
    python benchmarks/mutation.py --keep     # keep the copy, to `mutmut show` a mutant

It prints the score per function and every surviving mutant's diff, and
writes ``benchmarks/results/mutation.json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["EQUIVALENT", "MUTATED", "TESTS", "main", "summarize"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"

#: module -> the backward functions mutated in it.
MUTATED = {
    "reference/activations.py": ("tanh_vjp", "sigmoid_vjp", "relu_vjp"),
    "reference/softmax.py": ("softmax_vjp", "log_softmax_vjp"),
    "reference/losses.py": ("cross_entropy_vjp", "_one_minus_softmax", "squared_error_vjp"),
    "reference/affine.py": ("affine_vjp",),
    "reference/mlp.py": ("backward", "mlp_loss_vjp"),
}

#: The tests run against each mutant (mutmut runs only those that call the mutated function).
TESTS = (
    "tests/reference/test_ops_numeric.py",
    "tests/reference/test_mutation_killers.py",
    "tests/reference/test_layers.py",
    "tests/reference/test_pitfalls.py",
    "tests/reference/test_mlp.py",
    "tests/reference/test_native_equivalents.py",
    "tests/meta/test_power.py",
)

#: Surviving mutants that change nothing observable, with the reason. They are
#: reported, and left out of the score's denominator. (mutmut numbers mutants
#: by their position in the function: re-check this list when a mutated
#: function changes.)
EQUIVALENT = {
    "reference.affine.x_affine_vjp__mutmut_13": (
        "g.reshape(-2, n) for g.reshape(-1, n): NumPy treats any negative size as 'infer'"
    ),
    "reference.affine.x_affine_vjp__mutmut_22": "x.reshape(-2, n) for x.reshape(-1, n): as above",
    "reference.losses.x_cross_entropy_vjp__mutmut_14": "softmax(logits) drops axis=-1, the default",
    "reference.losses.x_squared_error_vjp__mutmut_6": (
        "pred keeps its own dtype: target is promoted to >= float64, so pred - target "
        "promotes pred the same way (float32 -> float64 is exact)"
    ),
    "reference.losses.x_squared_error_vjp__mutmut_8": "as _6 (dtype argument dropped)",
    "reference.losses.x_squared_error_vjp__mutmut_12": "np.result_type(pred): as _6",
    "reference.losses.x_squared_error_vjp__mutmut_10": (
        "np.result_type(pred, None): None means float64 to result_type"
    ),
    "reference.losses.x_squared_error_vjp__mutmut_15": (
        "target keeps its own dtype: pred is already promoted to >= float64, so pred - target "
        "promotes target the same way"
    ),
    "reference.losses.x_squared_error_vjp__mutmut_17": "as _15 (dtype argument dropped)",
    "reference.losses.x_squared_error_vjp__mutmut_19": "np.result_type(target, None): as _10",
    "reference.losses.x_squared_error_vjp__mutmut_21": "np.result_type(target): as _15",
    "reference.mlp.x_backward__mutmut_30": (
        'cross_entropy_vjp(...) drops reduction="mean", the default'
    ),
    "reference.mlp.x_backward__mutmut_37": "softmax(logits) drops axis=-1, the default",
    "reference.mlp.x_backward__mutmut_38": "softmax(logits, axis=+1): logits are always 2-D here",
    "reference.mlp.x_backward__mutmut_45": "half=None for half=False: both falsy",
    "reference.mlp.x_backward__mutmut_50": "half=False dropped: it is the default",
    "reference.mlp.x_backward__mutmut_65": "softmax_vjp(...) drops axis=-1, the default",
    "reference.mlp.x_backward__mutmut_66": "softmax_vjp(..., axis=+1): logits are always 2-D",
    "reference.mlp.x_backward__mutmut_78": (
        "b = params[2 * layer - 1]: affine_vjp does not use b (the layer is linear in it)"
    ),
    "reference.mlp.x_backward__mutmut_92": "affine_vjp(..., None) for b: as _78",
}

_COPY = ("reference", "oracles", "tests", "conftest.py", "pyproject.toml")


def _mutant_globs():
    """``reference.activations.x_tanh_vjp__mutmut_*``: mutmut 3's names of the mutants."""
    globs = []
    for path, functions in MUTATED.items():
        module = path[: -len(".py")].replace("/", ".")
        globs += [f"{module}.x_{name}__mutmut_*" for name in functions]
    return globs


def _setup_cfg():
    lines = ["[mutmut]", "source_paths = reference", "only_mutate ="]
    lines += [f"    {path}" for path in MUTATED]
    lines += ["also_copy =", "    oracles", "    conftest.py"]
    lines += ["pytest_add_cli_args_test_selection ="]
    lines += [f"    {t}" for t in TESTS if (ROOT / t).exists()]
    lines += ["pytest_add_cli_args ="] + [
        f"    {a}"
        for a in ("-p", "no:xdist", "-p", "no:cacheprovider", "-x", "-q", "-m", "not jax")
    ]
    return "\n".join(lines) + "\n"


def _prepare(workdir):
    for name in _COPY:
        src = ROOT / name
        dst = workdir / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    pyproject = (workdir / "pyproject.toml").read_text()
    if "[tool.mutmut]" in pyproject:
        # mutmut prefers pyproject's table; this script's configuration is the setup.cfg below.
        pyproject = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject)
        (workdir / "pyproject.toml").write_text(pyproject)
    (workdir / "setup.cfg").write_text(_setup_cfg())


def _mutmut(workdir, *args, check=True):
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        HYPOTHESIS_PROFILE="ci",
        PYTHONHASHSEED="0",
    )
    mutmut = Path(sys.executable).with_name("mutmut")
    return subprocess.run(
        [str(mutmut), *args], cwd=workdir, env=env, text=True, capture_output=True, check=check
    )


def _statuses(workdir):
    """``{mutant name: status}`` of the mutants of :data:`MUTATED`, from ``mutmut results``.

    mutmut generates mutants for every function of a file; only those of the
    backward functions were run, the rest stay "not checked" and are left out.
    """
    out = _mutmut(workdir, "results", "--all", "true").stdout
    globs = _mutant_globs()
    statuses = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line)
        if m and any(fnmatch.fnmatchcase(m.group(1), g) for g in globs):
            statuses[m.group(1)] = m.group(2).strip()
    return statuses


def _function_of(name):
    module, _, rest = name.rpartition(".")
    return f"{module}.{rest[2:].rsplit('__mutmut_', 1)[0]}"


def summarize(statuses):
    """Score per function and overall: killed / (killed + survived).

    Survivors listed in :data:`EQUIVALENT` get the status "equivalent" and
    are not scored; timeouts count as killed.
    """
    per = {}
    for name, status in sorted(statuses.items()):
        if status == "survived" and name in EQUIVALENT:
            status = "equivalent"
        per.setdefault(_function_of(name), {}).setdefault(status, []).append(name)
    rows, killed_all, total_all = [], 0, 0
    for function, by_status in per.items():
        killed = sum(len(v) for k, v in by_status.items() if k in ("killed", "timeout"))
        total = killed + len(by_status.get("survived", []))
        killed_all += killed
        total_all += total
        rows.append((function, killed, total, by_status))
    return rows, killed_all, total_all


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="where to put the copy (default: a new temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the copy afterwards")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        parser.error(f"--workdir {workdir} is not empty")
    started = time.perf_counter()
    try:
        _prepare(workdir)
        run = _mutmut(workdir, "run", "--max-children", "1", *_mutant_globs(), check=False)
        statuses = _statuses(workdir)
        if not statuses:
            print(run.stdout[-4000:], run.stderr[-4000:], sep="\n")
            raise SystemExit("mutmut produced no results (output above)")
        rows, killed, total = summarize(statuses)
        diffs = {}
        for _, _, _, by_status in rows:
            for name in by_status.get("survived", []):
                diffs[name] = _mutmut(workdir, "show", name).stdout
        seconds = round(time.perf_counter() - started)
        print(f"{'function':<45} killed / mutants")
        for function, k, t, by_status in rows:
            other = {
                s: len(v)
                for s, v in by_status.items()
                if s not in ("killed", "survived", "timeout")
            }
            extra = f"   (not scored: {other})" if other else ""
            print(f"{function:<45} {k:>6} / {t:<6}{extra}")
        score = killed / total if total else float("nan")
        n_equivalent = sum(len(b.get("equivalent", [])) for *_, b in rows)
        print(
            f"\nmutation score: {killed} / {total} = {score:.1%} "
            f"({n_equivalent} equivalent mutants not scored; {seconds} s, one core)"
        )
        for *_, by_status in rows:
            for name in by_status.get("equivalent", []):
                print(f"equivalent: {name}: {EQUIVALENT[name]}")
        for name, diff in diffs.items():
            print(f"\nsurvived: {name}\n{diff}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "killed": killed,
                    "scored": total,
                    "score": score,
                    "seconds": seconds,
                    "statuses": statuses,
                    "survivors": diffs,
                    "equivalent": {
                        n: EQUIVALENT[n] for n, st in statuses.items() if n in EQUIVALENT
                    },
                    "mutated": MUTATED,
                    "tests": TESTS,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.out}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
