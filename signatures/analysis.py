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
import warnings
from pathlib import Path

import numpy as np

from .store import write_file_atomic

# The question modules (scikit-learn, scipy) are imported where an analysis is computed: a page
# kernel that reads a stored analysis.json never loads them.

__all__ = ["analyze", "findings", "load_or_analyze", "save_analysis", "format_share", "unseen_set", "ANALYSIS_FILE",
           "TIE_MARGIN", "LOW_ACCURACY", "NEURON_AUROC_MARGIN"]

ANALYSIS_FILE = "analysis.json"
_VERSION = 4
#: Version of the analysis: stored figures (``plots.zip``) of another version are stale too.
ANALYSIS_VERSION = _VERSION

#: Two shares this close (5 percentage points) are reported as a split, never as one answer.
TIE_MARGIN = 0.05

#: Held-out accuracy below which the findings open by saying the network has not learned the task.
LOW_ACCURACY = 0.9

#: A neuron whose AUROC lies within this of 0.5 is not said to tell a class apart.
NEURON_AUROC_MARGIN = 0.1

#: Keys (and their types) a cached ``analysis.json`` must have to be used.
_CACHE_KEYS = {"version": int, "layers": list, "neurons": dict, "signatures": dict, "confidence": dict,
               "separation": dict, "findings": list, "alpha": (int, float)}
_NEURON_KEYS = ("means", "order", "dead", "n_dead", "active_fraction", "signatures", "class_names", "status")


def format_share(share, *, decimals=1):
    """A share in [0, 1] as a percentage, the one way findings and reports print shares.

    Rounds to ``decimals`` places, but never prints 100% for a share below 1 or 0% for
    a share above 0: those become ``">99.9%"`` and ``"<0.1%"`` (at one decimal).

    Parameters
    ----------
    share : float in [0, 1]
    decimals : int, default 1

    Returns
    -------
    str
        ``"n/a"`` for None or NaN.
    """
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)) or not 0 <= decimals <= 6:
        raise ValueError(f"decimals must be an integer in 0..6, got {decimals!r}")
    if share is None or (isinstance(share, (float, np.floating)) and np.isnan(share)):
        return "n/a"
    if isinstance(share, bool) or not isinstance(share, (int, float, np.integer, np.floating)):
        raise ValueError(f"share must be a number in [0, 1], got {share!r}")
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share!r}")
    text = f"{share:.{decimals}%}"
    step = 10.0 ** -decimals
    if share < 1.0 and text == f"{100:.{decimals}f}%":
        return f">{100 - step:.{decimals}f}%"
    if share > 0.0 and text == f"{0:.{decimals}f}%":
        return f"<{step:.{decimals}f}%"
    return text


def unseen_set(exp):
    """The unseen classes the findings speak of: the experiment's anomalies that have rows, else every unseen class."""
    chosen = [int(a) for a in exp.anomalies if int(a) in exp.unseen]
    return chosen or list(exp.unseen)


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


#: Values (rows x units of the widest layer) beyond which the questions other than the neurons'
#: are answered on a seeded sample of rows (see :func:`sampled`).
ANALYSIS_CELLS = 10_000_000
#: Fewest rows such a sample keeps.
MIN_ANALYSIS_ROWS = 2_000


def sampled(exp, *, cells=None, min_rows=None, seed=0):
    """``exp`` itself, or a copy of it on a seeded sample of its rows when it is large.

    Paths, separation, stability and the detectors cost time and memory in rows x units of
    the widest layer (probes, CKA, k-means refits, covariances). Beyond ``cells`` values
    (default :data:`ANALYSIS_CELLS`) they run on ``max(min_rows, cells // units)`` rows
    (``min_rows`` default :data:`MIN_ANALYSIS_ROWS`), drawn from every (split, class)
    group in proportion (at least one row of each), so that a 70,000-input experiment with
    conv maps kept whole is answered in bounded memory and time. The copy holds the sampled
    activations in memory.

    Returns
    -------
    (Experiment, dict or None)
        The experiment to analyse, and ``{"rows", "of", "units"}`` when it is a sample.
    """
    from dataclasses import replace
    from collections import OrderedDict

    cells = ANALYSIS_CELLS if cells is None else int(cells)
    min_rows = MIN_ANALYSIS_ROWS if min_rows is None else int(min_rows)
    units = max(int(np.prod(v.shape[1:])) for v in exp.hidden.values())
    n = exp.n_rows
    if n * units <= cells:
        return exp, None
    want = min(n, max(int(min_rows), cells // units))
    if want >= n:
        return exp, None
    rng = np.random.default_rng(seed)
    groups = np.asarray(exp.split).astype(np.int64) * 1_000_003 + np.asarray(exp.labels).astype(np.int64)
    rows = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        take = min(len(members), max(1, int(round(want * len(members) / n))))
        rows.append(rng.choice(members, size=take, replace=False))
    rows = np.sort(np.concatenate(rows))

    def pick(values):
        return None if values is None else np.asarray(values[rows])

    view = replace(exp, labels=pick(exp.labels), split=pick(exp.split), images=pick(exp.images),
                   probs=pick(exp.probs), paths=pick(exp.paths), dataset_rows=pick(exp.dataset_rows),
                   logits=pick(getattr(exp, "logits", None)), work_folder=None,
                   uncertainty=None if getattr(exp, "uncertainty", None) is None else {
                       k: (v if k == "passes" else pick(v)) for k, v in exp.uncertainty.items()},
                   hidden=OrderedDict((k, pick(v)) for k, v in exp.hidden.items()),
                   embeddings=OrderedDict((k, pick(v)) for k, v in exp.embeddings.items()))
    return view, {"rows": int(len(rows)), "of": int(n), "units": int(units)}


def analyze(exp, *, alpha=0.05, stability=True, progress=None, input_row=None):
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
    input_row : dict, optional
        The raw input's separation row computed already for every row of ``exp``
        (:meth:`Experiment.input_separation_row`); used unless the analysis samples the rows.

    Returns
    -------
    dict
        ``neurons`` (per layer, :func:`signatures.neurons.layer_neuron_summary`),
        ``signatures`` (:func:`signatures.characteristic.signature_summary`, without the
        per-row confidence array), ``confidence`` (mean path confidence per split),
        ``separation`` (``table``: the raw input's row first, marked ``"kind": "input"``,
        then one row per hidden layer; ``first_layer`` (a hidden layer or None) and
        ``reason``; ``cka``, layer x layer over the hidden layers), ``anomaly`` (exit
        summary, AUROCs over ``unseen_set`` (:func:`unseen_set`), calibration),
        ``accuracy`` (held-out, or None), ``findings`` (list of str, :func:`findings`)
        and ``seconds`` per part.
    """
    say = progress or (lambda *a: None)
    seconds = {}
    start = time.perf_counter()

    def lap(name):
        nonlocal start
        seconds[name] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()

    say("analysis", 0.0, "neurons per layer")
    from . import anomaly as _anomaly
    from . import characteristic as _char
    from . import neurons as _neurons
    from . import separation as _sep

    neurons = {layer: _neurons.layer_neuron_summary(exp, layer) for layer in exp.layers}
    lap("neurons")
    full, (exp, sample) = exp, sampled(exp)
    if sample:
        say("analysis", 0.25, f"paths, separation and anomalies on a sample of {sample['rows']:,} of "
                              f"{sample['of']:,} inputs (the widest layer has {sample['units']:,} units)")
    say("analysis", 0.3, "class paths, purity and stability")
    sig = _char.signature_summary(exp, stability=stability)
    confidence = sig.pop("confidence")
    lap("signatures")
    say("analysis", 0.6, "separation per layer, and of the input itself")
    table = _sep.separation_table(exp, include_input=getattr(exp, "images", None) is not None,
                                  input_row=None if sample else input_row)
    layer, reason = _sep.first_separating_layer(table)
    cka = _sep.layer_cka(exp)
    lap("separation")
    say("analysis", 0.8, "anomaly p-values and AUROC")
    focus = unseen_set(exp)
    anomaly = _anomaly.anomaly_summary(exp, alpha=alpha, anomalies=focus) if focus else None
    if anomaly is not None:
        anomaly["unseen_set"] = focus
        anomaly.pop("pvalues")
        anomaly.pop("scores")
        anomaly.pop("exit")
    lap("anomaly")
    say("analysis", 0.9, "the field's detectors and the signature score")
    from .detectors import experiment_detectors

    detectors = experiment_detectors(exp, unseen=focus) if focus else None
    lap("detectors")
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
        "detectors": detectors,
        "accuracy": (exp.metrics or {}).get("accuracy"),
        "sample": sample,
        "seconds": seconds,
    }
    result = _plain(result)
    result["findings"] = findings(result, exp)
    if sample:
        result["findings"].append(
            f"The paths, separation and anomaly answers come from a seeded sample of {sample['rows']:,} of the "
            f"{full.n_rows:,} inputs, drawn in proportion from every class and split (the widest layer has "
            f"{sample['units']:,} units); the neurons' figures use every input.")
    say("analysis", 1.0, f"done in {sum(seconds.values()):.1f} s")
    return result


def _name(exp, c):
    return exp.class_names[int(c)]


def _many(exp, c):
    """'7s' for digits, "'Dress' images" for named classes."""
    name = _name(exp, c)
    return f"{name}s" if name.isdigit() else f"'{name}' images"


def _and(items):
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _set_words(exp, classes):
    """'the unseen 3s and 4s', or 'all 8 unseen classes (0, 2, ...)' when every unseen class is meant."""
    classes = list(classes)
    if len(classes) > 3 and set(classes) == set(exp.unseen):
        return f"all {len(classes)} unseen classes ({', '.join(_name(exp, c) for c in classes)})"
    return "the unseen " + _and(_many(exp, c) for c in classes)


def _points(margin):
    return f"{margin * 100:g} percentage points"


def _is_input(row):
    return row.get("kind") == "input"


def _layer_problems(result, exp):
    """Hidden layers that are dead or constant, in order: list of (layer, status)."""
    out = []
    for layer in exp.layers:
        status = (result["neurons"].get(layer) or {}).get("status", "ok")
        if status in ("dead", "constant"):
            out.append((layer, status))
    return out


def _dead_sentence(problems):
    dead = [layer for layer, status in problems if status == "dead"]
    constant = [layer for layer, status in problems if status == "constant"]
    parts = []
    if dead:
        parts.append(f"{_and(dead)} {'is' if len(dead) == 1 else 'are'} dead (no neuron ever fires)")
    if constant:
        parts.append(f"{_and(constant)} {'is' if len(constant) == 1 else 'are'} constant "
                     "(every neuron gives the same value for every input)")
    return ("Layer " if len(problems) == 1 else "Layers ") + " and ".join(parts) + \
        ": nothing about the input passes through them, so their clusters and neurons say nothing, " \
        "and no finding below cites them."


def _accuracy_sentence(exp, accuracy, classes, low_accuracy):
    chance = 1.0 / len(exp.classes)
    if accuracy < low_accuracy:
        return (f"The network has not learned to tell the classes ({classes}) apart: its held-out accuracy is "
                f"{format_share(accuracy)}, below {format_share(low_accuracy)} (guessing one class of "
                f"{len(exp.classes)} gives about {format_share(chance)}); what its layers show below is not how "
                "a working network tells them apart.")
    return f"The network tells the classes ({classes}) apart with held-out accuracy {format_share(accuracy)}."


def _input_clause(reference, rule, row=None):
    """How the raw input compares, as a clause: ``row`` is the first separating layer's row, if any."""
    if reference is None:
        return ""
    numbers = f"NMI {reference['nmi']:.2f} and probe accuracy {format_share(reference['probe_accuracy'])}"
    meets = all(reference.get(k) is not None and reference[k] >= least for k, least in rule.items())
    if not meets:
        return f"; for reference, the raw input gives {numbers}, short of the rule"
    if row is None:
        return f"; for reference, the raw input already gives {numbers}, enough for the rule"
    if row["nmi"] > reference["nmi"]:
        return (f"; for reference, the raw input already gives {numbers}, so {row['layer']} sharpens "
                f"(NMI {reference['nmi']:.2f} -> {row['nmi']:.2f}) a separation already in the input "
                "rather than creating it")
    return (f"; for reference, the raw input already gives {numbers}, so the separation is in the input "
            f"itself: {row['layer']} keeps it rather than creating it (its NMI is not higher)")


def _separation_sentence(result, exp, classes, problems, low):
    sep = result["separation"]
    from .separation import DEFAULT_RULE as rule
    reference = next((r for r in sep["table"] if _is_input(r)), None)
    hidden = [r for r in sep["table"] if not _is_input(r)]
    broken = dict(problems)
    first = sep["first_layer"]
    if first:
        row = next(r for r in hidden if r["layer"] == first)
        text = (f"The classes ({classes}) separate from layer {first} on: its clusters match the classes "
                f"(NMI {row['nmi']:.2f}) and a linear probe tells them apart with accuracy "
                f"{format_share(row['probe_accuracy'])}")
        later = hidden[[r["layer"] for r in hidden].index(first) + 1:]
        lost = [r["layer"] for r in later if r["layer"] in broken]
        short = [r for r in later if r["layer"] not in broken
                 and not all(r.get(k) is not None and r[k] >= least for k, least in rule.items())]
        if lost:
            text += (f", but they do not reach the output: later {_and(lost)} "
                     f"{'passes' if len(lost) == 1 else 'pass'} nothing on")
        elif short:
            text += ", but they do not stay apart: later " + "; ".join(
                f"{r['layer']} falls short again (NMI {r['nmi']:.2f}, probe accuracy "
                f"{format_share(r['probe_accuracy'])})" for r in short)
        if low and not lost:
            text += ", yet the network's output does not use it (see its accuracy above)"
        return text + _input_clause(reference, rule, row) + "."
    live = [r for r in hidden if r["layer"] not in broken]
    if not live:
        return (f"No hidden layer carries the classes ({classes}): every one is dead or constant"
                + _input_clause(reference, rule) + ".")
    best = max(live, key=lambda r: r["nmi"])
    wanted = f"NMI >= {rule['nmi']:g} and probe accuracy >= {format_share(rule['probe_accuracy'])}"
    return (f"No hidden layer's clusters follow the classes ({classes}) closely enough to call them separated "
            f"({wanted}); the best is {best['layer']} (NMI {best['nmi']:.2f}, probe accuracy "
            f"{format_share(best['probe_accuracy'])})" + _input_clause(reference, rule) + ".")


def _class_path_part(exp, c, info, margin):
    paths = info.get("paths") or []
    if len(paths) >= 2 and paths[0]["share"] - paths[1]["share"] <= margin:
        return (f"the {_many(exp, c)} split between two paths ({format_share(paths[0]['share'])} and "
                f"{format_share(paths[1]['share'])}, within {_points(margin)}) "
                f"(entropy {info['entropy']:.2f} bits)"), False
    share = info["dominant_share"]
    text = f"{format_share(share)} of the {_many(exp, c)} take one path (entropy {info['entropy']:.2f} bits)"
    return text, share > 0.5


def _signature_sentence(result, exp, margin):
    sig = result["signatures"]
    parts, all_major = [], True
    for c, info in sig["classes"].items():
        text, major = _class_path_part(exp, c, info, margin)
        parts.append(text)
        all_major &= major
    head = ("Each class leaves a signature: " if all_major
            else "Not every class has one path that most of its inputs take: ")
    return head + "; ".join(parts) + f"; paths are {format_share(sig['overall_purity'])} pure."


def _crossover_sentence(result, exp):
    cross = result["signatures"]["crossovers"]
    if not cross.get("counts"):
        return None
    pair, n = max(cross["counts"].items(), key=lambda kv: kv[1])
    true, other = json.loads(pair) if pair.startswith("[") else pair.split(",")
    share = cross["shares"][pair]
    return (f"{n} {_many(exp, true)} ({format_share(share)}) follow the dominant path of the {_many(exp, other)}: "
            f"{_many(exp, true)} that look like {_many(exp, other)}.")


def _neuron_sentence(result, exp, broken):
    live = [layer for layer in exp.layers if layer not in broken]
    if not live:
        return None
    layer = live[-1]
    summary = result["neurons"][layer]
    constant = set((summary.get("constant") or []))
    best_class, best = None, None
    for c, neurons in summary["signatures"].items():
        neurons = [n for n in neurons if n["neuron"] not in constant]
        if neurons and (best is None or abs(neurons[0]["auroc"] - 0.5) > abs(best["auroc"] - 0.5)):
            best_class, best = c, neurons[0]
    if best is None:
        return None
    where = layer if layer == exp.layers[-1] else f"{layer} (the last hidden layer that passes anything on)"
    dead = f"{summary['n_dead']} of {len(summary['active_fraction'])} neurons never fire"
    if abs(best["auroc"] - 0.5) < NEURON_AUROC_MARGIN:
        return (f"No neuron of {where} tells a class apart well: the best, n{best['neuron']}, has AUROC "
                f"{best['auroc']:.2f} (0.5 is chance); {dead}.")
    how = "fires most for" if best["auroc"] >= 0.5 else "stays quietest for"
    return (f"In {where}, neuron n{best['neuron']} best tells the {_many(exp, best_class)} apart: it "
            f"{how} them (AUROC {best['auroc']:.2f}); {dead}.")


def _outcomes(exp, u, items, margin, words):
    """One unseen class's outcomes, ``items`` (label, share) largest first, in words.

    The two largest within ``margin`` are a split naming both; a share above one half is
    "most"; otherwise no outcome is said to hold most of the class. ``words(label)`` gives
    the outcome as a verb phrase and as a noun phrase (for "split between ... and ...").
    """
    items = [(k, v) for k, v in items if v > 0]
    if not items:
        return None
    listed = lambda rest: ", ".join(f"{format_share(v)} {words(k)[0]}" for k, v in rest)  # noqa: E731
    if len(items) >= 2 and items[0][1] - items[1][1] <= margin:
        (a, sa), (b, sb) = items[:2]
        text = (f"the {_many(exp, u)} split between {words(a)[1]} ({format_share(sa)}) and {words(b)[1]} "
                f"({format_share(sb)}), within {_points(margin)}")
        return text + (f"; {listed(items[2:])}" if items[2:] else "")
    label, share = items[0]
    if share > 0.5:
        text = f"most {_many(exp, u)} ({format_share(share)}) {words(label)[0]}"
        return text + (f" ({listed(items[1:])})" if items[1:] else "")
    return f"no one outcome holds most of the {_many(exp, u)}: {listed(items)}"


def _where_part(exp, u, shares, margin):
    items = [(int(json.loads(k)[1]), float(v)) for k, v in shares.items()]
    rest = 1.0 - sum(v for _, v in items)
    items.append((None, max(rest, 0.0)))
    items.sort(key=lambda kv: -kv[1])

    def words(c):
        noun = "no trained class's dominant path" if c is None else f"the dominant path of the {_many(exp, c)}"
        return f"take {noun}", noun

    return _outcomes(exp, u, items, margin, words)


def _exit_part(exp, u, shares, margin):
    def words(label):
        return ("never leave", "never leaving") if label == "never" else (f"leave at {label}", f"leaving at {label}")

    return _outcomes(exp, u, sorted(shares.items(), key=lambda kv: -kv[1]), margin, words)


def _unseen_sentences(result, exp, margin):
    anomaly = result.get("anomaly")
    if not anomaly or not anomaly.get("auroc"):
        return []
    focus = [int(u) for u in anomaly.get("unseen_set") or list(exp.unseen)]
    words = _set_words(exp, focus)
    out = []
    across = result["signatures"].get("anomaly_crossovers", {}).get("shares", {}) or {}
    goes = [_where_part(exp, u, {k: v for k, v in across.items() if json.loads(k)[0] == u}, margin) for u in focus]
    out.append(f"Where {words} go: " + "; ".join(g for g in goes if g) + ".")
    exits = (anomaly.get("exit_summary") or {}).get("unseen") or {}
    leave = [_exit_part(exp, u, (exits.get(str(u)) or {}).get("shares") or {}, margin) for u in focus]
    leave = [part for part in leave if part]
    if leave:
        out.append(f"Where {words} leave the known clusters (distance p < {result['alpha']}): "
                   + "; ".join(leave) + ".")
    au = anomaly["auroc"]["auroc"]
    trained = _and(_many(exp, c) for c in exp.classes)
    out.append(
        f"Distance to the known clusters tells {words} from held-out {trained} with AUROC "
        f"{au['pvalue']:.2f} (path rarity {au['path_rarity']:.2f}; max-softmax baseline {au['msp']:.2f})."
    )
    return out


def findings(result, exp, *, tie_margin=TIE_MARGIN, low_accuracy=LOW_ACCURACY):
    """Short sentences answering the questions for one experiment, each exactly as strong as its numbers.

    Parameters
    ----------
    result : dict
        :func:`analyze`'s values (without ``findings``).
    exp : Experiment
    tie_margin : float, default :data:`TIE_MARGIN`
        Two largest shares (of a class's paths, of where unseen inputs go, of where they
        leave) at most this far apart are reported as a split naming both, not as one answer.
    low_accuracy : float, default :data:`LOW_ACCURACY`
        Below this held-out accuracy the findings say that the network has not learned the task.

    Returns
    -------
    list of str
        In order: dead or constant layers (if any), the accuracy, the separating layer
        beside the raw input, each class's paths, the commonest crossover, the best
        signature neuron of the last layer that passes anything on, and for the unseen
        classes (each sentence names the set, :func:`unseen_set`) where they go, where
        they leave the known clusters and how well they are told apart. A share above 50%
        is "most"; anything less is never called so.
    """
    for what, value in (("tie_margin", tie_margin), ("low_accuracy", low_accuracy)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"{what} must be a share in [0, 1], got {value!r}")
    out = []
    classes = ", ".join(_name(exp, c) for c in exp.classes)
    problems = _layer_problems(result, exp)
    if problems:
        out.append(_dead_sentence(problems))
    accuracy = result.get("accuracy", (exp.metrics or {}).get("accuracy"))
    low = accuracy is not None and accuracy < low_accuracy
    if accuracy is not None:
        out.append(_accuracy_sentence(exp, accuracy, classes, low_accuracy))
    out.append(_separation_sentence(result, exp, classes, problems, low))
    out.append(_signature_sentence(result, exp, tie_margin))
    cross = _crossover_sentence(result, exp)
    if cross:
        out.append(cross)
    neuron = _neuron_sentence(result, exp, dict(problems))
    if neuron:
        out.append(neuron)
    out.extend(_unseen_sentences(result, exp, tie_margin))
    detectors = _detector_sentence(result, exp)
    if detectors:
        out.append(detectors)
    uncertainty = _uncertainty_sentence(result, exp)
    if uncertainty:
        out.append(uncertainty)
    return out


def _strength(rho):
    size = abs(rho)
    return "strong" if size >= 0.7 else "moderate" if size >= 0.4 else "weak" if size >= 0.2 else "next to none"


def _uncertainty_sentence(result, exp):
    """How sure the network is (Monte-Carlo dropout), beside path rarity and the signature score."""
    det = result.get("detectors") or {}
    mc = det.get("uncertainty")
    if not mc:
        return None
    overall = det["overall"]
    entropy, mi = overall.get("mc_entropy", {}).get("auroc"), overall.get("mc_mi", {}).get("auroc")
    if entropy is None or mi is None:
        return None
    rho = mc["spearman"]["mc_mi"]
    parts = []
    for other, words in (("path_rarity", "path rarity"), ("signature", "the signature score")):
        r = rho.get(other)
        parts.append(f"{round(r, 2) + 0.0:+.2f} with {words} ({_strength(r)})" if r is not None
                     else f"undefined with {words} (a constant score)")
    return (f"How sure the network is (Monte-Carlo dropout, {mc['passes']} passes): its mutual information tells "
            f"{_set_words(exp, det['unseen'])} from held-out inputs with AUROC {mi:.3f} (predictive entropy "
            f"{entropy:.3f}); its rank correlation is {parts[0]} and {parts[1]}.")


#: AUROCs closer than this are called a tie in the findings.
DETECTOR_TIE = 0.005


def _detector_sentence(result, exp):
    """Which detector tells the unseen set from held-out inputs best, and by how much."""
    from .detectors import TITLES

    det = result.get("detectors")
    if not det:
        return None
    overall = det["overall"]
    sig = overall.get("signature", {}).get("auroc")
    best = det["best_baseline"]
    base = overall[best]["auroc"]
    if sig is None or base is None:
        return None
    who = _set_words(exp, det["unseen"])
    gap = sig - base
    if abs(gap) < DETECTOR_TIE:
        verdict = f"the signature score ties with the best of the field's detectors, {TITLES[best]} ({base:.3f})"
    elif gap > 0:
        verdict = f"the signature score is best, {gap:.3f} ahead of the field's best, {TITLES[best]} ({base:.3f})"
    else:
        verdict = (f"{TITLES[best]} is best ({base:.3f}); the signature score is {-gap:.3f} behind")
    calibration = det.get("calibration", {}).get("0.05")
    cal = (f"; its p-values are calibrated ({format_share(calibration)} of held-out inputs fall below 0.05)"
           if calibration is not None else "")
    return (f"Telling {who} from held-out inputs of the trained classes: {verdict} "
            f"(signature score AUROC {sig:.3f}){cal}.")


def _usable_cache(cached, exp):
    """Whether a parsed ``analysis.json`` is a complete analysis of this version for ``exp``."""
    if not isinstance(cached, dict):
        return False
    for key, kind in _CACHE_KEYS.items():
        if not isinstance(cached.get(key), kind) or isinstance(cached.get(key), bool):
            return False
    if cached["version"] != _VERSION or cached["layers"] != list(exp.layers):
        return False
    if set(cached["neurons"]) != set(exp.layers) or not all(isinstance(s, str) for s in cached["findings"]):
        return False
    if not all(isinstance(n, dict) and all(k in n for k in _NEURON_KEYS) for n in cached["neurons"].values()):
        return False
    if not all(k in cached["signatures"] for k in ("classes", "overall_purity", "crossovers")):
        return False
    sep = cached["separation"]
    return (isinstance(sep.get("table"), list) and all(isinstance(r, dict) for r in sep["table"])
            and isinstance(sep.get("reason"), str) and isinstance(sep.get("cka"), list)
            and (sep.get("first_layer") is None or sep.get("first_layer") in exp.layers)
            and (cached.get("anomaly") is None or isinstance(cached.get("anomaly"), dict))
            and (cached.get("detectors") is None or isinstance(cached.get("detectors"), dict)))


def _read_cache(path, exp):
    """The cached analysis at ``path`` if it is a complete one of this version for ``exp``, else None."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return cached if _usable_cache(cached, exp) else None


def load_or_analyze(exp, folder=None, *, progress=None):
    """:func:`analyze` once per stored experiment, kept as ``analysis.json`` in its folder.

    A cached file that cannot be used (unreadable, truncated, not JSON, not an analysis
    object, missing keys, of another version, or of other layers) is treated as absent:
    the analysis is computed again and the file rewritten atomically
    (:func:`signatures.store.write_file_atomic`), so a reader never sees half a file.
    When the folder cannot be written, the analysis is returned without being kept and a
    warning names the file.

    Parameters
    ----------
    exp : Experiment
    folder : str or Path, optional
        The experiment's folder; without it nothing is kept.
    progress : callable, optional
        As in :func:`analyze`.
    """
    path = None if folder is None else Path(folder) / ANALYSIS_FILE
    if path is not None and path.is_file():
        cached = _read_cache(path, exp)
        if cached is not None:
            return cached
    result = analyze(exp, progress=progress)
    if folder is not None:
        save_analysis(folder, result, stacklevel=3)
    return result


def save_analysis(folder, result, *, stacklevel=2):
    """Keep ``result`` (:func:`analyze` of the experiment stored in ``folder``) as its ``analysis.json``.

    Written atomically; a folder that cannot be written gives a warning naming the file (the
    analysis is then computed again next time). Returns the path, or None when not kept.
    """
    path = Path(folder) / ANALYSIS_FILE
    try:
        write_file_atomic(path, json.dumps(result))
    except OSError as exc:
        warnings.warn(f"the analysis could not be kept in {path}: {exc.strerror or exc}; "
                      "it will be computed again next time", RuntimeWarning, stacklevel=stacklevel)
        return None
    return path
