#!/bin/sh
# Prints a folder holding Fashion-MNIST's four IDX .gz files, getting them if needed:
#   1. Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), installed with
#      apt-get when we are root on a Debian-like system;
#   2. otherwise the official download, checksum-verified, into ~/.cache/pretextflow/fashion-mnist.
# Progress goes to stderr; only the folder is printed on stdout.
set -eu
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/pretextflow/fashion-mnist"
PRETEXTFLOW="${PRETEXTFLOW:-.venv/bin/pretextflow}"

if [ ! -f "$DEBIAN_DIR/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's dataset-fashion-mnist ..." >&2
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1
    } || echo "apt-get could not install it; downloading instead" >&2
fi
if [ -f "$DEBIAN_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "$DEBIAN_DIR"
else
    echo "downloading Fashion-MNIST (checksum-verified) to $CACHE_DIR ..." >&2
    "$PRETEXTFLOW" fetch fashion-mnist "$CACHE_DIR" >&2
    echo "$CACHE_DIR"
fi
