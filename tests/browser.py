"""Headless-Chromium helpers for the tests and the README screenshot: render a results page and report
what it drew and which JavaScript errors it raised, or save a PNG of it.

They live beside the tests, not in the library: mixnas writes the pages, the tests look at them.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixnas.atomic import atomic_write

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Headless, offline, no GPU: WebGL (the 3-D page) runs on SwiftShader, which newer builds only
# allow with --enable-unsafe-swiftshader. --no-sandbox because CI containers run as root.
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome executable, or None."""
    for name in _BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium found on PATH; install it (scripts/ensure-chromium) to render pages")
    with tempfile.TemporaryDirectory(prefix="mixnas-chromium-") as profile:
        return subprocess.run(
            [browser, *_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )


def screenshot(
    html_path: str | Path, png_path: str | Path, size: tuple[int, int] = (1200, 800), timeout: float = 120.0
) -> Path:
    """Render a page in headless Chromium and save a PNG of the window.

    Args:
        html_path: the page.
        png_path: where to write the PNG (written atomically).
        size: window width and height in pixels.
        timeout: seconds before the browser is given up on.
    """
    page = Path(html_path).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such page")
    target = Path(png_path)

    def shoot(tmp: str) -> None:
        # Chromium picks the image format from the file name, so it writes shot.png, not the .tmp file.
        with tempfile.TemporaryDirectory(prefix="mixnas-shot-") as folder:
            shot = Path(folder) / "shot.png"
            res = _run_chromium([
                f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=10000",
                page.as_uri(),
            ], timeout)
            if res.returncode != 0 or not shot.is_file() or shot.stat().st_size == 0:
                tail = res.stderr.strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(
                    f"{page}: Chromium failed to take a screenshot (exit {res.returncode}: {tail[0]})"
                )
            shutil.copyfile(shot, tmp)

    atomic_write(target, shoot)
    return target


@dataclass
class RenderedPage:
    """What a page looked like after its scripts ran in headless Chromium.

    Args:
        dom: the serialized DOM, with the contents of ``<script>`` elements removed (plotly.js
            itself names every class it can create, so only the rest says what was drawn).
        errors: uncaught JavaScript errors, unhandled rejections and ``console.error`` calls.
        plots: one dict per plotly graph: ``id``, ``svg`` (``.main-svg`` count), ``gl`` (WebGL
            canvases), ``traces`` (each with ``name``, ``type`` and ``points``: the first
            ``customdata`` entry per point, the trial number on this package's scatter plots).
        plotly: the version of the ``Plotly`` global the page ended with; None when it has none.
        scripts: the absolute URL of every ``<script src>`` of the page, in order.
    """

    dom: str
    errors: list[str] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    plotly: str | None = None
    scripts: list[str] = field(default_factory=list)


_PROBE_HEAD = """<script>
window.__renderErrors = [];
window.addEventListener("error", function (e) {
  window.__renderErrors.push(String(e.message) + " (" + e.filename + ":" + e.lineno + ")");
});
window.addEventListener("unhandledrejection", function (e) {
  window.__renderErrors.push("unhandled rejection: " + String(e.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__renderErrors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    original.apply(console, arguments);
  };
})();
</script>"""
_PROBE_TAIL = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  var plots = Array.prototype.map.call(document.querySelectorAll(".js-plotly-plot"), function (gd) {
    return {
      id: gd.id,
      svg: gd.querySelectorAll(".main-svg").length,
      gl: gd.querySelectorAll(".gl-container canvas").length,
      traces: (gd._fullData || []).map(function (t) {
        var cd = t.customdata || [];
        return {name: t.name, type: t.type, points: Array.prototype.map.call(cd, function (c) {
          return Array.isArray(c) ? c[0] : c; })};
      })
    };
  });
  var scripts = Array.prototype.filter.call(document.scripts, function (s) { return s.src; })
    .map(function (s) { return s.src; });
  var version = typeof window.Plotly === "undefined" ? null : String(window.Plotly.version);
  var out = document.createElement("pre");
  out.id = "render-report";
  out.textContent = JSON.stringify({errors: window.__renderErrors, plots: plots, plotly: version,
                                    scripts: scripts});
  document.body.appendChild(out);
}, WAIT_MS); });
</script>"""


def render_page(html_path: str | Path, wait_ms: int = 2000, timeout: float = 120.0) -> RenderedPage:
    """Open a page in headless Chromium and report what it drew and which JavaScript errors it raised.

    A copy of the page gets two small scripts: one at the top of ``<head>`` that records errors
    before plotly.js runs, one at the end that, ``wait_ms`` after load, writes a JSON report of the
    plotly graphs into the DOM. Chromium's ``--dump-dom`` then returns that DOM; virtual time makes
    the wait cost no real time. The copy sits in a temporary folder with a ``<base>`` naming the page's
    own folder, so its relative links and scripts (``plotly.min.js``) load from beside the original,
    which is left untouched.

    Args:
        html_path: the page.
        wait_ms: milliseconds after the load event before the report is taken (3-D scenes draw late).
        timeout: seconds before the browser is given up on.
    """
    page = Path(html_path).resolve()
    text = page.read_text()
    head = re.search(r"<head[^>]*>", text, flags=re.IGNORECASE)
    at = head.end() if head else 0
    base = f'<base href="{html.escape(page.parent.as_uri())}/">'
    text = text[:at] + base + _PROBE_HEAD + text[at:]
    tail = _PROBE_TAIL.replace("WAIT_MS", str(int(wait_ms)))
    end = text.lower().rfind("</body>")
    text = text[:end] + tail + text[end:] if end >= 0 else text + tail
    with tempfile.TemporaryDirectory(prefix="mixnas-render-") as tmp:
        probe = Path(tmp) / page.name
        probe.write_text(text)
        res = _run_chromium(["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], timeout)
    if res.returncode != 0:
        tail_line = res.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{page}: Chromium failed (exit {res.returncode}: {tail_line[0]})")
    dom = re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", res.stdout, flags=re.DOTALL | re.IGNORECASE)
    report = re.search(r'<pre id="render-report">(.*?)</pre>', dom, flags=re.DOTALL)
    if report is None:
        return RenderedPage(dom=dom, errors=["the page never finished loading (no render report)"])
    data = json.loads(html.unescape(report.group(1)))
    return RenderedPage(dom=dom, errors=list(data["errors"]), plots=list(data["plots"]), plotly=data["plotly"],
                        scripts=list(data["scripts"]))
