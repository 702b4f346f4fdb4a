"""pytest plugin: a ``gradcheck`` fixture, a ``gradcheck`` marker, readable failures.

Installed with the package, pytest loads it through the ``pytest11`` entry
point; without the entry point (or with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``),
load it with ``-p oracles.plugin``. It adds:

* command-line options ``--oracles=numeric,torch,jax`` (the oracles the
  fixture uses; default ``numeric``), ``--oracles-rtol``, ``--oracles-atol``,
  ``--oracles-examples`` (Hypothesis ``max_examples`` for tests marked
  ``gradcheck``) and ``--oracles-html=PATH`` (one self-contained HTML page
  with the report of every ``gradcheck`` call of the session, written when
  the session ends, also under pytest-xdist);
* a fixture ``gradcheck`` whose methods ``.vjp``, ``.layer``, ``.jvp`` and
  ``.hvp`` call :func:`oracles.assert_vjp`, :func:`oracles.assert_layer`,
  :func:`oracles.assert_jvp` and :func:`oracles.assert_hvp`
  with those settings;
* a marker ``@pytest.mark.gradcheck(against=..., rtol=..., atol=...,
  examples=...)`` that overrides the options for one test;
* failure output: a test failing with :class:`oracles.GradientMismatch`
  (or :class:`oracles.InconclusiveCheck`: a check that could not have
  failed fails the test too) shows the readable report (and Hypothesis'
  falsifying example) and the test line that raised it, instead of a
  traceback through the checker
  (``--tb=long`` or ``--tb=native`` restore the full traceback).

Example test file::

    import numpy as np

    def test_my_sin(gradcheck):
        gradcheck.vjp(np.sin, lambda g, x: g * np.cos(x), (np.linspace(-1, 1, 5),))
"""

from __future__ import annotations

import pytest

from oracles._pipeline import ORACLES
from oracles._validation import check_tolerance, parse_against
from oracles.errors import GradientMismatch, InconclusiveCheck

__all__ = ["GradCheck", "gradcheck"]

_MARKER_HELP = (
    "gradcheck(against=None, rtol=None, atol=None, examples=None): settings of the gradcheck "
    "fixture for this test (override --oracles, --oracles-rtol, --oracles-atol); examples sets "
    "Hypothesis max_examples (overrides --oracles-examples)"
)
_MARKER_KEYS = ("against", "rtol", "atol", "examples")


def pytest_addoption(parser):
    group = parser.getgroup("oracles", "gradient checks (backprop-oracles)")
    group.addoption(
        "--oracles",
        default=None,
        metavar="LIST",
        help=f"comma-separated distinct oracles the gradcheck fixture compares with, among "
        f"{', '.join(ORACLES)} (default: numeric). torch and jax are used by the calls that "
        "pass torch_fn= / jax_fn=, the others by the checks that support them.",
    )
    group.addoption(
        "--oracles-rtol",
        default=None,
        type=float,
        metavar="R",
        help="rtol added to every oracle's error estimate (default 0)",
    )
    group.addoption(
        "--oracles-atol",
        default=None,
        type=float,
        metavar="A",
        help="atol added to every oracle's error estimate (default 0)",
    )
    group.addoption(
        "--oracles-examples",
        default=None,
        type=int,
        metavar="N",
        help="Hypothesis max_examples for tests marked gradcheck (default: the profile's)",
    )
    group.addoption(
        "--oracles-html",
        default=None,
        metavar="PATH",
        help="write one self-contained HTML page with the report of every gradcheck call of "
        "the session (verdict, sensitivity, error plots, diagnosis) when it ends; needs "
        "matplotlib",
    )


# The options obey the rules of the checks' own arguments, applied by the same functions
# (oracles._validation), so that they cannot drift apart: --oracles is against=, and
# --oracles-rtol / --oracles-atol are rtol= / atol=. A bad value is a usage error when
# pytest starts (exit code 4), not a failure of every test that uses the fixture.


def _parse_oracles(value, where):
    """``--oracles`` (comma-separated) or a marker's ``against=`` -> a tuple of oracles."""
    if value is None:
        return None
    listed = isinstance(value, str)
    if listed:
        value = [v.strip() for v in value.split(",")]
        value = [v for v in value if v]
    try:
        return parse_against(value, ORACLES, "the gradcheck fixture", name=where)
    except (ValueError, TypeError) as exc:  # InvalidArgument, InvalidArgumentType
        raise pytest.UsageError(f"{exc}{' (comma-separated)' if listed else ''}") from None


def _check_number(value, where, kind):
    """A tolerance (``kind=float``) or an example count (``kind=int``), or a usage error."""
    if value is None:
        return None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise pytest.UsageError(f"{where} must be an integer >= 1, got {value!r}")
        return value
    try:
        return check_tolerance(value, where)
    except (ValueError, TypeError) as exc:  # InvalidArgument, InvalidArgumentType
        raise pytest.UsageError(str(exc)) from None


def pytest_configure(config):
    config.addinivalue_line("markers", _MARKER_HELP)
    _parse_oracles(config.getoption("oracles"), "--oracles")
    _check_number(config.getoption("oracles_rtol"), "--oracles-rtol", float)
    _check_number(config.getoption("oracles_atol"), "--oracles-atol", float)
    _check_number(config.getoption("oracles_examples"), "--oracles-examples", int)
    html = _check_html(config.getoption("oracles_html"))
    if html is not None:
        config.stash[_HTML] = _HtmlCollector(html)


def _check_html(value):
    """``--oracles-html``: a file that can be written, and matplotlib to draw; or a usage error.

    The path is made absolute (not resolved: a symlink there is replaced, never followed).
    """
    if value is None:
        return None
    import importlib.util
    import os

    from oracles._files import output_file_problem

    problem = output_file_problem(value)
    if problem:
        raise pytest.UsageError(f"--oracles-html: cannot write the report there: {problem}")
    if importlib.util.find_spec("matplotlib") is None:
        raise pytest.UsageError(
            "--oracles-html: the HTML report draws its plots with matplotlib, which is not "
            'installed: pip install "backprop-oracles[plot]"'
        )
    return os.path.abspath(value)


class GradCheck:
    """The ``gradcheck`` fixture: the oracles' assertions with the run's settings.

    Parameters
    ----------
    against : tuple of str
        Oracles to compare with. ``"numeric"`` runs for every call; ``"torch"``
        and ``"jax"`` for the calls that pass ``torch_fn=`` / ``jax_fn=``;
        ``"complex"`` for the checks that support it (``.vjp`` and ``.layer``).
        A call passing ``against=`` itself uses exactly that.
    rtol, atol : float or None
        Default tolerances of every call.
    examples : int or None
        Hypothesis ``max_examples`` for tests marked ``gradcheck`` (applied by
        the plugin; here for reference).

    Examples
    --------
    >>> import numpy as np
    >>> check = GradCheck(against=("numeric",))
    >>> check.vjp(np.sin, lambda g, x: g * np.cos(x), (np.array([0.1, 0.2]),)).ok
    True
    """

    def __init__(self, against=("numeric",), rtol=None, atol=None, examples=None):
        self.against = tuple(against)
        self.rtol = rtol
        self.atol = atol
        self.examples = examples

    def __repr__(self):
        return (
            f"GradCheck(against={self.against!r}, rtol={self.rtol!r}, atol={self.atol!r}, "
            f"examples={self.examples!r})"
        )

    def _options(self, kwargs, spec):
        opts = dict(kwargs)
        if "against" not in opts:
            # The configured oracles this check supports; torch and jax when their fn is given.
            usable = [
                o
                for o in self.against
                if o in spec.oracles
                and (o not in ("torch", "jax") or opts.get(f"{o}_fn") is not None)
            ]
            if not usable:
                from oracles.errors import InvalidArgument

                raise InvalidArgument(
                    f"the configured oracles {self.against} cannot run here: pass torch_fn= or "
                    "jax_fn= for the autodiff oracles, or run with --oracles=numeric"
                )
            opts["against"] = tuple(usable)
        opts.setdefault("rtol", self.rtol)
        opts.setdefault("atol", self.atol)
        return opts

    def vjp(self, fn, vjp, inputs, **kwargs):
        """:func:`oracles.assert_vjp` with the configured oracles and tolerances."""
        __tracebackhide__ = True
        from oracles.checks import VJP, assert_vjp

        return assert_vjp(fn, vjp, inputs, **self._options(kwargs, VJP))

    def layer(self, layer, inputs, **kwargs):
        """:func:`oracles.assert_layer` with the configured oracles and tolerances."""
        __tracebackhide__ = True
        from oracles.checks import VJP
        from oracles.layer import assert_layer

        return assert_layer(layer, inputs, **self._options(kwargs, VJP))

    def jvp(self, fn, jvp, inputs, **kwargs):
        """:func:`oracles.assert_jvp` with the configured oracles and tolerances."""
        __tracebackhide__ = True
        from oracles.checks import JVP, assert_jvp

        return assert_jvp(fn, jvp, inputs, **self._options(kwargs, JVP))

    def hvp(self, fn, hvp, inputs, **kwargs):
        """:func:`oracles.assert_hvp` with the configured oracles and tolerances."""
        __tracebackhide__ = True
        from oracles.checks import HVP, assert_hvp

        return assert_hvp(fn, hvp, inputs, **self._options(kwargs, HVP))

    def torch(self, func, inputs, **kwargs):
        """:func:`oracles.torch.check` (a torch Function's backward) with the tolerances."""
        __tracebackhide__ = True
        from oracles._pipeline import raise_unless_passed
        from oracles.torch import check

        kwargs.setdefault("rtol", self.rtol)
        kwargs.setdefault("atol", self.atol)
        return raise_unless_passed(check(func, inputs, **kwargs))

    def jax(self, f, args, **kwargs):
        """:func:`oracles.jax.check` (a custom_vjp / custom_jvp rule) with the tolerances."""
        __tracebackhide__ = True
        from oracles._pipeline import raise_unless_passed
        from oracles.jax import check

        kwargs.setdefault("rtol", self.rtol)
        kwargs.setdefault("atol", self.atol)
        return raise_unless_passed(check(f, args, **kwargs))


def _marker_settings(node):
    marker = node.get_closest_marker("gradcheck")
    if marker is None:
        return None
    if marker.args:
        raise pytest.UsageError(
            f"{node.nodeid}: @pytest.mark.gradcheck takes keyword arguments only "
            f"({', '.join(_MARKER_KEYS)}), got positional {marker.args!r}"
        )
    unknown = set(marker.kwargs) - set(_MARKER_KEYS)
    if unknown:
        raise pytest.UsageError(
            f"{node.nodeid}: @pytest.mark.gradcheck got unknown argument(s) {sorted(unknown)}; "
            f"it takes {', '.join(_MARKER_KEYS)}"
        )
    return marker.kwargs


def _settings_for(node):
    config = node.config
    marked = _marker_settings(node) or {}
    where = f"{node.nodeid}: @pytest.mark.gradcheck"
    against = _parse_oracles(marked.get("against"), f"{where}(against=...)")
    if against is None:
        against = _parse_oracles(config.getoption("oracles"), "--oracles") or ("numeric",)
    rtol = _check_number(marked.get("rtol"), f"{where}(rtol=...)", float)
    atol = _check_number(marked.get("atol"), f"{where}(atol=...)", float)
    examples = _check_number(marked.get("examples"), f"{where}(examples=...)", int)
    return {
        "against": against,
        "rtol": config.getoption("oracles_rtol") if rtol is None else rtol,
        "atol": config.getoption("oracles_atol") if atol is None else atol,
        "examples": config.getoption("oracles_examples") if examples is None else examples,
    }


#: The test item running now: the session-scoped fixture reads its marker.
_CURRENT_ITEM = pytest.StashKey[object]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.config.stash[_CURRENT_ITEM] = item


def pytest_runtest_teardown(item):
    item.config.stash[_CURRENT_ITEM] = None


class _ConfiguredGradCheck(GradCheck):
    """The fixture's object: its settings are those of the test running now.

    The fixture is session-scoped (it holds no state, and Hypothesis warns
    about function-scoped fixtures in ``@given`` tests); the marker of the
    current test is read at every call.
    """

    def __init__(self, config):  # noqa: D107 - no GradCheck.__init__: settings are live
        self._config = config

    def _settings(self):
        item = self._config.stash.get(_CURRENT_ITEM, None)
        if item is None:
            return {
                "against": _parse_oracles(self._config.getoption("oracles"), "--oracles")
                or ("numeric",),
                "rtol": self._config.getoption("oracles_rtol"),
                "atol": self._config.getoption("oracles_atol"),
                "examples": self._config.getoption("oracles_examples"),
            }
        return _settings_for(item)

    against = property(lambda self: self._settings()["against"])
    rtol = property(lambda self: self._settings()["rtol"])
    atol = property(lambda self: self._settings()["atol"])
    examples = property(lambda self: self._settings()["examples"])

    def _recorded(self, check, *args, **kwargs):
        """Run one check; with ``--oracles-html``, keep its report (passed or not) for the page."""
        __tracebackhide__ = True
        collector = self._config.stash.get(_HTML, None)
        if collector is None:
            return check(*args, **kwargs)
        item = self._config.stash.get(_CURRENT_ITEM, None)
        try:
            report = check(*args, **kwargs)
        except (GradientMismatch, InconclusiveCheck) as exc:
            collector.record(exc.report, item)
            raise
        collector.record(report, item)
        return report

    def vjp(self, fn, vjp, inputs, **kwargs):
        __tracebackhide__ = True
        return self._recorded(super().vjp, fn, vjp, inputs, **kwargs)

    def layer(self, layer, inputs, **kwargs):
        __tracebackhide__ = True
        return self._recorded(super().layer, layer, inputs, **kwargs)

    def jvp(self, fn, jvp, inputs, **kwargs):
        __tracebackhide__ = True
        return self._recorded(super().jvp, fn, jvp, inputs, **kwargs)

    def hvp(self, fn, hvp, inputs, **kwargs):
        __tracebackhide__ = True
        return self._recorded(super().hvp, fn, hvp, inputs, **kwargs)

    def torch(self, func, inputs, **kwargs):
        __tracebackhide__ = True
        return self._recorded(super().torch, func, inputs, **kwargs)

    def jax(self, f, args, **kwargs):
        __tracebackhide__ = True
        return self._recorded(super().jax, f, args, **kwargs)

    vjp.__doc__ = GradCheck.vjp.__doc__
    layer.__doc__ = GradCheck.layer.__doc__
    jvp.__doc__ = GradCheck.jvp.__doc__
    hvp.__doc__ = GradCheck.hvp.__doc__
    torch.__doc__ = GradCheck.torch.__doc__
    jax.__doc__ = GradCheck.jax.__doc__


# --- --oracles-html: the reports of the session on one page --------------------------------------


class _HtmlCollector:
    """The ``gradcheck`` reports of a session, kept small (:func:`oracles._html.summarize`).

    Under pytest-xdist each worker pickles its entries into a private directory the
    controller made (passed in ``workerinput``); the controller merges them in collection
    order and writes the page.
    """

    def __init__(self, path):
        self.path = path
        self.entries = []  # ((item position, call number), Entry)
        self.calls = {}  # nodeid -> calls so far
        self.positions = None
        self.parts = None  # the controller's directory of the workers' entries
        self.written = None

    def record(self, report, item):
        from oracles._html import summarize

        nodeid = item.nodeid if item is not None else "(outside a test)"
        if self.positions is None and item is not None:
            self.positions = {it.nodeid: k for k, it in enumerate(item.session.items)}
        call = self.calls[nodeid] = self.calls.get(nodeid, 0) + 1
        context = report.context
        keys = ("layer",) if "layer" in context else ("fn", "vjp", "jvp", "hvp")
        who = [f"{k} {context[k]}" for k in keys if k in context]
        group = f"call {call}" + (f": {', '.join(who)}" if who else "")
        position = (self.positions or {}).get(nodeid, -1)
        self.entries.append(((position, call), summarize(report, nodeid, group=group)))


_HTML = pytest.StashKey[_HtmlCollector]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist, controller: give each worker the directory for its entries."""
    collector = node.config.stash.get(_HTML, None)
    if collector is None:
        return
    if collector.parts is None:
        import tempfile

        collector.parts = tempfile.mkdtemp(prefix="oracles-html-")
    node.workerinput["oracles_html_parts"] = collector.parts


def pytest_sessionfinish(session, exitstatus):
    collector = session.config.stash.get(_HTML, None)
    if collector is None:
        return
    import os
    import pickle

    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: hand the entries to the controller
        parts = workerinput.get("oracles_html_parts")
        if parts:
            from oracles._files import write_bytes_atomic

            name = f"{workerinput.get('workerid', 'worker')}.pickle"
            write_bytes_atomic(os.path.join(parts, name), pickle.dumps(collector.entries))
        return
    entries = list(collector.entries)
    if collector.parts is not None:
        import shutil

        for name in sorted(os.listdir(collector.parts)):
            if name.endswith(".pickle"):
                with open(os.path.join(collector.parts, name), "rb") as fh:
                    entries += pickle.load(fh)
        shutil.rmtree(collector.parts, ignore_errors=True)
    entries.sort(key=lambda pair: pair[0])
    from oracles._html import write_html

    config = session.config
    tests = len({e.label for _, e in entries})
    write_html(
        collector.path,
        [e for _, e in entries],
        title="backprop-oracles: gradient checks of a pytest session",
        subtitle=f"{len(entries)} gradcheck call(s) in {tests} test(s)",
        meta=[
            ("command", " ".join(["pytest", *config.invocation_params.args])),
            ("rootdir", str(config.rootpath)),
            ("exit status", f"{int(exitstatus)} ({getattr(exitstatus, 'name', exitstatus)})"),
        ],
    )
    collector.written = len(entries)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    collector = config.stash.get(_HTML, None)
    if collector is not None and collector.written is not None:
        terminalreporter.write_line(
            f"oracles: HTML report of {collector.written} gradcheck call(s) written to "
            f"{collector.path}"
        )


@pytest.fixture(scope="session")
def gradcheck(pytestconfig):
    """Gradient assertions configured by ``--oracles*`` and ``@pytest.mark.gradcheck``.

    ``gradcheck.vjp(fn, vjp, inputs, ...)``, ``gradcheck.layer(layer, inputs,
    ...)``, ``gradcheck.jvp(fn, jvp, inputs, ...)`` and ``gradcheck.hvp(fn,
    hvp, inputs, ...)`` raise :class:`oracles.GradientMismatch` with the
    readable report when the derivation is wrong, and return the report
    otherwise. Keyword arguments are those of the ``check_*`` functions and
    override the configuration. Session-scoped and stateless, so it can be
    used in Hypothesis ``@given`` tests; the settings follow the test running.
    """
    return _ConfiguredGradCheck(pytestconfig)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Apply the configured Hypothesis ``max_examples`` to a marked Hypothesis test."""
    examples = None
    if item.get_closest_marker("gradcheck") is not None:
        examples = _settings_for(item)["examples"]
    test = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
    previous = getattr(test, "_hypothesis_internal_use_settings", None)
    if examples is None or not getattr(test, "is_hypothesis_test", False) or previous is None:
        yield
        return
    from hypothesis import settings

    test._hypothesis_internal_use_settings = settings(previous, max_examples=examples)
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = previous


class _ReadableFailure:
    """A ``longrepr`` that prints the gradient report and where the test raised it."""

    def __init__(self, text, path, lineno, message):
        from _pytest._code.code import ReprFileLocation

        self.text = text
        self.reprcrash = ReprFileLocation(path, lineno, message)

    def toterminal(self, tw):
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self):
        return self.text


def _test_location(item, excinfo):
    """``(path, lineno)`` of the innermost traceback entry in the test's own file."""
    path = str(item.path)
    lineno = None
    for entry in excinfo.traceback:
        if str(entry.path) == path:
            lineno = entry.lineno + 1
    if lineno is None:
        lineno = (item.location[1] or 0) + 1
    try:
        shown = item.config.rootpath and str(item.path.relative_to(item.config.rootpath))
    except ValueError:
        shown = path
    return shown, lineno


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    excinfo = call.excinfo
    if (
        excinfo is None
        or not rep.failed
        or not isinstance(excinfo.value, (GradientMismatch, InconclusiveCheck))
        or item.config.getoption("tbstyle", "auto") not in ("auto", "short")
    ):
        return
    exc = excinfo.value
    path, lineno = _test_location(item, excinfo)
    lines = [str(exc)]
    notes = getattr(exc, "__notes__", None)
    if notes:
        lines += [""] + [str(n) for n in notes]
    label = type(exc).__name__
    lines += ["", f"{path}:{lineno}: {label}"]
    message = str(exc).splitlines()[0] if str(exc) else label
    rep.longrepr = _ReadableFailure("\n".join(lines), path, lineno, message)
