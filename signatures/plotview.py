"""Plotly figures in ipywidgets apps, drawn once per change.

The apps keep every figure they may show as a cached :class:`Plot` (its JSON spec, built
once) and put it in a :class:`PlotBox`. A box is one of two widgets:

- ``"widget"``: :class:`PlotlyView`, a small ``anywidget`` that receives the spec as UTF-8
  JSON bytes (a binary buffer, no second JSON encoding) and calls ``Plotly.react`` once per
  change, with plotly.js loaded once per page from :func:`plotly_src`. A view can wait
  until it is scrolled into sight before it draws (``lazy``), so a page paints what is on
  screen first. Used in the web site and in Google Colab.
- ``"mime"``: an ``ipywidgets.Output`` holding the figure as a plotly mime bundle, drawn
  by plotly's own renderer (``jupyterlab-plotly``), which works offline in JupyterLab.

Either way the figure is widget *state*, not a message, so a page that connects after
the kernel has run (Voilà's preheated kernels) still shows it. :func:`plot_renderer`
picks the kind: ``$SIGNATURES_PLOTS`` when set, else ``"widget"`` under Voilà and in
Colab, else ``"mime"``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anywidget
import ipywidgets as W
import plotly.graph_objects as go
import traitlets as T

__all__ = ["Plot", "PlotlyView", "PlotBox", "plot_renderer", "forced_renderer", "plotly_src", "plotly_js_path",
           "PLOTLY_ROUTE", "RENDERERS"]

RENDERERS = ("widget", "mime")
PLOTS_ENV = "SIGNATURES_PLOTS"
#: Where the site serves plotly.js, below its base URL (see :mod:`signatures.app.server`).
PLOTLY_ROUTE = "signatures/static/plotly.min.js"
_PLOTLY_MIME = "application/vnd.plotly.v1+json"
DEFAULT_HEIGHT = 520


def plotly_js_path():
    """The plotly.js bundle shipped inside the ``plotly`` Python package (same version)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.js is missing from the plotly package: {path}")
    return path


def forced_renderer():
    """The renderer ``$SIGNATURES_PLOTS`` asks for, or None when it is unset."""
    chosen = os.environ.get(PLOTS_ENV, "").strip().lower()
    if chosen and chosen not in RENDERERS:
        raise ValueError(f"{PLOTS_ENV} must be one of {', '.join(RENDERERS)}, got {chosen!r}")
    return chosen or None


def plot_renderer():
    """``"widget"`` or ``"mime"``: ``$SIGNATURES_PLOTS``, else widget under Voilà or in Colab."""
    chosen = forced_renderer()
    if chosen:
        return chosen
    if os.environ.get("VOILA_BASE_URL") or "google.colab" in sys.modules:
        return "widget"
    return "mime"


def plotly_src():
    """URL the browser loads plotly.js from: the site's own copy under Voilà, else plotly's CDN."""
    base = os.environ.get("VOILA_BASE_URL")
    if base is not None:
        return base.rstrip("/") + "/" + PLOTLY_ROUTE
    from plotly.io._utils import plotly_cdn_url

    return plotly_cdn_url()


class Plot:
    """One figure ready to show: its plotly JSON spec, encoded once.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
    height : int
        Used when the figure's layout sets none (an output area has no height of its own).
    """

    __slots__ = ("payload", "title", "height")

    def __init__(self, fig, *, height=DEFAULT_HEIGHT):
        spec = json.loads(fig.to_json())
        # Not "responsive": on resize plotly drops a height given without a width and takes the
        # container's height, and an output area has none of its own (0 px).
        spec["layout"].setdefault("height", height)
        spec["config"] = {"displaylogo": False}
        # Only the encoded form is kept: it is what a widget sends, and half the memory.
        self.payload = json.dumps(spec, separators=(",", ":")).encode()
        self.title = fig.layout.title.text or "plot"
        self.height = int(spec["layout"]["height"])

    @property
    def spec(self):
        """The figure's plotly JSON (``data``, ``layout``, ``config``), decoded from :attr:`payload`."""
        return json.loads(self.payload)

    def figure(self):
        """The spec as a ``go.Figure`` again."""
        return go.Figure({k: v for k, v in self.spec.items() if k != "config"})

    def mime_output(self):
        """The figure as one ``display_data`` output, for an ``ipywidgets.Output``'s ``outputs``."""
        return {"output_type": "display_data", "metadata": {},
                "data": {_PLOTLY_MIME: self.spec, "text/plain": f"<figure: {self.title}>"}}


_ESM = r"""
function loadPlotly(src) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  const key = "__signaturesPlotly";
  if (!window[key]) {
    // One script per page, whichever plot asks first (the site's template preloads the file).
    window[key] = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      performance.mark("signatures:plotly-requested");
      script.onload = () => window.Plotly
        ? (performance.mark("signatures:plotly-ready"), resolve(window.Plotly))
        : reject(new Error("plotly.js loaded from " + src + " but did not define Plotly"));
      script.onerror = () => {
        delete window[key];  // a later draw tries again
        reject(new Error("could not load plotly.js from " + src));
      };
      document.head.appendChild(script);
    });
  }
  return window[key];
}

function decode(value) {
  if (!value) return null;
  const bytes = value instanceof DataView ? new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
    : new Uint8Array(value.buffer || value);
  return JSON.parse(new TextDecoder().decode(bytes));
}

function render({ model, el }) {
  performance.mark("signatures:view");
  const div = document.createElement("div");
  div.className = "sig-plot";
  el.appendChild(div);
  let visible = !model.get("lazy");
  let dirty = true;
  let drawing = Promise.resolve();
  let lastWidth = 0;
  let resizeTimer = null;

  const reserve = () => { div.style.minHeight = model.get("height") + "px"; };
  reserve();

  const draw = () => {
    if (!visible || !dirty || !div.isConnected || div.clientWidth === 0) return drawing;
    dirty = false;
    drawing = drawing.then(async () => {
      const spec = decode(model.get("spec"));
      if (!spec) { div.dataset.state = "empty"; return; }
      try {
        const Plotly = await loadPlotly(model.get("src"));
        await Plotly.react(div, spec.data, spec.layout, spec.config);
        performance.mark("signatures:drawn");
        lastWidth = div.clientWidth;
        div.dataset.state = "drawn";
        div.dataset.draws = String(Number(div.dataset.draws || 0) + 1);
      } catch (err) {
        div.dataset.state = "error";
        div.textContent = "This plot could not be drawn: " + err.message;
        console.warn(err);
      }
    });
    return drawing;
  };

  const onSpec = () => { dirty = true; reserve(); draw(); };
  model.on("change:spec", onSpec);
  model.on("change:height", reserve);

  const sizes = new ResizeObserver(() => {
    if (div.dataset.state !== "drawn") { draw(); return; }
    if (Math.abs(div.clientWidth - lastWidth) < 2) return;
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (window.Plotly && div.dataset.state === "drawn") {
        lastWidth = div.clientWidth;
        window.Plotly.Plots.resize(div);
      }
    }, 150);
  });
  sizes.observe(div);

  let sight = null;
  if (!visible) {
    sight = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) {
        visible = true;
        sight.disconnect();
        draw();
      }
    }, { rootMargin: "150px" });
    sight.observe(div);
  }
  draw();

  return () => {
    model.off("change:spec", onSpec);
    model.off("change:height", reserve);
    sizes.disconnect();
    if (sight) sight.disconnect();
    clearTimeout(resizeTimer);
    if (window.Plotly) window.Plotly.purge(div);
  };
}

export default { render };
"""


class PlotlyView(anywidget.AnyWidget):
    """One plotly figure, drawn in the browser with ``Plotly.react`` once per change of ``spec``.

    Attributes
    ----------
    spec : bytes
        UTF-8 JSON of ``{"data", "layout", "config"}`` (see :class:`Plot`); empty for no figure.
    src : str
        URL of plotly.js, loaded once per page (see :func:`plotly_src`).
    lazy : bool
        Draw only once the plot is scrolled near the screen.
    height : int
        Pixels reserved before the figure is drawn.
    """

    _esm = _ESM
    spec = T.Bytes(b"").tag(sync=True)
    src = T.Unicode("").tag(sync=True)
    lazy = T.Bool(False).tag(sync=True)
    height = T.Int(DEFAULT_HEIGHT).tag(sync=True)


class PlotBox:
    """Where an app shows one figure at a time: a :class:`PlotlyView` or an ``ipywidgets.Output``.

    Parameters
    ----------
    renderer : {"widget", "mime"}, optional
        Default :func:`plot_renderer`.
    lazy : bool
        For the widget renderer: draw once scrolled into sight.
    """

    def __init__(self, renderer=None, *, lazy=False):
        self.renderer = renderer or plot_renderer()
        if self.renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")
        layout = W.Layout(width="100%")
        if self.renderer == "widget":
            self.widget = PlotlyView(src=plotly_src(), lazy=bool(lazy), layout=layout)
        else:
            self.widget = W.Output(layout=layout)
        self.plot = None

    def show(self, plot):
        """Show ``plot`` (a :class:`Plot`, or a ``go.Figure`` to wrap)."""
        if not isinstance(plot, Plot):
            plot = Plot(plot)
        self.plot = plot
        if self.renderer == "widget":
            with self.widget.hold_sync():
                self.widget.height = plot.height
                self.widget.spec = plot.payload
        else:
            self.widget.outputs = (plot.mime_output(),)
        return self

    @property
    def spec(self):
        """The spec now shown (dict), or None."""
        return None if self.plot is None else self.plot.spec

    def figure(self):
        """The figure now shown, as a ``go.Figure`` (None when nothing is shown)."""
        return None if self.plot is None else self.plot.figure()
