"""The shape of the package: no import cycles, a library that never imports what it judges.

* No import cycle inside :mod:`oracles`: the graph of module-level imports is
  acyclic, that of the library (everything but :mod:`oracles.verify`) stays
  acyclic with the imports deferred into functions too, and every module
  imports on its own in a fresh interpreter.
* No library module imports :mod:`reference` or :mod:`oracles.verify`, not even
  inside a function: only the verification application (``oracles/verify/``
  and ``oracles/__main__.py``) connects the two packages.
* ``import oracles`` loads no torch, jax or ``reference`` module, and neither
  does starting pytest with the plugin (the test in the temporary project
  asserts it on ``sys.modules`` from inside the run).
* The public surface: every name in ``oracles.__all__`` exists, and every
  public function (of :mod:`oracles` and :mod:`oracles.strategies`) has type
  hints on every parameter and its return value.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import oracles
import oracles.strategies

PACKAGE = Path(oracles.__file__).parent
#: The verification application: the one part of oracles that may import reference.
APPLICATION = ("oracles.verify", "oracles.__main__")
#: What the library must never load by itself.
FORBIDDEN = ("torch", "jax", "jaxlib", "reference")


def _modules():
    """``{module name: (path, is_package)}`` for every module of the oracles package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = _modules()


def _is_application(name):
    return any(name == a or name.startswith(a + ".") for a in APPLICATION)


LIBRARY = sorted(m for m in MODULES if not _is_application(m))


def _imported_names(name, *, deferred):
    """Every module name ``name`` imports: ``import a.b``, ``from a import b`` (b may be a
    module), relative imports resolved. ``deferred=False``: only the statements that run
    at import time (module level, including under ``if``/``try``/``with``); ``True``: also
    those inside functions and classes."""
    path, is_package = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    if deferred:
        nodes = list(ast.walk(tree))
    else:
        nodes, stack = [], list(tree.body)
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                stack.extend(ast.iter_child_nodes(node))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def _graph(modules, *, deferred):
    return {
        m: {d for d in _imported_names(m, deferred=deferred) if d in modules and d != m}
        for m in modules
    }


def _cycles(graph):
    """The cycles a depth-first search finds (each as a list of modules, first == last)."""
    state, found = {}, []

    def visit(node, path):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_module_list_is_the_package():
    # The walk sees the subpackages and the modules everything else relies on.
    for name in ("oracles", "oracles._pipeline", "oracles.numerics.ladder", "oracles.backends.jax"):
        assert name in MODULES
    assert "oracles.verify.cli" in MODULES and "oracles.verify.cli" not in LIBRARY


def test_no_import_cycle_at_import_time():
    assert _cycles(_graph(MODULES, deferred=False)) == []


def test_the_library_has_no_import_cycle_even_through_deferred_imports():
    # An import moved into a function hides a cycle from the interpreter, not from the
    # architecture (numerics calling back into the checks): the library has none.
    assert _cycles(_graph(LIBRARY, deferred=True)) == []


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    # A cycle shows as "partially initialized module" when its modules are imported in
    # the wrong order: import each module first, in a fresh state of sys.modules. (The
    # library's modules: the application's load torch and jax, which takes seconds; the
    # import-time graph above covers them.)
    script = textwrap.dedent(
        f"""
        import importlib, sys
        failures = []
        for name in {LIBRARY!r}:
            for loaded in [m for m in sys.modules if m == "oracles" or m.startswith("oracles.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failures.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
        print("\\n".join(failures))
        sys.exit(1 if failures else 0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", LIBRARY)
def test_no_library_module_imports_reference_or_the_application(module):
    imported = _imported_names(module, deferred=True)
    bad = sorted(
        m for m in imported if m == "reference" or m.startswith("reference.") or _is_application(m)
    )
    assert bad == [], f"{module} imports {bad}"


def test_the_application_is_imported_only_by_itself_and_main():
    for module in MODULES:
        if _is_application(module):
            continue
        assert not any(_is_application(m) for m in _imported_names(module, deferred=True)), module
    # ... and the application does import reference (else the rule above tests nothing).
    assert any(
        m == "reference" or m.startswith("reference.")
        for m in _imported_names("oracles.verify.cases", deferred=True)
    )


def _forbidden_loaded_check():
    """Python source: exit 3 naming the modules of FORBIDDEN that are loaded."""
    return textwrap.dedent(
        f"""
        import sys
        loaded = sorted(
            m for m in sys.modules
            if any(m == f or m.startswith(f + ".") for f in {FORBIDDEN!r})
        )
        """
    )


def test_import_oracles_loads_no_torch_jax_or_reference():
    script = (
        "import oracles, oracles.strategies, oracles.plugin\n"
        + _forbidden_loaded_check()
        + "print(loaded)\nsys.exit(3 if loaded else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"import oracles loaded {done.stdout.strip()}{done.stderr}"


def test_the_check_in_the_subprocess_can_fail():
    # The same script reports a module of FORBIDDEN when one is loaded.
    script = (
        "import reference\n" + _forbidden_loaded_check() + "print(loaded)\n"
        "sys.exit(3 if loaded else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3 and "reference" in done.stdout


TRIVIAL_TESTS = f"""
import sys

import numpy as np

FORBIDDEN = {FORBIDDEN!r}


def _loaded():
    return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_starting_pytest_with_the_plugin_loaded_none_of_them():
    assert "oracles.plugin" in sys.modules
    assert _loaded() == []


def test_a_numeric_check_through_the_fixture_loads_none_of_them(gradcheck):
    gradcheck.vjp(np.sin, lambda g, x: g * np.cos(x), (np.linspace(-1.0, 1.0, 5),))
    assert _loaded() == []
"""


@pytest.mark.parametrize("autoload", [True, False], ids=["entry point", "-p oracles.plugin"])
def test_starting_pytest_with_the_plugin_loads_no_torch_jax_or_reference(tmp_path, autoload):
    (tmp_path / "test_trivial.py").write_text(TRIVIAL_TESTS)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYTEST_")}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_trivial.py"]
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        args[3:3] = ["-p", "oracles.plugin"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


# --- the public surface ---------------------------------------------------------------------


def test_every_name_in_all_exists_and_is_public():
    assert len(set(oracles.__all__)) == len(oracles.__all__)
    for name in oracles.__all__:
        assert not name.startswith("_"), name
        assert hasattr(oracles, name), name
    for name in oracles.strategies.__all__:
        assert hasattr(oracles.strategies, name), name


def _public_functions():
    for module in (oracles, oracles.strategies):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield pytest.param(obj, id=f"{module.__name__}.{name}")


@pytest.mark.parametrize("function", list(_public_functions()))
def test_every_public_function_has_type_hints(function):
    signature = inspect.signature(function)
    missing = [
        p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty
    ]
    assert missing == [], f"{function.__qualname__}: parameters without a type hint: {missing}"
    assert signature.return_annotation is not inspect.Signature.empty, function.__qualname__
    # The hints resolve (no misspelt or unimported names hiding in string annotations).
    hints = typing.get_type_hints(function)
    assert "return" in hints
