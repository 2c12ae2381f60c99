"""Every notebook executes headless (nbclient, no widget state), with small parameters."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from signatures.store import list_experiments, save_experiment

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name, extra_cells, env):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells = [c for c in nb.cells if "skip-voila" not in c.metadata.get("tags", [])]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in extra_cells]
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=False,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
        assert "widgets" not in nb.metadata, path.name


def test_gallery_notebook(small_experiment, tmp_path):
    save_experiment(small_experiment, tmp_path / "small", save_model=False)
    nb = execute("gallery.ipynb", [
        "assert app.picker.value == 'small', app.picker.value\n"
        "print('shown', len(app.body.children), 'traces', len(app._views['small'].shown('sankey').data))",
    ], {"SIGNATURES_STORE": str(tmp_path), "QUERY_STRING": "experiment=small"})
    assert "shown 1 traces 1" in outputs(nb)


def test_builder_notebook_runs_a_small_experiment(tmp_path):
    nb = execute("builder.ipynb", [
        "app.n_per_class.value = '40'\napp.epochs.value = 1\napp.hidden.value = '8'\napp.k_max.value = 4\n"
        "app.name.value = 'from-notebook'\njob = app.run()\nexp = app.wait(540)\n"
        "print('ran', job is not None, exp is not None, app.error.value == '')",
    ], {"SIGNATURES_STORE": str(tmp_path)})
    assert "ran True True True" in outputs(nb), outputs(nb)
    assert [m["name"] for m in list_experiments(tmp_path)] == ["from-notebook"]


def test_layers_notebook(small_experiment, tmp_path):
    save_experiment(small_experiment, tmp_path / "small", save_model=False)
    nb = execute("layers.ipynb", [
        "print('findings', len(app.analysis['findings']), app.layer.value)",
    ], {"SIGNATURES_STORE": str(tmp_path), "QUERY_STRING": "experiment=small"})
    assert "findings" in outputs(nb) and small_experiment.layers[-1] in outputs(nb)
