"""The HTML report, read back with html.parser; mostly on a small hand-made Experiment."""

import base64
import json
import subprocess
import sys
from collections import OrderedDict
from html.parser import HTMLParser

import numpy as np
import pytest

from signatures import figures
from signatures.clustering import LayerKMeans
from signatures.experiment import Experiment, ExperimentConfig
from signatures.report import FIGURE_KINDS, render_report, write_report

NASTY_NAME = "<script>alert('x')</script> & co"


def _estimator(k, n_units, labels, *, status="ok", note="", scores=None):
    if scores is None:
        scores = {str(kk): 0.5 - 0.1 * abs(kk - k) for kk in range(2, 5)}
    state = {
        "params": {"k_range": [2, 3, 4], "sample_size": 2000, "n_init": 4, "random_state": 0},
        "k": k, "silhouette_scores": scores, "status": status, "note": note,
    }
    return LayerKMeans.from_dict(state, np.arange(k * n_units, dtype=float).reshape(k, n_units), labels)


def make_experiment(*, dead_layer=False, name=NASTY_NAME):
    """1 vs 7 with 3 as anomaly: 20 + 20 training, 5 + 5 held-out, 10 anomaly rows.

    hidden_1 (K=2): 1s in c0, 7s in c1, anomalies split. hidden_2 (K=3): 1s in c1 (25),
    7s in c0 (20) except five in c2, anomalies in c2 (15 in all). With ``dead_layer`` a
    constant third layer follows.
    """
    labels = np.array([1] * 20 + [7] * 20 + [1] * 5 + [7] * 5 + [3] * 10)
    split = np.array([0] * 40 + [1] * 10 + [2] * 10, dtype=np.int8)
    n = len(labels)
    rng = np.random.default_rng(0)
    classes = (1, 7)
    predicted = labels.copy()
    predicted[45:47] = 1  # two held-out 7s taken for 1s
    predicted[50:55], predicted[55:60] = 7, 1
    probs = np.where(predicted[:, None] == np.array(classes)[None, :], 0.9, 0.1)
    h1 = np.where(labels == 7, 1, 0)
    h1[50:55] = 1
    h2 = np.where(labels == 1, 1, 0)
    h2[35:40] = 2
    h2[labels == 3] = 2
    layers = {"hidden_1": (h1, 2, 6), "hidden_2": (h2, 3, 4)}
    if dead_layer:
        layers["dead"] = (np.zeros(n, dtype=np.int64), 1, 3)
    train = split == 0
    clusterers, hidden, embeddings = OrderedDict(), OrderedDict(), OrderedDict()
    for lname, (col, k, units) in layers.items():
        if lname == "dead":
            clusterers[lname] = _estimator(1, units, col[train], status="constant", scores={},
                                           note="all activations are equal (a dead or saturated layer): one cluster")
            emb = np.zeros((n, 2))
        else:
            clusterers[lname] = _estimator(k, units, col[train])
            emb = rng.normal(size=(n, 2)) + col[:, None] * 4
            emb[::4] = np.nan  # a quarter of the rows not projected
        hidden[lname] = rng.normal(size=(n, units))
        embeddings[lname] = emb
    config = ExperimentConfig(name=name, digits=classes, anomalies=(3,), n_per_class=25, hidden=(6, 4),
                              epochs=2, k_min=2, k_max=4)
    return Experiment(
        config=config, layers=list(layers), classes=classes, anomalies=(3,),
        class_names=tuple(str(d) for d in range(10)), labels=labels, split=split,
        images=rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8), probs=probs, hidden=hidden,
        clusterers=clusterers, paths=np.column_stack([v[0] for v in layers.values()]).astype(np.int64),
        embeddings=embeddings,
        metrics={"accuracy": 0.8, "train_accuracy": 1.0, "confusion": [[5, 0], [2, 3]],
                 "history": {"loss": [0.6, 0.3], "accuracy": [0.7, 0.9]}},
        timings={"training": 1.5}, info={"source": "hand-made", "model_name": "mlp", "n_params": 123},
    )


class _Page(HTMLParser):
    """Figure sections, their plotly JSON and notes; all scripts and the page title."""

    def __init__(self):
        super().__init__()
        self.sections, self.scripts, self.plot_ids = [], [], []
        self.title, self._in, self._section, self._script = "", None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "figure" in a.get("class", "").split():
            self._section = {"kind": a.get("data-figure"), "layer": a.get("data-layer"),
                             "cluster": a.get("data-cluster"), "figures": [], "notes": [], "text": ""}
            self.sections.append(self._section)
        elif tag == "script":
            self._script = {"attrs": a, "text": ""}
            self.scripts.append(self._script)
        elif tag == "div" and a.get("class") == "plot":
            self.plot_ids.append(a["id"])
        self._in = tag if tag in ("title", "p") else self._in
        if tag == "p" and self._section is not None and a.get("class") == "note":
            self._section["notes"].append("")

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "script":
            if self._section is not None and "plotly-figure" in self._script["attrs"].get("class", ""):
                self._section["figures"].append(json.loads(self._script["text"]))
            self._script = None
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._script is not None:
            self._script["text"] += data
        elif self._in == "title":
            self.title += data
        elif self._section is not None:
            self._section["text"] += data
            if self._in == "p" and self._section["notes"]:
                self._section["notes"][-1] += data


def _parse(text):
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _array(value):
    """A plotly JSON array: a list, or a base64 typed array."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(d) for d in str(value.get("shape", len(flat))).split(",")])
    return np.asarray(value)


def _kinds(page, kind):
    return [s for s in page.sections if s["kind"] == kind]


@pytest.fixture(scope="module")
def exp():
    return make_experiment()


@pytest.fixture(scope="module")
def page(exp):
    return _parse(render_report(exp, max_clusters=2, images_per_cluster=6))


def test_report_has_one_silhouette_and_one_umap_section_per_layer(exp, page):
    for kind in ("silhouette", "umap"):
        assert [s["layer"] for s in _kinds(page, kind)] == exp.layers
        assert all(len(s["figures"]) == 1 for s in _kinds(page, kind))
    from signatures.analysis import analyze

    has_crossovers = bool(analyze(exp, stability=False)["signatures"]["crossovers"]["rows"])
    expected = set(FIGURE_KINDS) - (set() if has_crossovers else {"crossover-maps"})
    assert {s["kind"] for s in page.sections} == expected
    assert len(_kinds(page, "sankey")) == len(_kinds(page, "confusion")) == len(_kinds(page, "training")) == 1


def test_report_silhouette_figure_marks_each_layers_chosen_k(exp, page):
    for section in _kinds(page, "silhouette"):
        chosen = [t for t in section["figures"][0]["data"] if t.get("name", "").startswith("chosen K")]
        assert list(_array(chosen[0]["x"])) == [exp.clusterers[section["layer"]].k_]


def test_report_umap_shows_the_projected_rows_with_anomalies_in_their_own_trace(exp, page):
    section = _kinds(page, "umap")[0]
    traces = section["figures"][0]["data"]
    assert [t["name"] for t in traces] == ["1", "7", "3 (anomaly)"]
    projected = np.isfinite(exp.embeddings["hidden_1"]).all(axis=1)
    assert sum(len(_array(t["x"])) for t in traces) == projected.sum()
    assert len(_array(traces[2]["x"])) == int((projected & (exp.labels == 3)).sum())
    assert traces[2]["marker"]["color"] in figures.ANOMALY_COLORS


def test_report_sankey_json_adds_up_to_every_row_at_every_step(exp, page):
    (section,) = _kinds(page, "sankey")
    (fig,) = section["figures"]
    trace = fig["data"][0]
    columns = _array(trace["node"]["customdata"])
    sources, values = _array(trace["link"]["source"]), _array(trace["link"]["value"])
    steps = columns[sources]
    assert sorted(set(steps.tolist())) == [0, 1]  # hidden_1 -> hidden_2 -> predicted class
    for step in range(2):
        assert values[steps == step].sum() == exp.n_rows == 60
    rgb = [c.rsplit(",", 1)[0] for c in trace["link"]["color"]]  # without the alpha
    anomaly_colors = {c for c, g in zip(rgb, trace["link"]["customdata"]) if "anomaly" in g}
    other_colors = {c for c, g in zip(rgb, trace["link"]["customdata"]) if "anomaly" not in g}
    assert anomaly_colors and anomaly_colors.isdisjoint(other_colors)


def test_report_shows_the_largest_clusters_of_each_layer_biggest_first(page):
    sections = _kinds(page, "cluster-images")
    by_layer = {}
    for s in sections:
        by_layer.setdefault(s["layer"], []).append(s["cluster"])
    # hidden_1: c0 has 25 + 5 rows, c1 25 + 5: a tie, lower id first; hidden_2: c1 25, c0 20, c2 15
    assert by_layer == {"hidden_1": ["0", "1"], "hidden_2": ["1", "0"]}
    z = _array(sections[0]["figures"][0]["data"][0]["z"]).astype(float)
    assert np.isfinite(z).sum() == 6 * 8 * 8  # images_per_cluster=6 tiles of 8x8
    assert "25 × 1, 5 × 3 (anomaly)" in sections[0]["text"]


def test_layer_umap_colours_by_cluster_prediction_or_anomaly_and_marks_anomaly_rows(exp):
    projected = np.isfinite(exp.embeddings["hidden_2"]).all(axis=1)
    def legend(fig):
        return [t.name for t in fig.data if t.showlegend is not False]

    by_cluster = figures.layer_umap(exp, "hidden_2", color_by="cluster")
    assert legend(by_cluster) == ["c0", "c1", "c2"]
    c2 = {t.marker.symbol: len(t.x) for t in by_cluster.data if t.name == "c2"}
    in_c2 = projected & (exp.paths[:, 1] == 2)
    assert c2 == {"circle": int((in_c2 & ~exp.is_anomaly()).sum()), "x": int((in_c2 & exp.is_anomaly()).sum())}
    assert set(c2) == {"x", "circle"}
    by_anomaly = figures.layer_umap(exp, "hidden_2", color_by="anomaly")
    assert legend(by_anomaly) == ["trained classes", "anomaly"]
    assert sum(len(t.x) for t in by_anomaly.data if t.name == "anomaly") == int((projected & exp.is_anomaly()).sum())
    by_prediction = figures.layer_umap(exp, "hidden_2", color_by="predicted")
    assert legend(by_prediction) == ["predicted 1", "predicted 7"]
    with pytest.raises(ValueError, match="color_by must be one of"):
        figures.layer_umap(exp, "hidden_2", color_by="colour")
    with pytest.raises(ValueError, match="layer must be one of"):
        figures.layer_umap(exp, "hidden_9")


def test_report_confusion_section_writes_the_stored_counts(page):
    (section,) = _kinds(page, "confusion")
    assert section["figures"][0]["data"][0]["text"] == [[5, 0], [2, 3]]


def test_report_embeds_plotly_js_once_and_loads_nothing_from_outside(page):
    assert not [s for s in page.scripts if "src" in s["attrs"]]
    bundles = [s for s in page.scripts if "plotly.js v" in s["text"][:200]]
    assert len(bundles) == 1 and len(bundles[0]["text"]) > 1_000_000
    assert sum(len(s["text"]) > 100_000 for s in page.scripts) == 1
    targets = [s["attrs"]["data-target"] for s in page.scripts if "plotly-figure" in s["attrs"].get("class", "")]
    assert targets == page.plot_ids and len(set(targets)) == len(targets)


def test_report_escapes_user_text(exp):
    text = render_report(exp, max_clusters=1)
    assert NASTY_NAME not in text
    assert "alert('x')" not in text
    page = _parse(text)
    assert page.title == f"Signatures of {NASTY_NAME}"  # shown as text, not run


def test_report_paths_table_lists_the_most_common_path_first(exp):
    text = render_report(exp, max_paths=2)
    top = exp.path_counts()[0]
    assert top["path"] == (0, 1, 1) and top["total"] == 25  # the 1s
    row = text[text.index('<table class="paths">'):]
    row = row[:row.index("</table>")]
    assert 0 <= row.index("hidden_1:c0 &gt; hidden_2:c1 &gt; pred 1") < row.index("</tbody>")
    assert row.count("<tr>") == 1 + 2  # header and the two most common paths


def test_report_says_what_happened_to_a_dead_layer():
    page = _parse(render_report(make_experiment(dead_layer=True), max_clusters=1))
    (sil,) = [s for s in _kinds(page, "silhouette") if s["layer"] == "dead"]
    (umap,) = [s for s in _kinds(page, "umap") if s["layer"] == "dead"]
    assert sil["notes"] == ["constant: all activations are equal (a dead or saturated layer): one cluster"]
    assert umap["figures"] == [] and "Not projected" in umap["notes"][0]
    (sankey,) = _kinds(page, "sankey")
    trace = sankey["figures"][0]["data"][0]
    assert "dead c0" in trace["node"]["label"]


def test_report_is_the_same_every_time(exp):
    assert render_report(exp, max_clusters=1) == render_report(exp, max_clusters=1)


def test_write_report_writes_a_file_or_into_a_folder(exp, tmp_path):
    out = write_report(exp, tmp_path / "deep" / "r.html", max_clusters=1)
    assert out == tmp_path / "deep" / "r.html"
    assert out.read_text(encoding="utf-8") == render_report(exp, max_clusters=1)
    into = write_report(exp, tmp_path, max_clusters=1)
    assert into == tmp_path / "report.html" and into.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "report.html"]  # no temporary files left


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_report_rejects_bad_counts(exp, bad):
    with pytest.raises(ValueError, match="max_clusters must be a positive integer"):
        render_report(exp, max_clusters=bad)


def test_report_module_imports_no_tensorflow():
    code = ("import sys, signatures.report, signatures.figures; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_of_a_real_stored_experiment(small_experiment, tmp_path):
    from signatures.store import load_experiment, save_experiment

    loaded = load_experiment(save_experiment(small_experiment, tmp_path / "small", save_model=False))
    out = write_report(loaded, tmp_path / "small", max_clusters=3, images_per_cluster=10)
    page = _parse(out.read_text(encoding="utf-8"))
    assert [s["layer"] for s in _kinds(page, "umap")] == loaded.layers == ["hidden_1", "hidden_2"]
    (sankey,) = _kinds(page, "sankey")
    trace = sankey["figures"][0]["data"][0]
    steps = _array(trace["node"]["customdata"])[_array(trace["link"]["source"])]
    values = _array(trace["link"]["value"])
    assert [int(values[steps == s].sum()) for s in range(2)] == [loaded.n_rows] * 2
    for layer in loaded.layers:
        sizes = np.bincount(loaded.paths[:, loaded.layers.index(layer)])
        shown = [int(s["cluster"]) for s in _kinds(page, "cluster-images") if s["layer"] == layer]
        assert len(shown) == min(3, np.count_nonzero(sizes))
        assert [sizes[c] for c in shown] == sorted(sizes, reverse=True)[:len(shown)]


# --------------------------------------------------------------------------- findings-consistent numbers


@pytest.fixture(scope="module")
def analysis(exp):
    from signatures.analysis import analyze

    return analyze(exp, stability=False)


def test_report_separation_table_and_figure_start_with_the_raw_input(exp, analysis):
    text = render_report(exp, max_clusters=1, analysis=analysis)
    table = text[text.index('<table class="summary separation">'):]
    table = table[:table.index("</table>")]
    rows = table.split("<tr>")[2:]  # after the header
    assert len(rows) == 1 + len(exp.layers)
    assert rows[0].startswith("<td>input (reference: pixels, PCA to 40 of 64 components, ")
    first = analysis["separation"]["first_layer"]
    assert [r.split("</td>")[0][4:] for r in rows[1:]] == [
        layer + (" (classes separate here)" if layer == first else "") for layer in exp.layers]
    (sep,) = _kinds(_parse(text), "separation")
    assert sep["figures"][0]["data"][0]["x"] == ["input", *exp.layers]
    assert "raw input (reference)" in [a["text"] for a in sep["figures"][0]["layout"]["annotations"]]


def test_report_prints_shares_with_the_findings_formatter(exp, analysis):
    changed = json.loads(json.dumps(analysis))
    changed["signatures"]["classes"]["1"]["dominant_share"] = 0.9996
    changed["signatures"]["overall_purity"] = 0.997
    text = render_report(exp, max_clusters=1, analysis=changed)
    questions = text[text.index('id="questions"'):]
    assert "<td>&gt;99.9%</td>" in questions and "Paths are 99.7% pure" in questions
    assert "100.0%" not in questions
    assert '<p class="score">80.0% <small>held-out accuracy · training 100.0%</small>' in text


def test_report_names_the_unseen_set_of_the_auroc_and_marks_dead_layers():
    dead = make_experiment(dead_layer=True)
    dead.hidden["dead"] = np.zeros_like(dead.hidden["dead"])
    page = _parse(render_report(dead, max_clusters=1))
    (auroc,) = _kinds(page, "anomaly-auroc")
    assert auroc["figures"][0]["layout"]["title"]["text"] == "Telling unseen 3 from held-out 1, 7 (AUROC)"
    (neurons,) = [s for s in _kinds(page, "neurons") if s["layer"] == "dead"]
    assert neurons["notes"][0].startswith("This layer is dead: nothing about the input passes through it, so it "
                                          "has no signature neurons.")
    assert all(s["notes"] == [] for s in _kinds(page, "neurons") if s["layer"] != "dead")
