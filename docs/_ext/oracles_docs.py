"""Sphinx extension: the pages of this site that are generated from the code and the results.

Nothing on those pages is written by hand; all of it is recomputed at every build:

* the API reference: one stub page per public name (``__all__``) of :mod:`oracles`,
  :mod:`oracles.strategies`, :mod:`oracles.plugin` and the public modules of
  :mod:`reference`, written to ``api/generated/`` before Sphinx reads the sources;
  the directive ``api-summary`` lists a module's names in an autosummary table;
* the figures of the numerics page, drawn with matplotlib from the real step ladder
  (:mod:`numerics_figures`), written to ``_generated/``;
* the directive ``pitfalls-catalog``: every entry of ``reference.pitfalls.CATALOG``,
  with the source of its wrong VJP and what :func:`oracles.check_vjp` says about it,
  run now;
* the directive ``benchmark-results``: tables from one ``benchmarks/results/*.json``.

``api/generated/`` and ``_generated/`` are build products (git ignores them).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import textwrap
from pathlib import Path

import numerics_figures
import numpy as np
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
RESULTS = ROOT / "benchmarks" / "results"
API_GENERATED = DOCS / "api" / "generated"
FIGURES = DOCS / "_generated"

#: Modules whose ``__all__`` is documented name by name, besides reference's submodules.
DOCUMENTED_MODULES = ("oracles", "oracles.strategies", "oracles.plugin")


# --- which names are documented where ------------------------------------------------


def reference_modules():
    """The public submodules of :mod:`reference`, in alphabetical order."""
    import reference

    return [
        f"reference.{m.name}"
        for m in pkgutil.iter_modules(reference.__path__)
        if not m.name.startswith("_") and not m.ispkg
    ]


def public_names(module_name):
    """``(name, object)`` for the names of ``module_name.__all__`` documented on its page.

    Modules in ``__all__`` are pages of their own. :mod:`reference` re-exports the
    functions of its submodules; each is documented once, in the submodule that
    defines it, and only names defined in a private module stay on the package page.
    """
    module = importlib.import_module(module_name)
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        if module_name == "reference":
            home = getattr(obj, "__module__", "") or ""
            if home in reference_modules():
                continue
        out.append((name, obj))
    return out


def _kind(obj):
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def _stub(module_name, name, obj):
    full = f"{module_name}.{name}"
    kind = _kind(obj)
    lines = [full, "=" * len(full), "", f".. currentmodule:: {module_name}", ""]
    if kind == "class":
        lines += [f".. autoclass:: {name}", "   :members:"]
        if issubclass(obj, BaseException):
            lines.append("   :show-inheritance:")
    elif kind == "function":
        lines += [f".. autofunction:: {name}"]
    else:
        lines += [f".. autodata:: {name}", "   :no-value:"]
    return "\n".join(lines) + "\n"


def _module_page(module_name):
    title = f"``{module_name}``"
    return (
        f"{title}\n{'=' * len(title)}\n\n"
        f".. automodule:: {module_name}\n\n"
        f".. api-summary:: {module_name}\n"
    )


def _write_if_changed(path, text, written):
    written.add(path)
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_api_sources(app):
    """Write ``api/generated/``: a page per public name and per reference submodule."""
    written = set()
    for module_name in (*DOCUMENTED_MODULES, "reference", *reference_modules()):
        for name, obj in public_names(module_name):
            _write_if_changed(
                API_GENERATED / f"{module_name}.{name}.rst", _stub(module_name, name, obj), written
            )
    for module_name in reference_modules():
        _write_if_changed(
            API_GENERATED / "modules" / f"{module_name}.rst", _module_page(module_name), written
        )
    for path in API_GENERATED.rglob("*.rst"):
        if path not in written:
            path.unlink()


def write_figures(app):
    """Draw the numerics figures into ``_generated/`` from the real step ladder."""
    FIGURES.mkdir(exist_ok=True)
    for path in numerics_figures.build(FIGURES):
        logger.info("figure %s", path.relative_to(DOCS))


# --- directives ------------------------------------------------------------------


def _group(name, obj):
    """The heading a name of :mod:`oracles` is listed under."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return "Errors"
    if name.startswith(("check_", "assert_")):
        return "Checks"
    if inspect.isclass(obj):
        return "Modes and reports"
    return "Reference derivatives (the oracles on their own)"


_GROUP_ORDER = (
    "Checks",
    "Modes and reports",
    "Reference derivatives (the oracles on their own)",
    "Errors",
)


class ApiSummary(SphinxDirective):
    """``.. api-summary:: module``: autosummary tables of the module's public names.

    With ``:grouped:``, the names are listed under headings by what they are
    (checks, modes and reports, oracles, errors).
    """

    required_arguments = 1
    option_spec = {"grouped": directives.flag}

    def run(self):
        module_name = self.arguments[0]
        names = public_names(module_name)
        if not names:
            return []
        here = Path(self.env.doc2path(self.env.docname)).parent
        toctree = Path(os.path.relpath(API_GENERATED, here)).as_posix()
        groups = {}
        if "grouped" in self.options:
            for name, obj in names:
                groups.setdefault(_group(name, obj), []).append(name)
            ordered = [(g, groups[g]) for g in _GROUP_ORDER if g in groups]
        else:
            ordered = [(None, [n for n, _ in names])]
        lines = [f".. currentmodule:: {module_name}", ""]
        for heading, members in ordered:
            if heading:
                lines += [f".. rubric:: {heading}", ""]
            lines += [".. autosummary::", f"   :toctree: {toctree}", ""]
            lines += [f"   {n}" for n in members]
            lines += [""]
        return self.parse_text_to_nodes("\n".join(lines))


def _code_block(source, language="python"):
    return (
        [f".. code-block:: {language}", ""]
        + ["   " + line if line else "" for line in source.splitlines()]
        + [""]
    )


class PitfallsCatalog(SphinxDirective):
    """``.. pitfalls-catalog::``: every entry of ``reference.pitfalls.CATALOG``.

    For each entry: what is wrong, the correct form, where it is published, the
    wrong VJP's source, and the verdict of :func:`oracles.check_vjp` on the entry's
    own inputs, computed during the build.
    """

    def run(self):
        import numpy as np

        import oracles
        from reference import pitfalls

        self.env.note_dependency(pitfalls.__file__)
        table = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 30 10 60",
            "",
            "   * - entry",
            "     - wrong input",
            "     - what is wrong",
        ]
        sections = []
        for p in pitfalls.CATALOG:
            wrong = "--" if p.wrong_input is None else f"``{p.input_names[p.wrong_input]}``"
            table += [
                f"   * - :ref:`{p.name} <pitfall-{p.name}>`",
                f"     - {wrong}",
                f"     - {_inline(p.summary)}",
            ]
            inputs = p.make_inputs(np.random.default_rng(11))
            try:
                report = oracles.check_vjp(p.fn, p.wrong_vjp, inputs, seed=0, names=p.input_names)
                verdict, refused = str(report).splitlines()[0], False
            except oracles.errors.UserFunctionError as exc:
                # A wrong VJP can be refused outright (a gradient of the wrong shape: the
                # convolution's empty [p:-p] slice at p = 0): the check raises, naming it.
                verdict, refused = f"UserFunctionError: {exc}", True
            correct = oracles.check_vjp(p.fn, p.correct_vjp, inputs, seed=0, names=p.input_names)
            if (not refused and report.ok) or not correct.ok:
                logger.warning(
                    "pitfall %s: check_vjp passed the wrong VJP or failed the correct one",
                    p.name,
                    location=(self.env.docname, self.lineno),
                )
            shapes = ", ".join(
                f"``{n}`` {tuple(np.shape(x))}" for n, x in zip(p.input_names, inputs, strict=True)
            )
            sections += [
                f".. _pitfall-{p.name}:",
                "",
                p.name,
                "-" * len(p.name),
                "",
                f"**What is wrong.** {_inline(p.summary)}",
                "",
                f"**Correct.** {_inline(p.correct)}",
                "",
                f"**Where it is published.** {_inline(p.source)}",
                "",
                f"The wrong VJP, as published (forward: :func:`{_qualname(p.fn)}`, correct VJP: "
                f":func:`{_qualname(p.correct_vjp)}`):",
                "",
                *_code_block(textwrap.dedent(inspect.getsource(p.wrong_vjp))),
                f"``check_vjp`` on the entry's inputs ({shapes}), during this build:",
                "",
                *_code_block(verdict, "text"),
                f"and on the correct VJP: ``{str(correct).splitlines()[0]}``",
                "",
            ]
        return self.parse_text_to_nodes(
            "\n".join(table + [""] + sections), allow_section_headings=True
        )


def _qualname(fn):
    return f"{fn.__module__}.{fn.__qualname__}"


def _inline(text):
    """Plain catalog text as reST: stars and backquotes would start markup."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


# --- benchmark tables ------------------------------------------------------------------


def _fmt_seconds(s):
    if s is None:
        return "--"
    if s >= 10:
        return f"{s:.1f}"
    if s >= 1:
        return f"{s:.2f}"
    return f"{s:.3f}"


def _list_table(header, rows, widths=None):
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {' '.join(str(w) for w in widths)}")
    lines.append("")
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return lines + [""]


def _checkers_tables(data, name):
    levels = data["levels"]
    machine = data["machine"]
    lines = [
        f"``{name}``: {data['date_utc']}, command ``{data['command']}``, "
        f"{machine.get('cpu', '')} with {machine['cpu_count']} logical CPUs, Python "
        f"{machine['python']}, NumPy {machine['numpy']}, torch {machine.get('torch', '--')}, "
        f"jax {machine.get('jax', '--')}. Workload: {_inline(data['workload'])}. Load at the "
        f"end: ``{data['load_at_end'].strip()}``.",
        "",
    ]
    header = [
        "checker",
        "hidden",
        "seconds",
        "vs gradcheck slow",
        *[f"{float(v):.0e}" for v in levels],
        "false alarm",
    ]
    rows = []
    for r in data["results"]:
        seconds = _fmt_seconds(r["seconds"])
        if r.get("measured_in_this_run") is False:
            seconds = f"({seconds}, not measured in this run)"
        detected = r.get("detected") or {}
        marks = [
            {"named": "named", "missed": "--"}.get(detected.get(v), detected.get(v) or "n/a")
            for v in levels
        ]
        alarm = r.get("false_alarm_on_correct_vjp")
        rows.append(
            [
                _inline(r["checker"]),
                str(r["hidden"]),
                seconds,
                f"{r['ratio_to_gradcheck_slow']:.3g}" if r.get("ratio_to_gradcheck_slow") else "--",
                *marks,
                "n/a" if alarm is None else ("yes" if alarm else "no"),
            ]
        )
    lines += _list_table(header, rows, widths=[34, 6, 10, 10, *[6] * len(levels), 8])
    floors = [r for r in data["results"] if "floor_2N_forward_s" in r]
    for r in floors:
        lines += [
            f"{_inline(r['checker'])}, hidden {r['hidden']}: {_fmt_seconds(r['seconds'])} s "
            f"against {_fmt_seconds(r['floor_2N_forward_s'])} s for the 2N forward passes that "
            f"every per-element check needs (ratio {r['ratio_to_floor']:.3f}; CPU-time ratio "
            f"{r['cpu_ratio_to_floor']:.3f}).",
            "",
        ]
    return lines


_SENSITIVITY_CHECKERS = ("oracles.check_vjp", "torch.autograd.gradcheck", "jax check_grads")


def _sensitivity_tables(data, name):
    env = data["environment"]
    lines = [
        f"``{name}``: Python {env['python']}, NumPy {env['numpy']}, torch {env['torch']}, "
        f"jax {env['jax']}, ``check_vjp`` mode ``{env['check_vjp default mode']}``; "
        f"{data['seconds']} s. Planted in the {_inline(data['element'])}; sizes tried "
        f"{', '.join(f'{s:.0e}' for s in data['sizes'])} (then "
        f"{', '.join(f'{s:.0e}' for s in data['larger_sizes'])} for checkers that missed them).",
        "",
        "Smallest relative error caught, one element / every element:",
        "",
    ]
    header = ["op", *(f"``{c}``" for c in _SENSITIVITY_CHECKERS)]
    rows = []
    for op, entry in data["ops"].items():
        cells = []
        for checker in _SENSITIVITY_CHECKERS:
            c = entry[checker]
            one, every = c["one_element"]["smallest_caught"], c["everywhere"]["smallest_caught"]
            flagged = " (false alarm on the correct VJP)" if c.get("correct_flagged") else ""
            cells.append(f"{_sci(one)} / {_sci(every)}{flagged}")
        rows.append([_inline(op), *cells])
    lines += _list_table(header, rows, widths=[28, 24, 24, 24])
    lines += ["False alarms on correct VJPs at hard points:", ""]
    rows = [
        [
            _inline(point),
            *(
                "**false alarm**"
                if verdicts[c]
                else (
                    "inconclusive"
                    if c == "oracles.check_vjp"
                    and data.get("statuses", {}).get(point) == "inconclusive"
                    else "passes"
                )
                for c in _SENSITIVITY_CHECKERS
            ),
        ]
        for point, verdicts in data["false_alarms"].items()
    ]
    lines += _list_table(
        ["point", *(f"``{c}``" for c in _SENSITIVITY_CHECKERS)], rows, widths=[28, 24, 24, 24]
    )
    return lines


def _sci(x):
    return "not caught" if x is None else f"{x:.0e}"


def _mutation_tables(data, name):
    lines = [
        f"``{name}``: the suite kills **{data['killed']} of {data['scored']}** scored mutants "
        f"({100 * data['score']:.0f}%) in {data['seconds']} s; "
        f"{len(data['survivors'])} survive. {len(data['equivalent'])} further mutants cannot "
        "change behaviour and are not scored.",
        "",
        "Functions mutated:",
        "",
    ]
    lines += _list_table(
        ["module", "functions"],
        [[f"``{m}``", ", ".join(f"``{f}``" for f in fs)] for m, fs in data["mutated"].items()],
        widths=[30, 70],
    )
    lines += [
        "Tests run against every mutant: " + ", ".join(f"``{t}``" for t in data["tests"]) + ".",
        "",
    ]
    if data["survivors"]:
        lines += _list_table(
            ["surviving mutant", "status"],
            [[f"``{k}``", _inline(str(v))] for k, v in data["survivors"].items()],
        )
    lines += ["Equivalent mutants, with the reason each cannot change behaviour:", ""]
    lines += _list_table(
        ["mutant", "why it is equivalent"],
        [[f"``{k}``", _inline(v)] for k, v in data["equivalent"].items()],
        widths=[40, 60],
    )
    return lines


class BenchmarkResults(SphinxDirective):
    """``.. benchmark-results:: NAME.json``: tables from ``benchmarks/results/NAME.json``."""

    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        path = RESULTS / name
        self.env.note_dependency(str(path))
        data = json.loads(path.read_text())
        if "results" in data and "levels" in data:
            lines = _checkers_tables(data, name)
        elif "ops" in data and "false_alarms" in data:
            lines = _sensitivity_tables(data, name)
        elif "killed" in data and "scored" in data:
            lines = _mutation_tables(data, name)
        else:
            raise self.error(f"{name}: not a result file this directive knows how to tabulate")
        return self.parse_text_to_nodes("\n".join(lines))


class RunPytest(SphinxDirective):
    """``.. run-pytest:: examples/test_x.py``: run pytest on a copy of the file, show its output.

    The file is copied into an empty temporary directory and run there with this
    Python (``python -m pytest -p no:cacheprovider``), so the output is what a user
    sees, plugin loaded from its entry point. ``:expect: passed`` or ``failed``: any
    other outcome is a build warning (an error under ``-W``).
    """

    required_arguments = 1
    option_spec = {"expect": lambda v: directives.choice(v, ("passed", "failed"))}

    def run(self):
        import subprocess
        import sys
        import tempfile

        source = DOCS / self.arguments[0]
        self.env.note_dependency(str(source))
        expect = self.options.get("expect", "passed")
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / source.name
            target.write_text(source.read_text())
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "100"}
            env.pop("PYTEST_ADDOPTS", None)
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", source.name],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        output = (proc.stdout + proc.stderr).rstrip()
        if (proc.returncode == 0) != (expect == "passed") or proc.returncode not in (0, 1):
            logger.warning(
                "run-pytest %s: expected the tests to be %s, pytest exited with %d:\n%s",
                self.arguments[0],
                expect,
                proc.returncode,
                output,
                location=(self.env.docname, self.lineno),
            )
        lines = [f"$ python -m pytest -q {source.name}", *output.splitlines()]
        return self.parse_text_to_nodes("\n".join(_code_block("\n".join(lines), "text")))


# --- docstring sections numpydoc does not know -------------------------------------


def _numpydoc_sections():
    from numpydoc.docscrape import NumpyDocString

    return {s for s in NumpyDocString.sections if s[0].isupper()}


def keep_own_sections(app, what, name, obj, options, lines):
    """Keep the sections numpydoc would drop (``Derivation``, ``Conventions``...).

    numpydoc renders only its standard sections and silently discards any other.
    The derivation of every reference VJP is in a ``Derivation`` section, so each
    unknown section is turned into a rubric with its text and moved to the end of
    the extended summary, before the first standard section, keeping its order.
    Runs before numpydoc's own handler (priority 400 < 500).
    """
    known = _numpydoc_sections()
    heads = [
        i
        for i in range(len(lines) - 1)
        if lines[i].strip()
        and not lines[i].startswith(" ")
        and set(lines[i + 1].strip()) == {"-"}
        and len(lines[i + 1].strip()) >= len(lines[i].strip())
        and (i == 0 or not lines[i - 1].strip())
    ]
    if not any(lines[i].strip() not in known for i in heads):
        return
    bounds = [*heads, len(lines)]
    prefix = lines[: heads[0]]
    own, standard = [], []
    for start, end in zip(bounds, bounds[1:], strict=False):
        title = lines[start].strip()
        body = lines[start + 2 : end]
        if title in known:
            standard += lines[start:end]
        else:
            own += [f".. rubric:: {title}", "", *body]
    while prefix and not prefix[-1].strip():
        prefix.pop()
    lines[:] = [*prefix, "", *own, "", *standard]


def add_substitutions(app, config):
    """Substitutions ``|T0|``, ``|T_MIN|``, ``|N_RUNGS|``, ``|AUTO_MAX|``, from the code."""
    from oracles.numerics.modes import AUTO_EXHAUSTIVE_MAX
    from oracles.numerics.objective import N_RUNGS, T0

    t_min = T0 * 2.0 ** -(N_RUNGS - 1)
    values = {
        "T0": f"1/{round(1 / T0)}" if (1 / T0).is_integer() else f"{T0:g}",
        "T_MIN": f"2^{round(np.log2(t_min))} ≈ {t_min:.1e}",
        "N_RUNGS": str(N_RUNGS),
        "AUTO_MAX": f"{AUTO_EXHAUSTIVE_MAX:,}",
    }
    epilog = "\n".join(f".. |{k}| replace:: {v}" for k, v in values.items())
    config.rst_epilog = f"{config.rst_epilog or ''}\n{epilog}\n"


def setup(app):
    app.connect("config-inited", add_substitutions)
    app.connect("autodoc-process-docstring", keep_own_sections, priority=400)
    # Before autosummary (priority 500) reads the sources for its tables.
    app.connect("builder-inited", write_api_sources, priority=100)
    app.connect("builder-inited", write_figures, priority=100)
    app.add_directive("api-summary", ApiSummary)
    app.add_directive("pitfalls-catalog", PitfallsCatalog)
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("run-pytest", RunPytest)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["setup"]
