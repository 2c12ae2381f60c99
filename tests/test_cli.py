"""End to end: the CLI on a small real 1-vs-7 subset, and the report's figures parsed from its HTML."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from signatures.cli import main


class FigureParser(HTMLParser):
    """Collects each ``<section class="figure">`` with the plotly JSON inside it."""

    def __init__(self):
        super().__init__()
        self.sections, self._section, self._in_json, self.plotly_scripts = [], None, False, 0
        self._script_text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("class") == "figure":
            self._section = {"kind": attrs.get("data-figure"), "layer": attrs.get("data-layer"), "figures": []}
        elif tag == "script" and attrs.get("class") == "plotly-figure":
            self._in_json, self._script_text = True, []
        elif tag == "script" and not attrs:
            self._script_text, self._in_json = [], None

    def handle_data(self, data):
        if self._in_json is not False:
            self._script_text.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._in_json:
            self._section["figures"].append(json.loads("".join(self._script_text)))
        elif tag == "script" and self._in_json is None and "Plotly=" in "".join(self._script_text)[:100000]:
            self.plotly_scripts += 1
        if tag == "script":
            self._in_json = False
        if tag == "section" and self._section is not None:
            self.sections.append(self._section)
            self._section = None


def values(v):
    """A plotly JSON array, plain or base64-typed ({"dtype", "bdata", "shape"}), as an ndarray."""
    if isinstance(v, dict) and "bdata" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            arr = arr.reshape([int(s) for s in str(v["shape"]).split(",")])
        return arr
    return np.asarray(v)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "1v7"
    status = main([
        "run", "--digits", "1", "7", "--anomalies", "3", "4", "--hidden", "16", "8", "--n-per-class", "120",
        "--epochs", "6", "--k-max", "6", "--umap-points", "250", "--out", str(out), "--quiet",
    ])
    assert status == 0
    return out


def test_run_writes_a_complete_experiment(run_dir):
    assert {p.name for p in run_dir.iterdir()} == {"manifest.json", "arrays.npz", "act-0.npy", "act-1.npy",
                                                  "model.keras", "report.html", "analysis.json", "plots.zip",
                                                  "explanations.npz"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["digits"] == [1, 7]
    assert manifest["layers"] == ["hidden_1", "hidden_2"]
    assert manifest["n_rows"] == 2 * 120 + 2 * 24


def test_report_holds_every_figure(run_dir):
    page = FigureParser()
    page.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    kinds = [(s["kind"], s["layer"]) for s in page.sections]
    for layer in ("hidden_1", "hidden_2"):
        assert ("silhouette", layer) in kinds and ("umap", layer) in kinds
    assert kinds.count(("sankey", None)) == 1 and ("confusion", None) in kinds
    assert sum(1 for k, _ in kinds if k == "cluster-images") >= 2
    assert page.plotly_scripts == 1  # plotly.js inline once: opens without a server or network

    by_kind = {(s["kind"], s["layer"]): s["figures"] for s in page.sections}
    sankey = by_kind[("sankey", None)][0]["data"][0]
    assert sankey["type"] == "sankey"
    link = sankey["link"]
    n_layers_plus_pred = 3
    # every step carries every input: train + held-out + anomalies
    total = sum(values(link["value"]))
    assert total == (n_layers_plus_pred - 1) * (240 + 48)
    cm = by_kind[("confusion", None)][0]["data"][0]
    assert values(cm["z"]).sum() == 48  # held-out 1s and 7s
    umap_names = {t.get("name") for t in by_kind[("umap", "hidden_1")][0]["data"]}
    assert any("3" in str(n) for n in umap_names) and any("7" in str(n) for n in umap_names)


def test_report_can_be_redrawn_without_training(run_dir):
    before = (run_dir / "report.html").stat().st_size
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert abs((run_dir / "report.html").stat().st_size - before) < 0.01 * before


def test_list(run_dir, capsys):
    assert main(["list", str(run_dir.parent)]) == 0
    assert "1v7" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--digits", "1"], "at least 2 digits"),
        (["--digits", "1", "7", "--anomalies", "7"], "both trained and anomalies"),
        (["--hidden", "x"], "positive integers"),
        (["--k-min", "5", "--k-max", "3"], "inverted"),
        (["--name", "../evil"], "not allowed"),
        (["--model", "missing.keras"], "does not exist"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["run", "--out", str(out), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_is_left_alone(run_dir, capsys):
    before = (run_dir / "manifest.json").read_bytes()
    assert main(["run", "--out", str(run_dir), "--quiet"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (run_dir / "manifest.json").read_bytes() == before


def test_report_states_a_separating_layer_and_a_path_purity(run_dir):
    import re

    text = (run_dir / "report.html").read_text(encoding="utf-8")
    findings = text[text.index('id="findings"'):text.index('id="accuracy"')]
    layer = re.search(r"separate from layer (hidden_\d)", findings)
    assert layer and layer.group(1) in ("hidden_1", "hidden_2")
    purity = re.search(r"paths are >?(\d+\.\d)% pure", findings)
    assert purity and 50.0 <= float(purity.group(1)) <= 100.0
    stored = json.loads((run_dir / "analysis.json").read_text())
    assert stored["separation"]["first_layer"] == layer.group(1)


def _damaged_copy(run_dir, tmp_path, name="copy"):
    import shutil

    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    return copy


def _rewrite_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _rewrite_arrays(folder, change):
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(folder / "arrays.npz", **arrays)
    _rewrite_manifest(folder, lambda m: m["files"].update({"arrays.npz": (folder / "arrays.npz").stat().st_size}))


def _tamper_zip(folder):
    data = bytearray((folder / "arrays.npz").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64  # same size, broken contents
    (folder / "arrays.npz").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        _tamper_zip,
        lambda f: (f / "arrays.npz").write_bytes(b"PK\x03\x04" + b"\0" * ((f / "arrays.npz").stat().st_size - 4)),
        lambda f: _rewrite_manifest(f, lambda m: m["layers"].append("ghost")),
        lambda f: _rewrite_manifest(f, lambda m: m.pop("layers")),
        lambda f: _rewrite_manifest(f, lambda m: m.update(clustering=[])),
        lambda f: _rewrite_arrays(f, lambda a: a.update(labels=a["labels"][:-5])),
        lambda f: _rewrite_arrays(f, lambda a: a.update(paths=a["paths"][:, :1])),
        lambda f: _rewrite_arrays(f, lambda a: a.pop("split")),
        lambda f: (f / "analysis.json").write_text("[1, 2, 3]"),
        lambda f: (f / "analysis.json").write_text('{"findings": 5}'),
        lambda f: (f / "analysis.json").write_text("{half"),
    ],
    ids=["zip-tampered", "zip-zeros", "layer-without-arrays", "no-layers", "clustering-list", "labels-short",
         "paths-narrow", "no-split", "analysis-list", "analysis-wrong-type", "analysis-half"],
)
def test_report_of_a_damaged_experiment_names_it_without_a_traceback(run_dir, tmp_path, capsys, damage):
    copy = _damaged_copy(run_dir, tmp_path)
    damage(copy)
    status = main(["report", str(copy)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status == 0:  # a damaged analysis.json is a cache: recomputed, and the report is drawn
        assert (copy / "report.html").is_file() and err == ""
        return
    assert status == 2, err
    assert err.startswith("error: ") and str(copy) in err and len(err.strip().splitlines()) == 1


def test_list_names_damaged_experiments_beside_good_ones(run_dir, tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    good = _damaged_copy(run_dir, store, "good")
    bad = _damaged_copy(run_dir, store, "bad")
    _tamper_zip(bad)
    (bad / "manifest.json").write_text("{")
    assert main(["list", str(store)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("good ") and "accuracy" in lines[0]
    assert lines[1].startswith("bad ") and "damaged:" in lines[1]
    assert good.is_dir()


def test_canonical_keeps_a_stored_experiment_and_names_a_damaged_one(run_dir, tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    _damaged_copy(run_dir, store, "1v7-mlp")
    assert main(["canonical", "--store", str(store), "--only", "1v7-mlp", "--quiet"]) == 0
    assert capsys.readouterr().out.split() == ["1v7-mlp", "kept"]
    _tamper_zip(store / "1v7-mlp")
    (store / "1v7-mlp" / "arrays.npz").write_bytes(b"short")
    assert main(["canonical", "--store", str(store), "--only", "1v7-mlp", "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "not built:" in out and "is a damaged experiment" in out and "rebuild it with --overwrite" in out
