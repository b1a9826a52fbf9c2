#!/bin/sh
# Lay the package out in its installed shape in the folder $1: the repository keeps core/, plugins/
# and flows/ at its top level, installed as pretextflow.core, .plugins and .flows (pyproject.toml's
# package-dir). Used where the source tree is read or run without installing it.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
dest=$1
mkdir "$dest/pretextflow"
cp -R "$here"/pretextflow/. "$dest/pretextflow/"
for pkg in core plugins flows; do cp -R "$here/$pkg" "$dest/pretextflow/$pkg"; done
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
