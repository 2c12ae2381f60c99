"""The web site in a real browser: Debian's Chromium driven by Playwright.

The site is started with ``python -m signatures serve`` on a free loopback port, with
preheated kernels as in real use, over a temporary store holding one small real
experiment. Screenshots go to ``screenshots/`` (git-ignored). Unexpected browser
console errors fail the tests; only known harmless offline ones are filtered.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"

#: Console errors that an offline Voilà page logs without harm.
HARMLESS = (
    re.compile(r"Failed to load resource.*(fonts|cdn|googleapis|unpkg|jsdelivr)", re.I),
    re.compile(r"setData", re.I),
    re.compile(r"favicon", re.I),
)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """The Dask cluster of the site's jobs (one worker), started here so that a test can fill its queue."""
    from signatures.app.jobs import start_cluster

    jobs = start_cluster(n_workers=1)
    yield jobs
    jobs.close()


def _serve_command(port, store, scheduler):
    command = [sys.executable, "-m", "signatures", "serve", "--port", str(port), "--store", str(store),
               "--pool-size", "1"]
    usage = subprocess.run([sys.executable, "-m", "signatures", "serve", "--help"], capture_output=True,
                           text=True, timeout=120).stdout
    if "--scheduler" in usage:  # else the kernels find the scheduler in $SIGNATURES_SCHEDULER
        command += ["--scheduler", scheduler]
    return command


@pytest.fixture(scope="module")
def site(small_experiment, cluster, tmp_path_factory):
    from signatures.store import save_experiment

    store = tmp_path_factory.mktemp("site-store")
    save_experiment(small_experiment, store / "small-1v7", save_model=False)
    port = free_port()
    log = open(tmp_path_factory.mktemp("site-log") / "serve.log", "w")
    proc = subprocess.Popen(
        _serve_command(port, store, cluster.address),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "SIGNATURES_SCHEDULER": cluster.address},
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the site did not start; see {log.name}") from None
                time.sleep(0.5)
        yield {"url": url, "store": store, "log": log.name}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1300, "height": 2800})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.errors = errors
    yield page
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    unexpected = [e for e in errors if not any(p.search(e) for p in HARMLESS)]
    assert unexpected == [], f"unexpected browser console errors: {unexpected}"


def plot_titles(page):
    return [t or "" for t in page.locator(".js-plotly-plot .gtitle").all_text_contents()]


def assert_plots_have_height(page):
    heights = page.locator(".js-plotly-plot").evaluate_all("plots => plots.map(p => p.offsetHeight)")
    assert len(heights) >= 6 and min(heights) > 100, heights


def test_landing_lists_apps_and_experiments(site, page):
    page.goto(site["url"])
    text = page.inner_text("body")
    for words in ("Builder", "Gallery", "small-1v7", "Which neurons fire"):
        assert words in text
    hrefs = page.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert any(h.endswith("voila/render/builder.ipynb") for h in hrefs)
    assert any("gallery.ipynb?experiment=small-1v7" in h for h in hrefs)


def test_gallery_shows_every_view_of_a_stored_experiment(site, page):
    page.goto(site["url"] + "voila/render/gallery.ipynb?experiment=small-1v7", timeout=120_000)
    page.wait_for_selector(".js-plotly-plot .sankey", timeout=120_000)
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=30_000)
    assert_plots_have_height(page)
    titles = " | ".join(plot_titles(page))
    for words in ("Confusion matrix", "Cluster paths", "UMAP of hidden_1", "Silhouette of hidden_1", "cluster c"):
        assert words in titles
    page.select_option(".widget-dropdown:has-text('Layer') select", label="hidden_2")
    page.wait_for_function("() => [...document.querySelectorAll('.gtitle')].some(t => "
                           "t.textContent.includes('UMAP of hidden_2'))", timeout=20_000)


def test_builder_runs_and_switches_layers(site, page):
    page.goto(site["url"] + "voila/render/builder.ipynb", timeout=240_000)  # waits for the warm kernel
    page.wait_for_selector("button:has-text('Run')", timeout=180_000)
    page.fill(".widget-text:has-text('Images per digit') input", "60")
    page.fill(".widget-inline-hbox:has-text('Epochs') input", "1")
    page.fill(".widget-text:has-text('Experiment name') input", "from-browser")
    page.click("button:has-text('Run')")
    page.wait_for_selector(".js-plotly-plot .sankey", timeout=180_000)
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=60_000)
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # plots below the fold draw when scrolled to
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 6", timeout=60_000)
    assert_plots_have_height(page)
    assert "UMAP of hidden_1" in " | ".join(plot_titles(page))
    page.select_option(".widget-dropdown:has-text('Layer') select", label="hidden_2")
    page.wait_for_function("() => [...document.querySelectorAll('.gtitle')].some(t => "
                           "t.textContent.includes('UMAP of hidden_2'))", timeout=20_000)
    assert (site["store"] / "from-browser" / "manifest.json").is_file()


def test_builder_single_digit_shows_the_error(site, page):
    page.goto(site["url"] + "voila/render/builder.ipynb", timeout=240_000)  # waits for the warm kernel
    page.wait_for_selector("button:has-text('Run')", timeout=180_000)
    row = page.locator(".sig-toggles", has_text="Train on digits")
    row.locator("button[data-value='7']").click()
    assert row.locator("button[aria-pressed=true]").all_text_contents() == ["\u2713 1"]
    page.click("button:has-text('Run')")
    page.wait_for_selector(".sig-error", timeout=30_000)
    assert "train on at least 2 digits" in page.inner_text("body")
    assert page.locator("button:has-text('Run')").is_enabled()
    assert sorted(p.name for p in site["store"].iterdir() if not p.name.startswith(".")) in (
        ["small-1v7"], ["from-browser", "small-1v7"])


def test_layers_and_neurons_page(site, page):
    page.goto(site["url"] + "voila/render/layers.ipynb?experiment=small-1v7", timeout=120_000)
    page.wait_for_selector(".sig-findings li", timeout=120_000)
    assert "separate from layer" in page.inner_text(".sig-findings")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 6", timeout=60_000)
    assert_plots_have_height(page)
    titles = " | ".join(plot_titles(page))
    for words in ("separates the classes", "Linear CKA", "mean activation per neuron", "AUROC"):
        assert words in titles


PLOT_STATES = "() => [...document.querySelectorAll('.sig-plot')].map(d => [d.dataset.state || '', " \
              "Number(d.dataset.draws || 0), d.getBoundingClientRect().top < innerHeight])"


def test_gallery_draws_each_plot_once_and_below_the_fold_only_when_scrolled_to(site, browser):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(site["url"] + "voila/render/gallery.ipynb?experiment=small-1v7", timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll('.sig-plot[data-state=drawn]').length >= 1",
                               timeout=120_000)
        page.wait_for_timeout(500)
        states = [tuple(s) for s in page.evaluate(PLOT_STATES)]
        assert len(states) == 7  # confusion, training, Sankey, UMAP, silhouette, images, why this path
        assert all(s == ("drawn", 1, True) for s in states if s[2])  # on screen: drawn, once
        assert [s for s in states if not s[2]] and all(s[:2] == ("", 0) for s in states if not s[2])
        # The image grid (the sixth plot), right below the UMAP map; "why this path" follows it.
        page.evaluate("() => document.querySelectorAll('.sig-plot')[5].scrollIntoView()")
        page.wait_for_function("() => document.querySelectorAll('.sig-plot')[5].dataset.state === 'drawn'",
                               timeout=30_000)
        page.evaluate("() => document.querySelectorAll('.sig-plot')[3].scrollIntoView()")  # the UMAP map
        umap = page.locator(".sig-plot", has=page.locator(".gtitle", has_text="UMAP of"))
        umap.scroll_into_view_if_needed()
        page.wait_for_function("() => [...document.querySelectorAll('.sig-plot')].filter("
                               "d => (d.querySelector('.gtitle') || {}).textContent?.startsWith('UMAP of')).length === 1",
                               timeout=30_000)
        assert umap.get_attribute("data-draws") == "1"
        page.select_option(".widget-dropdown:has-text('Colour by') select", label="cluster")
        page.wait_for_function("() => [...document.querySelectorAll('.sig-plot')].some(d => "
                               "d.dataset.draws === '2' && d.querySelector('.gtitle').textContent.startsWith('UMAP of'))",
                               timeout=20_000)
        page.wait_for_timeout(500)
        draws = [d[1] for d in page.evaluate(PLOT_STATES) if d[1]]  # a plot scrolled past is never drawn
        assert sorted(draws) == [1] * (len(draws) - 1) + [2]  # the change redrew the UMAP once, nothing else
    finally:
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "gallery_first_screen.png"))
        context.close()
    assert [e for e in errors if not any(p.search(e) for p in HARMLESS)] == []


def test_builder_queued_run_shows_its_place_then_progress_then_scrolls_to_the_results(site, cluster, browser,
                                                                                      tmp_path):
    from signatures.experiment import ExperimentConfig

    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    # Every real MNIST 1 and 7 of the test set for 150 epochs: the one worker is busy for minutes.
    blocker = cluster.submit(ExperimentConfig(name="blocker", dataset="mnist", digits=(1, 7), hidden=(8,), epochs=150,
                                              data_dir=os.environ.get("SIGNATURES_DATA_DIR")), tmp_path)
    try:
        page.goto(site["url"] + "voila/render/builder.ipynb", timeout=240_000)
        page.wait_for_selector("button:has-text('Run')", timeout=180_000)
        digits = page.locator(".sig-toggles", has_text="Train on digits")
        assert digits.locator("button[aria-pressed=true]").all_text_contents() == ["\u2713 1", "\u2713 7"]
        assert digits.locator("button[aria-pressed=false]").count() == 8
        pressed, unpressed = (digits.locator(f"button[data-value='{v}']").evaluate(
            "b => getComputedStyle(b).backgroundColor") for v in (1, 2))
        assert pressed != unpressed  # chosen ones read in colour too
        page.select_option(".widget-dropdown:has-text('Dataset') select", label="scikit-learn 8x8 digits")
        page.fill(".widget-text:has-text('Dense hidden sizes') input", "8")
        page.fill(".widget-inline-hbox:has-text('Epochs') input", "2")
        page.fill(".widget-text:has-text('K to') input", "4")
        page.fill(".widget-text:has-text('Experiment name') input", "queued-in-browser")
        page.click("button:has-text('Run')")
        page.wait_for_selector(".sig-status:has-text('next in the queue')", timeout=60_000)
        assert page.locator("button:has-text('Cancel')").is_visible()
        assert page.locator("button:has-text('Run')").is_disabled()
        blocker.cancel()
        page.wait_for_selector(".sig-status:has-text('training')", timeout=180_000)
        page.wait_for_selector(".sig-status:has-text(\"saved as 'queued-in-browser'\")", timeout=240_000)
        page.wait_for_selector(".sig-findings li", timeout=60_000)
        page.wait_for_timeout(1500)  # the smooth scroll ends
        top = page.locator(".sig-scroll-anchor").evaluate("a => a.getBoundingClientRect().top")
        assert 0 <= top < 300, top  # the results were scrolled into view
        for _ in range(12):  # plots draw when scrolled to: walk down the page
            page.mouse.wheel(0, 600)
            page.wait_for_timeout(300)
        page.wait_for_selector(".js-plotly-plot .sankey", timeout=60_000)
        assert page.locator("button:has-text('Run')").is_enabled()
        assert (site["store"] / "queued-in-browser" / "manifest.json").is_file()
    finally:
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "builder_queued_run.png"))
        context.close()
    assert [e for e in errors if not any(p.search(e) for p in HARMLESS)] == []
