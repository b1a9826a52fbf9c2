#!/usr/bin/env bash
# A separate venv for bench/lightly_compare.py: lightly is a *baseline* of that benchmark, never a
# dependency of pretextflow, so it must not go into the project's venv.
#
#   bash bench/lightly_env.sh                      # -> /tmp/pretextflow-lightly-venv
#   LIGHTLY_VENV=/some/dir bash bench/lightly_env.sh   # or: bash bench/lightly_env.sh /some/dir
#
# How: a new venv on the same base interpreter as the project's venv, whose site-packages holds a
# .pth file that adds the project's site-packages with `site.addsitedir` (not a bare path line: a
# bare line would not process that directory's own .pth files, and pretextflow is an editable
# install found through one of them). The project's packages (torch, torchvision, pretextflow, ...)
# are therefore visible, and only what lightly needs beyond them is installed into the new venv.
# Nothing is installed into the project's venv: pip refuses to uninstall or modify packages outside
# the environment it runs in, and the script checks the project's venv is unchanged afterwards.
#
# Dependencies: lightly 1.6.0 requires hydra-core, numpy, tqdm, torch, torchvision (all already in
# the project's venv, at the versions of constraints.txt) and pytorch_lightning (plus its own deps
# lightning-utilities and torchmetrics), which are not. None of those conflicts with our pins:
# pytorch_lightning accepts torch 2.14.1, and `-c constraints.txt` (and the machine's own pip
# constraints) keep torch/torchvision exactly where they are, so the plain `pip install` is used,
# no --no-deps. The benchmark imports only lightly.loss, lightly.models.modules, lightly.models.utils,
# lightly.utils.scheduler and lightly.transforms, none of which imports pytorch_lightning; it is
# installed anyway because lightly declares it. The script fails if torch or torchvision change.
# Idempotent: a venv that already has lightly 1.6.0 and the project's torch is left as it is.
# Prints the python to run the benchmark with (last line of stdout).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$REPO/.venv}"
VENV="${1:-${LIGHTLY_VENV:-/tmp/pretextflow-lightly-venv}}"
LIGHTLY_VERSION="1.6.0"
MAIN_PY="$MAIN_VENV/bin/python"

if [ ! -x "$MAIN_PY" ]; then
    echo "error: the project's venv ($MAIN_VENV) is missing; run 'make install' first." >&2
    exit 1
fi
VENV="$(mkdir -p "$(dirname "$VENV")" && cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
if [ "$VENV" = "$(cd "$MAIN_VENV" && pwd)" ]; then
    echo "error: the lightly venv must not be the project's venv ($MAIN_VENV)." >&2
    exit 1
fi

# the project's site-packages and versions, computed (no hard-coded python3.X)
MAIN_SITE="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
MAIN_VERSIONS="$("$MAIN_PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')"
# what is installed in the project's venv (editables excluded: their line carries the git commit)
main_snapshot() { "$MAIN_PY" -m pip freeze --all --exclude-editable 2>/dev/null | sort | md5sum | cut -d' ' -f1; }
BEFORE="$(main_snapshot)"

if [ ! -x "$VENV/bin/python" ]; then
    # `python -m venv` run by a venv's python builds on that venv's base interpreter
    "$MAIN_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "$SITE" = "$MAIN_SITE" ]; then
    echo "error: $VENV resolves to the project's site-packages; refusing to install there." >&2
    exit 1
fi
printf 'import site; site.addsitedir(%s)\n' "$("$MAIN_PY" -c 'import sys; print(repr(sys.argv[1]))' "$MAIN_SITE")" \
    > "$SITE/_pretextflow_main_venv.pth"

installed() {
    "$PY" - "$LIGHTLY_VERSION" "$MAIN_VERSIONS" <<'EOF' 2>/dev/null
import sys
import lightly, torch, torchvision
ok = lightly.__version__ == sys.argv[1] and f"{torch.__version__} {torchvision.__version__}" == sys.argv[2]
sys.exit(0 if ok else 1)
EOF
}

if installed; then
    echo "lightly $LIGHTLY_VERSION already installed in $VENV" >&2
else
    # pip serves from the local mirrors (pip.conf); constraints.txt pins every shared package
    "$PY" -m pip install -q -c "$REPO/constraints.txt" "lightly==$LIGHTLY_VERSION" >&2
fi

# checks: lightly importable with the project's torch/torchvision; pretextflow from the project's
# venv; the project's venv untouched
GOT="$("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')"
if [ "$GOT" != "$MAIN_VERSIONS" ]; then
    echo "error: torch/torchvision in $VENV are '$GOT', the project's are '$MAIN_VERSIONS'." >&2
    exit 1
fi
"$PY" -c 'import torch, lightly; print(torch.__version__, lightly.__version__)' >&2
"$PY" -c 'import pretextflow.core.train, lightly.loss, lightly.models.modules, lightly.models.utils, lightly.transforms, lightly.utils.scheduler' >&2
if [ "$(main_snapshot)" != "$BEFORE" ]; then
    echo "error: the project's venv ($MAIN_VENV) changed while setting up $VENV." >&2
    exit 1
fi
echo "$PY"
