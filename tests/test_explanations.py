"""Why this path: maps of chosen inputs stored after a run, and shown by the pages and the report without TensorFlow."""

import warnings

import numpy as np
import pytest

from signatures import explanations as E
from signatures.store import is_experiment_folder, load_experiment, save_experiment


@pytest.fixture(scope="module")
def stored(small_experiment, tmp_path_factory):
    """The small experiment saved with its maps."""
    folder = tmp_path_factory.mktemp("explained") / "small"
    save_experiment(small_experiment, folder)
    result = E.explain_stored(small_experiment, folder)
    return folder, result


# --------------------------------------------------------------------------- which inputs


def test_every_cluster_of_every_class_has_its_first_inputs_in_grid_order_selected(small_experiment):
    exp = small_experiment
    cross = E._crossover_rows(exp)
    rows = set(E.select_rows(exp.labels, exp.paths, exp.predicted, crossovers=cross).tolist())
    priority = E.row_priority(exp.n_rows)
    assert sorted(priority.tolist()) == list(range(exp.n_rows)), "a permutation"
    for label in np.unique(exp.labels):
        for j in range(len(exp.layers)):
            for c in np.unique(exp.paths[:, j]):
                members = np.flatnonzero((exp.labels == label) & (exp.paths[:, j] == c))
                first = members[np.argsort(priority[members])][:E.PER_GROUP]
                assert set(first.tolist()) <= rows, (label, j, c)
    assert set(cross[:E.CROSSOVERS].tolist()) <= rows


def test_the_selection_is_capped_and_keeps_the_crossovers_first(small_experiment):
    exp = small_experiment
    cross = np.arange(0, 40, 2)
    rows = E.select_rows(exp.labels, exp.paths, exp.predicted, crossovers=cross, max_rows=25)
    assert len(rows) == 25 and set(cross.tolist()) <= set(rows.tolist())
    with pytest.raises(ValueError, match=r"one row per input \(\d+\); got paths of shape"):
        E.select_rows(exp.labels, exp.paths[:5], exp.predicted)


# --------------------------------------------------------------------------- the maps


def test_stored_maps_are_the_attributions_of_each_input_for_its_class_and_its_own_cluster(small_experiment, stored):
    from signatures.attribution import attribute
    from signatures.data import model_inputs

    exp, (folder, result) = small_experiment, stored
    assert sorted(result["maps"]) == sorted(E.map_keys(exp.layers, conv=False))
    rows = result["rows"][:7]
    x = model_inputs(exp.images[rows], "mnist", flatten=True)
    want = attribute(exp.model, x, method="integrated_gradients", steps=E.IG_STEPS)
    np.testing.assert_allclose(result["maps"]["class/integrated_gradients"][:7], want.astype(np.float16))
    layer = exp.layers[-1]
    j = exp.layers.index(layer)
    own = attribute(exp.model, x, method="integrated_gradients", steps=E.IG_STEPS, target="cluster", layer=layer,
                    centers=exp.clusterers[layer].centers_, clusters=exp.paths[rows, j])
    np.testing.assert_allclose(result["maps"][f"cluster/{layer}/integrated_gradients"][:7], own.astype(np.float16))
    loaded = E.load_explanations(folder, n_rows=exp.n_rows, image_shape=exp.images.shape[1:])
    assert np.array_equal(loaded["rows"], result["rows"]) and loaded["index"][int(rows[3])] == 3
    for key, values in result["maps"].items():
        assert np.array_equal(loaded["maps"][key], values.astype(np.float32))
    assert is_experiment_folder(folder) == (True, ""), "the maps' file belongs in an experiment folder"


def test_maps_of_another_experiment_or_a_damaged_file_are_not_used(small_experiment, stored, tmp_path):
    from dataclasses import replace

    exp, (folder, _) = small_experiment, stored
    other = tmp_path / "small"
    save_experiment(replace(exp, config=replace(exp.config, seed=1)), other)  # another config: another key
    (other / E.EXPLANATIONS_FILE).write_bytes((folder / E.EXPLANATIONS_FILE).read_bytes())
    assert E.load_explanations(other) is None, "stamped with the other experiment's manifest: stale"
    (other / E.EXPLANATIONS_FILE).write_bytes(b"not a zip")
    with pytest.warns(RuntimeWarning, match=r"explanations\.npz cannot be read .* the maps are not shown"):
        assert E.load_explanations(other) is None
    assert E.load_explanations(tmp_path) is None, "no file: no maps, no warning"


def test_a_loaded_experiment_cannot_be_explained_again(stored):
    folder, _ = stored
    with pytest.raises(ValueError, match="holds no model"):
        E.explain_experiment(load_experiment(folder))
    said = []
    assert E.explain_stored(load_experiment(folder), folder, progress=lambda *a: said.append(a)) is None
    assert said[-1][0] == "explanation" and "no attribution maps: the experiment holds no model" in said[-1][2]


# --------------------------------------------------------------------------- where people look


def _array(value):
    """A plotly array, plain or base64-typed as an encoded figure carries it."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape", len(flat))
        shape = [int(n) for n in shape.split(",")] if isinstance(shape, str) else shape
        return flat.reshape(shape).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def test_the_gallery_offers_the_grid_inputs_that_have_maps_and_draws_them(small_experiment, stored):
    from signatures.app.view import ExperimentView
    from signatures.figures import _scaled_map

    folder, result = stored
    exp = load_experiment(folder)
    view = ExperimentView(exp, folder=folder)
    view.widget
    index = view.explanations["index"]
    for value in [v for _, v in view.selection.options][:6]:
        view.selection.value = value
        shown, members, _ = view._grid_rows(value, view._rows(view._state()[2]))
        offered = [r for _, r in view.explain.options]
        assert offered and set(offered) <= set(shown.tolist()) and all(r in index for r in offered)
        assert len(offered) >= min(E.PER_GROUP, len(members)), "every grid starts with inputs that have maps"
    row = view.explain.options[-1][1]
    view.explain.value = row
    fig = view.shown("explain")
    overlay = _array(fig.data[1].z)
    key = "class/integrated_gradients"
    want = _scaled_map(result["maps"][key][index[row]].astype(np.float32))
    h = exp.images.shape[1]
    tile = overlay[~np.isnan(overlay).all(axis=1)]  # the map rows of the mosaic
    assert np.allclose(tile[:h, h + 2:2 * h + 2], want, atol=1e-3), "the class map, beside the input"
    assert f"Input #{row}: a " in view.explain_note.value and view.message.value == ""


def test_the_report_and_the_layers_page_show_the_maps_of_crossovers_and_unseen_inputs(small_experiment, stored):
    from signatures.analysis import load_or_analyze
    from signatures.app.layers import crossover_explanations
    from signatures.report import write_report

    folder, result = stored
    exp = load_experiment(folder)
    analysis = load_or_analyze(exp, folder)
    fig = crossover_explanations(exp, analysis, folder)
    assert len(fig.data) == 2 and "shown)" in fig.layout.title.text
    text = write_report(exp, folder, analysis=analysis).read_text()
    assert 'data-figure="anomaly-maps"' in text and "Why unseen inputs take the paths they take" in text
    assert ("crossover-maps" in text) == bool(analysis["signatures"]["crossovers"]["rows"])


# --------------------------------------------------------------------------- how sure


def test_a_run_with_dropout_measures_mc_dropout_and_the_detector_table_has_it(tmp_path):
    from signatures.analysis import analyze
    from signatures.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig(name="mc", dataset="digits", digits=(1, 7), anomalies=(3,), hidden=(16,),
                              dropout=0.3, epochs=3, k_max=4, umap_points=200)
    exp = run_experiment(config)
    mc = exp.uncertainty
    assert mc["passes"] == 20 and mc["entropy"].shape == mc["mutual_information"].shape == (exp.n_rows,)
    assert (mc["mutual_information"] >= 0).all() and (mc["mutual_information"] > 0).any()
    assert (mc["entropy"] >= mc["mutual_information"] - 1e-6).all(), "total uncertainty bounds the epistemic part"
    save_experiment(exp, tmp_path / "mc")
    loaded = load_experiment(tmp_path / "mc")
    assert np.array_equal(loaded.uncertainty["entropy"], mc["entropy"]) and loaded.uncertainty["passes"] == 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analyze(loaded, stability=False)
    det = result["detectors"]
    assert {"mc_entropy", "mc_mi"} <= set(det["overall"])
    rho = det["uncertainty"]["spearman"]
    assert set(rho) == {"mc_entropy", "mc_mi"} and set(rho["mc_mi"]) == {"path_rarity", "signature"}
    assert any(s.startswith("How sure the network is (Monte-Carlo dropout, 20 passes)") for s in result["findings"])
    # Without dropout there is nothing to measure: no column of zeros.
    plain = run_experiment(ExperimentConfig(name="plain", dataset="digits", digits=(1, 7), anomalies=(3,),
                                            hidden=(16,), epochs=1, k_max=4, umap_points=200))
    assert plain.uncertainty is None


def test_maps_that_fail_leave_the_stored_run_whole_and_say_why(stored, monkeypatch):
    folder, _ = stored
    exp = load_experiment(folder)
    exp.model = object()  # not a network: computing its maps fails

    def broken(*args, **kwargs):
        raise RuntimeError("the network could not run")

    monkeypatch.setattr(E, "explain_experiment", broken)
    result, said = E.explain_in_background(exp, folder).result(timeout=60)
    assert result is None and said == "no attribution maps: RuntimeError: the network could not run"
    assert is_experiment_folder(folder) == (True, "")
