"""The detector comparison where people look: findings sentence, report table, ROC figure."""

import html
from types import SimpleNamespace

import numpy as np
import pytest

from signatures import figures
from signatures.analysis import _detector_sentence
from signatures.detectors import SHOWN, experiment_detectors
from signatures.report import detector_table_html


def _fake_result(signature, baseline, best="knn"):
    metrics = lambda a: {"auroc": a, "fpr95": 0.2, "aupr": 0.9}  # noqa: E731
    overall = {n: metrics(0.6) for n in SHOWN}
    overall["signature"], overall[best] = metrics(signature), metrics(baseline)
    return {"detectors": {"overall": overall, "best_baseline": best, "unseen": [3, 4],
                          "calibration": {"0.05": 0.048}}}


EXP = SimpleNamespace(class_names=tuple(str(i) for i in range(10)), unseen=(0, 2, 3, 4, 5, 6, 8, 9))


@pytest.mark.parametrize("signature,baseline,words", [
    (0.951, 0.923, "the signature score is best, 0.028 ahead of the field's best, kNN (last layer) (0.923)"),
    (0.936, 0.945, "kNN (last layer) is best (0.945); the signature score is 0.009 behind"),
    (0.9231, 0.9249, "the signature score ties with the best of the field's detectors, kNN (last layer) (0.925)"),
])
def test_the_findings_say_which_detector_is_best_and_by_how_much(signature, baseline, words):
    sentence = _detector_sentence(_fake_result(signature, baseline), EXP)
    assert words in sentence
    assert "the unseen 3s and 4s" in sentence and "4.8% of held-out inputs fall below 0.05" in sentence


def test_no_detector_sentence_without_unseen_inputs():
    assert _detector_sentence({"detectors": None}, EXP) is None


def test_roc_figure_draws_chance_and_one_curve_per_detector():
    curves = {"signature": {"fpr": [0, 0.1, 1], "tpr": [0, 0.9, 1]}, "msp": {"fpr": [0, 0.5, 1], "tpr": [0, 0.6, 1]}}
    fig = figures.roc_curves(curves, titles={"signature": "signature score"})
    assert [t.name for t in fig.data] == ["chance", "signature score", "msp"]
    assert fig.data[1].line.width > fig.data[2].line.width
    assert list(fig.data[1].x) == [0, 0.1, 1] and list(fig.data[1].y) == [0, 0.9, 1]


def test_experiment_detectors_on_a_real_experiment(small_experiment):
    det = experiment_detectors(small_experiment, unseen=[3])
    assert det["unseen"] == [3] and set(det["per_class"]) == {3}
    assert det["n_heldout"] == int((small_experiment.split == 1).sum())
    assert det["n_unseen"] == {3: int(((small_experiment.split == 2) & (small_experiment.labels == 3)).sum())}
    # logits are kept, so MaxLogit and energy are there; MC dropout only for a model with dropout
    assert set(SHOWN) - {"mc_entropy", "mc_mi"} <= set(det["overall"]) and "mc_mi" not in det["overall"]
    assert "uncertainty" not in det
    for name, m in det["overall"].items():
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["fpr95"] <= 1.0, name
    # One unseen class: the per-class row is the overall one.
    assert det["per_class"][3]["signature"] == det["overall"]["signature"]
    curve = det["roc"]["signature"]
    assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0 and curve["fpr"] == sorted(curve["fpr"])
    assert det["best_baseline"] in SHOWN and det["best_baseline"] != "signature"
    text = html.unescape(detector_table_html(det, small_experiment.class_names))
    assert text.count("<tr>") == 1 + len([n for n in SHOWN if n in det["overall"]]) and "AUROC: 3" in text
    best = max(det["overall"][n]["auroc"] for n in SHOWN if n in det["overall"])
    assert f"<b>{best:.3f}</b>" in text


def test_no_comparison_without_unseen_rows(small_experiment):
    assert experiment_detectors(small_experiment, unseen=[]) is None
    assert np.isin(3, small_experiment.unseen)
