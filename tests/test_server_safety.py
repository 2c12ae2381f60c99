"""A server safe to open to a room: loopback rule, Host check, token, kernel caps, static reports.

The rules are pure functions, tested as tables; the real server runs in a subprocess on a
free port, with bounded requests, and is always stopped.
"""

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signatures.app import server as site
from signatures.store import save_experiment

# ---------------------------------------------------------------------------------------
# The rules, as pure functions
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("127.255.255.254", True), ("::1", True), ("[::1]", True),
    ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True), ("localhost.", True),
    ("", False), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("10.0.0.5", False),
    ("fe80::1", False), ("classroom.example.org", False), ("localhost.example.org", False),
])
def test_which_addresses_are_loopback(address, loopback):
    assert site.is_loopback(address) is loopback


def test_loopback_rule_refuses_a_non_string():
    with pytest.raises(ValueError, match=r"address must be a string .*got 8866"):
        site.is_loopback(8866)


def test_host_header_rule():
    names = site.served_names("0.0.0.0", ["class.example.org"])
    for host in ("127.0.0.1:8866", "192.168.1.10:8866", "[::1]:8866", "[fe80::1]", "localhost:8866",
                 "LOCALHOST", "class.example.org:8866", "Class.Example.Org.", socket.gethostname().lower()):
        assert site.host_allowed(host, names), host
    for host in ("attacker.example", "attacker.example:8866", "class.example.org.attacker.example",
                 "localhost.attacker.example", "", ":8866", "[::1"):
        assert not site.host_allowed(host, names), host


def test_served_names():
    loopback = site.served_names("127.0.0.1")
    assert "localhost" in loopback and "class.example.org" not in loopback
    hostname = socket.gethostname().lower()
    assert hostname in site.served_names("0.0.0.0")
    assert "myserver.example.org" in site.served_names("myserver.example.org")
    for bad in ("a b", "http://x.org", "x.org/path", "", "-x.org", 42):
        with pytest.raises(ValueError, match="--allow-host must be a host name"):
            site.served_names("0.0.0.0", [bad])


def test_token_rule():
    assert site.check_token("a" * 16) == "a" * 16
    assert site.check_token("Ab-_.~9" * 3)
    for bad in ("short", "x" * 15, "a b" * 8, "tok/en" * 4, "x" * 257, "é" * 20, None, 1234567890123456789):
        with pytest.raises(ValueError, match="--token must be 16 to 256 characters"):
            site.check_token(bad)


def test_a_bad_token_is_not_echoed_whole():
    with pytest.raises(ValueError) as err:
        site.check_token("secret spaces in here!")
    assert "secret spaces in here!" not in str(err.value) and "22 characters" in str(err.value)


def test_class_limits():
    assert site.class_limits(30) == {"page_cap": 36, "total_cap": 72, "gallery_pool": 30, "pool": 2}
    assert site.class_limits(1) == {"page_cap": 3, "total_cap": 6, "gallery_pool": 1, "pool": 1}
    for size in (2, 10, 30, 60):
        limits = site.class_limits(size)
        assert limits["page_cap"] >= size and limits["total_cap"] >= 2 * size
    for bad in (0, -3, 501, True, "30", 2.5, None):
        with pytest.raises(ValueError, match=r"--class-size must be a whole number from 1 to 500"):
            site.class_limits(bad)


class _Task:
    def __init__(self, done):
        self._done = done

    def done(self):
        return self._done


class _Pools:
    """What PoolKeeper sees of Voilà's kernel manager: its pools' config, pools, refill and the visitors' kernels."""

    def __init__(self, gallery_pool, held=0):
        self.kernel_pools_config = {"default": {"pool_size": 2}, "gallery.ipynb": {"pool_size": gallery_pool}}
        self._pools = {"gallery.ipynb": [], "layers.ipynb": []}
        self.held = held
        self.delays = []

    def fill_if_needed(self, delay=None, notebook_name=None, **kwargs):  # Voilà's: up to the configured size
        config = self.kernel_pools_config
        size = config.get(notebook_name, config["default"])["pool_size"]
        pool = self._pools.setdefault(notebook_name, [])
        for _ in range(size - len(pool)):
            pool.append(_Task(done=False))
            self.delays.append(delay)

    def in_use(self):
        return self.held, {"gallery.ipynb": self.held}


def test_a_pool_refill_stays_within_the_page_cap_and_tops_up_in_batches():
    limits = site.class_limits(30)
    km = _Pools(limits["gallery_pool"], held=30)  # a class of 30 holds its 30 Gallery kernels
    keeper = site.PoolKeeper(km, limits, batch=4)
    assert km.fill_if_needed == keeper.fill
    km.fill_if_needed(delay=None, notebook_name="gallery.ipynb")  # Voilà's refill after a handout
    assert len(km._pools["gallery.ipynb"]) == 6  # the cap's margin (36 - 30), not 30 more
    assert km.delays == [site.REFILL_DELAY_S] * 6  # started once the class's first requests are answered
    assert km.kernel_pools_config["gallery.ipynb"]["pool_size"] == 30  # the configured size is kept
    km.held = 36
    km._pools["gallery.ipynb"].clear()
    keeper.top_up()
    assert km._pools["gallery.ipynb"] == []  # a full page starts nothing; the Layers page is not full
    assert len(km._pools["layers.ipynb"]) == 2 and keeper.starting() == 2
    km.held = 0  # the class has left: top-ups of at most 4 kernels, none while 4 are starting
    keeper.top_up()
    assert len(km._pools["gallery.ipynb"]) == 2 and keeper.starting() == 4
    for task in km._pools["layers.ipynb"]:
        task._done = True
    keeper.top_up()
    keeper.top_up()
    assert len(km._pools["gallery.ipynb"]) == 4
    for task in km._pools["gallery.ipynb"]:
        task._done = True
    keeper.top_up()
    assert len(km._pools["gallery.ipynb"]) == 8 and km.delays[-1] == 0
    for _ in range(20):  # kernels finish starting: the pools fill, 4 at a time, to their sizes
        for task in km._pools["gallery.ipynb"] + km._pools["layers.ipynb"]:
            task._done = True
        keeper.top_up()
        assert keeper.starting() <= 4
    assert len(km._pools["gallery.ipynb"]) == 30 and len(km._pools["layers.ipynb"]) == 2


def test_store_label_is_never_absolute(tmp_path):
    assert site.store_label(tmp_path / "runs", cwd=tmp_path) == "runs"
    assert site.store_label(tmp_path / "a" / "runs", cwd=tmp_path) == os.path.join("a", "runs")
    assert site.store_label(tmp_path / "runs", cwd=tmp_path / "elsewhere") == "runs"
    assert not site.store_label(tmp_path, cwd=tmp_path).startswith("/")


def test_full_page():
    html = site.render_full(base_url="/b/", page="gallery.ipynb")
    assert "The server is full, retry in a minute" in html
    assert f'http-equiv="refresh" content="{site.RETRY_AFTER_S}"' in html
    assert "<code>gallery.ipynb</code>" in html and 'href="/b/"' in html


# ---------------------------------------------------------------------------------------
# The real server
# ---------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port, path, *, method="GET", host=None, headers=None, body=None, timeout=60):
    """One request to 127.0.0.1:port, no redirects followed: (status, headers, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = dict(headers or {})
        if host is not None:
            all_headers["Host"] = host
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@contextlib.contextmanager
def _server(tmp_path, store, *, address="127.0.0.1", wait_token=None, **kwargs):
    """``serve(...)`` in a subprocess; yields (port, log path, process); always stopped."""
    port = _free_port()
    log = tmp_path / f"server-{port}.log"
    options = ", ".join(f"{k}={v!r}" for k, v in {"port": port, "address": address, "store": str(store),
                                                   "pool_size": 0, "jobs": False, **kwargs}.items())
    code = f"from signatures.app.server import serve; serve({options})"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                _request(port, "/voila/templates/signatures/static/signatures.css", timeout=5)
                break
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer within 180 s:\n{log.read_text()}")
                time.sleep(0.25)
        yield port, log, proc
    finally:
        proc.terminate()  # SIGTERM: Voilà stops its loop; serve() closes its kernels and cluster
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def store(small_experiment, tmp_path_factory):
    from signatures.report import write_report

    root = tmp_path_factory.mktemp("safety-store")
    save_experiment(small_experiment, root / "small", save_model=False)
    write_report(small_experiment, root / "small" / "report.html")
    return root


def test_off_loopback_a_token_is_generated_and_required(store, tmp_path):
    with _server(tmp_path, store, address="0.0.0.0", extra_args=["--SignaturesVoila.page_cap=0"]) as (port, log, _):
        found = re.search(r"open http://\S+:(\d+)/\?token=([A-Za-z0-9_-]+)", log.read_text())
        assert found and int(found.group(1)) == port, log.read_text()
        token = found.group(2)
        assert len(token) >= 24
        auth = {"Authorization": f"token {token}"}

        status, headers, body = _request(port, "/")
        assert status in (302, 403) and "Stored experiments" not in body
        if status == 302:
            assert "/login" in headers["Location"]
        for path in ("/signatures/api/experiments", "/signatures/report/small/report.html",
                     "/signatures/api/canonical"):
            status, _, body = _request(port, path)
            assert status in (302, 403), path
            assert "<h1" not in body and "small" not in body, path
        status, _, body = _request(port, f"/signatures/api/experiments?token={token}x")
        assert status == 403, "a wrong token is refused"

        status, headers, body = _request(port, f"/?token={token}")
        assert status == 200 and "Stored experiments" in body and "small" in body
        assert str(store) not in body, "the landing page never prints the store's absolute path"
        status, _, body = _request(port, "/signatures/api/experiments", headers=auth)
        assert status == 200 and [r["name"] for r in json.loads(body)] == ["small"]
        status, _, body = _request(port, "/signatures/report/small/report.html", headers=auth)
        assert status == 200 and body == (store / "small" / "report.html").read_text()

        # Without a cluster (jobs=False) the build API says so, in words, and starts nothing.
        status, _, body = _request(port, "/signatures/api/canonical", method="POST", headers=auth, body="{}")
        assert status == 503 and "no Dask cluster for jobs" in json.loads(body)["message"]

        # The token does not open the server to a foreign Host name.
        status, _, body = _request(port, f"/?token={token}", host="attacker.example")
        assert status == 403 and "--allow-host" in body

        # page_cap=0: every page is "full", at once and without a kernel.
        start = time.monotonic()
        status, headers, body = _request(port, "/voila/render/gallery.ipynb?experiment=small", headers=auth)
        assert status == 503 and time.monotonic() - start < 10
        assert headers["Retry-After"] == str(site.RETRY_AFTER_S)
        assert "The server is full, retry in a minute" in body


@pytest.fixture(scope="module")
def loopback(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loopback")
    with _server(tmp, store, allow_hosts=("class.example.org",),
                 extra_args=["--SignaturesVoila.page_cap=1"]) as (port, log, _):
        yield port, log


def test_no_token_on_loopback(loopback):
    port, log = loopback
    assert "token" not in log.read_text().split("Voilà is running at")[0].lower()
    status, _, body = _request(port, "/")
    assert status == 200 and "Stored experiments" in body
    assert _request(port, "/signatures/api/experiments")[0] == 200


@pytest.mark.parametrize("path", ["/", "/signatures/api/experiments", "/signatures/api/canonical",
                                  "/signatures/report/small/report.html", "/signatures/static/plotly.min.js",
                                  "/voila/templates/signatures/static/signatures.css", "/voila/tree",
                                  "/voila/render/gallery.ipynb", "/voila/query/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                                  "/api/kernels/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12 + "/channels"])
def test_a_foreign_host_name_is_refused_everywhere(loopback, path):
    port, _ = loopback
    status, _, body = _request(port, path, host="attacker.example:80")
    assert status == 403 and "attacker.example" in body and "<html" not in body.lower()


def test_the_served_and_allowed_host_names_are_answered(loopback):
    port, _ = loopback
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "class.example.org",
                 f"Class.Example.Org:{port}"):
        status, _, body = _request(port, "/signatures/api/experiments", host=host)
        assert status == 200, host


def test_only_the_report_of_a_listed_experiment_is_served(loopback, store):
    port, _ = loopback
    status, headers, body = _request(port, "/signatures/report/small/report.html")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=UTF-8"
    assert body == (store / "small" / "report.html").read_text()
    assert headers["X-Content-Type-Options"] == "nosniff" and "sandbox" in headers["Content-Security-Policy"]
    # a folder with a report.html but no experiment in it is not listed, so not served
    (store / "stray").mkdir(exist_ok=True)
    (store / "stray" / "report.html").write_text("<p>not an experiment</p>")
    for path in ("/signatures/report/stray/report.html", "/signatures/report/small/manifest.json",
                 "/signatures/report/small/config.json", "/signatures/report/missing/report.html",
                 "/signatures/report/..%2Fsmall/report.html", "/signatures/report/%2E%2E/small/report.html",
                 "/signatures/report/small/../small/manifest.json", "/signatures/report/small"):
        status, _, body = _request(port, path)
        assert status == 404, path
        assert "not an experiment" not in body and '"config"' not in body, path


def test_landing_cards_link_reports_and_hide_the_store_path(loopback, store):
    port, _ = loopback
    status, _, html = _request(port, "/")
    assert 'href="/signatures/report/small/report.html"' in html
    assert 'href="/voila/render/gallery.ipynb?experiment=small">Browse the gallery' in html
    assert str(store) not in html and str(store.parent) not in html


def _kernel_id(html):
    found = re.search(r'"kernelId": "([0-9a-f-]{36})"', html)
    assert found, "the page names its kernel"
    return found.group(1)


def test_a_kernel_websocket_of_another_protocol_is_closed_at_once(loopback):
    """Voilà would hang on the legacy JSON protocol; the server speaks only v1."""
    import asyncio

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    port, _ = loopback
    status, headers, html = _request(port, "/voila/render/gallery.ipynb?experiment=small", timeout=300)
    assert status == 200
    kernel = _kernel_id(html)
    cookies = " ".join(headers.get_all("Set-Cookie") or [])
    xsrf = re.search(r"_xsrf=([^;]+)", cookies).group(1)
    url = f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels"

    async def attempt(subprotocols):
        conn = await websocket_connect(HTTPRequest(url, headers={"Cookie": f"_xsrf={xsrf}"}),
                                       subprotocols=subprotocols)
        first = await asyncio.wait_for(conn.read_message(), timeout=20)
        code, reason = conn.close_code, conn.close_reason
        conn.close()
        return first, code, reason

    first, code, reason = asyncio.run(attempt(None))
    assert first is None and code == 1002 and site.KERNEL_PROTOCOL in reason
    assert _request(port, "/")[0] == 200, "the server still answers"
    status, _, _ = _request(port, f"/voila/api/shutdown/{kernel}", method="POST",
                            headers={"Cookie": f"_xsrf={xsrf}",
                                     "Content-Type": "application/x-www-form-urlencoded"},
                            body=f"_xsrf={xsrf}")
    assert status == 204


def test_the_kernel_cap_turns_the_next_visitor_away_and_a_closed_tab_frees_its_place(loopback):
    port, _ = loopback  # page_cap=1
    status, headers, html = _request(port, "/voila/render/gallery.ipynb?experiment=small", timeout=300)
    assert status == 200 and "There was an error" not in html
    kernel = _kernel_id(html)
    cookies = " ".join(headers.get_all("Set-Cookie") or [])
    xsrf = re.search(r"_xsrf=([^;]+)", cookies).group(1)

    start = time.monotonic()
    status, headers, body = _request(port, "/voila/render/gallery.ipynb?experiment=small")
    assert status == 503 and "The server is full" in body and time.monotonic() - start < 10

    # The tab closes: Voilà's beacon posts the _xsrf cookie's value back, as a form field.
    status, _, _ = _request(port, f"/voila/api/shutdown/{kernel}", method="POST",
                            headers={"Cookie": f"_xsrf={xsrf}",
                                     "Content-Type": "application/x-www-form-urlencoded"},
                            body=f"_xsrf={xsrf}")
    assert status == 204
    status, _, html = _request(port, "/voila/render/gallery.ipynb?experiment=small", timeout=300)
    assert status == 200, "the closed tab's place is free again"
    second = _kernel_id(html)

    # A tab that never says goodbye: its kernel, connected to no page, is culled within a minute.
    deadline = time.monotonic() + site.CULL_IDLE_S + 2 * site.CULL_INTERVAL_S + 15
    while time.monotonic() < deadline:
        status = _request(port, "/voila/render/gallery.ipynb?experiment=small", timeout=300)[0]
        if status == 200:
            break
        time.sleep(5)
    assert status == 200, f"kernel {second} of an unconnected page was not released within a minute"


# ---------------------------------------------------------------------------------------
# A fresh start without a terminal: the build button's jobs on the server's own cluster
# ---------------------------------------------------------------------------------------


def test_an_empty_store_builds_its_experiments_as_jobs_and_the_cluster_stops_with_the_server(tmp_path):
    import psutil

    from signatures.experiment import ExperimentConfig

    configs = [ExperimentConfig(name=name, dataset="digits", digits=(1, 7), hidden=(8,), epochs=2, k_max=4,
                                umap_points=200).to_dict() for name in ("tiny-a", "tiny-b")]
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    store = tmp_path / "runs"
    api = "/signatures/api/canonical"
    with _server(tmp_path, store, jobs=True, workers=1,
                 extra_args=[f"--SignaturesVoila.canonical_file={tmp_path / 'configs.json'}"]) as (port, log, proc):
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the server started its Dask workers"
        status, headers, html = _request(port, "/")
        assert status == 200 and 'id="sig-build"' in html and f'action="{api}"' in html
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)
        cookies = " ".join(headers.get_all("Set-Cookie") or [])
        cookie = re.search(r"(_xsrf=[^;]+)", cookies).group(1)
        guarded = {"Cookie": cookie, "X-XSRFToken": xsrf, "Content-Type": "application/json"}

        status, _, body = _request(port, api, method="POST", body="{}")
        assert status == 403, "a POST without the page's XSRF token (another site's form) is refused"
        assert _request(port, api)[2] == json.dumps({"jobs": [], "done": True, "cluster": True})
        for bad, words in [('{"only": ["nope"]}', "only must be a list of names from ['tiny-a', 'tiny-b']"),
                           ('{"only": "tiny-a"}', "only must be a list of names"),
                           ('{"names": []}', "the request body may hold only 'only'"),
                           ("not json", "the request body must be JSON")]:
            status, _, body = _request(port, api, method="POST", headers=guarded, body=bad)
            assert status == 400 and words in json.loads(body)["message"], bad

        status, _, body = _request(port, api, method="POST", headers=guarded, body="{}")
        assert status == 200
        first = json.loads(body)
        assert [j["name"] for j in first["jobs"]] == ["tiny-a", "tiny-b"] and not first["done"]
        second = first["jobs"][1]
        assert second["state"] == "waiting" and second["position"] in (1, 2), "one worker: the second waits"
        again = json.loads(_request(port, api, method="POST", headers=guarded, body="{}")[2])
        assert [j["name"] for j in again["jobs"]] == ["tiny-a", "tiny-b"], "a second click starts nothing twice"

        seen = set()
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            state = json.loads(_request(port, api)[2])
            seen.update((j["name"], j["state"]) for j in state["jobs"])
            if state["done"]:
                break
            time.sleep(1)
        assert state["done"], state
        assert [(j["name"], j["state"], j["message"]) for j in state["jobs"]] == [
            ("tiny-a", "finished", "stored tiny-a"), ("tiny-b", "finished", "stored tiny-b")]
        assert ("tiny-b", "running") in seen or ("tiny-a", "running") in seen

        status, _, html = _request(port, "/")
        assert 'id="sig-build"' not in html and "tiny-a" in html and "tiny-b" in html
        assert 'href="/voila/render/gallery.ipynb?experiment=tiny-a">Browse the gallery' in html
        status, _, report = _request(port, "/signatures/report/tiny-b/report.html")
        assert status == 200 and report == (store / "tiny-b" / "report.html").read_text()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"the cluster's processes outlived the server: {alive}"
