"""The three questions in one call: findings with numbers, cached in the store, shown in the report."""

import json
import subprocess
import sys

import pytest

from signatures.analysis import ANALYSIS_FILE, analyze, format_share, load_or_analyze
from signatures.store import save_experiment


@pytest.fixture(scope="module")
def analysis(small_experiment):
    return analyze(small_experiment)


def test_findings_state_a_separating_layer_and_a_purity(small_experiment, analysis):
    text = " ".join(analysis["findings"])
    layer = analysis["separation"]["first_layer"]
    assert layer in small_experiment.layers  # 1 vs 7 separates in some hidden layer
    assert f"separate from layer {layer}" in text
    purity = analysis["signatures"]["overall_purity"]
    assert f"paths are {format_share(purity)} pure" in text
    assert "max-softmax baseline" in text and "AUROC" in text
    au = analysis["anomaly"]["auroc"]["auroc"]
    assert set(au) == {"pvalue", "path_rarity", "msp"} and all(0 <= v <= 1 for v in au.values())


def test_analysis_is_plain_json_and_covers_every_layer(small_experiment, analysis):
    again = json.loads(json.dumps(analysis))
    assert again == analysis
    assert set(analysis["neurons"]) == set(small_experiment.layers)
    table = analysis["separation"]["table"]
    assert [r["layer"] for r in table] == ["input", *small_experiment.layers]  # the raw input first, for reference
    assert [r["kind"] for r in table] == ["input"] + ["hidden"] * len(small_experiment.layers)
    assert len(analysis["separation"]["cka"]) == len(small_experiment.layers)


def test_cached_in_the_experiment_folder(small_experiment, analysis, tmp_path):
    folder = save_experiment(small_experiment, tmp_path / "e", save_model=False)
    first = load_or_analyze(small_experiment, folder)
    assert (folder / ANALYSIS_FILE).is_file()
    assert first["findings"] == analysis["findings"]
    (folder / ANALYSIS_FILE).write_text(json.dumps({**first, "findings": ["from the cache"]}))
    assert load_or_analyze(small_experiment, folder)["findings"] == ["from the cache"]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_analysis_of_a_stored_experiment_needs_no_tensorflow(small_experiment, tmp_path):
    folder = save_experiment(small_experiment, tmp_path / "e", save_model=False)
    code = (
        "import sys; from signatures.store import load_experiment; from signatures.analysis import analyze;"
        f"r = analyze(load_experiment({str(folder)!r})); assert r['findings'];"
        "print(sorted(m for m in ('tensorflow', 'keras', 'umap') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_report_opens_with_the_findings(small_experiment, analysis):
    from signatures.report import render_report

    html = render_report(small_experiment, analysis=analysis)
    assert html.index('id="findings"') < html.index('id="accuracy"')
    for kind in ("neurons", "separation", "cka", "anomaly-auroc", "exit-layers"):
        assert f'data-figure="{kind}"' in html
    assert "classes separate here" in html
