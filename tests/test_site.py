"""The web site: landing page, experiments API, the Voilà template, and the real server.

The store holds a real small experiment, saved twice: once as is and once under a
hostile name that must come out escaped everywhere. The server runs in a subprocess on a
free loopback port, without preheated kernels, and is always stopped.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from signatures.app import server as site
from signatures.store import save_experiment

HOSTILE = "<script>alert('x')</script>\"&"


class _Page(HTMLParser):
    """Links, card titles and script tags of a page, as a browser would read them."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.links, self.titles, self.scripts, self._in_h3 = [], [], 0, False
        self.raw, self._text = html, []
        self.feed(html)
        self.text = "".join(self._text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("a", "link") and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "script":
            self.scripts += 1
        if tag == "h3":
            self._in_h3 = True
            self.titles.append("")

    def handle_endtag(self, tag):
        if tag == "h3":
            self._in_h3 = False

    def handle_data(self, data):
        self._text.append(data)
        if self._in_h3:
            self.titles[-1] += data


@pytest.fixture(scope="module")
def store(small_experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("site-store")
    save_experiment(small_experiment, root / "small", save_model=False)
    hostile = replace(small_experiment, config=replace(small_experiment.config, name=HOSTILE))
    save_experiment(hostile, root / "hostile", save_model=False)
    return root


def test_summaries_describe_each_stored_experiment(store, small_experiment):
    rows = site.experiment_summaries(store)
    assert [r["folder"] for r in rows] == ["hostile", "small"]
    small = rows[1]
    config = small_experiment.config
    assert small["name"] == "small" and rows[0]["name"] == "hostile" and rows[0]["title"] == HOSTILE
    assert small["dataset"] == "mnist"
    assert small["digits"] == [1, 7] and small["anomalies"] == [3, 4]
    assert small["arch"] == "mlp" and small["hidden"] == list(config.hidden)
    assert small["accuracy"] == pytest.approx(small_experiment.metrics["accuracy"])
    assert small["created"]
    json.dumps(rows)  # JSON-ready as is


def test_landing_links_every_experiment_and_escapes_names(store, small_experiment):
    html = site.render_landing(site.experiment_summaries(store), base_url="/", store=store)
    page = _Page(html)
    assert page.scripts == 0, "the landing page runs no script, and a name must not add one"
    assert "<script>alert" not in html
    assert {"hostile", "small"} <= set(page.titles)
    assert HOSTILE in page.text and "<script>alert" not in page.raw
    assert "/voila/render/gallery.ipynb?experiment=small" in page.links
    assert "/voila/render/gallery.ipynb?experiment=hostile" in page.links
    assert "/signatures/report/small/report.html" in page.links, "every card links its static report"
    browse = page.raw.split('sig-button-quiet" href="', 1)[1].split('"', 1)[0]
    assert browse == "/voila/render/gallery.ipynb?experiment=hostile", "Browse opens the first stored experiment"
    accuracy = f"{small_experiment.metrics['accuracy']:.1%}"
    for fact in ("MNIST", "1, 7", "3, 4", "MLP 16-8 (relu)", accuracy):
        assert fact in html


def test_landing_links_start_with_the_base_url(store):
    page = _Page(site.render_landing(site.experiment_summaries(store), base_url="/prefix/"))
    links = [link for link in page.links if not link.startswith("data:")]
    assert {"/prefix/", "/prefix/voila/render/builder.ipynb", "/prefix/voila/render/gallery.ipynb",
            "/prefix/signatures/report/small/report.html"} <= set(links)
    assert all(link.startswith("/prefix/") for link in links), links


def test_empty_store_says_how_to_build_experiments(tmp_path):
    assert site.experiment_summaries(tmp_path / "missing") == []
    html = site.render_landing([], store=tmp_path / "my-runs")
    assert "python -m signatures canonical --store my-runs" in html
    assert str(tmp_path) not in html, "the page names the store, never its absolute path"
    assert "?experiment=" not in html
    assert "sig-build" not in html and _Page(html).scripts == 0, "no build button without a cluster"
    page = _Page(site.render_landing([], store=tmp_path / "my-runs", can_build=True, xsrf="t0k"))
    assert page.scripts == 1 and 'id="sig-build"' in page.raw and 'name="_xsrf" value="t0k"' in page.raw
    assert 'action="/signatures/api/canonical"' in page.raw and "Build the canonical experiments" in page.text


def test_landing_and_stylesheet_fetch_nothing_from_the_internet(store):
    page = _Page(site.render_landing(site.experiment_summaries(store)))
    assert not [link for link in page.links if "//" in link]
    css = (site.template_root() / "voila" / "templates" / "signatures" / "static" / "signatures.css").read_text()
    assert "@import" not in css and "url(" not in css


def test_voila_finds_the_template(monkeypatch):
    from voila.paths import collect_static_paths, collect_template_paths

    monkeypatch.setenv("JUPYTER_PATH", str(site.template_root()))
    ours = site.template_root() / "voila" / "templates" / "signatures"
    paths = collect_template_paths(["voila", "nbconvert"], "signatures", prune=True)
    assert paths[0] == str(ours)
    assert any(p.endswith(os.path.join("voila", "templates", "lab")) for p in paths), "extends lab"
    assert collect_static_paths(["voila", "nbconvert"], "signatures")[0] == str(ours / "static")


def _render_with_template(base_url, name):
    """Render a two-cell notebook with the template, kernel calls stubbed out."""
    import nbformat
    from voila.exporter import VoilaExporter
    from voila.paths import collect_template_paths

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("1 + 1")]
    exporter = VoilaExporter(template_paths=collect_template_paths(["voila", "nbconvert"], "signatures"),
                             template_name="signatures", base_url=base_url)
    exporter.exclude_input = True

    async def kernel_start(nb):
        return "kernel-id"

    async def cells(nb, kernel_id):
        for cell in nb.cells:
            yield cell

    async def render():
        chunks = []
        context = {"frontend": "voila", "main_js": "voila.js", "kernel_start": kernel_start,
                   "cell_generator": cells, "progressive_rendering": False}
        resources = {"base_url": base_url, "theme": "light", "metadata": {"name": name}}
        async for html, _ in exporter.generate_from_notebook_node(
                nb, resources=resources, extra_context=context, page_config={"fullStaticUrl": base_url + "voila/static"}):
            chunks.append(html)
        return "".join(chunks)

    return asyncio.run(render())


def test_notebook_pages_get_the_top_bar_and_no_cdn(monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(site.template_root()))
    html = _render_with_template("/b/", "gallery")
    page = _Page(html)
    assert "cdn.jsdelivr" not in html and "cdnjs" not in html
    assert not [link for link in page.links if "//" in link]
    assert any(link.startswith("/b/voila/templates/signatures/static/signatures.css") for link in page.links)
    assert {"/b/", "/b/voila/render/builder.ipynb", "/b/voila/render/gallery.ipynb"} <= set(page.links)
    assert 'href="/b/voila/render/gallery.ipynb" aria-current="page"' in html


def test_voila_args():
    args = site.voila_args()
    assert args[0] == str(site.notebooks_root())
    assert f"--MappingKernelManager.cull_idle_timeout={site.CULL_IDLE_S}" in args  # closed pages free their kernels
    assert site.CULL_IDLE_S + site.CULL_INTERVAL_S <= 60, "a closed tab's kernel goes within a minute"
    for arg in ("--template=signatures", "--Voila.ip=127.0.0.1", "--port=8866", "--no-browser",
                "--show_tracebacks=False", "--preheat_kernel=True", "--pool_size=1",
                "--TagRemovePreprocessor.remove_cell_tags=skip-voila", "--KernelManager.transport=ipc",
                "--MappingKernelManager.cull_connected=False", "--SignaturesVoila.class_size=10",
                "--VoilaConfiguration.multi_kernel_manager_class=signatures.app.server.SiteKernelManager"):
        assert arg in args
    assert not any(a.startswith("--Voila.token") for a in args), "no token unless given"
    off = site.voila_args(pool_size=0, open_browser=True, extra_args=["--theme=dark"])
    assert "--preheat_kernel=False" in off and "--pool_size=0" in off and "--no-browser" not in off
    assert off[-1] == "--theme=dark"
    assert "--preheat_kernel=False" in site.voila_args(pool_size=3, preheat=False)
    assert "--Voila.ip=::1" in site.voila_args(address="::1")
    assert not any("kernel_pools_config" in a for a in off)  # no pools without preheating
    given = site.voila_args(token="x" * 20, allow_hosts=["Class.Example.org"], class_size=30)
    assert "--Voila.token=" + "x" * 20 in given and "--SignaturesVoila.allow_hosts=class.example.org" in given
    assert "--pool_size=2" in given and any('"gallery.ipynb": {"pool_size": 30}' in a for a in given)
    assert f"--VoilaExecutor.iopub_timeout={site.IOPUB_TIMEOUT_S}" in args


def test_pools_keep_more_gallery_kernels_and_voila_parses_them():
    assert site.pool_sizes(1) == {"default": {"pool_size": 1}, "gallery.ipynb": {"pool_size": 2}}
    assert site.pool_sizes(2, 5)["gallery.ipynb"] == {"pool_size": 5}
    assert site.pool_sizes(-1, -3) == {"default": {"pool_size": 0}, "gallery.ipynb": {"pool_size": 0}}
    app = site.SignaturesVoila()
    app.parse_command_line(site.voila_args(pool_size=1, gallery_pool_size=4))
    from traitlets import Dict
    from traitlets.config import Configurable

    class VoilaKernelManager(Configurable):  # resolves the option as Voilà's class of that name does
        kernel_pools_config = Dict(config=True)

    manager = VoilaKernelManager(config=app.config)
    assert manager.kernel_pools_config["gallery.ipynb"] == {"pool_size": 4}
    assert manager.kernel_pools_config["default"] == {"pool_size": 1}
    assert app.config.VoilaConfiguration.extension_denylist == ["jupyterlab-plotly"]


def test_plotly_mime_extension_stays_when_the_site_draws_mime(monkeypatch):
    monkeypatch.setenv("SIGNATURES_PLOTS", "mime")
    assert not any("extension_denylist" in a for a in site.voila_args())


def test_site_imports_no_tensorflow_or_umap():
    code = ("import sys, signatures.app.server;"
            "print([m for m in ('tensorflow', 'keras', 'umap', 'numba') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------
# The real server
# ---------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode("utf-8")


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    code = (f"from signatures.app.server import serve; "
            f"serve(port={port}, store={str(store)!r}, pool_size=0, jobs=False)")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                _get(url + "signatures/api/experiments", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer within 120 s:\n{log.read_text()}")
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()  # SIGTERM: Voilà stops its loop and shuts its kernels down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_server_landing_page(server):
    status, kind, html = _get(server)
    assert status == 200 and kind.startswith("text/html")
    page = _Page(html)
    assert {"small", "hostile"} <= set(page.titles)
    assert "<script>alert" not in html and page.scripts == 0


def test_server_experiments_api(server):
    status, kind, body = _get(server + "signatures/api/experiments")
    assert status == 200 and kind.startswith("application/json")
    rows = json.loads(body)
    assert {"small", "hostile"} <= {r["name"] for r in rows}
    assert HOSTILE in {r["title"] for r in rows}
    small = next(r for r in rows if r["name"] == "small")
    assert small["digits"] == [1, 7] and small["anomalies"] == [3, 4] and 0 <= small["accuracy"] <= 1


def test_server_lists_experiments_saved_after_it_started(server, store, small_experiment):
    later = replace(small_experiment, config=replace(small_experiment.config, name="later"))
    save_experiment(later, store / "later", save_model=False)
    assert "later" in _Page(_get(server)[2]).titles
    assert "later" in {r["name"] for r in json.loads(_get(server + "signatures/api/experiments")[2])}


_BAD_MANIFESTS = {
    "list": [],
    "no-config": "drop config",
    "files-list": "files []",
    "accuracy-text": "accuracy text",
}


def _write_bad_manifest(folder, how):
    manifest = json.loads((folder / "manifest.json").read_text())
    if how == []:
        manifest = []
    elif how == "drop config":
        manifest.pop("config")
    elif how == "files []":
        manifest["files"] = []
    else:
        manifest["metrics"]["accuracy"] = "0.99"
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", sorted(_BAD_MANIFESTS))
def test_a_damaged_experiment_is_skipped_and_named_on_the_landing_page(store, tmp_path, name):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(store / "small", root / "good")
    shutil.copytree(store / "small", root / f"bad-{name}")
    _write_bad_manifest(root / f"bad-{name}", _BAD_MANIFESTS[name])
    summaries, damaged = site.store_contents(root)
    assert [s["name"] for s in summaries] == ["good"]
    assert [d["name"] for d in damaged] == [f"bad-{name}"]
    assert str(root) not in damaged[0]["problem"], "the page must not print the store's absolute path"
    page = _Page(site.render_landing(summaries, damaged=damaged))
    assert "good" in page.titles and f"bad-{name}" in page.text and "not a readable experiment" in page.text
    assert "/voila/render/gallery.ipynb?experiment=good" in page.links
    assert not any(f"experiment=bad-{name}" in link for link in page.links)


def test_server_survives_damaged_experiments(server, store):
    import shutil

    for name, how in _BAD_MANIFESTS.items():
        shutil.copytree(store / "small", store / f"bad-{name}")
        _write_bad_manifest(store / f"bad-{name}", how)
    try:
        status, _, html = _get(server)
        assert status == 200
        page = _Page(html)
        assert "small" in page.titles and all(f"bad-{n}" in page.text for n in _BAD_MANIFESTS)
        status, _, body = _get(server + "signatures/api/experiments")
        assert status == 200 and "small" in {r["name"] for r in json.loads(body)}
        assert not {f"bad-{n}" for n in _BAD_MANIFESTS} & {r["name"] for r in json.loads(body)}
    finally:
        for name in _BAD_MANIFESTS:
            shutil.rmtree(store / f"bad-{name}")


def test_server_serves_template_static_files_and_voila_tree(server):
    status, kind, css = _get(server + "voila/templates/signatures/static/signatures.css")
    assert status == 200 and kind.startswith("text/css") and ".sig-topbar" in css
    status, kind, _ = _get(server + "voila/tree")
    assert status == 200 and kind.startswith("text/html")


def test_server_serves_plotly_js_of_the_installed_plotly_and_nothing_beside_it(server):
    from signatures.plotview import plotly_js_path

    with urllib.request.urlopen(server + "signatures/static/plotly.min.js", timeout=60) as response:
        assert response.status == 200 and "javascript" in response.headers["Content-Type"]
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["Etag"]
        assert response.read() == plotly_js_path().read_bytes()
    for other in ("widgetbundle.js", "../__init__.py"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(server + "signatures/static/" + other)
        assert err.value.code == 404


@pytest.mark.skipif(not (site.notebooks_root() / "gallery.ipynb").is_file(), reason="notebooks/gallery.ipynb not written yet")
def test_server_renders_the_gallery(server):
    status, _, html = _get(server + "voila/render/gallery.ipynb?experiment=small", timeout=300)
    assert status == 200
    assert "sig-topbar" in html and "/voila/templates/signatures/static/signatures.css" in html
    assert "cdn.jsdelivr" not in html
    assert "There was an error when executing cell" not in html
