"""Reports as one self-contained HTML page: verdicts, sensitivities, error plots, diagnoses.

:func:`write_html` writes one file that opens anywhere, offline: the plots are
PNG images embedded as base64 ``data:`` URIs, the style sheet and the one
small script are inline, and nothing is loaded from elsewhere (no fonts, no
CSS or JavaScript files, no network access). A ``Content-Security-Policy``
in the page itself forbids any other source, so a browser would refuse even
a stray external reference.

The page has a title, a summary (how many derivations passed, failed or were
inconclusive, with links to the ones that did not pass), optional figures
(the MNIST page's lockstep curves and W1 tiles), and one table row per
derivation with

* the verdict (:attr:`oracles.report.Report.status`: passed, failed or
  inconclusive) and its one-line reason;
* the sensitivity of each input (:attr:`oracles.report.InputReport.sensitivity`:
  the smallest relative error in a typical element that the run would have
  caught), with the full sentence of :meth:`oracles.report.Coverage.describe`
  as a tooltip;
* the largest error over tolerance, and the failed elements per oracle;
* a plot of the error per element, ``|analytic - reference| / tolerance``
  (:attr:`oracles.report.OracleCheck.error_ratio`; above 1 fails): for each
  input a histogram of that ratio per oracle (log scale) and a heatmap of
  the worst ratio over the oracles laid out like the input;
* on failure, the diagnosis (:attr:`oracles.report.Report.diagnoses`), the
  problems found, and for an inconclusive check the reasons and the advice;
  and for every derivation the full text report, folded.

Memory stays small however many reports a page collects (the pytest plugin
collects every ``gradcheck`` call of a session): :func:`summarize` keeps of
each report only its text, a fixed-bin histogram per input and oracle, and a
heatmap pooled to at most :data:`HEATMAP_CELLS` cells (the maximum of each
block, so one bad element stays visible). The plots are drawn only when the
page is rendered.

Only NumPy and the standard library are imported with this module; matplotlib
(the ``plot`` extra) is imported when a page is rendered, with its
object-oriented API and the Agg canvas (no pyplot, no global state changed).
Files are written through :func:`oracles._files.write_text_atomic`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oracles._files import write_text_atomic
from oracles.report import STATUSES, Report, threshold_text

__all__ = ["Entry", "figure_png", "render", "summarize", "write_html"]

#: Bins of the histograms: log10(error / tolerance) from LOG_LOW to LOG_HIGH. Smaller
#: non-zero ratios count in the first bin, larger ones (and inf) in the last.
LOG_LOW, LOG_HIGH, BIN_WIDTH = -10.0, 6.0, 0.25
BIN_EDGES = np.arange(LOG_LOW, LOG_HIGH + BIN_WIDTH / 2, BIN_WIDTH)

#: A heatmap has at most this many (rows, columns) of cells; larger inputs are pooled.
HEATMAP_CELLS = (48, 64)

#: Inputs drawn per derivation (the others are listed, not drawn).
MAX_PLOTTED_INPUTS = 6

#: The heatmaps' colour scale spans |error| / tolerance from 10**-HEAT_RANGE to 10**HEAT_RANGE.
HEAT_RANGE = 6.0

#: Display width of a heatmap, CSS pixels (the PNG has one pixel per cell).
HEAT_WIDTH = 224

_ORACLE_COLORS = {
    "numeric": "#1f77b4",
    "torch": "#ff7f0e",
    "jax": "#2ca02c",
    "complex": "#9467bd",
    "taylor": "#8c564b",
    "dot": "#e377c2",
}


@dataclass
class OracleSummary:
    """One oracle's comparison of one input, as the page shows it."""

    oracle: str
    n_checked: int
    n_failed: int
    max_ratio: float
    #: Counts per bin of :data:`BIN_EDGES` (None: a projection oracle, no per-element data).
    counts: np.ndarray | None
    zeros: int = 0  # elements whose error is exactly 0
    uncompared: int = 0  # elements this oracle did not compare one by one (mode "fast")
    projection: str | None = None  # what a projection oracle compared (``"<x, d>"``)


@dataclass
class InputSummary:
    """One input of a derivation, as the page shows it."""

    name: str
    shape: tuple
    sensitivity: float
    sensitivity_text: str
    oracles: list
    #: The worst ratio over the oracles, pooled to at most HEATMAP_CELLS (NaN: not compared).
    heatmap: np.ndarray | None
    #: How many elements of the input one heatmap cell holds, per axis.
    block: tuple = (1, 1)


@dataclass
class Entry:
    """What the page keeps of one :class:`oracles.report.Report` (see :func:`summarize`).

    Attributes
    ----------
    label : str
        The derivation's name on the page.
    group : str or None
        Where it comes from (a test, an op), shown under the label.
    kind, status, verdict : str
        As in the report.
    inputs : list of InputSummary
    diagnoses : list of (kind, input, message, pitfall)
    problems, inconclusive, advice : list of str
    text : str
        The full text report, ``str(report)``.
    """

    label: str
    kind: str
    status: str
    verdict: str
    inputs: list
    group: str | None = None
    diagnoses: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    inconclusive: list = field(default_factory=list)
    advice: list = field(default_factory=list)
    text: str = ""


def _ratio_counts(ratio):
    """``(counts, zeros, uncompared)`` of one oracle's per-element ratios."""
    r = np.asarray(ratio, dtype=np.float64).ravel()
    compared = r[~np.isnan(r)]
    zeros = int(np.count_nonzero(compared == 0))
    positive = compared[compared > 0]
    with np.errstate(divide="ignore"):
        logs = np.clip(np.log10(positive), LOG_LOW, LOG_HIGH - BIN_WIDTH / 2)
    counts, _ = np.histogram(logs, bins=BIN_EDGES)
    return counts.astype(np.int64), zeros, int(r.size - compared.size)


def _as_matrix(a):
    """The input's elements as a 2-D array: scalars 1 x 1, vectors one row, else rows x last."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])


def _pool(m, cells=HEATMAP_CELLS):
    """Block maxima of ``m`` so that it has at most ``cells``; NaN where a block has no value.

    Returns ``(pooled, (rows per cell, columns per cell))``.
    """
    rows, cols = m.shape
    br = max(1, math.ceil(rows / cells[0]))
    bc = max(1, math.ceil(cols / cells[1]))
    if br == bc == 1:
        return m.copy(), (1, 1)
    R, C = math.ceil(rows / br), math.ceil(cols / bc)
    padded = np.full((R * br, C * bc), -np.inf)
    padded[:rows, :cols] = np.where(np.isnan(m), -np.inf, m)
    pooled = padded.reshape(R, br, C, bc).max(axis=(1, 3))
    pooled[pooled == -np.inf] = np.nan  # ratios are >= 0: -inf only where nothing was compared
    return pooled, (br, bc)


def _worst_over(matrices):
    """Elementwise maximum over the oracles' ratios, NaN where none compared the element."""
    stack = np.stack([np.where(np.isnan(m), -np.inf, m) for m in matrices])
    worst = stack.max(axis=0)
    worst[worst == -np.inf] = np.nan
    return worst


def _sensitivity_text(ir):
    if ir.coverage is None:
        return "unknown"
    return ir.coverage.describe(ir.name)


def summarize(report: Report, label: str | None = None, *, group: str | None = None) -> Entry:
    """What the page keeps of one report: its verdict, numbers, text and plot data.

    Parameters
    ----------
    report : oracles.report.Report
        The result of a check (:func:`oracles.check_vjp`, ...).
    label : str, optional
        The derivation's name on the page (default: the check's kind and
        function, ``"check_vjp: sin"``).
    group : str, optional
        Where it comes from, shown under the label (a test id, an op).

    Returns
    -------
    Entry
        Its size does not grow with the inputs: per input and oracle a
        histogram of fixed bins, and a heatmap of at most
        :data:`HEATMAP_CELLS` cells.

    Examples
    --------
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> x = np.linspace(-1, 1, 6)
    >>> entry = summarize(check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,)))
    >>> entry.label, entry.status, entry.inputs[0].name
    ('check_vjp: sin', 'passed', 'x')
    >>> int(entry.inputs[0].oracles[0].counts.sum() + entry.inputs[0].oracles[0].zeros)
    6
    """
    if not isinstance(report, Report):
        from oracles.errors import InvalidArgumentType

        raise InvalidArgumentType(
            f"report must be an oracles.report.Report (what check_vjp and the other checks "
            f"return), got {type(report).__name__}"
        )
    if label is None:
        label = f"{report.kind}: {report.context.get('fn', '?')}"
    inputs = []
    for ir in report.inputs:
        oracles, matrices = [], []
        for name, c in ir.checks.items():
            ratio = getattr(c, "error_ratio", None)
            if ratio is None:
                worst = c.worst[0] if c.worst else None
                max_ratio = _element_ratio(worst) if worst is not None else math.nan
                oracles.append(
                    OracleSummary(
                        name,
                        c.n_checked,
                        c.n_failed,
                        max_ratio,
                        None,
                        projection=getattr(worst, "projection", None),
                    )
                )
                continue
            counts, zeros, uncompared = _ratio_counts(ratio)
            r = np.asarray(ratio, dtype=np.float64)
            compared = r[~np.isnan(r)]
            max_ratio = float(compared.max()) if compared.size else math.nan
            oracles.append(
                OracleSummary(name, c.n_checked, c.n_failed, max_ratio, counts, zeros, uncompared)
            )
            matrices.append(_as_matrix(r))
        heatmap, block = (None, (1, 1))
        if matrices:
            heatmap, block = _pool(_worst_over(matrices))
        inputs.append(
            InputSummary(
                name=ir.name,
                shape=tuple(ir.shape),
                sensitivity=float(ir.sensitivity),
                sensitivity_text=_sensitivity_text(ir),
                oracles=oracles,
                heatmap=heatmap,
                block=block,
            )
        )
    return Entry(
        label=str(label),
        kind=report.kind,
        status=report.status,
        verdict=report.verdict,
        inputs=inputs,
        group=None if group is None else str(group),
        diagnoses=[(d.kind, d.input, d.message, d.pitfall) for d in report.diagnoses],
        problems=list(report.problems),
        inconclusive=list(report.inconclusive),
        advice=list(report.advice),
        text=str(report),
    )


def _element_ratio(e):
    if e.tolerance > 0:
        return e.abs_error / e.tolerance
    return math.inf if e.abs_error > 0 or math.isnan(e.abs_error) else 0.0


# --- plots ----------------------------------------------------------------------------------


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        from oracles.errors import BackendUnavailable

        raise BackendUnavailable(
            "the HTML report needs matplotlib for its plots, which is not installed: pip install "
            '"backprop-oracles[plot]"'
        ) from exc
    # A bare Figure renders with the Agg canvas and touches no global pyplot state.
    return Figure(**kwargs)


def figure_png(fig, *, dpi: float = 100) -> bytes:
    """The PNG bytes of a matplotlib ``Figure`` (drawn with the Agg canvas).

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(1, 1))
    >>> _ = fig.add_subplot().plot([0, 1])
    >>> figure_png(fig)[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _tick_label(v):
    return "1" if v == 0 else f"1e{int(v):+d}"


def _count_label(value, _position=None):
    return f"{value:.0f}" if value < 1e4 else f"{value:.0e}".replace("e+0", "e")


def _has_elements(item):
    return any(o.counts is not None and o.counts.sum() + o.zeros > 0 for o in item.oracles)


class _Histograms:
    """Draws the histograms of a page: per oracle, how many elements have each
    ``|error| / tolerance`` (log10 bins), counts on a log axis.

    Everything but the bars (axes, ticks, labels: the text, which costs most) is drawn
    once per height of the count axis (a power of 10) and kept as a raster; each
    histogram restores it and draws only its own bars (matplotlib's blitting). The
    legend is the page's text, not the image's.
    """

    ZERO_X = LOG_LOW - 1.5  # where exact agreement (a ratio of 0) is drawn

    def __init__(self, dpi=90):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

        self.fig = _figure(figsize=(2.8, 1.75), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        # Placed by hand: a layout engine would cost more than the drawing.
        ax = self.ax = self.fig.add_axes((0.2, 0.25, 0.77, 0.71))
        ax.axvspan(0, LOG_HIGH, color="#c62828", alpha=0.08, lw=0)
        ax.axvline(0, color="#c62828", ls="--", lw=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=4))
        ax.yaxis.set_minor_locator(NullLocator())
        # Plain labels: the default log labels are mathtext, whose parser is slow.
        ax.yaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.set_xlim(self.ZERO_X - 0.9, LOG_HIGH + 0.35)  # the last bin clear of the frame
        ticks = [self.ZERO_X, -8, -4, 0, 4]
        ax.set_xticks(ticks, ["0", *(_tick_label(v) for v in ticks[1:])], fontsize=7.5)
        ax.tick_params(axis="y", labelsize=7.5)
        ax.set_xlabel("|error| / tolerance   (> 1 fails)", fontsize=7.5)
        ax.set_ylabel("elements", fontsize=7.5)
        self.backgrounds = {}

    def _background(self, decades):
        if decades not in self.backgrounds:
            self.ax.set_ylim(0.7, 10.0**decades)
            self.canvas.draw()
            self.backgrounds[decades] = self.canvas.copy_from_bbox(self.fig.bbox)
        return self.backgrounds[decades]

    def png(self, item):
        """One input's histogram, as PNG bytes."""
        from matplotlib.image import imsave
        from matplotlib.patches import Rectangle, StepPatch

        ax = self.ax
        shown = [o for o in item.oracles if o.counts is not None and o.counts.sum() + o.zeros]
        top = max([1, *(max(int(o.counts.max()), o.zeros) for o in shown)])
        decades = max(1, math.ceil(math.log10(top * 2.0)))
        self.canvas.restore_region(self._background(decades))
        ax.set_ylim(0.7, 10.0**decades)
        width = 1.0 / max(1, len(shown))
        for k, o in enumerate(shown):
            color = _ORACLE_COLORS.get(o.oracle, "#555555")
            artists = [StepPatch(o.counts, BIN_EDGES, baseline=None, fill=False, ec=color, lw=1.6)]
            if o.zeros:  # exact agreement: no place on a log axis, a bar per oracle of its own
                x = self.ZERO_X - 0.5 + k * width
                artists.append(Rectangle((x, 0.7), width, o.zeros - 0.7, fc=color, alpha=0.7))
            for artist in artists:  # drawn, never added: the axes' limits stay as they are
                artist.set_figure(self.fig)
                artist.set_transform(ax.transData)
                artist.set_clip_box(ax.bbox)
                ax.draw_artist(artist)
        buffer = io.BytesIO()
        imsave(buffer, np.asarray(self.canvas.buffer_rgba()), format="png")
        return buffer.getvalue()


def _colormap():
    from matplotlib import colormaps

    return colormaps["RdBu_r"]


def _heatmap_png(item):
    """The worst ratio over the oracles, one pixel per cell (the page scales it up).

    log10 of the ratio, clipped to [-6, 6], on a diverging map centred on 1 (the
    tolerance): blue agrees, red fails; grey where no oracle compared the element.
    """
    from matplotlib.image import imsave

    with np.errstate(divide="ignore"):
        logs = np.clip(np.log10(item.heatmap), -HEAT_RANGE, HEAT_RANGE)
    rgba = _colormap()((logs + HEAT_RANGE) / (2 * HEAT_RANGE))
    rgba[np.isnan(item.heatmap)] = (0.85, 0.85, 0.85, 1.0)
    buffer = io.BytesIO()
    imsave(buffer, rgba, format="png")
    return buffer.getvalue()


def _legend_gradient():
    """The heatmaps' colour scale as a CSS gradient, sampled from the colormap."""
    cmap = _colormap()
    stops = []
    for t in np.linspace(0.0, 1.0, 13):
        r, g, b, _ = cmap(float(t))
        stops.append(f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)}) {t * 100:.0f}%")
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


def _input_images(item, histograms):
    """``(histogram png, heatmap png)`` of one input; None where there is nothing to draw."""
    if not _has_elements(item):
        return None, None
    heat = None if item.heatmap is None or item.heatmap.size == 0 else _heatmap_png(item)
    return histograms.png(item), heat


# --- the page -------------------------------------------------------------------------------

_CSS = """
:root { --passed: #2e7d32; --failed: #c62828; --inconclusive: #b26a00; --line: #e3e3e3; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: #1d1d1f; background: #fafafa;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { margin: 0 0 4px; font-size: 24px; }
h2 { margin: 28px 0 10px; font-size: 18px; }
.subtitle { margin: 0 0 12px; color: #555; }
.meta { margin: 0 0 14px; padding: 0; list-style: none; color: #333; font-size: 13px; }
.meta li { margin: 2px 0; }
.meta b { display: inline-block; min-width: 90px; color: #666; font-weight: 600; }
.summary { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; margin: 10px 0; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; color: #fff;
  font-weight: 600; font-size: 12.5px; letter-spacing: .02em; white-space: nowrap; }
.badge.passed { background: var(--passed); } .badge.failed { background: var(--failed); }
.badge.inconclusive { background: var(--inconclusive); }
.badge.total { background: #555; }
.attention { margin: 6px 0 0; padding-left: 20px; }
.attention a { color: inherit; }
figure { margin: 0 0 18px; display: inline-block; vertical-align: top; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; padding: 10px; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12.5px; color: #444; margin-top: 6px; max-width: 760px; }
.filters { margin: 6px 0 10px; font-size: 13px; }
.filters button { font: inherit; margin-right: 6px; padding: 2px 10px; border-radius: 4px;
  border: 1px solid #bbb; background: #fff; cursor: pointer; }
.filters button.on { background: #333; color: #fff; border-color: #333; }
table.derivations { border-collapse: collapse; width: 100%; background: #fff;
  border: 1px solid var(--line); table-layout: fixed; }
col.c-num { width: 40px; } col.c-label { width: 22%; } col.c-verdict { width: 30%; }
col.c-sens { width: 17%; }
table.derivations th { text-align: left; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; color: #666; padding: 8px 10px; border-bottom: 2px solid var(--line); }
table.derivations td { padding: 8px 10px; vertical-align: top; }
tr.derivation td { border-top: 1px solid var(--line); }
tr.derivation.failed td:first-child { box-shadow: inset 4px 0 var(--failed); }
tr.derivation.inconclusive td:first-child { box-shadow: inset 4px 0 var(--inconclusive); }
tr.derivation.passed td:first-child { box-shadow: inset 4px 0 var(--passed); }
tr.details td { padding-top: 0; }
.panel { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: flex-start; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; flex: 0 1 auto; }
.card { border: 1px solid var(--line); border-radius: 5px; padding: 6px 8px; width: 270px; }
.card.text { width: auto; max-width: 360px; font-size: 12.5px; color: #444; }
.card.text ul { margin: 4px 0 0; padding-left: 16px; }
.card-title { font-size: 12.5px; margin-bottom: 2px; }
.card img { display: block; }
.card img.heat { image-rendering: pixelated; image-rendering: crisp-edges;
  border: 1px solid #999; margin: 2px 0 0 20px; }
.caption { font-size: 11px; color: #666; margin-left: 20px; }
.key { font-size: 11.5px; margin: 0 0 4px 20px; }
.key .oracle { display: block; }
.swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle;
  margin-right: 5px; }
.legend { font-size: 12.5px; color: #444; max-width: 980px; }
.scale { display: inline-flex; align-items: center; gap: 4px; vertical-align: middle; }
.scale .bar { display: inline-block; width: 140px; height: 10px; border: 1px solid #999; }
.notes { flex: 1 1 380px; min-width: 0; max-width: 100%; overflow: hidden; }
.num { color: #888; font-variant-numeric: tabular-nums; }
.label { font-weight: 600; }
.group, .kind { color: #666; font-size: 12px; word-break: break-all; }
.reason { font-size: 12.5px; color: #333; margin-top: 4px; max-width: 340px; }
.figures td, .sens td { font-variant-numeric: tabular-nums; }
ul.inputs { list-style: none; padding: 0; margin: 0; font-size: 12.5px; }
ul.inputs li { margin: 0 0 3px; white-space: nowrap; }
ul.inputs code { font-size: 12px; }
.bad { color: var(--failed); font-weight: 600; }
.diagnosis { border-left: 3px solid var(--failed); background: #fdf1f1; padding: 6px 10px;
  margin: 0 0 6px; }
.diagnosis.inconclusive { border-color: var(--inconclusive); background: #fff7e8; }
.diagnosis h4 { margin: 0 0 4px; font-size: 13px; }
.diagnosis ul { margin: 0; padding-left: 18px; font-size: 13px; }
.tag { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
  background: #fff; border: 1px solid #e0b4b4; border-radius: 3px; padding: 0 4px; }
details summary { cursor: pointer; color: #555; font-size: 12.5px; }
pre { overflow-x: auto; font: 11.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace;
  background: #f4f4f4; padding: 10px; border-radius: 4px; max-width: 100%; }
img.plot { display: block; max-width: 100%; height: auto; }
body[data-filter="failed"] tbody.entry:not(.failed),
body[data-filter="inconclusive"] tbody.entry:not(.inconclusive),
body[data-filter="passed"] tbody.entry:not(.passed) { display: none; }
footer { margin-top: 24px; color: #888; font-size: 12px; }
"""

# The page's one script: the filter buttons, and data-images-loaded on <body> once every
# image has decoded (naturalWidth > 0), which is what a headless browser test reads.
_SCRIPT = """
(function () {
  function count() {
    var images = document.images, loaded = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
    }
    document.body.setAttribute("data-images-loaded", String(loaded));
  }
  if (document.readyState === "complete") { count(); } else {
    window.addEventListener("load", count);
  }
  var buttons = document.querySelectorAll(".filters button");
  for (var i = 0; i < buttons.length; i++) {
    buttons[i].addEventListener("click", function (event) {
      for (var j = 0; j < buttons.length; j++) { buttons[j].classList.remove("on"); }
      event.target.classList.add("on");
      document.body.setAttribute("data-filter", event.target.getAttribute("data-show"));
    });
  }
})();
"""

_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)


def _e(text):
    return html.escape(str(text), quote=True)


def _img(png, alt, cls=None, size=None):
    data = base64.b64encode(png).decode("ascii")
    width, height = size or _png_size(png)
    c = f' class="{cls}"' if cls else ""
    return (
        f'<img{c} src="data:image/png;base64,{data}" alt="{_e(alt)}" '
        f'width="{width}" height="{height}">'
    )


def _png_size(png):
    """Width and height from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        from oracles.errors import InvalidArgument

        raise InvalidArgument("figures must be PNG images (bytes starting with the PNG header)")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _sens_cell(item):
    s = item.sensitivity
    if math.isnan(s):
        shown = "unknown"
    elif math.isinf(s):
        shown = '<span class="bad">none</span>'
    else:
        shown = f"&ge; {_e(threshold_text(s))}"
    return f'<li title="{_e(item.sensitivity_text)}"><code>{_e(item.name)}</code> {shown}</li>'


def _ratio_text(r):
    if math.isnan(r):
        return "-"
    if math.isinf(r):
        return "inf"
    return f"{r:.2g}"


def _errors_cell(item):
    parts = []
    for o in item.oracles:
        shown = _ratio_text(o.max_ratio)
        if o.counts is not None and math.isnan(o.max_ratio):
            shown = "by projections only"
        text = f"{_e(o.oracle)} {shown}"
        if o.n_failed:
            text = f'<span class="bad">{text}, {o.n_failed}/{o.n_checked} failed</span>'
        parts.append(text)
    return f"<li><code>{_e(item.name)}</code> " + "; ".join(parts) + "</li>"


def _reason(entry):
    head = entry.verdict.split(": ", 2)
    reason = head[2] if len(head) == 3 else entry.verdict
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _details(entry):
    blocks = []
    if entry.status == "failed" and (entry.diagnoses or entry.problems):
        items = []
        for kind, where, message, pitfall in entry.diagnoses:
            named = f" (pitfall: <b>{_e(pitfall)}</b>)" if pitfall else ""
            at = f" <code>{_e(where)}</code>:" if where else ""
            items.append(f'<li><span class="tag">{_e(kind)}</span>{at} {_e(message)}{named}</li>')
        items += [f"<li>{_e(p)}</li>" for p in entry.problems]
        blocks.append(
            '<div class="diagnosis"><h4>Diagnosis</h4><ul>' + "".join(items) + "</ul></div>"
        )
    elif entry.status == "failed":
        blocks.append(
            '<div class="diagnosis"><h4>Diagnosis</h4><ul><li>no known signature fits; see the '
            "worst elements in the full report</li></ul></div>"
        )
    if entry.status == "inconclusive":
        items = [f"<li>{_e(t)}</li>" for t in entry.inconclusive]
        items += [f"<li>instead: {_e(t)}</li>" for t in entry.advice]
        blocks.append(
            '<div class="diagnosis inconclusive"><h4>Why it could not have failed</h4><ul>'
            + "".join(items)
            + "</ul></div>"
        )
    opened = " open" if entry.status == "failed" else ""
    blocks.append(
        f"<details{opened}><summary>full report</summary><pre>{_e(entry.text)}</pre></details>"
    )
    return "".join(blocks)


def _no_elements_text(item):
    """Why an input has no per-element plot: what its oracles compared instead."""
    parts = []
    for o in item.oracles:
        if o.counts is None:
            what = f" {o.projection}" if o.projection else ""
            verdict = "failed" if o.n_failed else "passed"
            parts.append(
                f"{o.oracle}: one projection{what}, |error| / tolerance "
                f"{_ratio_text(o.max_ratio)} ({verdict})"
            )
        elif o.uncompared:
            parts.append(f"{o.oracle}: judged by projections, no element compared one by one")
    return parts or ["no elements"]


def _heat_size(rows, cols, width=HEAT_WIDTH, tallest=110):
    """Display size in CSS pixels of a ``rows x cols`` heatmap (cells kept square-ish)."""
    height = width * rows / cols
    if height > tallest:
        return max(12, round(tallest * cols / rows)), tallest
    return width, max(12, round(height))


def _key(o):
    """An oracle's line in a card's legend: its colour, name and what it found."""
    if o.counts is None:
        what = f"one projection, |error| / tolerance {_ratio_text(o.max_ratio)}"
    else:
        compared = int(o.counts.sum()) + o.zeros
        what = f"{compared} compared" if o.uncompared else f"{compared} elements"
        if o.zeros:
            what += f", {o.zeros} exact"
    failed = f', <span class="bad">{o.n_failed} failed</span>' if o.n_failed else ""
    color = _ORACLE_COLORS.get(o.oracle, "#555555")
    return (
        f'<span class="oracle"><span class="swatch" style="background: {color}"></span>'
        f"{_e(o.oracle)}: {what}{failed}</span>"
    )


def _card(item, images):
    """One input: its name and shape, the histogram, the heatmap and what it shows."""
    shape = "scalar" if not item.shape else " x ".join(str(s) for s in item.shape)
    title = f'<div class="card-title"><code>{_e(item.name)}</code> {_e(shape)}</div>'
    hist, heat = images
    if hist is None:
        lines = "".join(f"<li>{_e(t)}</li>" for t in _no_elements_text(item))
        return f'<div class="card text">{title}<ul>{lines}</ul></div>'
    body = _img(hist, f"histogram of error over tolerance per element of {item.name}", "hist")
    body += '<div class="key">' + "".join(_key(o) for o in item.oracles) + "</div>"
    if heat is not None:
        rows, cols = item.heatmap.shape
        w, h = _heat_size(rows, cols)
        br, bc = item.block
        what = "one element each" if br == bc == 1 else f"each the worst of {br} x {bc}"
        body += _img(heat, f"error over tolerance per element of {item.name}", "heat", size=(w, h))
        body += f'<div class="caption">{rows} x {cols} cells, {what}</div>'
    return f'<div class="card">{title}{body}</div>'


def _row(number, entry, images):
    """One derivation: a table row of numbers, then its plots and its notes beneath."""
    status = entry.status if entry.status in STATUSES else "failed"
    group = f'<div class="group">{_e(entry.group)}</div>' if entry.group else ""
    drawn = [i for i in entry.inputs if i.oracles]
    cards = "".join(_card(i, im) for i, im in zip(drawn, images, strict=False))
    if len(drawn) > len(images):
        cards += f'<div class="card text">{len(drawn) - len(images)} more input(s) not drawn</div>'
    sens = "".join(_sens_cell(i) for i in entry.inputs)
    errs = "".join(_errors_cell(i) for i in entry.inputs)
    return (
        f'<tbody class="entry {status}" id="d{number}">'
        f'<tr class="derivation {status}" data-status="{status}">'
        f'<td class="num">{number}</td>'
        f'<td><div class="label">{_e(entry.label)}</div>{group}'
        f'<div class="kind">{_e(entry.kind)}</div></td>'
        f'<td><span class="badge {status}">{status}</span>'
        f'<div class="reason">{_e(_reason(entry))}</div></td>'
        f'<td><ul class="inputs">{sens}</ul></td>'
        f'<td><ul class="inputs">{errs}</ul></td></tr>'
        f'<tr class="details"><td></td><td colspan="4"><div class="panel">'
        f'<div class="cards">{cards}</div><div class="notes">{_details(entry)}</div>'
        "</div></td></tr></tbody>"
    )


def _as_png(figure):
    if isinstance(figure, bytes | bytearray):
        return bytes(figure)
    return figure_png(figure)


def render(
    entries: Iterable,
    *,
    title: str,
    subtitle: str | None = None,
    meta: Sequence = (),
    figures: Sequence = (),
) -> str:
    """The page, as one HTML string.

    Parameters
    ----------
    entries : iterable of Entry or Report
        One table row each, in this order (reports are passed through
        :func:`summarize`).
    title : str
        The page's ``<title>`` and heading.
    subtitle : str, optional
        A line under the heading.
    meta : sequence of (str, str)
        Facts about the run (command, oracles, seed), listed under the heading.
    figures : sequence of (str, bytes or matplotlib Figure)
        Extra plots shown above the table, each with its caption: PNG bytes
        (:func:`figure_png`) or a figure to draw.

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> report = check_vjp(np.tanh, lambda g, x: g * (1 - np.tanh(x) ** 2), (np.ones(3),))
    >>> page = render([report], title="tanh")
    >>> page.count('<tr class="derivation passed"'), "<title>tanh</title>" in page
    (1, True)
    """
    entries = [e if isinstance(e, Entry) else summarize(e) for e in entries]
    counts = {s: sum(e.status == s for e in entries) for s in STATUSES}
    histograms = _Histograms() if any(i.oracles for e in entries for i in e.inputs) else None
    images = [
        [_input_images(i, histograms) for i in e.inputs if i.oracles][:MAX_PLOTTED_INPUTS]
        for e in entries
    ]
    extra = [(caption, _as_png(fig)) for caption, fig in figures]
    n_images = len(extra) + sum(p is not None for im in images for pair in im for p in pair)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="backprop-oracles">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head>",
        f'<body data-derivations="{len(entries)}" data-images="{n_images}" data-filter="all">',
        f"<header><h1>{_e(title)}</h1>",
    ]
    if subtitle:
        out.append(f'<p class="subtitle">{_e(subtitle)}</p>')
    if meta:
        out.append(
            '<ul class="meta">'
            + "".join(f"<li><b>{_e(k)}</b> {_e(v)}</li>" for k, v in meta)
            + "</ul>"
        )
    badges = [f'<span class="badge total">{len(entries)} derivation(s)</span>']
    badges += [f'<span class="badge {s}">{counts[s]} {s}</span>' for s in STATUSES if counts[s]]
    out.append('<div class="summary">' + "".join(badges) + "</div>")
    attention = [(k, e) for k, e in enumerate(entries, 1) if e.status != "passed"]
    if attention:
        out.append(
            '<ol class="attention">'
            + "".join(
                f'<li><a href="#d{k}">{_e(e.label)}</a>: <b>{_e(e.status)}</b></li>'
                for k, e in attention
            )
            + "</ol>"
        )
    out.append("</header>")
    if extra:
        out.append('<section class="figures">')
        for caption, png in extra:
            out.append(
                f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>"
            )
        out.append("</section>")
    out.append("<h2>Derivations</h2>")
    out.append(
        '<p class="legend">Per input: a histogram of |error| / tolerance over the elements, '
        "one line per oracle (exact agreement at 0; above 1 fails), and a heatmap of the "
        "worst ratio over the oracles, laid out like the input: "
        f'<span class="scale"><span>1e-{HEAT_RANGE:.0f}</span>'
        f'<span class="bar" style="background: {_legend_gradient()}"></span>'
        f"<span>1e+{HEAT_RANGE:.0f}</span></span> (1 in the middle; grey: not compared one by "
        "one).</p>"
    )
    out.append(
        '<div class="filters">show: '
        '<button class="on" data-show="all">all</button>'
        + "".join(f'<button data-show="{s}">{s} ({counts[s]})</button>' for s in STATUSES)
        + "</div>"
    )
    out.append(
        '<table class="derivations"><colgroup><col class="c-num"><col class="c-label">'
        '<col class="c-verdict"><col class="c-sens"><col class="c-err"></colgroup>'
        "<thead><tr><th>#</th><th>derivation</th><th>verdict</th>"
        '<th title="the smallest relative error in a typical element this run would have '
        'caught">sensitivity</th><th>max |error| / tolerance, per oracle</th></tr></thead>'
    )
    out += [_row(k, e, im) for k, (e, im) in enumerate(zip(entries, images, strict=True), 1)]
    out.append("</table>")
    out.append(
        "<footer>Tolerance per element: the oracle's own error estimate + atol + rtol "
        "|reference|. Sensitivity: the smallest relative error in a typical element that the run "
        "would have caught. Written by backprop-oracles; this file loads nothing from "
        "elsewhere.</footer>"
    )
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"


def write_html(
    path,
    entries: Iterable,
    *,
    title: str,
    subtitle: str | None = None,
    meta: Sequence = (),
    figures: Sequence = (),
) -> Path:
    """Write :func:`render`'s page to ``path`` atomically; returns ``Path(path)``.

    The file is written whole to a temporary file in the same directory and
    moved into place (:func:`oracles._files.write_text_atomic`): a symlink
    planted at ``path`` is replaced, never followed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> report = check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.ones(2),))
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.html"
    >>> write_html(out, [report], title="sin").read_text().startswith("<!DOCTYPE html>")
    True
    """
    page = render(entries, title=title, subtitle=subtitle, meta=meta, figures=figures)
    return write_text_atomic(path, page)
