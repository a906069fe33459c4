"""The live panel in a real JupyterLab, driven by Debian's Chromium through playwright.

A user's path: open notebooks/workbench.ipynb, run it, set a field or two, press Start, watch the
accuracy plot gain points, press Stop, and find the run folder marked 'stopped'.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "workbench.ipynb"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a folder that holds a copy of the notebook."""
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / ".jupyter-runtime"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--ServerApp.open_browser=False",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("JupyterLab did not start")
            time.sleep(0.5)
    yield base, token, tmp_path
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


POINTS_JS = """() => {
  const plots = document.querySelectorAll('.js-plotly-plot');
  if (!plots.length || !plots[0].data) return -1;
  return plots[0].data.reduce((n, trace) => n + (trace.x ? trace.x.length : 0), 0);
}"""


def _set_field(page, tab: str, name: str, value: str) -> None:
    page.locator(".lm-TabBar-tab", has_text=tab).first.click()
    field = page.get_by_label(name, exact=True)  # the widget's label names the Config field
    field.fill(value)
    field.press("Enter")


def _points(page) -> int:
    return page.evaluate(POINTS_JS)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


SHOTS = os.environ.get("WORKBENCH_SCREENSHOTS")  # a folder to keep the screenshots in
STATE_JS = """() => {
  const plots = document.querySelectorAll('.js-plotly-plot');
  const bar = document.querySelector('.widget-hprogress .progress-bar');
  const count = (p) => p && p.data ? p.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : -1;
  return {
    points: count(plots[0]),
    bar: bar ? parseFloat(bar.style.width || '0') : -1,
    depth: plots[1] && plots[1].data ? plots[1].data.map((t) => t.name) : [],
  };
}"""


def _state(page) -> dict:
    return page.evaluate(STATE_JS)


def _shot(page, root: Path, name: str) -> None:
    page.screenshot(path=str(root / f"{name}.png"))
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def _run_all(page, start) -> None:
    """Run All, and wait for the panel (minutes on a loaded machine: torch, plotly). A click
    made before the kernel is ready, or one a kernel-choice dialog swallows, runs nothing: it
    is repeated only while no cell has started, since running the cell twice would replace the
    panel while the first one draws."""

    def run_all():
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    deadline = time.monotonic() + 300
    clicked = 0.0
    while not start.count():
        if time.monotonic() > deadline:
            pytest.fail("the panel did not appear")
        select_kernel = page.locator(".jp-Dialog button", has_text="Select")
        if select_kernel.count():
            select_kernel.first.click()
            clicked = 0.0
        started = any(t.strip() not in ("", "[ ]:") for t in prompts.all_inner_texts())
        if not started and time.monotonic() - clicked > 15:
            run_all()
            clicked = time.monotonic()
        time.sleep(0.5)


def test_the_panel_in_a_real_browser(jupyter_lab):
    """Start, watch the progress bar move before the first point, Stop, Start again (it
    resumes), a second config overlaid with readable labels; after a kernel restart the runs
    browser lists both runs and overlays them."""
    from playwright.sync_api import sync_playwright

    base, token, root = jupyter_lab
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        try:
            _drive_the_panel(page, base, token, root)
        except BaseException:  # pytest.fail's exception too
            page.screenshot(path=str(root / "failure.png"))  # kept in pytest's tmp folder
            raise
        finally:
            browser.close()

    runs = sorted((root / "runs").glob("*/summary.json"))
    assert len(runs) == 2  # Start, Stop, Start made one folder; the second config another
    for path in runs:
        summary = json.loads(path.read_text())
        assert summary["status"] == "finished"
        assert summary["resumed_from"] is not None or summary["n_modules"] == 3


def _drive_the_panel(page, base: str, token: str, root: Path) -> None:
    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    start = page.locator("button.widget-button:has-text('Start')")
    _run_all(page, start)
    _wait_for(lambda: _state(page)["points"] == 0, 60, "the empty live plots")

    # many small steps: the first epoch lasts seconds, so the bar is seen moving inside it
    _set_field(page, "Data", "train images", "4000")
    _set_field(page, "Data", "test images", "300")
    _set_field(page, "Training", "batch size", "16")
    _set_field(page, "Training", "epochs", "2")
    _set_field(page, "Model", "modules", "3")
    start.click()

    seen_moving = []

    def first_point():
        state = _state(page)
        if state["points"] <= 0 and state["bar"] > 0:
            seen_moving.append(state["bar"])
            if len(seen_moving) == 1:
                _shot(page, root, "progress-mid-epoch")
        return state["points"] > 0

    _wait_for(first_point, 240, "a first point")
    assert seen_moving, "the progress bar did not move before the first point"
    page.locator("button.widget-button:has-text('Stop')").click()
    _wait_for(lambda: page.locator("text=run stopped").count(), 120, "the run to stop")

    start.click()  # the same config: resumed in its folder
    _wait_for(lambda: page.locator("text=resuming").count(), 30, "the panel to say it resumes")
    _wait_for(lambda: page.locator("text=run finished").count(), 300, "the resumed run to end")
    _shot(page, root, "resumed-and-finished")

    page.locator(".lm-TabBar-tab", has_text="Model").first.click()
    page.get_by_label("aux depth (k)", exact=True).select_option("1")
    start.click()
    _wait_for(
        lambda: page.locator(".widget-html-content b", has_text="new run").count(), 30, "a new run"
    )
    _wait_for(
        lambda: (
            sorted(_state(page)["depth"]) == ["aux_depth=1", "aux_depth=2"]
            and page.locator("text=run finished").count()
        ),
        300,
        "both runs on the depth plot, labelled by aux depth",
    )
    _shot(page, root, "two-runs-overlaid")

    # a kernel restart: the panel is rebuilt from nothing; the runs browser reads the folders
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").first.click()
    page.locator(".jp-Dialog button", has_text="Restart").first.click()
    _wait_for(lambda: page.locator("text=no run yet").count(), 240, "a fresh panel")
    page.locator(".jupyter-widget-Collapse-header", has_text="Past runs").first.click()
    options = page.locator(".widget-select-multiple select option")
    _wait_for(lambda: options.count() == 2, 30, "both runs listed")
    page.locator(".widget-select-multiple select").select_option(index=[0, 1])
    page.locator("button.widget-button:has-text('Overlay selected')").click()
    _wait_for(
        lambda: sorted(_state(page)["depth"]) == ["aux_depth=1", "aux_depth=2"],
        30,
        "the past runs overlaid after the restart",
    )
    _shot(page, root, "runs-browser-after-restart")
