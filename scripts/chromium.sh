#!/bin/sh
# Best effort: Debian's chromium for the test that renders report.html in a real headless browser.
# Installed with apt-get when we are root on a Debian-like system; otherwise that test is skipped
# (outside CI) and says how to install it.
set -eu
command -v chromium >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium (for the report rendering test) ..." >&2
    apt-get install -y -qq chromium >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1
    } || echo "apt-get could not install chromium; the rendering test will be skipped" >&2
fi
exit 0
