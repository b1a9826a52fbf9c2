#!/bin/sh
# import-linter reads packages from the file system, but the repository keeps core/, plugins/ and
# flows/ at its top level (installed as pretextflow.core, .plugins, .flows: see pyproject.toml). Lay
# the installed shape out in a temporary folder and check the contracts of pyproject.toml there.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sh "$here/scripts/package_layout.sh" "$tmp"
cd "$tmp"
PYTHONPATH="$tmp" "${LINT_IMPORTS:-$here/.venv/bin/lint-imports}" "$here/pyproject.toml" --no-cache "$@"
