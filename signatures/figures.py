"""Plotly figures of an experiment: builders that return ``go.Figure`` and never show it.

Every builder takes numpy arrays, dicts or lists and returns a
:class:`plotly.graph_objects.Figure`; nothing is displayed or printed, so the same
figure serves a notebook, an app and the HTML report, and tests can assert on
``fig.data``.

Colours are shared by all figures through :func:`group_colors`: trained classes take
cool colours (blues, greens, purples) and anomaly classes warm ones (reds, oranges),
so an anomaly is recognisable in the UMAP maps and in the Sankey of paths alike.

:func:`layer_umap` and :func:`experiment_sankey` are thin adapters that pull the
arrays out of an :class:`~signatures.experiment.Experiment`.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "TRAINED_COLORS",
    "ANOMALY_COLORS",
    "group_colors",
    "umap_scatter",
    "sankey",
    "silhouette_curve",
    "image_grid",
    "explanation_grid",
    "experiment_explanations",
    "ATTRIBUTION_COLORS",
    "confusion_matrix",
    "training_curves",
    "layer_umap",
    "experiment_sankey",
    "COLOR_BY",
    "neuron_heatmap",
    "separation_panel",
    "cka_heatmap",
    "auroc_bars",
    "exit_layers",
    "roc_curves",
]

#: Colours of trained classes (and of any group that is not an anomaly).
TRAINED_COLORS = (
    "#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#08519c",
    "#006d2c", "#6baed6", "#74c476", "#54278f", "#7f7f7f",
)
#: Colours of anomaly classes; none of them is a trained colour.
ANOMALY_COLORS = (
    "#d62728", "#ff7f0e", "#a50f15", "#e7298a", "#fd8d3c", "#8c2d04", "#fb6a4a", "#c51b7d",
)

#: A small template (plot background, grid and axis colours): the stock "plotly_white"
#: costs ~60 ms to validate per figure, too slow for swapping views in an app.
_TEMPLATE = go.layout.Template(layout=dict(
    plot_bgcolor="white", paper_bgcolor="white", hoverlabel=dict(align="left"),
    xaxis=dict(gridcolor="#ebeef3", linecolor="#c8ced8", zerolinecolor="#ebeef3", ticks="", automargin=True),
    yaxis=dict(gridcolor="#ebeef3", linecolor="#c8ced8", zerolinecolor="#ebeef3", ticks="", automargin=True),
    colorway=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"],
))
_FONT = dict(family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif", size=13)


def _layout(fig, title, **kwargs):
    kwargs.setdefault("margin", dict(l=60, r=20, t=60, b=50))
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), template=_TEMPLATE, font=_FONT, **kwargs)
    return fig


def _empty(title, message, **kwargs):
    """A figure with no data and ``message`` in its middle."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15, color="#555"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, **kwargs)


def _rgba(hex_color, alpha):
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _sorted_groups(values):
    """Distinct groups, numbers before strings, each kind in its natural order."""
    return sorted(set(values), key=lambda g: (isinstance(g, str), g if not isinstance(g, str) else 0, str(g)))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def group_colors(groups, anomaly_groups=()):
    """A colour per group: cool colours for ordinary groups, warm ones for anomalies.

    Parameters
    ----------
    groups : iterable
        Group values (class labels, cluster ids or names); repeats are ignored.
    anomaly_groups : iterable
        The groups to draw as anomalies.

    Returns
    -------
    dict
        group -> ``"#rrggbb"``. Ordinary groups take :data:`TRAINED_COLORS` in sorted
        order and anomaly groups :data:`ANOMALY_COLORS`, each cycling if there are more
        groups than colours, so the two sets never share a colour.
    """
    anomalies = {_plain(g) for g in anomaly_groups}
    every = _sorted_groups({_plain(g) for g in groups} | anomalies)
    ordinary = [g for g in every if g not in anomalies]
    unusual = [g for g in every if g in anomalies]
    out = {g: TRAINED_COLORS[i % len(TRAINED_COLORS)] for i, g in enumerate(ordinary)}
    out.update({g: ANOMALY_COLORS[i % len(ANOMALY_COLORS)] for i, g in enumerate(unusual)})
    return out


#: A UMAP map of more points than this is drawn with WebGL (``go.Scattergl``).
WEBGL_ABOVE = 5000


def umap_scatter(embedding, color, *, names=None, anomaly_groups=(), symbols=None, hover=None,
                 title="UMAP projection", marker_size=5):
    """Scatter of a 2-D projection, one trace per colour group.

    Parameters
    ----------
    embedding : ndarray of shape (n_samples, 2)
        Rows with a NaN coordinate (not projected) are left out.
    color : ndarray of shape (n_samples,)
        Group of each row: true class, cluster id, predicted class or any label.
        Each group present among the projected rows becomes one trace (legend entry).
    names : dict, optional
        group -> legend name; ``str(group)`` by default.
    anomaly_groups : iterable, optional
        Groups drawn in anomaly colours with ``x`` markers, after (above) the others.
    symbols : dict or ndarray of shape (n_samples,), optional
        Marker symbol per group, or per row (e.g. ``"x"`` for anomaly rows when
        colouring by cluster). Overrides the default symbols.
    hover : ndarray of shape (n_samples,) of str, optional
        Hover text per row.
    title : str
    marker_size : int

    Returns
    -------
    go.Figure
        Ordinary groups first in sorted order, then anomaly groups.
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    color = np.asarray(color)
    if embedding.ndim != 2 or embedding.shape[1] != 2:
        raise ValueError(f"embedding must have shape (n_samples, 2), got {embedding.shape}")
    if len(color) != len(embedding):
        raise ValueError(f"color has {len(color)} entries for {len(embedding)} rows of embedding")
    per_row_symbols = symbols is not None and not isinstance(symbols, dict)
    for what, values in (("hover", hover), ("symbols", symbols if per_row_symbols else None)):
        if values is not None and len(values) != len(embedding):
            raise ValueError(f"{what} has {len(values)} entries for {len(embedding)} rows of embedding")
    keep = np.isfinite(embedding).all(axis=1)
    if not keep.any():
        return _empty(title, "No projected points", height=520)

    names = names or {}
    anomalies = {_plain(g) for g in anomaly_groups}
    present = _sorted_groups(_plain(g) for g in color[keep])
    order = [g for g in present if g not in anomalies] + [g for g in present if g in anomalies]
    colors = group_colors(present, anomalies)
    fig = go.Figure()
    # Past WEBGL_ABOVE points the browser draws with WebGL: SVG markers slow every pan and hover.
    trace = go.Scattergl if int(keep.sum()) > WEBGL_ABOVE else go.Scatter
    row_symbols = np.asarray(symbols, dtype=object) if per_row_symbols else None
    hover = None if hover is None else np.asarray(hover, dtype=object)
    for g in order:
        rows = np.flatnonzero(keep & (color == g))
        if per_row_symbols:
            # One trace per symbol, sharing the group's legend entry: a per-point symbol list
            # costs plotly a validation per point (~75 ms for 4,000 points, against 4 ms).
            parts = [(s, rows[row_symbols[rows] == s]) for s in dict.fromkeys(row_symbols[rows].tolist())]
        elif isinstance(symbols, dict) and g in symbols:
            parts = [(symbols[g], rows)]
        else:
            parts = [("x" if g in anomalies else "circle", rows)]
        for i, (symbol, part) in enumerate(parts):
            fig.add_trace(trace(
                x=embedding[part, 0], y=embedding[part, 1], mode="markers", name=str(names.get(g, g)),
                legendgroup=str(g), showlegend=i == 0,
                marker=dict(color=colors[g], size=marker_size + (1 if g in anomalies else 0), symbol=symbol,
                            opacity=0.9 if g in anomalies else 0.7, line=dict(width=0)),
                text=None if hover is None else hover[part].tolist(),
                hovertemplate="%{text}<extra></extra>" if hover is not None else None,
            ))
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False, scaleanchor="x", scaleratio=1)
    return _layout(fig, title, height=520, legend=dict(itemsizing="constant"))


def _column_names(n_columns, layer_names, class_names):
    layer_names = list(layer_names)
    if n_columns == len(layer_names) + 1:
        return layer_names + [None]
    if n_columns == len(layer_names):
        return layer_names
    raise ValueError(
        f"the flows have {n_columns} columns but {len(layer_names)} layer names were given "
        f"({layer_names}); expected one column per layer, plus one for the predicted class"
    )


def _class_name(class_names, label):
    if class_names is None:
        return str(label)
    if isinstance(class_names, dict):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def sankey(flows, layer_names, class_names=None, *, anomaly_groups=(), group_names=None,
           title="Cluster paths", highlight_column=None, highlight_text="classes separate here"):
    """Sankey of cluster paths, one link per (step, source, target, group).

    Parameters
    ----------
    flows : list of dict
        Output of :func:`signatures.paths.flows`: ``{"step", "source", "target",
        "group", "count"}``. Step ``i`` goes from column ``i`` to ``i + 1``.
    layer_names : sequence of str
        Hidden layers, one per column; with one extra column in ``flows``, the last is
        the predicted class.
    class_names : sequence of str or dict, optional
        ``class_names[label]``: names of predicted classes (nodes ``"pred 7"``) and of
        groups when ``group_names`` is not given.
    anomaly_groups : iterable, optional
        Groups whose links are drawn in anomaly colours (reds, oranges).
    group_names : dict, optional
        group -> name shown on hover and in the colour key.
    title : str
    highlight_column : int, optional
        Column to mark below the diagram with ``highlight_text`` (e.g. the first layer
        where the classes separate).

    Returns
    -------
    go.Figure
        One ``go.Sankey``. Nodes are labelled ``"<layer> c<id>"`` or ``"pred <name>"``;
        ``node.customdata`` holds each node's column and ``link.customdata`` each link's
        group name. Per step, link values add up to the number of inputs.
    """
    flows = list(flows)
    if not flows:
        return _empty(title, "No paths to draw", height=560)
    missing = [k for k in ("step", "source", "target", "group", "count") if k not in flows[0]]
    if missing:
        raise ValueError(f"flows entries need keys step, source, target, group, count; missing {missing}")
    n_columns = max(int(f["step"]) for f in flows) + 2
    columns = _column_names(n_columns, layer_names, class_names)

    ids = [set() for _ in range(n_columns)]
    for f in flows:
        ids[int(f["step"])].add(int(f["source"]))
        ids[int(f["step"]) + 1].add(int(f["target"]))
    index, labels, node_columns = {}, [], []
    for col, members in enumerate(ids):
        for c in sorted(members):
            index[(col, c)] = len(labels)
            labels.append(f"{columns[col]} c{c}" if columns[col] is not None else f"pred {_class_name(class_names, c)}")
            node_columns.append(col)

    groups = [_plain(f["group"]) for f in flows]
    anomalies = {_plain(g) for g in anomaly_groups}
    colors = group_colors(groups, anomalies)
    group_names = group_names or {}

    def name_of(g):
        if g in group_names:
            return str(group_names[g])
        base = _class_name(class_names, g) if isinstance(g, (int, np.integer)) else str(g)
        return f"{base} (anomaly)" if g in anomalies else base

    node_colors = ["#888"] * len(labels)
    if columns[-1] is None:
        for (col, c), i in index.items():
            if col == n_columns - 1 and c in colors:
                node_colors[i] = colors[c]
    link_names = [name_of(g) for g in groups]
    fig = go.Figure(go.Sankey(
        arrangement="snap",
        node=dict(label=labels, customdata=node_columns, color=node_colors, pad=12, thickness=14,
                  line=dict(width=0.5, color="#444"),
                  hovertemplate="%{label}<br>%{value} inputs<extra></extra>"),
        link=dict(
            source=[index[(int(f["step"]), int(f["source"]))] for f in flows],
            target=[index[(int(f["step"]) + 1, int(f["target"]))] for f in flows],
            value=[int(f["count"]) for f in flows],
            color=[_rgba(colors[g], 0.75 if g in anomalies else 0.45) for g in groups],
            customdata=link_names,
            hovertemplate="%{customdata}: %{value}<br>%{source.label} → %{target.label}<extra></extra>",
        ),
    ))
    order = [g for g in _sorted_groups(set(groups)) if g not in anomalies]
    order += [g for g in _sorted_groups(set(groups)) if g in anomalies]
    key = "   ".join(f"<span style='color:{colors[g]}'>■</span> {name_of(g)}" for g in order)
    fig.add_annotation(text=key, x=0.0, y=1.0, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                       showarrow=False, font=dict(size=12))
    bottom = 20
    if highlight_column is not None:
        if not 0 <= int(highlight_column) < n_columns:
            raise ValueError(f"highlight_column must be in 0..{n_columns - 1}, got {highlight_column}")
        x = int(highlight_column) / max(n_columns - 1, 1)
        fig.add_annotation(text=f"▲ {highlight_text}", x=x, y=0.0, xref="paper", yref="paper",
                           xanchor="left" if x < 0.5 else "right", yanchor="top", showarrow=False,
                           font=dict(size=13, color="#b35900"), name="highlight")
        bottom = 50
    return _layout(fig, title, height=max(480, 22 * max(len(m) for m in ids) + 200),
                   margin=dict(l=20, r=20, t=90, b=bottom))


def silhouette_curve(scores, chosen_k, *, title="Silhouette score by K", note=None, what="silhouette"):
    """Silhouette score against K, with the chosen K marked.

    Parameters
    ----------
    scores : dict[int, float]
        K -> silhouette score (NaN where undefined); keys may be strings of ints.
    chosen_k : int
        The K in use; marked with a star and a dashed line.
    title : str
    note : str, optional
        Shown under the title (e.g. why the layer is degenerate).
    what : str
        The score on the curve: ``"silhouette"``, or the K criterion's (``"faithfulness"``).

    Returns
    -------
    go.Figure
        Trace 0 is the curve; trace 1, named ``"chosen K = <k>"``, is the chosen point
        when ``chosen_k`` was scored.
    """
    items = sorted((int(k), float(v)) for k, v in dict(scores).items())
    subtitle = f"<br><sup>{note}</sup>" if note else ""
    if not items:
        return _empty(title + subtitle, f"No {what} scores: K = {chosen_k} was set without a search", height=360)
    ks = [k for k, _ in items]
    values = [v if math.isfinite(v) else None for _, v in items]
    fig = go.Figure(go.Scatter(x=ks, y=values, mode="lines+markers", name=what,
                               line=dict(color=TRAINED_COLORS[0]), marker=dict(size=7),
                               hovertemplate=f"K = %{{x}}<br>{what} %{{y:.3f}}<extra></extra>"))
    if chosen_k in ks and values[ks.index(chosen_k)] is not None:
        fig.add_trace(go.Scatter(x=[chosen_k], y=[values[ks.index(chosen_k)]], mode="markers",
                                 name=f"chosen K = {chosen_k}",
                                 marker=dict(symbol="star", size=16, color=ANOMALY_COLORS[0]),
                                 hovertemplate=f"chosen K = %{{x}}<br>{what} %{{y:.3f}}<extra></extra>"))
    fig.add_vline(x=chosen_k, line=dict(dash="dash", color="#999", width=1))
    fig.update_xaxes(title="K (number of clusters)", dtick=1)
    fig.update_yaxes(title=f"{what} score")
    return _layout(fig, title + subtitle, height=360, showlegend=True,
                   legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))


def _mosaic(images, ncols, gap, band):
    n, h, w = images.shape
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    height = nrows * (h + band) + (nrows - 1) * gap
    width = ncols * w + (ncols - 1) * gap
    out = np.full((height, width), np.nan)
    corners = []
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = r * (h + band + gap) + band, c * (w + gap)
        out[top:top + h, left:left + w] = image
        corners.append((top, left))
    return out, corners


def image_grid(images, *, ncols=10, titles=None, title_colors=None, title="Images", gap=2):
    """Tile images into one heatmap mosaic, dark strokes on white.

    Parameters
    ----------
    images : ndarray of shape (n_images, h, w)
        Grey levels, e.g. uint8 0-255.
    ncols : int
        Tiles per row (fewer if there are fewer images).
    titles : sequence of str, optional
        One short label per image, written above its tile.
    title_colors : sequence of str, optional
        Colour of each label.
    title : str
    gap : int
        Blank pixels between tiles.

    Returns
    -------
    go.Figure
        One ``go.Heatmap`` whose ``z`` is the mosaic, of shape
        ``(nrows * (h + band) + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap)``
        where ``band`` is ``h // 3`` with titles and 0 without; gaps are NaN. With no
        images, an empty figure that says so.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n_images, h, w), got {images.shape}")
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    n, h, w = images.shape
    if n == 0:
        return _empty(title, "No images", height=160)
    for what, values in (("titles", titles), ("title_colors", title_colors)):
        if values is not None and len(values) != n:
            raise ValueError(f"{what} has {len(values)} entries for {n} images")
    band = h // 3 if titles is not None else 0
    z, corners = _mosaic(images.astype(np.float64), ncols, int(gap), band)
    vmax = 255.0 if images.dtype == np.uint8 else float(np.nanmax(z)) or 1.0
    fig = go.Figure(go.Heatmap(z=z.astype(np.float32), colorscale="gray", reversescale=True, zmin=0, zmax=vmax,
                               showscale=False, hoverinfo="skip"))  # float32: half the bytes of an encoded figure
    if titles is not None:
        fig.update_layout(annotations=[
            dict(x=left + w / 2 - 0.5, y=top - 0.5, text=str(titles[i]), showarrow=False, yanchor="bottom",
                 font=dict(size=10, color=title_colors[i] if title_colors is not None else "#333"))
            for i, (top, left) in enumerate(corners)
        ])
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    tile = 84  # screen pixels per image width
    width = int(tile * z.shape[1] / w)
    height = int(width * z.shape[0] / z.shape[1])
    return _layout(fig, title, width=width + 20, height=height + 60, margin=dict(l=10, r=10, t=50, b=10),
                   plot_bgcolor="white")


#: Colours of an attribution map laid over its image: blue pulls away from the target, red pushes
#: towards it; values near 0 are transparent, so the digit shows through.
ATTRIBUTION_COLORS = [[0.0, "rgba(33,102,172,0.92)"], [0.35, "rgba(103,169,207,0.55)"], [0.5, "rgba(255,255,255,0)"],
                      [0.65, "rgba(239,138,98,0.55)"], [1.0, "rgba(178,24,43,0.92)"]]


def _scaled_map(values, quantile=0.99):
    """A map scaled to [-1, 1] by its ``quantile`` of absolute values (a few extreme pixels do not wash it out)."""
    values = np.asarray(values, dtype=np.float64)
    scale = float(np.quantile(np.abs(values), quantile)) if values.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros_like(values)
    return np.clip(values / scale, -1.0, 1.0)


def explanation_grid(images, maps, *, row_titles=None, title_colors=None, title="Why these inputs", gap=2,
                     image_alpha=0.35):
    """Each input beside its attribution maps, the maps laid over a faded copy of the input.

    Parameters
    ----------
    images : ndarray of shape (n_inputs, h, w)
        Grey levels (uint8 0-255, or any range: scaled by the largest value).
    maps : dict[str, ndarray of shape (n_inputs, h, w)]
        Column title -> one map per input, in column order. Each map is scaled to [-1, 1] by
        its 99th percentile of absolute values, so colours compare pixels within a map, not
        across maps.
    row_titles : sequence of str, optional
        A label per input, written above its image.
    title_colors : sequence of str, optional
    title : str
    gap : int
    image_alpha : float
        Grey level of the faded input under a map (0: none, 1: as dark as the input).

    Returns
    -------
    go.Figure
        Two ``go.Heatmap`` traces over one mosaic of ``n_inputs`` rows and ``1 + len(maps)``
        columns: the images (trace 0) and the scaled maps (trace 1, NaN under the first
        column and the gaps). With no inputs, an empty figure that says so.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n_inputs, h, w), got {images.shape}")
    n, h, w = images.shape
    for key, values in maps.items():
        if np.shape(values) != images.shape:
            raise ValueError(f"the {key!r} maps have shape {np.shape(values)}, expected {images.shape} (one per image)")
    if n == 0:
        return _empty(title, "No inputs with stored maps", height=240)
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"row_titles has {len(row_titles)} entries for {n} images")
    cols = 1 + len(maps)
    vmax = 255.0 if images.dtype == np.uint8 else float(images.max()) or 1.0
    grey = images.astype(np.float64) / vmax
    tiles, overlay = [], []
    for i in range(n):
        tiles.append(grey[i])
        overlay.append(np.full((h, w), np.nan))
        for values in maps.values():
            tiles.append(grey[i] * image_alpha)
            overlay.append(_scaled_map(values[i]))
    band = h // 3
    z, corners = _mosaic(np.stack(tiles), cols, int(gap), band)
    z_map, _ = _mosaic(np.stack(overlay), cols, int(gap), band)
    fig = go.Figure([
        go.Heatmap(z=z.astype(np.float32), colorscale="gray", reversescale=True, zmin=0, zmax=1, showscale=False,
                   hoverinfo="skip"),
        go.Heatmap(z=z_map.astype(np.float32), colorscale=ATTRIBUTION_COLORS, zmin=-1, zmax=1, showscale=False,
                   hovertemplate="attribution %{z:.2f}<extra></extra>"),
    ])
    notes = []
    for j, key in enumerate(["input", *maps]):
        top, left = corners[j]
        notes.append(dict(x=left + w / 2 - 0.5, y=-0.5 - band, text=f"<b>{key}</b>", showarrow=False, yanchor="bottom",
                          font=dict(size=10, color="#333")))
    if row_titles is not None:
        for i in range(n):
            top, left = corners[i * cols]
            notes.append(dict(x=left + w / 2 - 0.5, y=top - 0.5, text=str(row_titles[i]), showarrow=False,
                              yanchor="bottom",
                              font=dict(size=10, color=title_colors[i] if title_colors is not None else "#333")))
    fig.update_layout(annotations=notes)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    tile = 110
    width = int(tile * z.shape[1] / w)
    height = int(width * (z.shape[0] + band) / z.shape[1])
    return _layout(fig, title, width=width + 20, height=height + 90, margin=dict(l=10, r=10, t=80, b=10),
                   plot_bgcolor="white")


def experiment_explanations(exp, explanations, rows, *, row_titles=None, title="Why these inputs", limit=6):
    """:func:`explanation_grid` of the first ``limit`` of ``rows`` that have stored maps.

    ``explanations`` is :func:`signatures.explanations.load_explanations` of the experiment
    (None: none stored); ``row_titles`` one label per row of ``rows``. The title says how many
    of the rows have maps when not all do.
    """
    from .explanations import short_title

    rows = [int(r) for r in rows]
    titles = list(row_titles) if row_titles is not None else [f"#{r}" for r in rows]
    empty = np.zeros((0, *exp.images.shape[1:]), dtype=np.uint8)
    if explanations is None:
        return explanation_grid(empty, {}, title=f"{title}: no attribution maps are stored with this experiment")
    index = explanations["index"]
    keep = [(r, t) for r, t in zip(rows, titles) if r in index][:int(limit)]
    if not keep:
        return explanation_grid(empty, {}, title=f"{title}: none of these inputs has stored maps")
    positions = [index[r] for r, _ in keep]
    maps = {short_title(key): values[positions] for key, values in explanations["maps"].items()}
    shown = [r for r, _ in keep]
    colors = ["#d62728" if exp.split[r] == 2 else "#333333" for r in shown]
    return explanation_grid(exp.images[shown], maps, row_titles=[t for _, t in keep], title_colors=colors,
                            title=f"{title} ({len(keep)} shown)")


def confusion_matrix(cm, labels, *, title="Confusion matrix", normalize=False):
    """Heatmap of a confusion matrix with the counts written in the cells.

    Parameters
    ----------
    cm : array-like of shape (n_classes, n_classes)
        Rows are true classes, columns predicted classes, both in ``labels`` order.
    labels : sequence of str
    title : str
    normalize : bool
        Colour by the share of each true class instead of the count (text stays counts).

    Returns
    -------
    go.Figure
        One ``go.Heatmap``; ``text`` holds the counts, first true class on top.
    """
    cm = np.asarray(cm)
    labels = [str(label) for label in labels]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"cm must be square with one row per label ({len(labels)}), got shape {cm.shape}")
    z = cm.astype(np.float64)
    if normalize:
        totals = z.sum(axis=1, keepdims=True)
        z = np.divide(z, totals, out=np.zeros_like(z), where=totals > 0)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, text=cm.astype(np.int64).tolist(), texttemplate="%{text}",
        colorscale="Blues", showscale=False,
        hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
    ))
    fig.update_xaxes(title="predicted", type="category", side="bottom")
    fig.update_yaxes(title="true", type="category", autorange="reversed")
    size = max(360, 140 + 60 * len(labels))
    return _layout(fig, title, height=size, width=size + 40)


def training_curves(history, *, title="Training"):
    """Loss and accuracy per epoch.

    Parameters
    ----------
    history : dict[str, list of float]
        Metric name -> value per epoch, as ``signatures.models.train`` returns; names
        containing ``"loss"`` go to the left panel, the others to the right one.
        May be empty (a given model was not trained): the figure then says so.
    title : str

    Returns
    -------
    go.Figure
        One trace per metric.
    """
    history = {k: list(v) for k, v in (history or {}).items() if len(v)}
    if not history:
        return _empty(title, "No training history: the model was given, not trained here", height=300)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.12)
    for i, (name, values) in enumerate(sorted(history.items())):
        col = 1 if "loss" in name else 2
        color = ANOMALY_COLORS[1] if name.startswith("val") else TRAINED_COLORS[0]
        fig.add_trace(go.Scatter(x=list(range(1, len(values) + 1)), y=values, mode="lines+markers", name=name,
                                 line=dict(color=color, dash="dot" if name.startswith("val") else "solid")),
                      row=1, col=col)
    fig.update_xaxes(title="epoch", dtick=1)
    return _layout(fig, title, height=340)


# --- Experiment adapters -----------------------------------------------------------

#: What :func:`layer_umap` can colour by.
COLOR_BY = ("digit", "cluster", "predicted", "anomaly")

_SPLIT_NAMES = {0: "train", 1: "held-out", 2: "anomaly"}


def _hover(exp, layer_index, rows):
    names = exp.class_names
    pred = exp.predicted[rows]
    return np.array([
        f"row {i} · {_SPLIT_NAMES.get(int(s), s)}<br>true {names[t]} · predicted {names[p]}<br>cluster c{c}"
        for i, s, t, p, c in zip(rows.tolist(), exp.split[rows].tolist(), exp.labels[rows].tolist(), pred.tolist(),
                                 exp.paths[rows, layer_index].tolist())
    ], dtype=object)


def layer_umap(exp, layer, *, color_by="digit", rows=None, title=None):
    """UMAP map of one layer of an experiment.

    Parameters
    ----------
    exp : Experiment
    layer : str
    color_by : {"digit", "cluster", "predicted", "anomaly"}
        True class (anomaly classes in warm colours), cluster id in ``layer``,
        predicted class, or trained vs anomaly. Anomaly rows always get ``x`` markers.
    rows : array-like of int, optional
        Rows to draw (e.g. ``exp.rows_with(anomalies)``); all rows by default.
    title : str, optional

    Returns
    -------
    go.Figure
    """
    if layer not in exp.layers:
        raise ValueError(f"layer must be one of {list(exp.layers)}, got {layer!r}")
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {list(COLOR_BY)}, got {color_by!r}")
    li = list(exp.layers).index(layer)
    rows = np.arange(exp.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    anomaly = exp.split[rows] == 2
    names_of = exp.class_names
    symbols = np.where(anomaly, "x", "circle")
    unseen = tuple(int(a) for a in np.unique(exp.labels[rows][anomaly]))
    if color_by == "digit":
        color = exp.labels[rows]
        names = {int(c): str(names_of[c]) for c in exp.classes}
        names.update({a: f"{names_of[a]} (anomaly)" for a in unseen})
        anomaly_groups = unseen
    elif color_by == "cluster":
        color = exp.paths[rows, li]
        names = {int(c): f"c{c}" for c in np.unique(color)}
        anomaly_groups = ()
    elif color_by == "predicted":
        color = exp.predicted[rows]
        names = {int(c): f"predicted {names_of[c]}" for c in exp.classes}
        anomaly_groups = ()
    else:
        color = np.where(anomaly, "anomaly", "trained classes")
        names, anomaly_groups = {}, ("anomaly",)
    return umap_scatter(exp.embeddings[layer][rows], color, names=names, anomaly_groups=anomaly_groups,
                        symbols=symbols, hover=_hover(exp, li, rows),
                        title=title or f"UMAP of {layer}, coloured by {color_by}")


def experiment_sankey(exp, *splits, rows=None, title=None, separating=None):
    """Sankey of an experiment's paths over the rows of ``splits`` (or ``rows``; all rows if neither).

    Links are grouped by true class; anomaly classes are drawn in warm colours.
    ``separating`` (a layer name) is marked under its column.
    """
    rows = exp._selected(splits, rows)
    unseen = tuple(int(a) for a in np.unique(exp.labels[rows][exp.split[rows] == 2]))
    column = list(exp.layers).index(separating) if separating is not None else None
    return sankey(exp.flows(rows=rows), exp.layers, exp.class_names, anomaly_groups=unseen, highlight_column=column,
                  title=title or f"Cluster paths of {len(rows)} inputs, first hidden layer to predicted class")


# --------------------------------------------------------------------------- the three questions


def neuron_heatmap(means, class_names, *, order=None, dead=None, title="Mean activation per neuron and class"):
    """Neurons x classes heatmap of mean activation.

    Parameters
    ----------
    means : ndarray of shape (n_units, n_classes)
    class_names : sequence of str
        One per column.
    order : sequence of int, optional
        Neuron order (rows), e.g. grouping class-specific neurons.
    dead : collection of int, optional
        Dead neurons, marked in the row labels.
    """
    means = np.asarray(means, dtype=float)
    if means.ndim != 2 or means.shape[1] != len(class_names):
        raise ValueError(f"means must have shape (n_units, {len(class_names)}), got {means.shape}")
    order = np.arange(len(means)) if order is None else np.asarray(order, dtype=int)
    dead = set(int(d) for d in (dead or ()))
    rows = [f"n{i}{' (dead)' if i in dead else ''}" for i in order]
    fig = go.Figure(go.Heatmap(
        z=means[order], x=[str(c) for c in class_names], y=rows, colorscale="Viridis",
        colorbar=dict(title="mean"), hovertemplate="%{y}, class %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", showticklabels=len(order) <= 64)
    fig.update_xaxes(type="category", title="class")
    return _layout(fig, title, height=max(320, min(900, 12 * len(order) + 140)))


def separation_panel(table, *, separating=None, metrics=None, title="How well each layer separates the classes"):
    """Per-layer separation metrics side by side, the first separating layer marked.

    Parameters
    ----------
    table : list of dict
        One per layer, in order, each with ``"layer"`` and numeric metric entries. A row
        with ``"kind": "input"`` (the raw input, :func:`signatures.separation.input_separation`)
        is drawn first, shaded and labelled as the reference, not as a hidden layer.
    separating : str, optional
        Hidden layer to mark.
    metrics : dict, optional
        key -> label of the metrics to draw (default: every numeric key of the first
        hidden layer's row, except ``k``).
    """
    table = list(table)
    if not table:
        return _empty(title, "No layers", height=380)
    inputs = [i for i, r in enumerate(table) if r.get("kind") == "input"]
    layers = [str(r["layer"]) for r in table]
    hidden = [layers[i] for i in range(len(table)) if i not in inputs]
    if metrics is None:
        first = next((r for r in table if r.get("kind") != "input"), table[0])
        metrics = {k: k.replace("_", " ") for k, v in first.items()
                   if k not in ("layer", "k") and isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
    fig = go.Figure()
    for key, label in metrics.items():
        fig.add_trace(go.Scatter(x=layers, y=[r.get(key) for r in table], mode="lines+markers", name=label,
                                 hovertemplate=f"{label}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    for i in inputs:
        what = table[i].get("representation")
        fig.add_vrect(x0=i - 0.4, x1=i + 0.4, fillcolor="#999999", opacity=0.15, line_width=0)
        fig.add_annotation(x=layers[i], y=1.0, yref="paper", text="raw input (reference)", showarrow=False,
                           yanchor="bottom", font=dict(color="#555555"), hovertext=what)
    if separating is not None:
        if separating not in hidden:
            raise ValueError(f"separating layer must be one of the hidden layers {hidden}, got {separating!r}")
        fig.add_vline(x=layers.index(separating), line=dict(color="#b35900", dash="dash"))
        fig.add_annotation(x=separating, y=1.0, yref="paper", text="classes separate here", showarrow=False,
                           yanchor="bottom", font=dict(color="#b35900"))
    fig.update_xaxes(type="category", title="layer (the input first, for reference)" if inputs else "layer")
    fig.update_yaxes(title="score")
    return _layout(fig, title, height=400, showlegend=True)


def cka_heatmap(matrix, layer_names, *, title="Linear CKA between layers"):
    """Layer x layer similarity heatmap (values in [0, 1])."""
    matrix = np.asarray(matrix, dtype=float)
    n = len(layer_names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix must have shape ({n}, {n}), got {matrix.shape}")
    fig = go.Figure(go.Heatmap(z=matrix, x=list(layer_names), y=list(layer_names), zmin=0, zmax=1,
                               colorscale="Blues", text=np.round(matrix, 2), texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(300, 60 * n + 140))


def auroc_bars(aurocs, *, title="Telling unseen digits from trained ones (AUROC)"):
    """Bar per anomaly score of its AUROC, with chance (0.5) marked.

    Parameters
    ----------
    aurocs : dict
        score name -> AUROC in [0, 1] (None for scores that could not be computed).
    """
    names = [str(k) for k in aurocs]
    values = [None if v is None else float(v) for v in aurocs.values()]
    fig = go.Figure(go.Bar(x=names, y=values, text=[f"{v:.3f}" if v is not None else "n/a" for v in values],
                           textposition="outside", marker_color=TRAINED_COLORS[0],
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dot"), annotation_text="chance")
    fig.update_yaxes(range=[0, 1.08], title="AUROC")
    return _layout(fig, title, height=360)


def exit_layers(counts, layer_names, *, title="Layer where unseen inputs leave the known clusters",
                value_label="share of the class"):
    """Grouped bars: per group, how many (or what share of) inputs first leave the known clusters at each layer.

    Parameters
    ----------
    counts : dict
        group name -> dict of layer name (or ``None`` for never) -> count or share.
    layer_names : sequence of str
    value_label : str
        Title of the value axis.
    """
    columns = list(layer_names) + [None]
    labels = [str(c) if c is not None else "never" for c in columns]
    fig = go.Figure()
    for i, (group, per_layer) in enumerate(counts.items()):
        fig.add_trace(go.Bar(name=str(group), x=labels, y=[float(per_layer.get(c, 0)) for c in columns],
                             marker_color=ANOMALY_COLORS[i % len(ANOMALY_COLORS)]))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title=value_label)
    return _layout(fig, title, height=360, showlegend=True)


def roc_curves(curves, *, titles=None, title="ROC curves: unseen inputs against held-out trained ones"):
    """One ROC curve per detector, the chance diagonal dashed.

    Parameters
    ----------
    curves : dict
        detector -> ``{"fpr": [...], "tpr": [...]}`` (as :func:`signatures.detectors.experiment_detectors`
        stores them), in the order they are drawn; the first is drawn thickest.
    titles : dict, optional
        detector -> the name shown in the legend.
    """
    titles = titles or {}
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999999", width=1),
                             name="chance", hoverinfo="skip"))
    for i, (name, curve) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=titles.get(name, name),
                                 line=dict(width=3 if i == 0 else 1.5, color=TRAINED_COLORS[i % len(TRAINED_COLORS)]),
                                 hovertemplate="false positives %{x:.3f}<br>true positives %{y:.3f}<extra></extra>"))
    fig.update_xaxes(title="false-positive rate (held-out trained inputs flagged)", range=[0, 1])
    fig.update_yaxes(title="true-positive rate (unseen inputs flagged)", range=[0, 1])
    return _layout(fig, title, height=420)


#: How each K criterion is named on a figure: (score on the curve, what the title says).
K_CRITERIA = {
    "silhouette": ("silhouette", "best silhouette"),
    "classes": ("silhouette", "best silhouette with at least one cluster per class"),
    "faithfulness": ("faithfulness", "clusters that best predict the output"),
    "fixed": ("silhouette", "fixed K"),
}


def k_choice_curve(est, layer, *, title=None):
    """The curve a layer's K was chosen on, titled with the criterion (a fitted LayerKMeans)."""
    criterion = getattr(est, "criterion_", "silhouette")
    what, words = K_CRITERIA.get(criterion, ("silhouette", criterion))
    scores = getattr(est, "criterion_scores_", None) or est.silhouette_scores_
    title = title or f"{what.capitalize()} of {layer} by K"
    return silhouette_curve(scores, est.k_, title=title, note=" · ".join(
        n for n in (f"K chosen by: {words}", est.note_) if n), what=what)
