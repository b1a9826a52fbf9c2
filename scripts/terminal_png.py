"""Screenshot a command as it looks in a real terminal: run it in a detached tmux session, capture the
pane with its colours (``tmux capture-pane -e``) after ``--after`` seconds, render the ANSI text to
HTML with rich and that to a PNG with headless chromium.

    python scripts/terminal_png.py --out docs/progress.png --after 40 -- \
        .venv/bin/pretextflow run configs/digits_smoke.yaml
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def capture(command: list[str], after: float, width: int, height: int) -> str:
    """The pane's text with its escape codes, ``after`` seconds into ``command``."""
    session = f"shot-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), shlex.join(command)],
        check=True,
    )
    try:
        time.sleep(after)
        out = subprocess.run(
            ["tmux", "capture-pane", "-e", "-p", "-t", session], check=True, capture_output=True, text=True
        )
        return out.stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def render(ansi: str, out: Path, width: int, height: int) -> None:
    from rich.console import Console
    from rich.terminal_theme import MONOKAI
    from rich.text import Text

    console = Console(record=True, width=width, file=open("/dev/null", "w"), force_terminal=True)  # noqa: SIM115
    console.print(Text.from_ansi(ansi.rstrip()))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "pane.html"
        page.write_text(console.export_html(theme=MONOKAI, inline_styles=True, code_format=_PAGE))
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
        lines = len(ansi.rstrip().splitlines()) or 1  # up to the last line with text on it
        px_w, px_h = width * 8 + 40, min(lines, height) * 17 + 40
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={px_w},{px_h}",
             f"--screenshot={out.resolve()}", page.as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip


_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body {{ background: #0c0c0c; color: #d9d9d9; margin: 20px; }}
pre {{ font-family: 'DejaVu Sans Mono', monospace; font-size: 13px; line-height: 17px; margin: 0; }}
</style></head><body><pre><code>{code}</code></pre></body></html>"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--after", type=float, default=30.0, help="seconds into the command to capture")
    ap.add_argument("--width", type=int, default=110)
    ap.add_argument("--height", type=int, default=24)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    ansi = capture(command, a.after, a.width, a.height)
    a.out.with_suffix(".txt").write_text(ansi)  # the raw capture, escape codes included
    render(ansi, a.out, a.width, a.height)
    print(f"{a.out} ({a.width}x{a.height} characters, {a.after:g} s into `{shlex.join(command)}`)")


if __name__ == "__main__":
    main()
