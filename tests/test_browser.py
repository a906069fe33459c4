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


def test_start_grows_the_live_plot_and_stop_stops_the_run(jupyter_lab):
    from playwright.sync_api import sync_playwright

    base, token, root = jupyter_lab
    run_dir = root / "runs" / "browser-run"
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
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            stopped_at, status = _drive_the_panel(page, base, token, run_dir)
        except Exception:
            page.screenshot(path=str(root / "failure.png"))  # kept in pytest's tmp folder
            raise
        finally:
            browser.close()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert status >= 1
    assert len(summary["per_module_test_acc"]) >= 1
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len([m for m in metrics if '"test"' in m]) == stopped_at


def _drive_the_panel(page, base: str, token: str, run_dir: Path) -> tuple[int, int]:
    """Open and run the notebook, Start a run, watch it grow, Stop it; (points, 'stopped' seen)."""
    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    start = page.locator("button.widget-button:has-text('Start')")
    select_kernel = page.locator(".jp-Dialog button", has_text="Select")
    for _ in range(6):  # Run All; a fresh server may first ask which kernel (python3) to start
        if select_kernel.count():
            select_kernel.first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            start.wait_for(timeout=30_000)
            break
        except Exception:
            continue
    start.wait_for(timeout=1_000)
    _wait_for(lambda: _points(page) == 0, 60, "the empty live plots")

    _set_field(page, "Data", "n_train", "1000")
    _set_field(page, "Data", "n_test", "300")
    _set_field(page, "Training", "epochs", "6")
    _set_field(page, "Run", "out", str(run_dir))
    page.locator("button.widget-button:has-text('Start')").click()

    first = _wait_for(lambda: _points(page) > 0 and _points(page), 240, "a first point")
    _wait_for(lambda: _points(page) > first, 240, "the plot to grow")
    page.screenshot(path=str(run_dir.parent / "panel-running.png"))
    page.locator("button.widget-button:has-text('Stop')").click()
    _wait_for(lambda: page.locator("text=run stopped").count(), 120, "the run to stop")
    stopped_at = _points(page)
    time.sleep(6)
    assert _points(page) == stopped_at  # nothing trains after Stop
    status = page.locator(".widget-html-content b", has_text="stopped").count()
    return stopped_at, status
