#!/bin/sh
# The GPU check, one command (bench/gpu_check.py says what it runs and checks).
#
#   sh bench/gpu_check.sh --prepare   # here, online: the wheels and data the GPU machine lacks,
#                                     # into bench/.gpu-wheels and bench/.gpu-data (git-ignored)
#   sh bench/gpu_check.sh             # on the GPU machine (run with carry: bench/.gpu-wheels, bench/.gpu-data)
#   sh bench/gpu_check.sh --cpu       # anywhere: a short CPU run (tests/test_gpu_check.py runs it)
#
# The GPU machine has PyTorch, timm, numpy, fsspec, pluggy, safetensors... but no Prefect, DVC or
# pydantic and no network: the core stages need neither Prefect nor DVC, and pydantic comes from the
# carried wheels. The package is laid out in its installed shape in a temporary folder (as
# scripts/lint_imports.sh does), so nothing is installed into the machine's Python.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$here/bench/.gpu-wheels" "$here/bench/.gpu-data"
    "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -c "$here/constraints.txt" -d "$here/bench/.gpu-wheels" pydantic
    cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$here/bench/.gpu-data/"
    du -sh "$here/bench/.gpu-wheels" "$here/bench/.gpu-data"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sh "$here/scripts/package_layout.sh" "$tmp"
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links "$here/bench/.gpu-wheels" --target "$tmp/site" pydantic
fi
cd "$tmp"
PYTHONPATH="$tmp:$tmp/site" "$PY" "$here/bench/gpu_check.py" "$@"
