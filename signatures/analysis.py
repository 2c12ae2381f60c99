"""The three questions (and the calibrated anomaly view) for one experiment, in one call.

:func:`analyze` runs :mod:`signatures.neurons`, :mod:`signatures.characteristic`,
:mod:`signatures.separation` and :mod:`signatures.anomaly` on a stored or just-run
:class:`~signatures.experiment.Experiment` (no retraining, no UMAP, no TensorFlow) and
returns plain values plus :func:`findings`: short sentences that answer the questions with
their numbers, for students to read first. :func:`load_or_analyze` keeps the result in the
experiment's folder (``analysis.npz``) so a page computes it once.

Retrained-model stability is not part of it: it trains new models, so it is an explicit,
progress-reporting action (:func:`signatures.characteristic.retrained_stability`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import anomaly as _anomaly
from . import characteristic as _char
from . import neurons as _neurons
from . import separation as _sep
from .store import write_file_atomic

__all__ = ["analyze", "findings", "load_or_analyze", "ANALYSIS_FILE"]

ANALYSIS_FILE = "analysis.json"
_VERSION = 1


def _plain(value):
    """JSON-ready copy: numpy values to Python, tuple keys to strings."""
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else str(list(k)) if isinstance(k, tuple) else str(k)): _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def analyze(exp, *, alpha=0.05, stability=True, progress=None):
    """Answer the three questions and the anomaly one for ``exp``.

    Parameters
    ----------
    exp : Experiment
    alpha : float
        Level below which an input's distance p-value says it left the known clusters.
    stability : bool
        Include seed and bootstrap stability of each layer's k-means (about a second).
    progress : callable, optional
        ``progress(stage, fraction, message)``.

    Returns
    -------
    dict
        ``neurons`` (per layer, :func:`signatures.neurons.layer_neuron_summary`),
        ``signatures`` (:func:`signatures.characteristic.signature_summary`, without the
        per-row confidence array), ``confidence`` (mean path confidence per split),
        ``separation`` (table, first separating layer and reason, layer x layer CKA),
        ``anomaly`` (exit summary, AUROCs, calibration), ``findings`` (list of str) and
        ``seconds`` per part.
    """
    say = progress or (lambda *a: None)
    seconds = {}
    start = time.perf_counter()

    def lap(name):
        nonlocal start
        seconds[name] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()

    say("analysis", 0.0, "neurons per layer")
    neurons = {layer: _neurons.layer_neuron_summary(exp, layer) for layer in exp.layers}
    lap("neurons")
    say("analysis", 0.3, "class paths, purity and stability")
    sig = _char.signature_summary(exp, stability=stability)
    confidence = sig.pop("confidence")
    lap("signatures")
    say("analysis", 0.6, "separation per layer")
    table = _sep.separation_table(exp)
    layer, reason = _sep.first_separating_layer(table)
    cka = _sep.layer_cka(exp)
    lap("separation")
    say("analysis", 0.8, "anomaly p-values and AUROC")
    anomaly = _anomaly.anomaly_summary(exp, alpha=alpha) if exp.unseen else None
    if anomaly is not None:
        anomaly.pop("pvalues")
        anomaly.pop("scores")
        anomaly.pop("exit")
    lap("anomaly")
    result = {
        "version": _VERSION,
        "alpha": alpha,
        "layers": list(exp.layers),
        "neurons": neurons,
        "signatures": sig,
        "confidence": {s: float(np.mean(confidence[exp.rows(s)])) if len(exp.rows(s)) else None
                       for s in ("train", "test", "anomaly")},
        "separation": {"table": table, "first_layer": layer, "reason": reason, "cka": cka},
        "anomaly": anomaly,
        "seconds": seconds,
    }
    result = _plain(result)
    result["findings"] = findings(result, exp)
    say("analysis", 1.0, f"done in {sum(seconds.values()):.1f} s")
    return result


def _name(exp, c):
    return exp.class_names[int(c)]


def _many(exp, c):
    """'7s' for digits, "'Dress' images" for named classes."""
    name = _name(exp, c)
    return f"{name}s" if name.isdigit() else f"'{name}' images"


def findings(result, exp):
    """Short sentences answering the questions for one experiment, each with its number."""
    out = []
    sep = result["separation"]
    table = {row["layer"]: row for row in sep["table"]}
    classes = ", ".join(_name(exp, c) for c in exp.classes)
    if sep["first_layer"]:
        row = table[sep["first_layer"]]
        out.append(
            f"The classes ({classes}) separate from layer {sep['first_layer']} on: its clusters match the "
            f"classes (NMI {row['nmi']:.2f}) and a linear probe tells them apart with accuracy "
            f"{row['probe_accuracy']:.1%}."
        )
    else:
        best = max(sep["table"], key=lambda r: r["nmi"])
        out.append(
            f"No layer's clusters follow the classes ({classes}) closely enough to call them separated; "
            f"the best is {best['layer']} (NMI {best['nmi']:.2f}, probe accuracy {best['probe_accuracy']:.1%})."
        )

    sig = result["signatures"]
    per_class = sig["classes"]
    parts = []
    for c, info in per_class.items():
        parts.append(f"{info['dominant_share']:.0%} of the {_many(exp, c)} take one path "
                     f"(entropy {info['entropy']:.2f} bits)")
    out.append("Each class leaves a signature: " + "; ".join(parts) + f"; paths are {sig['overall_purity']:.1%} pure.")
    cross = sig["crossovers"]
    if cross.get("counts"):
        pair, n = max(cross["counts"].items(), key=lambda kv: kv[1])
        true, other = json.loads(pair) if pair.startswith("[") else pair.split(",")
        share = cross["shares"][pair]
        out.append(f"{n} {_many(exp, true)} ({share:.1%}) follow the dominant path of the {_many(exp, other)}: "
                   f"{_many(exp, true)} that look like {_many(exp, other)}.")

    last = exp.layers[-1]
    summary = result["neurons"][last]
    best_class, best = None, None
    for c, neurons in summary["signatures"].items():
        if neurons and (best is None or abs(neurons[0]["auroc"] - 0.5) > abs(best["auroc"] - 0.5)):
            best_class, best = c, neurons[0]
    if best is not None:
        how = "fires most for" if best["auroc"] >= 0.5 else "stays quietest for"
        out.append(f"In {last}, neuron n{best['neuron']} best tells the {_many(exp, best_class)} apart: it "
                   f"{how} them (AUROC {best['auroc']:.2f}); {summary['n_dead']} of "
                   f"{len(summary['active_fraction'])} neurons never fire.")

    anomaly = result["anomaly"]
    if anomaly and anomaly.get("auroc"):
        au = anomaly["auroc"]["auroc"]
        across = sig.get("anomaly_crossovers", {}).get("shares", {})
        goes = []
        for u in exp.anomalies or exp.unseen:
            shares = {k: v for k, v in across.items() if json.loads(k)[0] == u} if across else {}
            if shares:
                key, share = max(shares.items(), key=lambda kv: kv[1])
                goes.append(f"{share:.0%} of the {_many(exp, u)} take the path of the "
                            f"{_many(exp, json.loads(key)[1])}")
        if goes:
            out.append("Where unseen inputs go: " + "; ".join(goes[:4]) + ".")
        exits = (anomaly.get("exit_summary") or {}).get("unseen") or {}
        leave = []
        for u in (exp.anomalies or exp.unseen)[:3]:
            shares = (exits.get(str(u)) or {}).get("shares") or {}
            layers_only = {k: v for k, v in shares.items() if k != "never"}
            if layers_only:
                layer, share = max(layers_only.items(), key=lambda kv: kv[1])
                leave.append(f"the {_many(exp, u)} mostly at {layer} ({share:.0%}; {shares.get('never', 0):.0%} "
                             "never do)")
        if leave:
            out.append(f"Where they leave the known clusters (distance p < {result['alpha']}): "
                       + "; ".join(leave) + ".")
        out.append(
            f"Their distance to the known clusters tells unseen from held-out trained inputs with AUROC "
            f"{au['pvalue']:.2f} (path rarity {au['path_rarity']:.2f}; max-softmax baseline {au['msp']:.2f})."
        )
    return out


def load_or_analyze(exp, folder=None, *, progress=None):
    """:func:`analyze` once per stored experiment, kept as ``analysis.json`` in its folder.

    Parameters
    ----------
    exp : Experiment
    folder : str or Path, optional
        The experiment's folder; without it nothing is kept.
    """
    if folder is not None:
        path = Path(folder) / ANALYSIS_FILE
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                if cached.get("version") == _VERSION:
                    return cached
            except json.JSONDecodeError:
                pass
    result = analyze(exp, progress=progress)
    if folder is not None:
        write_file_atomic(Path(folder) / ANALYSIS_FILE, json.dumps(result))
    return result
