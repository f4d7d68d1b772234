"""Both notebooks in JupyterLab in a real browser, clicked through as a person would.

JupyterLab is served on 127.0.0.1 from a temporary folder holding copies of the notebooks; the
system's Chromium (Debian's ``chromium`` package; no browser is downloaded) is driven by
Playwright. The tests run every cell from the Run menu and then look at the page: the map's
layer and its colorbar, the date slider, the statistic list, a drawn rectangle, a clicked pixel's
plot, and a second run of all cells. Screenshots are saved in the test's temporary folder and
their paths are attached to failures. The network is closed: map tiles of the base map fail to
load, and that is the only console error allowed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.allow_hosts(["127.0.0.1", "::1"])

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("OPTSAR_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install chromium chromium-driver (Debian/Ubuntu), or set OPTSAR_CHROMIUM to a Chromium executable"
# Chromium as a test browser on a closed network: no sandbox (root in CI), no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TOKEN = "optsar-browser-test"
# the map's image layer has been replaced (its data URL differs from ``src``)
NEW_IMAGE = "src => { const img = document.querySelector('img.leaflet-image-layer'); return img && img.src !== src }"
RUN_TIMEOUT_MS = 240_000
# console messages a closed network causes: base-map tiles and fonts that cannot be fetched
ALLOWED_CONSOLE = re.compile(r"Failed to load resource|net::ERR_|tile\.openstreetmap|ERR_NAME_NOT_RESOLVED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: {INSTALL}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a folder with copies of the notebooks; yields (url, folder)."""
    folder = tmp_path_factory.mktemp("lab")
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, folder / notebook.name)
    port = _free_port()
    home = folder.parent / "home"
    home.mkdir(exist_ok=True)
    settings = home / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    # no "get notified about Jupyter news?" pop-up over the page; every cell in the page (no windowing)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}')
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    env.pop("MPLBACKEND", None)
    log = open(folder.parent / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab did not start: see {log.name}", pytrace=False)
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", folder
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # said by the browser fixture
    PlaywrightTimeout = TimeoutError


class Session:
    """One notebook open in JupyterLab in a browser page, with its screenshots and console errors."""

    def __init__(self, browser, url: str, notebook: str, shots: Path):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.shots = shots
        self.taken: list[Path] = []
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        # a workspace of its own, reset: only this notebook open, whatever an earlier test opened
        workspace = Path(notebook).stem
        self.page.goto(f"{url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={TOKEN}", timeout=120_000)
        self.page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
        # JupyterLab asks for a kernel when the notebook opens before the kernel list has loaded
        kernel_dialog = self.page.locator(".jp-Dialog:has-text('Select Kernel')")
        try:
            kernel_dialog.wait_for(timeout=5_000)
            kernel_dialog.get_by_role("button", name="Select", exact=True).click()
        except PlaywrightTimeout:
            pass
        self.wait_idle()

    def shot(self, name: str) -> Path:
        path = self.shots / f"{len(self.taken):02d}_{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        self.taken.append(path)
        return path

    def said(self) -> str:
        return "screenshots: " + ", ".join(map(str, self.taken)) + (
            f"; console errors: {self.errors}" if self.errors else "")

    def wait_idle(self, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
        self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']:visible").first.wait_for(
            timeout=timeout_ms)

    def run_all(self) -> None:
        """Run > Run All Cells, and wait until every code cell has run again (its prompt shows an
        execution count above any before) and the kernel is idle."""
        counts = r"""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                          .map(p => Number((p.textContent.match(/\[(\d+)\]/) || [0, -1])[1]))"""
        before = max(self.page.evaluate(counts) or [0])
        started = r"""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                           .some(p => p.textContent.includes('*'))"""
        for attempt in range(3):  # a kernel still connecting after the page loaded ignores the first request
            self.page.get_by_role("menuitem", name="Run", exact=True).click()
            self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            try:
                self.page.wait_for_function(f"before => ({started})() || ({counts})().every(n => n > before)",
                                            arg=before, timeout=20_000)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
        self.page.wait_for_function(f"() => !({started})()", timeout=RUN_TIMEOUT_MS)
        self.wait_idle()
        if not all(n > before for n in self.page.evaluate(counts)):  # a cell failed and stopped the run
            self.shot("run_all_stopped")
            pytest.fail(f"Run All Cells stopped before the end: {self.outputs_text()[-3000:]} ({self.said()})",
                        pytrace=False)

    def outputs_text(self) -> str:
        return self.page.locator(".jp-OutputArea-output").all_inner_texts().__str__()

    def app(self):
        """The map app's widget box (the output holding the Leaflet map)."""
        return self.page.locator(".jp-OutputArea-output:has(.leaflet-container)").first

    def overlay_src(self) -> str:
        return self.app().locator("img.leaflet-image-layer").first.get_attribute("src")

    def close(self) -> None:
        self.context.close()

    def console_errors(self) -> list[str]:
        return [e for e in self.errors if not ALLOWED_CONSOLE.search(e)]


def _check(condition: bool, what: str, session: Session) -> None:
    if not condition:
        pytest.fail(f"{what} ({session.said()})", pytrace=False)


def _colorbar_says(text: str, what: str, session: Session) -> None:
    """Wait for the map's colorbar to name ``text``: the kernel sends the new layer's image and
    its colorbar as separate widget updates, so the image may be on the page a moment before."""
    try:
        session.page.wait_for_function(
            "t => (document.querySelector('.optsar-colorbar')?.innerText || '').includes(t)", arg=text,
            timeout=30_000)
    except PlaywrightTimeout:
        _check(False, what, session)


def _no_traceback(session: Session) -> None:
    text = session.outputs_text()
    _check("Traceback" not in text and "Error:" not in text, f"a cell failed: {text[-2000:]}", session)


def test_gap_notebook_in_jupyterlab(browser, lab, tmp_path):
    url, _ = lab
    s = Session(browser, url, "01_gap_characterization.ipynb", tmp_path)
    try:
        s.run_all()
        s.app().scroll_into_view_if_needed()
        s.page.locator("img.leaflet-image-layer").first.wait_for(timeout=60_000)
        s.shot("gaps_after_run_all")
        _no_traceback(s)
        app = s.app()
        # the scene's statistic layer with its colorbar
        _check(app.locator(".optsar-colorbar").count() == 1, "one colorbar on the map", s)
        _check("gap_mean (days)" in app.locator(".optsar-colorbar").inner_text(), "the gap_mean colorbar", s)
        _check(app.locator("img.leaflet-image-layer").count() == 1, "one data layer at a time", s)
        # the basemap: its tiles where the kernel reaches the tile server, else a neutral
        # background and a note saying so (the network here is closed)
        offline = app.locator(".optsar-basemap-note").count() == 1
        _check(offline != (app.locator("img.leaflet-tile").count() > 0), "basemap tiles or the offline note", s)
        if offline:
            _check("basemap offline" in app.locator(".optsar-basemap-note").inner_text(), "the note says so", s)
            background = app.locator(".leaflet-container").first.evaluate("e => getComputedStyle(e).backgroundColor")
            _check(background == "rgb(244, 243, 239)", f"a neutral background, not Leaflet's grey ({background})", s)

        # another statistic: layer and legend swap
        before = s.overlay_src()
        app.locator("select").filter(has_text="gap_max").select_option("gap_max")
        s.page.wait_for_function(NEW_IMAGE, arg=before)
        _colorbar_says("gap_max (days)", "the gap_max colorbar", s)
        s.shot("gaps_statistic_gap_max")

        # the clear-day mask, then the next date: a new mask image and its legend
        app.get_by_role("button", name="clear-day mask", exact=True).click()
        s.page.wait_for_function("() => document.querySelector('.optsar-legend') !== null")
        before = s.overlay_src()
        slider = app.locator(".widget-hslider:has-text('Date') .noUi-handle").first
        slider.focus()
        for _ in range(5):
            s.page.keyboard.press("ArrowRight")
        s.page.wait_for_function(NEW_IMAGE, arg=before)
        date = app.locator(".widget-hslider:has-text('Date') .widget-readout").first.inner_text().strip()
        try:  # the kernel answers one key press after the other: wait for the last one's layer
            s.page.get_by_text(f"On the map: clear-day mask {date}").wait_for(timeout=30_000)
        except PlaywrightTimeout:
            _check(False, f"the mask of the date picked ({date})", s)
        s.wait_idle()
        _check(app.locator(".optsar-legend").inner_text().startswith(f"{date}:"), "the legend of the date", s)
        _check("% clear" in app.locator(".optsar-legend").inner_text(), "the mask legend with the date's share", s)
        _check(app.locator(".optsar-colorbar").count() == 0, "the statistic's colorbar is gone", s)
        s.shot("gaps_mask_date_moved")

        # draw a rectangle: the AOI is set
        box = app.locator(".leaflet-container").bounding_box()
        app.locator(".leaflet-draw-draw-rectangle").click()
        x0, y0 = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4
        s.page.mouse.move(x0, y0)
        s.page.mouse.down()
        s.page.mouse.move(x0 + 60, y0 + 40, steps=5)
        s.page.mouse.up()
        s.page.get_by_text("set from drawn shape").wait_for(timeout=30_000)
        s.shot("gaps_rectangle_drawn")

        # click a pixel inside the scene: its series as a picture
        s.page.mouse.click(x0 + 20, y0 + 15)
        plot = app.locator(".widget-output img").first
        plot.wait_for(timeout=60_000)
        _check(plot.evaluate("img => img.naturalWidth") > 300, "the pixel's plot is an image", s)
        _check("Figure size" not in app.inner_text(), "no figure shown as text", s)
        plot.scroll_into_view_if_needed()
        s.shot("gaps_pixel_clicked")

        # run everything again: the notebook replaces its own outputs
        s.run_all()
        s.page.locator("img.leaflet-image-layer").first.wait_for(timeout=60_000)
        _no_traceback(s)
        s.app().scroll_into_view_if_needed()
        s.shot("gaps_second_run")
        _check(not s.console_errors(), f"console errors {s.console_errors()}", s)
    finally:
        s.shot("end")
        s.close()


def test_infill_notebook_in_jupyterlab(browser, lab, tmp_path):
    url, _ = lab
    s = Session(browser, url, "02_gap_infilling.ipynb", tmp_path)
    try:
        s.run_all()
        s.app().scroll_into_view_if_needed()
        s.page.locator("img.leaflet-image-layer").first.wait_for(timeout=60_000)
        s.shot("infill_after_run_all")
        _no_traceback(s)
        app = s.app()
        _check("NDVI gap-free (NDVI)" in app.locator(".optsar-colorbar").inner_text(), "the NDVI colorbar", s)
        _check(app.locator(".optsar-legend").count() == 0, "no mask legend in the infill notebook", s)
        for name in ("observed", "predicted", "gap-free"):  # whole labels, not cut off
            button = app.get_by_role("button", name=name, exact=True)
            _check(button.evaluate("b => b.scrollWidth <= b.clientWidth"), f"the {name} button shows its label", s)
        before = s.overlay_src()
        app.get_by_role("button", name="observed", exact=True).click()
        s.page.wait_for_function(NEW_IMAGE, arg=before)
        _colorbar_says("NDVI observed", "the observed NDVI colorbar", s)
        box = app.locator(".leaflet-container").bounding_box()
        s.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        plot = app.locator(".widget-output img").first
        plot.wait_for(timeout=60_000)
        plot.scroll_into_view_if_needed()
        s.shot("infill_pixel_clicked")

        s.run_all()  # again: the notebook replaces its own outputs
        s.page.locator("img.leaflet-image-layer").first.wait_for(timeout=60_000)
        _no_traceback(s)
        s.app().scroll_into_view_if_needed()
        s.shot("infill_second_run")
        _check(not s.console_errors(), f"console errors {s.console_errors()}", s)
    finally:
        s.shot("end")
        s.close()
