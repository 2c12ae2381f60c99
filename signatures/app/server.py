"""The web site: the notebooks in ``notebooks/`` served by Voilà, plus a landing page.

:func:`serve` starts :class:`SignaturesVoila`, which is Voilà with two routes of its own
placed before Voilà's. URLs, below the server's base URL (``/`` by default):

- ``/``: the landing page, what the tool does, links to the apps and one card per stored
  experiment, read from the store on every request;
- ``/signatures/api/experiments``: the same experiments as a JSON list;
- ``/signatures/static/plotly.min.js``: the plotly.js of the installed ``plotly`` package,
  which the apps' plots load once per page (:mod:`signatures.plotview`);
- ``/voila/render/builder.ipynb``, ``/voila/render/gallery.ipynb?experiment=NAME``: the apps;
- ``/voila/tree``: Voilà's list of the notebooks;
- ``/voila/templates/signatures/static/...``: the template's static files.

Pages use the Voilà template ``signatures`` in ``voila_template/`` (it extends ``lab``).
This module imports no TensorFlow and no UMAP: the server only lists experiments, the
notebooks' kernels do the work.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
from pathlib import Path
from urllib.parse import quote

import jinja2
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Unicode, default
from voila.app import Voila

from ..plotview import PLOTLY_ROUTE, forced_renderer, plotly_js_path
from ..store import scan_store

__all__ = [
    "template_root",
    "notebooks_root",
    "experiment_summaries",
    "render_landing",
    "SignaturesVoila",
    "voila_args",
    "serve",
]

TEMPLATE = "signatures"
STORE_ENV = "SIGNATURES_STORE"
DATA_DIR_ENV = "SIGNATURES_DATA_DIR"
#: Tag of notebook cells that run in Jupyter but never in the served app.
SKIP_TAG = "skip-voila"

_REPO = Path(__file__).resolve().parents[2]

_DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "digits": "scikit-learn digits (8×8)"}


def _repo_folder(name, what):
    path = _REPO / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"the {what} folder {str(path)!r} does not exist: the web site runs from a checkout of the "
            "repository (pip install -e .), which holds notebooks/ and voila_template/ beside signatures/"
        )
    return path


def template_root():
    """The folder to put on ``JUPYTER_PATH`` so that Voilà finds the ``signatures`` template.

    It holds ``voila/templates/signatures/`` (``conf.json``, ``index.html.j2``,
    ``landing.html.j2``, ``static/``).
    """
    return _repo_folder("voila_template", "Voilà template")


def notebooks_root():
    """The folder of the notebooks served as apps (``builder.ipynb``, ``gallery.ipynb``)."""
    return _repo_folder("notebooks", "notebooks")


def _template_dir():
    return template_root() / "voila" / "templates" / TEMPLATE


# ---------------------------------------------------------------------------------------
# Experiments as the site shows them
# ---------------------------------------------------------------------------------------


def _architecture(config):
    arch = str(config.get("arch", "mlp"))
    hidden = "-".join(str(h) for h in config.get("hidden", ()))
    if arch == "cnn":
        filters = "-".join(str(f) for f in config.get("filters", ()))
        text = f"CNN, conv {filters}" + (f", dense {hidden}" if hidden else "")
    else:
        text = f"{arch.upper()} {hidden}"
    activation = config.get("activation")
    return f"{text} ({activation})" if activation else text


def store_contents(root):
    """The stored experiments as JSON-ready summaries, and the damaged folders, never failing on one.

    Parameters
    ----------
    root : str or Path
        The store: a folder of experiment folders (a missing store holds nothing).

    Returns
    -------
    summaries : list of dict
        As :func:`experiment_summaries`.
    damaged : list of dict
        ``{"name": folder name, "problem": what is wrong}`` per folder that is not a
        complete, readable experiment; paths inside the store are given relative to it.
    """
    root = Path(root)
    try:
        manifests, damaged = scan_store(root)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    prefix = str(root.resolve()) + os.sep
    problems = [{"name": name, "problem": why.replace(prefix, "").replace(str(root) + os.sep, "")}
                for name, why in damaged]
    return [_summary(m) for m in manifests], problems


def experiment_summaries(root):
    """One JSON-ready dict per complete experiment under ``root``, in folder-name order.

    Parameters
    ----------
    root : str or Path
        The store: a folder of experiment folders.

    Returns
    -------
    list of dict
        Keys ``name`` (the experiment's folder name: its identity in the store and in links),
        ``title`` (the free-text name in its config), ``folder`` (same as ``name``), ``dataset``,
        ``digits``, ``anomalies``, ``class_names``, ``arch``, ``hidden``, ``filters``,
        ``activation``, ``epochs``, ``accuracy`` (held-out, or None) and ``created``.
    """
    return store_contents(root)[0]


def _summary(manifest):
    config = manifest["config"]
    accuracy = manifest["metrics"].get("accuracy")
    return {
        "name": Path(manifest["path"]).name,
        "title": str(config.get("name", "")),
        "folder": Path(manifest["path"]).name,
        "dataset": config.get("dataset"),
        "digits": list(config.get("digits", ())),
        "anomalies": list(config.get("anomalies", ())),
        "class_names": list(manifest.get("class_names", ())),
        "arch": config.get("arch"),
        "hidden": list(config.get("hidden", ())),
        "filters": list(config.get("filters", ())),
        "activation": config.get("activation"),
        "epochs": config.get("epochs"),
        "accuracy": float(accuracy) if accuracy is not None else None,
        "created": manifest.get("created"),
    }


def _class_list(classes, names):
    labels = [names[c] if isinstance(c, int) and 0 <= c < len(names) else str(c) for c in classes]
    return ", ".join(labels)


def _card(summary, base_url):
    names = summary["class_names"]
    accuracy = summary["accuracy"]
    created = summary["created"] or ""
    return {
        "name": summary["name"],
        "title": summary.get("title") if summary.get("title") not in (None, "", summary["name"]) else "",
        "href": f"{base_url}voila/render/gallery.ipynb?experiment={quote(summary['name'], safe='')}",
        "dataset": _DATASET_TITLES.get(summary["dataset"], str(summary["dataset"])),
        "trained": _class_list(summary["digits"], names),
        "unseen": _class_list(summary["anomalies"], names) or "none",
        "network": _architecture(summary),
        "accuracy": f"{accuracy:.1%}" if accuracy is not None else "n/a",
        "created": created.replace("T", " ")[:16],
    }


def _environment():
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _static_url(base_url, name):
    path = _template_dir() / "static" / name
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{base_url}voila/templates/{TEMPLATE}/static/{name}?v={version}"


def render_landing(experiments, *, base_url="/", store=None, damaged=()):
    """The landing page as HTML.

    Parameters
    ----------
    experiments : list of dict
        As returned by :func:`experiment_summaries`.
    base_url : str
        The server's base URL (``/`` or ``/prefix/``); every link starts with it.
    store : str or Path, optional
        The store folder, named in the empty state.
    damaged : list of dict, optional
        As returned by :func:`store_contents`: folders skipped, listed by name.

    Returns
    -------
    str
    """
    if not base_url.endswith("/"):
        base_url += "/"
    template = _environment().get_template("landing.html.j2")
    return template.render(
        base_url=base_url,
        css_url=_static_url(base_url, "signatures.css"),
        experiments=[_card(e, base_url) for e in experiments],
        damaged=list(damaged),
        store=str(store) if store is not None else None,
        store_arg=shlex.quote(str(store)) if store is not None else "runs",
    )


# ---------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------


class LandingHandler(JupyterHandler):
    """``GET <base>/``: the landing page, with the experiments stored right now."""

    def initialize(self, store):
        self.store = Path(store)

    @web.authenticated
    def get(self):
        summaries, damaged = store_contents(self.store)
        html = render_landing(summaries, base_url=self.base_url, store=self.store, damaged=damaged)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


class ExperimentsHandler(APIHandler):
    """``GET <base>/signatures/api/experiments``: the stored experiments as a JSON list."""

    def initialize(self, store):
        self.store = Path(store)

    @web.authenticated
    def get(self):
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(experiment_summaries(self.store)))


class PlotlyJsHandler(web.StaticFileHandler):
    """``GET <base>/signatures/static/plotly.min.js``: revalidated by ETag on each visit."""

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")


class SignaturesVoila(Voila):
    """Voilà with the site's landing page at the root URL and an experiments API.

    Voilà's own routes are unchanged (``/voila/render/...``, ``/voila/tree``, ...), except
    that the exact root URL shows the landing page instead of the notebook tree.
    """

    description = Unicode("Serve the signatures web site: landing page and notebook apps.")

    store = Unicode(config=True, help="Folder of stored experiments listed by the landing page.")

    @default("store")
    def _default_store(self):
        return os.environ.get(STORE_ENV, "runs")

    def init_handlers(self):
        handlers = super().init_handlers()
        store = Path(self.store).resolve()
        ours = [
            (self.server_url, LandingHandler, {"store": store}),
            (url_path_join(self.server_url, "signatures/api/experiments"), ExperimentsHandler, {"store": store}),
            (url_path_join(self.server_url, PLOTLY_ROUTE.rsplit("/", 1)[0], r"(plotly\.min\.js)"), PlotlyJsHandler,
             {"path": str(plotly_js_path().parent)}),
        ]
        if self.server_url.rstrip("/"):
            ours.append((self.server_url.rstrip("/"), web.RedirectHandler, {"url": self.base_url}))
        # Tornado takes the first pattern that matches, so ours come first.
        return ours + handlers


def _url_host(address):
    """``address`` as it goes in a URL (IPv6 in brackets), with loopback for 'all interfaces'."""
    if address in ("", "0.0.0.0", "::", "localhost"):
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return f"[{ip}]" if ip.version == 6 else str(ip)


#: Seconds after which the kernel of a page that is no longer open is stopped.
CULL_IDLE_S = 600


def pool_sizes(pool_size=1, gallery_pool_size=None):
    """Preheated kernels kept per notebook: ``pool_size`` each, ``gallery_pool_size`` for the gallery.

    A gallery kernel costs about 300 MiB and serves a class's first visitors at once; a
    builder kernel costs about 1 GiB. By default the gallery keeps twice ``pool_size``.
    """
    pool_size = max(int(pool_size), 0)
    gallery = 2 * pool_size if gallery_pool_size is None else max(int(gallery_pool_size), 0)
    return {"default": {"pool_size": pool_size}, "gallery.ipynb": {"pool_size": gallery}}


def voila_args(*, port=8866, address="127.0.0.1", pool_size=1, gallery_pool_size=None, preheat=True,
               open_browser=False, extra_args=()):
    """The command line :func:`serve` gives :class:`SignaturesVoila`.

    Parameters
    ----------
    port : int
    address : str
        Interface to listen on; the default is loopback only.
    pool_size : int
        Preheated kernels kept ready per notebook.
    gallery_pool_size : int, optional
        Preheated kernels kept for the gallery page (default ``2 * pool_size``; see :func:`pool_sizes`).
    preheat : bool
        Keep preheated kernels at all (off when ``pool_size`` is 0).
    open_browser : bool
    extra_args : sequence of str
        Further Voilà options, last so that they win.

    Returns
    -------
    list of str
    """
    pool_size = max(int(pool_size), 0)
    preheat = bool(preheat) and pool_size > 0
    args = [
        str(notebooks_root()),
        f"--template={TEMPLATE}",
        f"--Voila.ip={address}",
        f"--port={int(port)}",
        # Preheated kernels are told the port before the server listens: never drift to another one.
        "--Voila.port_retries=0",
        "--show_tracebacks=False",
        "--VoilaConfiguration.allow_template_override=NO",
        f"--TagRemovePreprocessor.remove_cell_tags={SKIP_TAG}",
        f"--preheat_kernel={preheat}",
        f"--pool_size={pool_size if preheat else 0}",
        # Voilà's shutdown request from a closing tab is refused here (xsrf), so idle kernels of
        # closed pages are culled; connected pages and the preheated pool are kept.
        f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_S}",
        "--MappingKernelManager.cull_interval=60",
        "--MappingKernelManager.cull_connected=False",
    ]
    if preheat:
        args.append(
            f"--VoilaKernelManager.kernel_pools_config={json.dumps(pool_sizes(pool_size, gallery_pool_size))}")
    if forced_renderer() != "mime":
        # The apps draw with their own plot widget (signatures.plotview): plotly's mime renderer
        # would only add its 4.8 MB of JavaScript to every page.
        args.append("--VoilaConfiguration.extension_denylist=jupyterlab-plotly")
    if not open_browser:
        args.append("--no-browser")
    args.extend(str(a) for a in extra_args)
    return args


def serve(*, port=8866, address="127.0.0.1", store="runs", data_dir=None, pool_size=1, gallery_pool_size=None,
          preheat=True, open_browser=False, extra_args=()):
    """Serve the web site until interrupted (Ctrl-C or SIGTERM stop it and its kernels).

    Sets, for this process and the kernels it starts: ``JUPYTER_PATH`` (``voila_template``
    first, so Voilà finds the template), ``SIGNATURES_STORE`` (the absolute store path),
    ``SIGNATURES_DATA_DIR`` (when ``data_dir`` is given) and ``VOILA_APP_IP`` (where a
    preheated kernel reaches the server to learn its request, see
    ``voila.utils.get_query_string``). Parameters are those of :func:`voila_args`, plus:

    Parameters
    ----------
    store : str or Path
        Folder of stored experiments (created by ``python -m signatures run --out STORE/NAME``).
    data_dir : str, Path or list, optional
        Folder(s) of IDX files for the builder's kernels (a string may join several with
        ``os.pathsep``); made absolute, since kernels run in ``notebooks/``.
    """
    args = voila_args(port=port, address=address, pool_size=pool_size, gallery_pool_size=gallery_pool_size,
                      preheat=preheat, open_browser=open_browser, extra_args=extra_args)
    paths = [str(template_root())] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ[STORE_ENV] = str(Path(store).expanduser().resolve())
    if data_dir is not None:
        folders = data_dir if isinstance(data_dir, (list, tuple)) else str(data_dir).split(os.pathsep)
        os.environ[DATA_DIR_ENV] = os.pathsep.join(str(Path(d).expanduser().resolve()) for d in folders if d)
    os.environ["VOILA_APP_IP"] = _url_host(address)
    SignaturesVoila.launch_instance(args)
