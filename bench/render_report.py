"""Render a report.html in a real headless browser (Debian's chromium) and check its images.

Every <img> must have loaded and decoded (``complete`` and ``naturalWidth > 0``); the page is also
screenshotted. Used by ``tests/test_report_render.py``, and by hand to refresh the kept screenshot:

    python bench/render_report.py RUN_FOLDER/report.html --screenshot docs/report.png
    python bench/render_report.py --digits --screenshot /tmp/report.png   # make a digits report first

Chromium runs with --no-sandbox (we are root in CI) and without background networking (the
machine has no internet: otherwise it keeps retrying Google's hosts)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40));
  document.title = 'RENDERCHECK ' + JSON.stringify({total: imgs.length, broken: broken,
    sizes: imgs.map(i => [i.alt, i.naturalWidth, i.naturalHeight])});
});</script>"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def render(
    html_path: Path, screenshot: Path | None = None, width: int = 1100, height: int = 5200, timeout: float = 120
) -> dict:
    """{"total": images on the page, "broken": [alt of each image that did not load], "sizes": ...}."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="pretextflow-render-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(Path(html_path).read_text().replace("</body>", CHECK + "</body>"))
        base = [browser, *FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}"]
        dom = subprocess.run(
            [*base, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        match = re.search(r"<title>RENDERCHECK (.*?)</title>", dom.stdout, re.S)
        if not match:
            raise RuntimeError(f"chromium did not run the check (exit {dom.returncode}): {dom.stderr[-1500:]}")
        import html

        result = json.loads(html.unescape(match.group(1)))
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run(
                [*base, f"--screenshot={screenshot}", Path(html_path).resolve().as_uri()],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if not screenshot.exists():
                raise RuntimeError(f"chromium wrote no screenshot (exit {shot.returncode}): {shot.stderr[-1500:]}")
            result["screenshot"] = str(screenshot)
    return result


def digits_report() -> Path:
    """A small real run (digits, a few epochs) through the core stages; returns its report.html."""
    from pretextflow.core.config import load_config
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe, run_report

    ws = init_workspace(Path(tempfile.mkdtemp(prefix="pretextflow-render-ws-")) / "ws")
    ingest(ws, "sklearn:digits", "sklearn-digits", "digits")
    repo = Path(__file__).resolve().parents[1]
    ctx = StageContext.create(load_config(repo / "configs" / "digits_smoke.yaml", ["data.source=null"]), str(ws.root))
    for stage in (run_pretrain, run_freeze, run_probe):
        stage(ctx)
    return Path(run_report(ctx)["run_uri"]) / "report.html"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", nargs="?", type=Path)
    ap.add_argument("--digits", action="store_true", help="make a digits report first and render that")
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    if not args.html and not args.digits:
        ap.error("give a report.html or --digits")
    path = digits_report() if args.digits else args.html
    result = render(path, args.screenshot)
    print(json.dumps({"report": str(path), **result}, indent=1))
    sys.exit(1 if result["broken"] or not result["total"] else 0)


if __name__ == "__main__":
    main()
