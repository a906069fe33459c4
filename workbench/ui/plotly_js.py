"""One shared copy of plotly.js for the figure HTML under a root, instead of 4.8 MB per folder.

Figure HTML loads `plotly-<plotly.js version>.min.js` by a relative `<script src>`, so it opens
offline (file://) and keeps working when the whole root is moved or copied. Which copy:

- the nearest `plotly-<version>.min.js` in the HTML's folder or up to SEARCH_LEVELS folders
  above it (a run's figures in runs/<run>/figures find runs/plotly-*.min.js; a sweep point's in
  DIR/<point>/run/figures find DIR/plotly-*.min.js once the sweep has written one);
- otherwise one is written into the nearest folder, the HTML's own or up to SEARCH_LEVELS
  above, that holds run folders: runs/ for a run's figures (runs/<run>/figures), for a
  comparison saved in runs/comparison and for the panel's exports in runs/figures/<time>, so
  they all share it; with none (or where it cannot be written), into the HTML's folder itself.

The version in the name keeps figures written by another plotly from loading the wrong bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from plotly.offline import get_plotlyjs, get_plotlyjs_version

from workbench.records import atomic_write_bytes

PLOTLY_JS = f"plotly-{get_plotlyjs_version()}.min.js"
SEARCH_LEVELS = 4  # run/figures -> run -> runs/ or a sweep point -> a sweep folder -> one more


def write_shared_plotly_js(folder: str | Path) -> Path:
    """folder/plotly-<version>.min.js, written once (atomically, so concurrent writers and
    readers never see half a file); the path. A sweep calls it on its folder before the points
    run, so every point's figures share the one copy."""
    path = Path(folder) / PLOTLY_JS
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, get_plotlyjs().encode())
    return path


def find_shared_plotly_js(folder: str | Path, levels: int = SEARCH_LEVELS) -> Path | None:
    """The nearest plotly-<version>.min.js in folder or up to `levels` folders above it."""
    here = Path(folder).absolute()
    for candidate in [here, *here.parents][: levels + 1]:
        if (candidate / PLOTLY_JS).is_file():
            return candidate / PLOTLY_JS
    return None


def holds_runs(folder: Path) -> bool:
    """Whether a folder has a run folder (one holding config.json) among its children."""
    try:
        return any((child / "config.json").is_file() for child in folder.iterdir())
    except OSError:  # unreadable: not a place to share from
        return False


def shared_plotly_js(folder: str | Path) -> Path:
    """The plotly.js copy the figures written into `folder` use (found, or written now)."""
    folder = Path(folder).absolute()
    found = find_shared_plotly_js(folder)
    if found is not None:
        return found
    above = [folder, *folder.parents][: SEARCH_LEVELS + 1]
    home = next((p for p in above if holds_runs(p)), folder)
    try:
        return write_shared_plotly_js(home)
    except OSError:  # a folder we may not write into: the figures' own folder holds it
        if home == folder:
            raise
        return write_shared_plotly_js(folder)


def plotly_js_src(folder: str | Path) -> str:
    """The relative `<script src>` (ending in .js) from HTML in `folder` to its plotly.js,
    what `Figure.write_html(include_plotlyjs=...)` takes."""
    js = shared_plotly_js(folder)
    return quote(Path(os.path.relpath(js, Path(folder).absolute())).as_posix())
