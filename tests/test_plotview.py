"""Plots in the apps: the encoded figure, the two renderers, and where plotly.js comes from."""

import json

import plotly.graph_objects as go
import pytest

from signatures import plotview
from signatures.plotview import Plot, PlotBox, PlotlyView, plot_renderer, plotly_src


def scatter(title="a plot", height=None):
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[4, 5, 6], name="points"))
    fig.update_layout(title=title)
    if height:
        fig.update_layout(height=height)
    return fig


@pytest.fixture
def no_env(monkeypatch):
    for name in (plotview.PLOTS_ENV, "VOILA_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plot_gets_a_height_and_encodes_its_spec_once():
    plot = Plot(scatter())
    assert plot.height == plotview.DEFAULT_HEIGHT and plot.spec["config"] == {"displaylogo": False}
    assert json.loads(plot.payload) == plot.spec  # what the browser decodes is the spec
    assert Plot(scatter(height=333)).height == 333  # a height the figure sets is kept
    again = plot.figure()
    assert again.layout.title.text == "a plot" and list(again.data[0].y) == [4, 5, 6]


def test_widget_box_sends_the_encoded_spec_and_reserves_its_height(no_env):
    box = PlotBox("widget", lazy=True)
    assert isinstance(box.widget, PlotlyView) and box.widget.lazy is True
    assert box.spec is None and box.figure() is None and box.widget.spec == b""
    first = Plot(scatter("first", height=300))
    box.show(first)
    assert box.widget.spec is first.payload and box.widget.height == 300
    box.show(scatter("second"))  # a go.Figure is wrapped
    assert json.loads(box.widget.spec)["layout"]["title"]["text"] == "second"
    assert box.widget.height == plotview.DEFAULT_HEIGHT and box.figure().layout.title.text == "second"


def test_widget_state_carries_the_spec_as_a_binary_buffer(no_env):
    box = PlotBox("widget").show(scatter("buffered"))
    state = box.widget.get_state()
    assert isinstance(state["spec"], (bytes, memoryview))  # sent as a buffer, not re-encoded as JSON
    assert json.loads(bytes(state["spec"]))["layout"]["title"]["text"] == "buffered"
    assert "Plotly.react" in box.widget._esm


def test_mime_box_holds_a_plotly_bundle(no_env):
    box = PlotBox("mime").show(scatter("as mime"))
    (output,) = box.widget.outputs
    spec = output["data"]["application/vnd.plotly.v1+json"]
    assert spec == box.spec and spec["layout"]["title"]["text"] == "as mime"


def test_renderer_is_widget_under_voila_and_mime_in_jupyter(no_env):
    assert plot_renderer() == "mime"
    no_env.setenv("VOILA_BASE_URL", "/")
    assert plot_renderer() == "widget"
    no_env.setenv(plotview.PLOTS_ENV, "MIME ")
    assert plot_renderer() == "mime"  # the environment variable wins
    no_env.setenv(plotview.PLOTS_ENV, "svg")
    with pytest.raises(ValueError, match=r"SIGNATURES_PLOTS must be one of widget, mime, got 'svg'"):
        plot_renderer()
    with pytest.raises(ValueError, match=r"renderer must be one of widget, mime, got 'png'"):
        PlotBox("png")


def test_plotly_js_comes_from_the_site_under_voila_else_the_cdn_of_the_same_version(no_env):
    version = plotview.plotly_js_path().read_text()[:200].split("plotly.js v")[1].split()[0]
    assert plotly_src() == f"https://cdn.plot.ly/plotly-{version}.min.js"
    no_env.setenv("VOILA_BASE_URL", "/prefix/")
    assert plotly_src() == "/prefix/signatures/static/plotly.min.js"
    assert PlotBox("widget").widget.src == "/prefix/signatures/static/plotly.min.js"
