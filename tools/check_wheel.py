"""The package as users get it: build the sdist and the wheel, install the wheel alone, use it.

``tox -e wheel`` runs this. Steps, each timed:

1. ``python -m build``: an sdist and a wheel (built from the sdist, so a file
   missing from the sdist is missing from the wheel too).
2. The wheel's contents: every module and subpackage of the source tree, the
   bundled MNIST files, ``py.typed``, the ``pytest11`` entry point, and only
   numpy and tqdm as unconditional dependencies.
3. A fresh virtual environment with the wheel (no extras) and pytest only;
   Hypothesis, torch and jax must not be importable there.
4. From an empty directory outside the source tree, with that environment's
   Python: the imports (``oracles`` must come from the environment), the
   bundled MNIST sample, ``python -m oracles report --no-mlp --oracles
   numeric``, and the pytest plugin on a small user test file: the correct
   VJP and layer pass, the wrong VJP fails with the readable report and no
   traceback through the checker.

Usage: ``python tools/check_wheel.py [--keep]``. Everything happens in a new temporary
directory outside the source tree, removed at the end unless ``--keep``. Exits 1 if any
step fails; the last line counts the steps.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("oracles", "reference")
REQUIRED_DATA = (
    "oracles/py.typed",
    "reference/py.typed",
    "reference/data/README.md",
    "reference/data/mnist-sample-images-idx3-ubyte.gz",
    "reference/data/mnist-sample-labels-idx1-ubyte.gz",
)
CORE_REQUIREMENTS = {"numpy", "tqdm"}

USER_TESTS = '''
"""A user's test file: the plugin's gradcheck fixture, nothing else from this project."""
import numpy as np


def tanh_vjp(g, x):
    return g * (1.0 - np.tanh(x) ** 2)


def tanh_vjp_wrong(g, x):
    return g * (1.0 - np.tanh(x))  # the square is missing


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


def test_correct_vjp(gradcheck):
    gradcheck.vjp(np.tanh, tanh_vjp, (np.linspace(-2.0, 2.0, 7),))


def test_correct_layer(gradcheck):
    rng = np.random.default_rng(0)
    layer = Affine(rng.normal(size=(5, 3)), rng.normal(size=3))
    gradcheck.layer(layer, rng.normal(size=(4, 5)), params={"W": "dW", "b": "db"})


def test_wrong_vjp(gradcheck):
    gradcheck.vjp(np.tanh, tanh_vjp_wrong, (np.linspace(-2.0, 2.0, 7),))
'''


class Steps:
    """Runs named steps, records pass/fail and time, prints as it goes."""

    def __init__(self):
        self.results = []

    def run(self, name, fn):
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Exception as exc:  # a failed step is reported, and the next ones still run
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        else:
            ok = True
        seconds = time.perf_counter() - t0
        self.results.append((name, ok, seconds))
        print(f"[{'ok' if ok else 'FAIL'}] {name} ({seconds:.1f} s)", flush=True)
        if detail:
            print(textwrap.indent(str(detail).rstrip(), "    "), flush=True)
        return ok


def _run(cmd, *, cwd, env=None, expect=0, timeout=900):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    if expect is not None and proc.returncode != expect:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited with {proc.returncode} (expected {expect}):\n{out}"
        )
    return proc.returncode, out


def _clean_env(venv):
    """The environment of a user's shell with only the fresh venv on PATH; no source tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TOX_", "PYTEST", "ORACLES_"))
    }
    env["PATH"] = os.pathsep.join([str(_bin(venv)), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def _bin(venv):
    return venv / ("Scripts" if os.name == "nt" else "bin")


def _source_modules():
    """Every ``.py`` file of the packages in the source tree, as wheel paths."""
    out = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "__pycache__" not in rel.parts:
                out.add(rel.as_posix())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="oracles-wheel-")).resolve()
    if work.is_relative_to(ROOT):
        raise SystemExit(f"the temporary directory {work} is inside the source tree {ROOT}")
    try:
        return _check(work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _check(work):
    dist, venv, user = work / "dist", work / "venv", work / "user"
    user.mkdir(parents=True)
    steps = Steps()
    state = {}
    print(f"source tree {ROOT}; working in {work}", flush=True)

    def build():
        _run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=work)
        wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            raise RuntimeError(f"expected one wheel and one sdist, got {wheels + sdists}")
        state["wheel"] = wheels[0]
        return f"{wheels[0].name} ({wheels[0].stat().st_size / 1e6:.1f} MB), {sdists[0].name}"

    def contents():
        with zipfile.ZipFile(state["wheel"]) as zf:
            names = set(zf.namelist())
            info = next(n for n in names if n.endswith(".dist-info/METADATA"))
            metadata = zf.read(info).decode()
            eps = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
        missing = sorted((_source_modules() | set(REQUIRED_DATA)) - names)
        if missing:
            raise RuntimeError(f"missing from the wheel: {missing}")
        if not re.search(
            r"^\[pytest11\]\s*\n\s*oracles\.plugin\s*=\s*oracles\.plugin\s*$", eps, re.M
        ):
            raise RuntimeError(f"no pytest11 entry point for oracles.plugin:\n{eps}")
        core = {
            re.split(r"[<>=!~ ;\[]", line.split(":", 1)[1].strip())[0].lower()
            for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        }
        if core != CORE_REQUIREMENTS:
            raise RuntimeError(
                f"unconditional dependencies {sorted(core)}; expected {sorted(CORE_REQUIREMENTS)}"
            )
        extras = sorted(
            line.split(":", 1)[1].strip()
            for line in metadata.splitlines()
            if line.startswith("Provides-Extra:")
        )
        return (
            f"{len(names)} files; entry point pytest11 oracles.plugin; requires "
            f"{', '.join(sorted(core))}; extras {', '.join(extras)}"
        )

    def install():
        _run([sys.executable, "-m", "virtualenv", "--quiet", venv], cwd=work)
        py = _bin(venv) / "python"
        _run(
            [py, "-m", "pip", "install", "--quiet", state["wheel"], "pytest"],
            cwd=user,
            env=_clean_env(venv),
        )
        state["python"] = py
        code, out = _run(
            [
                py,
                "-c",
                "import importlib.util as u; print(*(n for n in "
                "('hypothesis', 'torch', 'jax', 'matplotlib') if u.find_spec(n)))",
            ],
            cwd=user,
            env=_clean_env(venv),
        )
        if out.strip():
            raise RuntimeError(f"the core install pulled in {out.strip()}")
        _, freeze = _run([py, "-m", "pip", "freeze"], cwd=user, env=_clean_env(venv))
        return "installed: " + ", ".join(
            line.split(" @ ")[0] for line in freeze.splitlines() if line.strip()
        )

    def python(code, **kw):
        return _run(
            [state["python"], "-c", textwrap.dedent(code)], cwd=user, env=_clean_env(venv), **kw
        )[1]

    def imports():
        return python(f"""
            import sys, oracles, reference, oracles.plugin
            root = {str(ROOT)!r}
            for m in (oracles, reference):
                assert not m.__file__.startswith(root), f"{{m.__name__}} from the source tree"
                assert {str(venv)!r} in m.__file__, m.__file__
            assert not any(p and p.startswith(root) for p in sys.path), sys.path
            assert "hypothesis" not in sys.modules
            try:
                import oracles.strategies
            except ModuleNotFoundError as exc:
                assert exc.name == "hypothesis", exc
            else:
                raise AssertionError("oracles.strategies imported without hypothesis")
            print("oracles", oracles.__file__)
            print("public API:", len(oracles.__all__), "names")
        """)

    def mnist():
        return python("""
            import numpy as np, reference
            images, labels = reference.load_mnist()
            assert images.shape == (10000, 28, 28) and images.dtype == np.uint8, images.shape
            assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
            print("load_mnist():", images.shape, images.dtype, labels.shape, labels.dtype)
        """)

    def report():
        _, out = _run(
            [state["python"], "-m", "oracles", "report", "--no-mlp", "--oracles", "numeric"],
            cwd=user,
            env=_clean_env(venv),
        )
        if "ALL DERIVATIONS VERIFIED" not in out:
            raise RuntimeError(f"no verdict line in the report:\n{out}")
        return next(line for line in out.splitlines() if "ALL DERIVATIONS VERIFIED" in line)

    def plugin():
        (user / "test_user_gradients.py").write_text(USER_TESTS)
        code, out = _run(
            [state["python"], "-m", "pytest", "-p", "no:cacheprovider", "test_user_gradients.py"],
            cwd=user,
            env=_clean_env(venv),
            expect=1,
        )
        expected = [
            r"1 failed, 2 passed",
            r"FAILED test_user_gradients\.py::test_wrong_vjp",
            r"check_vjp: FAILED: \d+ of 7 elements of the gradient of x disagree with numeric",
            r"Worst elements",
            r"test_user_gradients\.py:\d+: GradientMismatch",
        ]
        absent = [e for e in expected if not re.search(e, out)]
        if absent:
            raise RuntimeError(f"pytest output lacks {absent}:\n{out}")
        # Readable: the report and the test's line, no traceback through the checker.
        internals = re.findall(r"^.*oracles[/\\]\w+\.py:\d+.*$", out, re.M)
        if internals:
            raise RuntimeError(f"traceback through the checker shown:\n{out}")
        return "as expected: the correct VJP and layer pass, the wrong VJP fails with the report"

    if steps.run("python -m build: sdist and wheel", build):
        steps.run("wheel contents", contents)
        if steps.run("fresh virtualenv with the wheel alone (+ pytest)", install):
            steps.run("import oracles, reference (from the venv, no hypothesis)", imports)
            steps.run("reference.load_mnist()", mnist)
            steps.run("python -m oracles report --no-mlp --oracles numeric", report)
            steps.run("pytest plugin on a user test file", plugin)
    passed = sum(ok for _, ok, _ in steps.results)
    failed = len(steps.results) - passed
    print(f"wheel check: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed == 7 else 1


if __name__ == "__main__":
    sys.exit(main())
