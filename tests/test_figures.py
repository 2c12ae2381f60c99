"""Figure builders: assertions on ``fig.data`` and ``fig.layout``, on small hand-made arrays."""

import numpy as np
import plotly.graph_objects as go
import pytest

from signatures import figures
from signatures.paths import flows


def _step_sums(fig):
    """Sum of link values per step, the step read from the source node's column."""
    trace = fig.data[0]
    columns = list(trace.node.customdata)
    sums = {}
    for source, value in zip(trace.link.source, trace.link.value):
        step = columns[source]
        sums[step] = sums.get(step, 0) + value
    return sums


def _hand_flows():
    # 6 inputs, 2 layers and the prediction; groups 1 and 7 trained, 3 and 4 anomalies.
    paths = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [0, 0], [1, 1]])
    groups = np.array([1, 1, 7, 7, 3, 4])
    predicted = np.array([1, 1, 7, 7, 1, 7])
    return flows(paths, groups, predicted=predicted), len(paths)


# --- colours -------------------------------------------------------------------------

def test_group_colors_keep_trained_and_anomaly_colours_apart_even_when_cycling():
    colors = figures.group_colors(range(20), anomaly_groups=range(12, 20))
    trained = {colors[g] for g in range(12)}
    anomalous = {colors[g] for g in range(12, 20)}
    assert trained.isdisjoint(anomalous)
    assert anomalous <= set(figures.ANOMALY_COLORS)
    assert len(anomalous) == 8  # eight anomaly groups, eight anomaly colours: all distinct


def test_group_colors_do_not_depend_on_the_order_groups_are_given():
    a = figures.group_colors([7, 1, 3], anomaly_groups=[3])
    b = figures.group_colors(np.array([3, 3, 1, 7]), anomaly_groups=(3,))
    assert a == b


# --- Sankey --------------------------------------------------------------------------

def test_sankey_link_values_add_up_to_the_number_of_inputs_at_every_step():
    fl, n = _hand_flows()
    fig = figures.sankey(fl, ["hidden_1", "hidden_2"], [str(d) for d in range(10)], anomaly_groups=(3, 4))
    assert isinstance(fig, go.Figure) and fig.data[0].type == "sankey"
    assert _step_sums(fig) == {0: n, 1: n}


def test_sankey_nodes_are_named_by_layer_and_cluster_then_predicted_class():
    fl, _ = _hand_flows()
    fig = figures.sankey(fl, ["hidden_1", "hidden_2"], [str(d) for d in range(10)], anomaly_groups=(3, 4))
    node = fig.data[0].node
    assert list(node.label) == ["hidden_1 c0", "hidden_1 c1", "hidden_2 c0", "hidden_2 c1", "pred 1", "pred 7"]
    assert list(node.customdata) == [0, 0, 1, 1, 2, 2]


def test_sankey_link_between_two_named_nodes_carries_the_hand_counted_value():
    fl, _ = _hand_flows()
    fig = figures.sankey(fl, ["hidden_1", "hidden_2"], [str(d) for d in range(10)], anomaly_groups=(3, 4))
    trace = fig.data[0]
    labels = list(trace.node.label)
    links = {(labels[s], labels[t], name): v
             for s, t, name, v in zip(trace.link.source, trace.link.target, trace.link.customdata, trace.link.value)}
    # the two 1s go hidden_1 c0 -> hidden_2 c1 -> pred 1; the single 3 goes c0 -> c0 -> pred 1
    assert links[("hidden_1 c0", "hidden_2 c1", "1")] == 2
    assert links[("hidden_2 c0", "pred 1", "3 (anomaly)")] == 1
    assert ("hidden_1 c0", "hidden_2 c0", "7") not in links


def test_sankey_anomaly_links_use_colours_no_trained_link_uses():
    fl, _ = _hand_flows()
    fig = figures.sankey(fl, ["hidden_1", "hidden_2"], [str(d) for d in range(10)], anomaly_groups=(3, 4))
    link = fig.data[0].link
    rgb = [c.rsplit(",", 1)[0] for c in link.color]  # "rgba(r,g,b,alpha)" without the alpha
    anomalous = {c for c, name in zip(rgb, link.customdata) if "anomaly" in name}
    trained = {c for c, name in zip(rgb, link.customdata) if "anomaly" not in name}
    assert anomalous and trained
    assert anomalous.isdisjoint(trained)
    # and the two anomaly classes are told apart
    assert len(anomalous) == 2


def test_sankey_totals_do_not_change_when_clusters_are_relabelled():
    rng = np.random.default_rng(0)
    paths = rng.integers(0, 4, size=(200, 3))
    groups = rng.integers(0, 3, size=200)
    relabelled = np.column_stack([(3 - paths[:, 0]), paths[:, 1], (paths[:, 2] + 1) % 4])
    names = ["a", "b", "c"]
    before = figures.sankey(flows(paths, groups), names, anomaly_groups=(2,))
    after = figures.sankey(flows(relabelled, groups), names, anomaly_groups=(2,))
    assert sorted(before.data[0].link.value) == sorted(after.data[0].link.value)
    assert _step_sums(before) == _step_sums(after) == {0: 200, 1: 200}


def test_sankey_without_a_prediction_column_uses_layer_names_only():
    paths = np.array([[0, 2], [1, 2], [1, 0]])
    fig = figures.sankey(flows(paths, np.array([0, 1, 1])), ["h1", "h2"])
    assert list(fig.data[0].node.label) == ["h1 c0", "h1 c1", "h2 c0", "h2 c2"]


def test_sankey_rejects_layer_names_that_do_not_fit_the_flows():
    fl, _ = _hand_flows()
    with pytest.raises(ValueError, match="3 columns but 1 layer names"):
        figures.sankey(fl, ["hidden_1"], None)


def test_sankey_of_no_flows_says_so():
    fig = figures.sankey([], ["h1"], None)
    assert len(fig.data) == 0
    assert "No paths" in fig.layout.annotations[0].text


# --- UMAP scatter --------------------------------------------------------------------

def _embedding():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(12, 2))
    color = np.array([1, 1, 1, 7, 7, 7, 3, 3, 3, 5, 5, 1])
    emb[[0, 4]] = np.nan  # two rows not projected
    emb[[9, 10], 0] = np.nan  # the only rows of group 5: group 5 has nothing to draw
    return emb, color


def test_umap_scatter_draws_one_trace_per_projected_group_and_drops_nan_rows():
    emb, color = _embedding()
    fig = figures.umap_scatter(emb, color, names={3: "3 (anomaly)"}, anomaly_groups=(3,))
    assert [t.name for t in fig.data] == ["1", "7", "3 (anomaly)"]  # anomalies last, group 5 absent
    assert [len(t.x) for t in fig.data] == [3, 2, 3]
    assert sum(len(t.x) for t in fig.data) == int(np.isfinite(emb).all(axis=1).sum())
    assert np.isfinite(np.concatenate([t.x for t in fig.data])).all()
    np.testing.assert_allclose(fig.data[2].x, emb[[6, 7, 8], 0])


def test_umap_scatter_draws_anomalies_in_their_own_colour_and_symbol():
    emb, color = _embedding()
    fig = figures.umap_scatter(emb, color, anomaly_groups=(3,))
    by_name = {t.name: t for t in fig.data}
    assert by_name["3"].marker.symbol == "x"
    assert by_name["3"].marker.color in figures.ANOMALY_COLORS
    assert by_name["1"].marker.color not in figures.ANOMALY_COLORS
    assert by_name["1"].marker.color != by_name["7"].marker.color


def test_umap_scatter_takes_per_row_symbols_and_hover():
    emb, color = _embedding()
    symbols = np.where(color == 3, "x", "circle")
    hover = np.array([f"row {i}" for i in range(len(color))])
    fig = figures.umap_scatter(emb, color, symbols=symbols, hover=hover)
    (t3,) = [t for t in fig.data if t.name == "3"]
    assert t3.marker.symbol == "x" and len(t3.x) == 3  # one symbol per trace, not per point
    assert list(t3.text) == ["row 6", "row 7", "row 8"]
    mixed = np.where(np.arange(len(color)) % 2 == 0, "x", "circle")
    fig = figures.umap_scatter(emb, color, symbols=mixed, hover=hover)
    drawn = np.isfinite(emb).all(axis=1)
    for group in (1, 7, 3):  # group 5 has no projected row
        traces = [t for t in fig.data if t.name == str(group)]
        assert [t.showlegend for t in traces].count(True) == 1  # one legend entry per group
        rows = sorted(int(s.split()[1]) for t in traces for s in t.text)
        assert rows == np.flatnonzero((color == group) & drawn).tolist()
        for t in traces:
            assert all(mixed[int(s.split()[1])] == t.marker.symbol for s in t.text)


def test_umap_scatter_with_nothing_projected_is_an_empty_figure_that_says_so():
    fig = figures.umap_scatter(np.full((4, 2), np.nan), np.zeros(4))
    assert len(fig.data) == 0
    assert "No projected points" in fig.layout.annotations[0].text


def test_umap_scatter_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match=r"shape \(n_samples, 2\)"):
        figures.umap_scatter(np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="color has 3 entries for 4 rows"):
        figures.umap_scatter(np.zeros((4, 2)), np.zeros(3))


# --- silhouette ----------------------------------------------------------------------

def test_silhouette_curve_marks_the_chosen_k_with_its_score():
    scores = {"2": 0.31, "3": 0.52, "4": float("nan"), "5": 0.40}
    fig = figures.silhouette_curve(scores, 3)
    curve, chosen = fig.data
    assert list(curve.x) == [2, 3, 4, 5]
    assert list(curve.y) == [0.31, 0.52, None, 0.40]  # NaN becomes a gap
    assert list(chosen.x) == [3] and list(chosen.y) == [0.52]
    assert chosen.name == "chosen K = 3"
    assert [s.x0 for s in fig.layout.shapes] == [3]


def test_silhouette_curve_without_scores_explains_why():
    fig = figures.silhouette_curve({}, 1, note="constant: all activations are equal")
    assert len(fig.data) == 0
    assert "K = 1" in fig.layout.annotations[0].text
    assert "all activations are equal" in fig.layout.title.text


# --- image grid ----------------------------------------------------------------------

def test_image_grid_tiles_images_into_one_mosaic_with_nan_gaps():
    images = np.arange(7 * 4 * 5, dtype=np.uint8).reshape(7, 4, 5)
    fig = figures.image_grid(images, ncols=3, gap=1)
    z = np.asarray(fig.data[0].z, dtype=float)
    # 3 rows of 4 + 2 gaps; 3 columns of 5 + 2 gaps
    assert z.shape == (3 * 4 + 2, 3 * 5 + 2)
    np.testing.assert_array_equal(z[0:4, 0:5], images[0])
    np.testing.assert_array_equal(z[5:9, 6:11], images[4])  # row 1, column 1
    np.testing.assert_array_equal(z[10:14, 0:5], images[6])
    assert np.isnan(z[4, :]).all() and np.isnan(z[:, 5]).all()
    assert np.isnan(z[10:14, 6:]).all()  # the two empty slots of the last row
    assert fig.layout.yaxis.autorange == "reversed"


def test_image_grid_titles_sit_above_their_tiles():
    images = np.zeros((4, 6, 6), dtype=np.uint8)
    fig = figures.image_grid(images, ncols=2, titles=list("abcd"), title_colors=["red", "#333", "#333", "#333"],
                             gap=1)
    z = np.asarray(fig.data[0].z, dtype=float)
    band = 6 // 3
    assert z.shape == (2 * (6 + band) + 1, 2 * 6 + 1)
    assert [a.text for a in fig.layout.annotations] == list("abcd")
    assert fig.layout.annotations[0].font.color == "red"
    # each title is centred on its tile, just above the tile's top edge (tiles start at row band and 6+band+1+band)
    assert [a.x for a in fig.layout.annotations] == [2.5, 9.5, 2.5, 9.5]
    assert [a.y for a in fig.layout.annotations] == [band - 0.5, band - 0.5, 2 * band + 7 - 0.5, 2 * band + 7 - 0.5]
    assert np.isnan(z[:band]).all()


def test_image_grid_with_fewer_images_than_columns_is_one_short_row():
    fig = figures.image_grid(np.zeros((2, 3, 3), dtype=np.uint8), ncols=10, gap=2)
    assert np.asarray(fig.data[0].z).shape == (3, 2 * 3 + 2)


def test_image_grid_of_no_images_says_so():
    fig = figures.image_grid(np.zeros((0, 28, 28), dtype=np.uint8))
    assert len(fig.data) == 0
    assert fig.layout.annotations[0].text == "No images"


def test_image_grid_rejects_a_single_image_and_bad_titles():
    with pytest.raises(ValueError, match=r"\(n_images, h, w\)"):
        figures.image_grid(np.zeros((28, 28)))
    with pytest.raises(ValueError, match="titles has 1 entries for 2 images"):
        figures.image_grid(np.zeros((2, 3, 3)), titles=["a"])


# --- confusion matrix and training ---------------------------------------------------

def test_confusion_matrix_writes_the_counts_in_the_cells():
    cm = np.array([[50, 3], [7, 40]])
    fig = figures.confusion_matrix(cm, ["1", "7"])
    heat = fig.data[0]
    assert [list(r) for r in heat.text] == [[50, 3], [7, 40]]
    assert list(heat.x) == ["1", "7"] and list(heat.y) == ["1", "7"]
    assert fig.layout.xaxis.title.text == "predicted" and fig.layout.yaxis.title.text == "true"
    normalized = figures.confusion_matrix(cm, ["1", "7"], normalize=True).data[0]
    np.testing.assert_allclose(np.asarray(normalized.z), [[50 / 53, 3 / 53], [7 / 47, 40 / 47]])
    assert [list(r) for r in normalized.text] == [[50, 3], [7, 40]]


def test_confusion_matrix_must_be_square_and_labelled():
    with pytest.raises(ValueError, match="square"):
        figures.confusion_matrix(np.zeros((2, 3)), ["a", "b"])


def test_training_curves_put_losses_left_and_accuracies_right():
    history = {"loss": [0.5, 0.3, 0.2], "accuracy": [0.8, 0.9, 0.95], "val_loss": [0.6, 0.4, 0.35]}
    fig = figures.training_curves(history)
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == set(history)
    assert by_name["loss"].xaxis == "x" and by_name["val_loss"].xaxis == "x"
    assert by_name["accuracy"].xaxis == "x2"
    assert list(by_name["accuracy"].x) == [1, 2, 3] and list(by_name["accuracy"].y) == [0.8, 0.9, 0.95]


def test_training_curves_of_an_untrained_model_say_so():
    fig = figures.training_curves({})
    assert len(fig.data) == 0
    assert "No training history" in fig.layout.annotations[0].text


def test_builders_never_show(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a builder called show()")

    monkeypatch.setattr(go.Figure, "show", refuse)
    fl, _ = _hand_flows()
    built = [
        figures.sankey(fl, ["a", "b"], None),
        figures.umap_scatter(np.zeros((3, 2)), np.arange(3)),
        figures.silhouette_curve({2: 0.1}, 2),
        figures.image_grid(np.zeros((1, 2, 2))),
        figures.confusion_matrix(np.eye(2), ["a", "b"]),
        figures.training_curves({"loss": [1.0]}),
    ]
    assert all(isinstance(f, go.Figure) for f in built)


# --------------------------------------------------------------------------- the three questions


def test_neuron_heatmap_orders_rows_and_marks_dead():
    means = np.array([[0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    fig = figures.neuron_heatmap(means, ["1", "7"], order=[1, 0, 2], dead=[2])
    heat = fig.data[0]
    assert list(heat.y) == ["n1", "n0", "n2 (dead)"]
    np.testing.assert_array_equal(np.asarray(heat.z), means[[1, 0, 2]])
    with pytest.raises(ValueError, match=r"shape \(n_units, 3\)"):
        figures.neuron_heatmap(means, ["a", "b", "c"])


def test_separation_panel_one_line_per_metric_and_marks_the_layer():
    table = [{"layer": "h1", "probe": 0.9, "nmi": 0.2}, {"layer": "h2", "probe": 1.0, "nmi": 0.8}]
    fig = figures.separation_panel(table, separating="h2")
    assert [t.name for t in fig.data] == ["probe", "nmi"]
    assert list(fig.data[1].y) == [0.2, 0.8]
    assert fig.layout.shapes[0].x0 == 1
    assert any("separate" in a.text for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="separating layer must be one of"):
        figures.separation_panel(table, separating="h3")


def test_separation_panel_draws_the_input_first_as_a_reference():
    table = [{"layer": "input", "kind": "input", "representation": "pixels, 16 features", "nmi": 0.77,
              "probe": 0.989, "k": 2},
             {"layer": "h1", "kind": "hidden", "nmi": 0.88, "probe": 0.998},
             {"layer": "h2", "kind": "hidden", "nmi": 0.95, "probe": 1.0}]
    fig = figures.separation_panel(table, separating="h1")
    assert [t.name for t in fig.data] == ["nmi", "probe"]  # k and strings are not metrics
    assert list(fig.data[0].x) == ["input", "h1", "h2"] and list(fig.data[0].y) == [0.77, 0.88, 0.95]
    shaded = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(shaded) == 1 and shaded[0].x0 == -0.4 and shaded[0].x1 == 0.4
    texts = {a.text: a.x for a in fig.layout.annotations}
    assert texts["raw input (reference)"] == "input" and texts["classes separate here"] == "h1"
    assert "input first" in fig.layout.xaxis.title.text
    with pytest.raises(ValueError, match=r"one of the hidden layers \['h1', 'h2'\], got 'input'"):
        figures.separation_panel(table, separating="input")


def test_cka_heatmap_and_auroc_bars_and_exit_layers():
    fig = figures.cka_heatmap([[1, 0.5], [0.5, 1]], ["a", "b"])
    assert np.asarray(fig.data[0].z).tolist() == [[1, 0.5], [0.5, 1]]
    bars = figures.auroc_bars({"path rarity": 0.9, "max softmax": 0.7})
    assert list(bars.data[0].x) == ["path rarity", "max softmax"] and list(bars.data[0].y) == [0.9, 0.7]
    ex = figures.exit_layers({"3": {"h1": 5, None: 2}, "4": {"h2": 3}}, ["h1", "h2"])
    assert [t.name for t in ex.data] == ["3", "4"]
    assert list(ex.data[0].y) == [5, 0, 2] and list(ex.data[0].x) == ["h1", "h2", "never"]
    shares = figures.exit_layers({"3": {"h1": 0.55, None: 0.38}}, ["h1", "h2"])
    assert list(shares.data[0].y) == [0.55, 0.0, 0.38]  # shares are kept, not truncated


def test_sankey_highlight_column():
    fl = [{"step": 0, "source": 0, "target": 0, "group": 1, "count": 2},
          {"step": 1, "source": 0, "target": 1, "group": 1, "count": 2}]
    fig = figures.sankey(fl, ["h1", "h2"], ["0", "1"], highlight_column=1)
    marks = [a for a in fig.layout.annotations if "separate" in (a.text or "")]
    assert len(marks) == 1 and marks[0].x == pytest.approx(0.5)
    with pytest.raises(ValueError, match="highlight_column must be in 0..2"):
        figures.sankey(fl, ["h1", "h2"], ["0", "1"], highlight_column=5)


def test_umap_maps_past_5000_points_are_drawn_with_webgl():
    rng = np.random.default_rng(0)
    big = rng.normal(size=(figures.WEBGL_ABOVE + 1, 2))
    color = rng.integers(0, 3, len(big))
    fig = figures.umap_scatter(big, color)
    assert {t.type for t in fig.data} == {"scattergl"} and sum(len(t.x) for t in fig.data) == len(big)
    big[0] = np.nan  # 5,000 projected points: SVG as before
    assert {t.type for t in figures.umap_scatter(big, color).data} == {"scatter"}
