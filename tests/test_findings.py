"""Findings exactly as strong as their numbers: ties, minorities, dead layers, the unseen set, the raw input, rounding."""

import json
from collections import OrderedDict

import numpy as np
import pytest

from signatures.analysis import (
    ANALYSIS_FILE,
    LOW_ACCURACY,
    TIE_MARGIN,
    analyze,
    findings,
    format_share,
    load_or_analyze,
    unseen_set,
)
from signatures.clustering import cluster_layers
from signatures.experiment import Experiment, ExperimentConfig
from signatures.paths import assign_paths

LAYERS = ["h1", "h2", "h3"]


def bare_experiment(*, anomalies=(3, 4), unseen=(3, 4), accuracy=0.99):
    """An Experiment with just the rows findings look at (classes 1 and 7, the given unseen classes)."""
    labels = np.array([1, 7] * 4 + [u for u in unseen for _ in range(2)])
    split = np.array([0, 0, 1, 1] * 2 + [2] * (2 * len(unseen)), dtype=np.int8)
    n = len(labels)
    return Experiment(
        config=ExperimentConfig(digits=(1, 7), anomalies=anomalies), layers=list(LAYERS), classes=(1, 7),
        anomalies=anomalies, class_names=tuple("0123456789"), labels=labels, split=split,
        images=np.zeros((n, 2, 2), dtype=np.uint8), probs=np.full((n, 2), 0.5), hidden=OrderedDict(),
        clusterers=OrderedDict(), paths=np.zeros((n, 3), dtype=np.int64), embeddings=OrderedDict(),
        metrics={"accuracy": accuracy},
    )


def neuron_summary(status="ok", auroc=0.97, neuron=2):
    return {"status": status, "n_dead": 8 if status == "dead" else 1, "active_fraction": [0.5] * 8,
            "constant": list(range(8)) if status != "ok" else [],
            "signatures": {"1": [{"neuron": neuron, "auroc": auroc}], "7": [{"neuron": neuron, "auroc": 1 - auroc}]}}


def row(layer, nmi, probe, kind="hidden"):
    return {"layer": layer, "kind": kind, "nmi": nmi, "probe_accuracy": probe}


def hand_result(exp, **change):
    """A complete analysis dict with known numbers; ``change`` replaces top-level parts."""
    result = {
        "alpha": 0.05,
        "accuracy": exp.metrics.get("accuracy"),
        "neurons": {layer: neuron_summary() for layer in LAYERS},
        "separation": {"table": [row("input", 0.77, 0.989, kind="input"), row("h1", 0.88, 0.998),
                                 row("h2", 0.93, 0.999), row("h3", 0.95, 1.0)], "first_layer": "h1"},
        "signatures": {
            "classes": {"1": {"dominant_share": 0.9, "entropy": 0.5, "paths": [{"share": 0.9}, {"share": 0.1}]},
                        "7": {"dominant_share": 0.8, "entropy": 0.7, "paths": [{"share": 0.8}, {"share": 0.2}]}},
            "overall_purity": 0.97,
            "crossovers": {"counts": {}},
            "anomaly_crossovers": {"shares": {"[3, 7]": 0.41, "[3, 1]": 0.40, "[4, 7]": 0.60, "[4, 1]": 0.30}},
        },
        "anomaly": {
            "unseen_set": [3, 4],
            "auroc": {"auroc": {"pvalue": 0.91, "path_rarity": 0.88, "msp": 0.75}},
            "exit_summary": {"unseen": {
                "3": {"shares": {"h1": 0.45, "h2": 0.30, "h3": 0.0, "never": 0.25}},
                "4": {"shares": {"h1": 0.07, "h2": 0.04, "h3": 0.0, "never": 0.89}},
            }},
        },
    }
    result.update(change)
    return result


def sentence(lines, start):
    found = [s for s in lines if s.startswith(start)]
    assert len(found) == 1, f"no single sentence starting {start!r} in {lines}"
    return found[0]


# --------------------------------------------------------------------------- near ties


def test_a_near_tie_is_reported_as_a_split_naming_both_paths_and_shares():
    exp = bare_experiment()
    text = sentence(findings(hand_result(exp), exp), "Where the unseen 3s and 4s go:")
    assert TIE_MARGIN == 0.05
    assert ("the 3s split between the dominant path of the 7s (41.0%) and the dominant path of the 1s (40.0%), "
            "within 5 percentage points; 19.0% take no trained class's dominant path") in text
    assert "of the 3s take the" not in text and "3s take the path of" not in text
    assert "most 4s (60.0%) take the dominant path of the 7s (30.0% take the dominant path of the 1s, 10.0% take " \
           "no trained class's dominant path)" in text


def test_the_margin_is_a_keyword_and_outside_it_no_minority_is_called_most():
    exp = bare_experiment()
    text = sentence(findings(hand_result(exp), exp, tie_margin=0.0), "Where the unseen 3s and 4s go:")
    assert ("no one outcome holds most of the 3s: 41.0% take the dominant path of the 7s, 40.0% take the "
            "dominant path of the 1s, 19.0% take no trained class's dominant path") in text
    wide = sentence(findings(hand_result(exp), exp, tie_margin=0.3), "Where the unseen 3s and 4s go:")
    assert "the 4s split between the dominant path of the 7s (60.0%) and the dominant path of the 1s (30.0%), " \
           "within 30 percentage points" in wide
    for bad in (-0.1, 1.5, "5%", True):
        with pytest.raises(ValueError, match=f"tie_margin must be a share in \\[0, 1\\], got {bad!r}"):
            findings(hand_result(exp), exp, tie_margin=bad)


def test_a_class_split_between_two_paths_is_not_called_a_signature():
    exp = bare_experiment()
    sig = hand_result(exp)["signatures"]
    sig["classes"]["7"] = {"dominant_share": 0.45, "entropy": 1.4, "paths": [{"share": 0.45}, {"share": 0.42}]}
    text = sentence(findings(hand_result(exp, signatures=sig), exp), "Not every class has one path")
    assert "the 7s split between two paths (45.0% and 42.0%, within 5 percentage points)" in text
    assert "90.0% of the 1s take one path" in text and "leaves a signature" not in text
    sig["classes"]["7"]["paths"][1]["share"] = 0.2  # no tie, but a minority: still no signature claim
    text = sentence(findings(hand_result(exp, signatures=sig), exp), "Not every class has one path")
    assert "45.0% of the 7s take one path" in text


# --------------------------------------------------------------------------- minorities are never "most"


def test_exit_layers_say_what_most_inputs_do():
    exp = bare_experiment()
    lines = findings(hand_result(exp), exp)
    text = sentence(lines, "Where the unseen 3s and 4s leave the known clusters (distance p < 0.05):")
    assert "most 4s (89.0%) never leave (7.0% leave at h1, 4.0% leave at h2)" in text
    assert "no one outcome holds most of the 3s: 45.0% leave at h1, 30.0% leave at h2, 25.0% never leave" in text
    assert not any("mostly" in s for s in lines)


# --------------------------------------------------------------------------- dead layers and low accuracy


def test_dead_layers_and_a_low_accuracy_come_first_and_dead_neurons_are_never_cited():
    exp = bare_experiment(accuracy=0.48)
    neurons = {"h1": neuron_summary(neuron=5), "h2": neuron_summary("dead", auroc=0.5, neuron=0),
               "h3": neuron_summary("constant", auroc=0.5, neuron=1)}
    table = [row("input", 0.77, 0.989, kind="input"), row("h1", 0.88, 0.998), row("h2", 0.0, 0.5),
             row("h3", 0.0, 0.5)]
    lines = findings(hand_result(exp, neurons=neurons, separation={"table": table, "first_layer": "h1"}), exp)
    assert lines[0] == ("Layers h2 is dead (no neuron ever fires) and h3 is constant (every neuron gives the same "
                        "value for every input): nothing about the input passes through them, so their clusters "
                        "and neurons say nothing, and no finding below cites them.")
    assert lines[1].startswith("The network has not learned to tell the classes (1, 7) apart: its held-out accuracy "
                               "is 48.0%, below 90.0% (guessing one class of 2 gives about 50.0%)")
    assert LOW_ACCURACY == 0.9
    assert lines[2].startswith("The classes (1, 7) separate from layer h1 on")
    assert "but they do not reach the output: later h2 and h3 pass nothing on" in lines[2]
    neuron = sentence(lines, "In h1 (the last hidden layer that passes anything on), neuron n5")
    assert not any("In h3" in s or "n0 " in s or "n1 " in s for s in lines)
    assert "AUROC 0.97" in neuron


def test_every_layer_dead_names_no_separation_and_no_neuron():
    exp = bare_experiment()
    neurons = {layer: neuron_summary("dead", auroc=0.5) for layer in LAYERS}
    table = [row("input", 0.77, 0.989, kind="input")] + [row(layer, 0.0, 0.5) for layer in LAYERS]
    lines = findings(hand_result(exp, neurons=neurons, separation={"table": table, "first_layer": None}), exp)
    assert lines[0].startswith("Layers h1, h2 and h3 are dead")
    assert ("No hidden layer carries the classes (1, 7): every one is dead or constant; for reference, the raw "
            "input already gives NMI 0.77 and probe accuracy 98.9%, enough for the rule.") in lines
    assert not any("neuron n" in s for s in lines)


def test_a_near_chance_neuron_is_not_said_to_tell_a_class_apart():
    exp = bare_experiment()
    neurons = {layer: neuron_summary(auroc=0.55, neuron=4) for layer in LAYERS}
    lines = findings(hand_result(exp, neurons=neurons), exp)
    assert "No neuron of h3 tells a class apart well: the best, n4, has AUROC 0.55 (0.5 is chance); 1 of 8 " \
           "neurons never fire." in lines
    assert not any("best tells" in s for s in lines)


def test_a_real_hand_made_network_with_two_dead_layers(rng):
    """analyze() end to end on activations with h2 and h3 dead and accuracy 0.48."""
    n = 120
    labels = np.concatenate([np.repeat([1, 7], n), np.full(40, 3)])
    split = np.concatenate([np.tile([0, 0, 0, 1], n // 2), np.full(40, 2)]).astype(np.int8)
    c = np.select([labels == 1, labels == 7], [1.0, -1.0], 0.0)
    h1 = np.maximum(np.column_stack([c, -c, np.zeros_like(c)]) + 0.1 * rng.random((len(c), 3)), 0.0)
    hidden = OrderedDict(h1=h1, h2=np.zeros((len(c), 4)), h3=np.zeros((len(c), 2)))
    train = split == 0
    clusterers = cluster_layers({k: v[train] for k, v in hidden.items()}, k_range=range(2, 5), random_state=0)
    images = (rng.random((len(c), 4, 4)) * 60).astype(np.uint8)
    images[labels == 1, :, :2] += 150
    exp = Experiment(
        config=ExperimentConfig(digits=(1, 7), anomalies=(3,), k_max=4), layers=list(hidden), classes=(1, 7),
        anomalies=(3,), class_names=tuple("0123456789"), labels=labels, split=split, images=images,
        probs=np.full((len(c), 2), 0.5), hidden=hidden, clusterers=clusterers,
        paths=assign_paths(clusterers, hidden), embeddings=OrderedDict(), metrics={"accuracy": 0.48},
    )
    result = analyze(exp, stability=False)
    lines = result["findings"]
    assert [r["layer"] for r in result["separation"]["table"]] == ["input", "h1", "h2", "h3"]
    assert result["separation"]["first_layer"] == "h1"
    assert result["neurons"]["h2"]["status"] == result["neurons"]["h3"]["status"] == "dead"
    assert lines[0].startswith("Layers h2 and h3 are dead (no neuron ever fires):")
    assert "held-out accuracy is 48.0%" in lines[1]
    assert "later h2 and h3 pass nothing on" in lines[2] and "for reference, the raw input" in lines[2]
    assert not any("In h3" in s or "In h2" in s for s in lines)
    assert sentence(lines, "In h1 (the last hidden layer that passes anything on), neuron n")


# --------------------------------------------------------------------------- the unseen set


def test_every_unseen_sentence_names_the_same_set():
    exp = bare_experiment(anomalies=(3, 4), unseen=(0, 2, 3, 4, 5, 6, 8, 9))
    assert unseen_set(exp) == [3, 4]
    lines = findings(hand_result(exp), exp)
    unseen = [s for s in lines if "unseen" in s]
    assert len(unseen) == 3 and all("the unseen 3s and 4s" in s for s in unseen)
    assert sentence(lines, "Distance to the known clusters tells the unseen 3s and 4s from held-out 1s and 7s "
                           "with AUROC 0.91 (path rarity 0.88; max-softmax baseline 0.75).")
    assert not any(f"{d}s" in s for s in unseen for d in (0, 2, 5, 6, 8, 9))


def test_without_highlighted_anomalies_every_sentence_names_all_unseen_classes():
    exp = bare_experiment(anomalies=(), unseen=(0, 2, 3, 4, 5, 6, 8, 9))
    assert unseen_set(exp) == [0, 2, 3, 4, 5, 6, 8, 9]
    result = hand_result(exp)
    result["anomaly"]["unseen_set"] = unseen_set(exp)
    unseen = [s for s in findings(result, exp) if "unseen" in s]
    assert len(unseen) == 3
    assert all("all 8 unseen classes (0, 2, 3, 4, 5, 6, 8, 9)" in s for s in unseen)


def test_analyze_computes_the_auroc_over_the_named_set(small_experiment):
    result = analyze(small_experiment, stability=False)
    assert result["anomaly"]["unseen_set"] == [3, 4] == unseen_set(small_experiment)
    assert sorted(result["anomaly"]["auroc"]["n_anomaly"]) == ["3", "4"]
    assert sum("the unseen 3s and 4s" in s for s in result["findings"]) == 4  # where they go, leave, AUROC, detectors
    assert result["detectors"]["unseen"] == [3, 4]


# --------------------------------------------------------------------------- the raw input beside the first layer


def test_the_separation_finding_compares_with_the_raw_input():
    exp = bare_experiment()
    text = sentence(findings(hand_result(exp), exp), "The classes (1, 7) separate from layer h1 on")
    assert ("for reference, the raw input already gives NMI 0.77 and probe accuracy 98.9%, so h1 sharpens "
            "(NMI 0.77 -> 0.88) a separation already in the input rather than creating it.") in text
    table = [row("input", 0.90, 0.99, kind="input"), row("h1", 0.88, 0.998)]
    text = sentence(findings(hand_result(exp, separation={"table": table, "first_layer": "h1"}), exp),
                    "The classes (1, 7) separate")
    assert "so the separation is in the input itself: h1 keeps it rather than creating it" in text
    table = [row("input", 0.2, 0.8, kind="input"), row("h1", 0.88, 0.998)]
    text = sentence(findings(hand_result(exp, separation={"table": table, "first_layer": "h1"}), exp),
                    "The classes (1, 7) separate")
    assert text.endswith("for reference, the raw input gives NMI 0.20 and probe accuracy 80.0%, short of the rule.")


def test_real_analysis_puts_the_input_row_first_and_quotes_it(small_experiment):
    result = analyze(small_experiment, stability=False)
    table = result["separation"]["table"]
    assert table[0]["layer"] == "input" and table[0]["kind"] == "input"
    assert [r["layer"] for r in table[1:]] == small_experiment.layers
    assert result["separation"]["first_layer"] in small_experiment.layers
    probe = format_share(table[0]["probe_accuracy"])
    assert f"the raw input already gives NMI {table[0]['nmi']:.2f} and probe accuracy {probe}" in " ".join(
        result["findings"])


# --------------------------------------------------------------------------- rounding


@pytest.mark.parametrize("share, text", [
    (0.997, "99.7%"), (0.9996, ">99.9%"), (1.0, "100.0%"), (0.0004, "<0.1%"), (0.0, "0.0%"), (0.5, "50.0%"),
    (np.float64(0.25), "25.0%"), (None, "n/a"), (float("nan"), "n/a"),
])
def test_format_share(share, text):
    assert format_share(share) == text


def test_format_share_other_decimals_and_bad_values():
    assert format_share(0.996, decimals=0) == ">99%" and format_share(0.004, decimals=0) == "<1%"
    assert format_share(0.12345, decimals=2) == "12.35%"
    for bad in (1.2, -0.1):
        with pytest.raises(ValueError, match=f"share must be in \\[0, 1\\], got {bad!r}"):
            format_share(bad)
    for bad in ("0.5", True):
        with pytest.raises(ValueError, match=f"share must be a number in \\[0, 1\\], got {bad!r}"):
            format_share(bad)
    for bad in (-1, 7, 1.5):
        with pytest.raises(ValueError, match=f"decimals must be an integer in 0..6, got {bad!r}"):
            format_share(0.5, decimals=bad)


def test_findings_never_print_100_percent_for_less_than_all():
    exp = bare_experiment()
    sig = hand_result(exp)["signatures"]
    sig["classes"]["1"] = {"dominant_share": 0.9996, "entropy": 0.01, "paths": [{"share": 0.9996}, {"share": 4e-4}]}
    sig["overall_purity"] = 0.9997
    text = sentence(findings(hand_result(exp, signatures=sig), exp), "Each class leaves a signature")
    assert ">99.9% of the 1s take one path" in text and "paths are >99.9% pure" in text
    assert "100" not in text


# --------------------------------------------------------------------------- a damaged analysis.json


@pytest.fixture(scope="module")
def stored(small_experiment, tmp_path_factory):
    from signatures.store import save_experiment

    folder = save_experiment(small_experiment, tmp_path_factory.mktemp("store") / "e", save_model=False)
    fresh = load_or_analyze(small_experiment, folder)
    return folder, fresh


@pytest.mark.parametrize("damage", [
    b"[1, 2, 3]",
    b'"an analysis"',
    b"null",
    b'{"version": 2}',
    b'{"version": 2, "findings": "not a list"}',
    b'{"findings": ["x"], "separation": []}',
    b"\xff\xfe not utf-8",
    b"",
    "truncated",
    "version 1",
    "other layers",
    "findings of the wrong type",
    "a layer's neurons missing",
])
def test_a_damaged_cache_is_treated_as_absent_and_rewritten(small_experiment, stored, damage):
    folder, fresh = stored
    path = folder / ANALYSIS_FILE
    good = path.read_text(encoding="utf-8")
    if damage == "truncated":
        data = good[: len(good) // 2].encode()
    elif damage == "version 1":
        data = json.dumps({**json.loads(good), "version": 1}).encode()
    elif damage == "other layers":
        data = json.dumps({**json.loads(good), "layers": ["a", "b"]}).encode()
    elif damage == "a layer's neurons missing":
        cached = json.loads(good)
        cached["neurons"][small_experiment.layers[0]] = {}
        data = json.dumps(cached).encode()
    elif damage == "findings of the wrong type":
        data = json.dumps({**json.loads(good), "findings": [1, 2]}).encode()
    else:
        data = damage
    path.write_bytes(data)
    result = load_or_analyze(small_experiment, folder)
    assert result["findings"] == fresh["findings"]
    again = json.loads(path.read_text(encoding="utf-8"))  # rewritten whole
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in fresh.items() if k != "seconds"}
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_cache_that_cannot_be_written_warns_and_still_answers(small_experiment, stored, tmp_path):
    missing = tmp_path / "no such folder"
    with pytest.warns(RuntimeWarning, match="the analysis could not be kept in .*no such folder.*analysis.json"):
        result = load_or_analyze(small_experiment, missing)
    assert result["findings"] == stored[1]["findings"] and not missing.exists()
