"""A self-contained HTML report of one experiment.

The report is a single file that opens in a browser with no server and no network:
plotly.js is embedded once, inline, and each figure is stored as JSON in a
``<script type="application/json" class="plotly-figure">`` that one small script draws.
Every figure sits in ``<section class="figure" data-figure="KIND" data-layer="LAYER">``
(``data-layer`` only for per-layer figures), with KIND one of ``confusion``,
``training``, ``silhouette``, ``umap``, ``sankey`` and ``cluster-images``, so the page
can be checked with an HTML parser.

It works on a stored experiment (:func:`signatures.store.load_experiment`) and imports
no TensorFlow.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from . import __version__
from . import figures as _fig
from .analysis import format_share
from .paths import path_label
from .store import write_file_atomic

__all__ = ["render_report", "write_report", "FIGURE_KINDS"]

#: The ``data-figure`` values a report uses.
FIGURE_KINDS = ("confusion", "training", "silhouette", "umap", "sankey", "cluster-images", "neurons",
                "separation", "cka", "anomaly-auroc", "exit-layers", "crossovers", "crossover-maps", "anomaly-maps",
                "detector-roc")

_CSS = """
:root { --ink: #222; --muted: #666; --line: #e3e3e3; --accent: #1f77b4; --warn: #d62728; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fafafa;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 40px 0 12px; padding-bottom: 4px; border-bottom: 2px solid var(--line); font-size: 22px; }
h3 { margin: 28px 0 8px; font-size: 18px; }
.lede { margin: 0 0 12px; color: var(--muted); font-size: 16px; }
nav { margin: 12px 0 0; font-size: 14px; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; font-size: 14px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.score { font-size: 32px; font-weight: 600; margin: 0; }
.score small { font-size: 15px; font-weight: 400; color: var(--muted); }
.row { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1.4fr); gap: 16px; align-items: start; }
.row.even { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); }
section.figure { margin: 8px 0 16px; }
section.figure .caption { margin: 2px 0 0; color: var(--muted); font-size: 13px; }
.plot { width: 100%; }
p.note { margin: 6px 0; padding: 6px 10px; border-left: 3px solid var(--warn); background: #fff4f2; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th { background: #f3f3f3; font-weight: 600; }
td.path, th.path { text-align: left; font-family: ui-monospace, Menlo, Consolas, monospace; }
th.anomaly, td.anomaly { color: var(--warn); }
td.zero { color: #bbb; }
.findings { background: #f3f7fb; border-left: 4px solid var(--accent); padding: 6px 18px; margin: 18px 0; }
.findings li { margin: 6px 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

_DRAW = """
document.querySelectorAll("script.plotly-figure").forEach(function (el) {
  var fig = JSON.parse(el.textContent);
  Plotly.newPlot(el.dataset.target, fig.data, fig.layout, {responsive: true, displaylogo: false});
});
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _json_for_script(fig):
    """Figure JSON that cannot end its ``<script>`` element early."""
    return fig.to_json().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class _Page:
    """Collects figures, numbering their ``<div>`` ids."""

    def __init__(self):
        self.n = 0

    def figure(self, fig, kind, *, layer=None, caption=None, note=None, extra=None):
        if kind not in FIGURE_KINDS:
            raise ValueError(f"figure kind must be one of {FIGURE_KINDS}, got {kind!r}")
        attrs = f' data-figure="{kind}"'
        if layer is not None:
            attrs += f' data-layer="{_e(layer)}"'
        for key, value in (extra or {}).items():
            attrs += f' data-{key}="{_e(value)}"'
        parts = [f'<section class="figure"{attrs}>']
        if note:
            parts.append(f'<p class="note">{_e(note)}</p>')
        if fig is not None:
            self.n += 1
            target = f"fig-{self.n}"
            parts.append(f'<div class="plot" id="{target}"></div>')
            parts.append(f'<script type="application/json" class="plotly-figure" data-target="{target}">'
                         f"{_json_for_script(fig)}</script>")
        if caption:
            parts.append(f'<p class="caption">{_e(caption)}</p>')
        parts.append("</section>")
        return "\n".join(parts)


def _names(exp, labels):
    return ", ".join(str(exp.class_names[c]) for c in labels)


def _architecture(exp):
    c = exp.config
    if c.model_path:
        text = f"user model {Path(c.model_path).name}"
    elif c.arch == "cnn":
        text = f"CNN, conv {'-'.join(map(str, c.filters))}"
        if c.hidden:
            text += f", dense {'-'.join(map(str, c.hidden))}"
        text += f" ({c.activation}, {c.reduce} of feature maps)"
    else:
        text = f"MLP, dense {'-'.join(map(str, c.hidden))} ({c.activation})"
    if getattr(c, "dropout", 0.0):
        text += f", dropout {c.dropout:g}"
    n_params = exp.info.get("n_params")
    return text + (f", {n_params:,} parameters" if n_params else "")


def _header(exp):
    c = exp.config
    counts = {s: len(exp.rows(s)) for s in ("train", "test", "anomaly")}
    anomalies = _names(exp, exp.unseen) if exp.unseen else "none"
    facts = [
        ("dataset", f"{c.dataset} ({exp.info.get('source', 'source not recorded')})"),
        ("trained classes", _names(exp, exp.classes)),
        ("anomalies (never trained on)", anomalies),
        ("architecture", _architecture(exp)),
        ("inputs", f"{counts['train']} training, {counts['test']} held-out, {counts['anomaly']} anomaly"),
        ("training", f"{c.epochs} epochs, batch {c.batch_size}, seed {c.seed}"),
        ("clustering", f"k-means per layer, K in {c.k_min}..{c.k_max} by silhouette "
                       f"(on at most {c.sample_size} training rows)"),
        ("config key", c.key()),
    ]
    dl = "\n".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    lede = (f"{c.dataset} · trained on {_names(exp, exp.classes)} · anomalies {anomalies} · "
            f"{_architecture(exp)}")
    return f"""<header>
<h1>Signatures of {_e(c.name)}</h1>
<p class="lede">{_e(lede)}</p>
<dl class="facts">
{dl}
</dl>
<nav><a href="#findings">Findings</a><a href="#accuracy">Accuracy</a><a href="#layers">Layers</a>
<a href="#paths">Paths</a><a href="#questions">The three questions</a><a href="#clusters">Cluster images</a></nav>
</header>"""


def _anomaly_table(exp):
    if not exp.unseen:
        return ""
    pred = exp.predicted
    head = "".join(f"<th>{_e(exp.class_names[c])}</th>" for c in exp.classes)
    rows = []
    for a in exp.unseen:
        mask = (exp.labels == a) & exp.is_anomaly()
        cells = []
        for c in exp.classes:
            n = int(np.sum(pred[mask] == c))
            cells.append(f'<td class="{"zero" if n == 0 else ""}">{n}</td>')
        rows.append(f'<tr><th class="anomaly">{_e(exp.class_names[a])}</th>{"".join(cells)}</tr>')
    return (
        "<h3>What the anomalies are taken for</h3>"
        '<table class="anomaly-predictions"><thead><tr><th>anomaly class</th>'
        f'<th colspan="{len(exp.classes)}">predicted as</th></tr>'
        f"<tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _accuracy(exp, page):
    m = exp.metrics
    parts = ['<h2 id="accuracy">Accuracy</h2>']
    if "accuracy" in m:
        train = f" · training {format_share(m['train_accuracy'])}" if "train_accuracy" in m else ""
        parts.append(f'<p class="score">{_e(format_share(m["accuracy"]))} '
                     f"<small>held-out accuracy{_e(train)}</small></p>")
    labels = [exp.class_names[c] for c in exp.classes]
    confusion = (page.figure(_fig.confusion_matrix(m["confusion"], labels, title="Confusion matrix (held-out)"),
                             "confusion", caption="Rows: true class; columns: predicted class.")
                 if m.get("confusion") is not None else
                 page.figure(None, "confusion", note="No confusion matrix was recorded."))
    training = page.figure(_fig.training_curves(m.get("history") or {}), "training")
    parts.append(f'<div class="row even"><div>{confusion}</div><div>{training}</div></div>')
    parts.append(_anomaly_table(exp))
    return "\n".join(parts)


def _layer_note(est):
    if est.status_ != "ok":
        return f"{est.status_}: {est.note_}"
    return est.note_ or None


def _layers(exp, page):
    parts = ['<h2 id="layers">Hidden layers</h2>',
             "<p>For each hidden layer: the silhouette score of k-means for each K (the chosen K is starred), "
             "and a UMAP map of the activations, fitted on inputs of the trained classes only, with the "
             "anomaly inputs placed on it afterwards. Anomalies are drawn as crosses in warm colours.</p>"]
    for name in exp.layers:
        est = exp.clusterers[name]
        units = exp.hidden[name].shape[1] if name in exp.hidden else "?"
        parts.append(f"<h3>{_e(name)} <small>· {_e(units)} units · K = {est.k_}</small></h3>")
        note = _layer_note(est)
        sil = page.figure(
            _fig.k_choice_curve(est, name, title=f"Silhouette by K, {name}")
            if getattr(est, "criterion_", "silhouette") == "silhouette"
            else _fig.k_choice_curve(est, name),
            "silhouette", layer=name, note=note,
        )
        if est.status_ == "constant":
            umap = page.figure(None, "umap", layer=name,
                               note="Not projected: every input has the same activations in this layer.")
        else:
            emb = exp.embeddings[name]
            n = int(np.isfinite(emb).all(axis=1).sum())
            umap = page.figure(_fig.layer_umap(exp, name, color_by="digit", title=f"UMAP of {name}, by true class"),
                               "umap", layer=name, caption=f"{n} of {exp.n_rows} inputs projected.")
        parts.append(f'<div class="row"><div>{sil}</div><div>{umap}</div></div>')
    return "\n".join(parts)


def _paths_table(exp, max_paths):
    counts = exp.path_counts()
    groups = list(exp.classes) + list(exp.unseen)
    anomalies = set(exp.unseen)
    top = counts[:max_paths]
    covered = sum(r["total"] for r in top)
    head = "".join(
        f'<th class="{"anomaly" if g in anomalies else ""}">{_e(exp.class_names[g])}</th>' for g in groups
    )
    rows = []
    for i, r in enumerate(top, start=1):
        cells = []
        for g in groups:
            n = r["by_group"].get(g, 0)
            cls = " ".join(c for c in ("anomaly" if g in anomalies else "", "zero" if n == 0 else "") if c)
            cells.append(f'<td class="{cls}">{n}</td>')
        label = path_label(r["path"], exp.layers, class_names=exp.class_names)
        rows.append(f'<tr><td>{i}</td><td class="path">{_e(label)}</td><td>{r["total"]}</td>{"".join(cells)}</tr>')
    summary = (f"{len(counts)} distinct paths (layer clusters and predicted class) over {exp.n_rows} inputs; "
               f"the {len(top)} most common below cover {format_share(covered / max(exp.n_rows, 1))} of them.")
    return (
        f"<h3>Most common paths</h3><p>{_e(summary)}</p>"
        '<table class="paths"><thead><tr><th>#</th><th class="path">path</th><th>inputs</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _paths(exp, page, max_paths, separating=None):
    n = exp.n_rows
    sankey = page.figure(
        _fig.experiment_sankey(exp, title=f"Cluster paths of all {n} inputs, first hidden layer to predicted class",
                               separating=separating),
        "sankey",
        caption="Links are coloured by true class; anomaly classes in reds and oranges. "
                "Training, held-out and anomaly inputs are all included.",
    )
    return "\n".join(['<h2 id="paths">Cluster paths</h2>', sankey, _paths_table(exp, max_paths)])


def _composition(exp, rows):
    parts = []
    for g in list(exp.classes) + list(exp.unseen):
        n = int(np.sum(exp.labels[rows] == g))
        if n:
            parts.append(f"{n} × {exp.class_names[g]}" + (" (anomaly)" if g in exp.unseen else ""))
    return ", ".join(parts)


def _clusters(exp, page, max_clusters, images_per_cluster):
    parts = ['<h2 id="clusters">Cluster images</h2>',
             f"<p>The {max_clusters} largest clusters of each layer (all inputs counted), with up to "
             f"{images_per_cluster} members drawn at random. Each image is labelled with its true class; "
             "anomalies are labelled in red.</p>"]
    rng = np.random.default_rng(exp.config.seed)
    anomaly = exp.is_anomaly()
    for li, name in enumerate(exp.layers):
        parts.append(f"<h3>{_e(name)}</h3>")
        ids, sizes = np.unique(exp.paths[:, li], return_counts=True)
        order = np.lexsort((ids, -sizes))[:max_clusters]
        for c, size in zip(ids[order].tolist(), sizes[order].tolist()):
            members = np.flatnonzero(exp.paths[:, li] == c)
            shown = members
            if len(members) > images_per_cluster:
                shown = np.sort(rng.choice(members, size=images_per_cluster, replace=False))
            titles = [str(exp.class_names[label]) for label in exp.labels[shown].tolist()]
            colors = ["#d62728" if a else "#333" for a in anomaly[shown].tolist()]
            fig = _fig.image_grid(exp.images[shown], titles=titles, title_colors=colors,
                                  title=f"{name} c{c}: {size} inputs")
            parts.append(page.figure(fig, "cluster-images", layer=name, extra={"cluster": c},
                                     caption=f"Members: {_composition(exp, members)}."))
    return "\n".join(parts)


def _findings(analysis):
    items = "".join(f"<li>{_e(s)}</li>" for s in analysis["findings"])
    return f'<section id="findings" class="findings"><h2>Findings</h2><ul>{items}</ul></section>'


def _table(header, rows):
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _separation_table(sep):
    """The separation measures per layer as a table, the raw input's row first and marked."""
    rows = []
    for r in sep["table"]:
        if r.get("kind") == "input":
            name = f"input (reference: {r.get('representation', 'raw input')})"
        else:
            name = r["layer"] + (" (classes separate here)" if r["layer"] == sep.get("first_layer") else "")
        rows.append([name] + [("n/a" if r.get(k) is None else f"{r[k]:.3f}")
                              for k in ("label_silhouette", "nmi", "ari", "purity")]
                    + [format_share(r.get("probe_accuracy")), "n/a" if r.get("cka_labels") is None
                       else f"{r['cka_labels']:.3f}"])
    return _table(["layer", "label silhouette", "NMI", "ARI", "cluster purity", "linear-probe accuracy",
                   "CKA with the labels"], rows).replace('class="summary"', 'class="summary separation"', 1)


def _explained(exp, page, analysis, explanations):
    """The stored attribution maps of the first crossovers and of a few unseen inputs."""
    names = exp.class_names
    sig = analysis["signatures"]
    why = ("Beside each input: the pixels that push the network towards its prediction (class), and those that hold "
           "it in its cluster at each layer (red) or pull it towards another cluster (blue); integrated gradients "
           "from a black image, each map scaled to its own largest values.")
    parts = []
    cross = sig["crossovers"]
    if cross["rows"]:
        titles = [f"{names[exp.labels[r]]} on {names[int(c)]}'s path" for r, c in zip(cross["rows"],
                                                                                  cross["dominant_class"])]
        parts.append(page.figure(_fig.experiment_explanations(exp, explanations, cross["rows"], row_titles=titles,
                                                              title="Why these inputs take another class's path"),
                                 "crossover-maps", caption=why))
    unseen = exp.rows("anomaly")
    if len(unseen):
        across = sig.get("anomaly_crossovers") or {"rows": [], "dominant_class": []}
        rows = [int(r) for r in across["rows"]]
        titles = [f"unseen {names[exp.labels[r]]} on {names[int(c)]}'s path" for r, c in zip(rows,
                                                                                       across["dominant_class"])]
        if explanations is not None:  # then the other unseen inputs with maps, one class after another
            index = explanations["index"]
            focus = set(analysis.get("anomaly", {}).get("unseen_set") or exp.anomalies or exp.unseen)
            more = [int(r) for r in explanations["rows"] if exp.split[r] == 2 and int(r) not in set(rows)
                    and int(exp.labels[r]) in focus]
            rows += more
            titles += [f"unseen {names[exp.labels[r]]}, predicted {names[exp.predicted[r]]}" for r in more]
            rows, titles = [r for r in rows if r in index], [t for r, t in zip(rows, titles) if r in index]
        parts.append(page.figure(_fig.experiment_explanations(exp, explanations, rows, row_titles=titles,
                                                              title="Why unseen inputs take the paths they take"),
                                 "anomaly-maps", caption=why))
    return parts


def _questions(exp, page, analysis, explanations=None):
    names = exp.class_names
    parts = ['<h2 id="questions">The three questions</h2>', "<h3>1. Which neurons fire for which class</h3>"]
    for layer in exp.layers:
        s = analysis["neurons"][layer]
        status = s.get("status", "ok")
        parts.append(page.figure(
            _fig.neuron_heatmap(s["means"], s["class_names"], order=s["order"], dead=s["dead"],
                                title=f"{layer}: mean activation per neuron and class"),
            "neurons", layer=layer,
            note=(f"This layer is {status}: nothing about the input passes through it, so it has no signature "
                  "neurons." if status != "ok" else None),
            caption=f"{s['n_dead']} of {len(s['active_fraction'])} neurons never fire; neurons grouped by the "
                    "class they prefer, most selective first."))
        rows = []
        for c, neurons in s["signatures"].items():
            for n in neurons[:3]:
                rows.append([names[int(c)], f"n{n['neuron']}", f"{n['auroc']:.3f}", f"{n['cohens_d']:.2f}"])
        parts.append(_table(["class", "signature neuron", "AUROC", "Cohen's d"], rows))

    sig = analysis["signatures"]
    parts.append("<h3>2. Does each class leave a characteristic signature</h3>")
    parts.append(_table(["class", "inputs", "paths", "dominant path share", "path entropy (bits)"], [
        [names[int(c)], i["n"], i["n_paths"], format_share(i["dominant_share"]), f"{i['entropy']:.2f}"]
        for c, i in sig["classes"].items()]))
    parts.append(f"<p>Paths are {_e(format_share(sig['overall_purity']))} pure (share of inputs whose path's "
                 "majority class is their own).</p>")
    cross = sig["crossovers"]["rows"][:30]
    if cross:
        titles = [f"{names[exp.labels[r]]} on {names[int(c)]}'s path"
                  for r, c in zip(cross, sig["crossovers"]["dominant_class"][:30])]
        parts.append(page.figure(_fig.image_grid(exp.images[cross], titles=titles, ncols=10,
                                                 title="Inputs that take another class's dominant path"),
                                 "crossovers", caption=f"{len(sig['crossovers']['rows'])} in all; up to 30 shown."))
    else:
        parts.append(page.figure(None, "crossovers", note="No input takes another class's dominant path."))
    parts.extend(_explained(exp, page, analysis, explanations))
    if sig.get("stability"):
        parts.append(_table(["layer", "K", "ARI across k-means seeds (mean / min)", "ARI across bootstraps (mean / min)"],
                            [[layer, s["k"], f"{s['seed_ari_mean']:.3f} / {s['seed_ari_min']:.3f}",
                              f"{s['boot_ari_mean']:.3f} / {s['boot_ari_min']:.3f}"]
                             for layer, s in sig["stability"].items()]))

    sep = analysis["separation"]
    parts.append("<h3>3. From which layer do the classes separate</h3>")
    parts.append(f"<p>{_e(sep['reason'])}</p>")
    parts.append(_separation_table(sep))
    parts.append('<div class="row even"><div>'
                 + page.figure(_fig.separation_panel(sep["table"], separating=sep["first_layer"]), "separation")
                 + "</div><div>"
                 + page.figure(_fig.cka_heatmap(sep["cka"], exp.layers), "cka")
                 + "</div></div>")

    anomaly = analysis.get("anomaly")
    if anomaly and anomaly.get("auroc"):
        parts.append("<h3>Unseen inputs, calibrated</h3>")
        au = anomaly["auroc"]["auroc"]
        focus = anomaly.get("unseen_set") or list(exp.unseen)
        unseen = "unseen " + ", ".join(str(names[int(c)]) for c in focus)
        trained = ", ".join(str(names[int(c)]) for c in exp.classes)
        exits = {names[int(c)]: e["shares"] for c, e in anomaly["exit_summary"]["unseen"].items()}
        counts = {k: {(None if layer == "never" else layer): v for layer, v in shares.items()}
                  for k, shares in exits.items()}
        parts.append('<div class="row even"><div>'
                     + page.figure(_fig.auroc_bars({"distance p-value": au["pvalue"], "path rarity": au["path_rarity"],
                                                    "max softmax (baseline)": au["msp"]},
                                                   title=f"Telling {unseen} from held-out {trained} (AUROC)"),
                                   "anomaly-auroc")
                     + "</div><div>"
                     + page.figure(_fig.exit_layers(counts, exp.layers,
                                                    title="Share of each unseen class first leaving the known "
                                                          "clusters at each layer"), "exit-layers")
                     + "</div></div>")
        calib = ", ".join(f"{layer} {format_share(v)}" for layer, v in anomaly["calibration"].items())
        parts.append(f"<p>Calibration: share of held-out trained inputs with p &lt; {analysis['alpha']} per layer "
                     f"(near {analysis['alpha']:.0%} when calibrated): {_e(calib)}.</p>")
    detectors = analysis.get("detectors")
    if detectors:
        from .detectors import SHOWN, TITLES

        parts.append("<h3>The field's detectors and the signature score</h3>")
        parts.append(detector_table_html(detectors, names))
        curves = {n: detectors["roc"][n] for n in SHOWN if n in detectors["roc"]}
        parts.append(page.figure(_fig.roc_curves(curves, titles=TITLES), "detector-roc"))
        cal = ", ".join(f"p &lt; {a}: {format_share(v)}" for a, v in detectors["calibration"].items())
        parts.append(f"<p>The signature score's p-values on held-out trained inputs (calibrated when each share is "
                     f"near its level): {cal}.</p>")
    return "\n".join(parts)


def detector_table_html(detectors, class_names):
    """The detector comparison as an HTML table: every detector's AUROC, FPR at 95% TPR and
    AUPR over the unseen set, then its AUROC per unseen class; the best AUROC of each column bold.

    Parameters
    ----------
    detectors : dict
        ``analysis["detectors"]`` (:func:`signatures.detectors.experiment_detectors`).
    class_names : sequence of str
    """
    from .detectors import SHOWN, TITLES

    overall, per_class = detectors["overall"], detectors["per_class"]
    shown = [n for n in SHOWN if n in overall]
    classes = list(per_class)

    def cell(value, best, fmt="{:.3f}"):
        if value is None:
            return "<td>n/a</td>"
        text = fmt.format(value)
        return f"<td><b>{text}</b></td>" if best is not None and abs(value - best) < 5e-4 else f"<td>{text}</td>"

    def best_of(values, low=False):
        values = [v for v in values if v is not None]
        return (min(values) if low else max(values)) if values else None

    head = ("<tr><th>detector</th><th>AUROC</th><th>FPR at 95% TPR</th><th>AUPR</th>"
            + "".join(f"<th>AUROC: {_e(class_names[int(c)])}</th>" for c in classes) + "</tr>")
    best = {m: best_of([overall[n][m] for n in shown], low=m == "fpr95") for m in ("auroc", "fpr95", "aupr")}
    best_c = {c: best_of([per_class[c][n]["auroc"] for n in shown]) for c in classes}
    rows = []
    for n in shown:
        rows.append(f"<tr><td>{_e(TITLES.get(n, n))}</td>"
                    + cell(overall[n]["auroc"], best["auroc"]) + cell(overall[n]["fpr95"], best["fpr95"])
                    + cell(overall[n]["aupr"], best["aupr"])
                    + "".join(cell(per_class[c][n]["auroc"], best_c[c]) for c in classes) + "</tr>")
    unseen = ", ".join(_e(class_names[int(c)]) for c in detectors["unseen"])
    counts = ", ".join(f"{_e(class_names[int(c)])}: {n}" for c, n in detectors["n_unseen"].items())
    return (f"<table class='sig-detectors'><caption>Unseen {unseen} ({counts}) against {detectors['n_heldout']} "
            "held-out inputs of the trained classes; the best of each column in bold.</caption>"
            f"{head}{''.join(rows)}</table>" + _uncertainty_note(detectors))


def _uncertainty_note(detectors):
    """Monte-Carlo dropout's rank correlations with path rarity and the signature score, under the table."""
    mc = detectors.get("uncertainty")
    if not mc:
        return ""

    def r(value):
        return "n/a" if value is None else f"{round(value, 2) + 0.0:+.2f}"

    sp = mc["spearman"]
    return (f"<p class='caption'>Monte-Carlo dropout, {int(mc['passes'])} passes, on the same inputs: Spearman "
            f"correlation of the mutual information with path rarity {r(sp['mc_mi']['path_rarity'])} and with the "
            f"signature score {r(sp['mc_mi']['signature'])}; of the predictive entropy "
            f"{r(sp['mc_entropy']['path_rarity'])} and {r(sp['mc_entropy']['signature'])}.</p>")


def render_report(exp, *, max_clusters=4, images_per_cluster=20, max_paths=12, analysis=None, explanations=None):
    """The HTML report of an experiment, as a string.

    Parameters
    ----------
    exp : Experiment
        Run here or loaded with :func:`signatures.store.load_experiment`.
    max_clusters : int
        Largest clusters per layer whose member images are shown.
    images_per_cluster : int
        Most images drawn per cluster (a seeded random sample of its members).
    max_paths : int
        Rows of the table of most common paths.
    analysis : dict, optional
        :func:`signatures.analysis.analyze` of ``exp``; computed when not given.

    Returns
    -------
    str
        A complete HTML document with plotly.js inline, needing no network.
    """
    for what, value in (("max_clusters", max_clusters), ("images_per_cluster", images_per_cluster),
                        ("max_paths", max_paths)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    from plotly.offline import get_plotlyjs

    if analysis is None:
        from .analysis import analyze

        analysis = analyze(exp)
    page = _Page()
    body = "\n".join([
        _header(exp),
        _findings(analysis),
        _accuracy(exp, page),
        _layers(exp, page),
        _paths(exp, page, int(max_paths), separating=analysis["separation"]["first_layer"]),
        _questions(exp, page, analysis, explanations),
        _clusters(exp, page, int(max_clusters), int(images_per_cluster)),
    ])
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in exp.timings.items())
    footer = f"signatures {__version__}" + (f" · run time: {timings}" if timings else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Signatures of {_e(exp.config.name)}</title>
<style>{_CSS}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<main>
{body}
<footer>{_e(footer)}</footer>
</main>
<script>{_DRAW}</script>
</body>
</html>
"""


def write_report(exp, path, *, max_clusters=4, images_per_cluster=20, max_paths=12, analysis=None,
                 explanations=None):
    """Write the report of ``exp`` to ``path``, atomically.

    Parameters
    ----------
    exp : Experiment
    path : str or Path
        The HTML file to write, or an existing folder (e.g. the experiment's own
        folder) to write ``report.html`` into. Missing parent folders are created.
    max_clusters, images_per_cluster, max_paths : int
        See :func:`render_report`.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    if explanations is None and (path.parent / "manifest.json").is_file():  # the experiment's own folder
        from .explanations import load_explanations

        explanations = load_explanations(path.parent, n_rows=exp.n_rows, image_shape=exp.images.shape[1:])
    text = render_report(exp, max_clusters=max_clusters, images_per_cluster=images_per_cluster,
                         max_paths=max_paths, analysis=analysis, explanations=explanations)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, text)
    return path
