# Two entry points for a fresh machine: `make demo` and `make test` (each sets everything up).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1

.PHONY: demo test lint install example data browser lock clean

# The environment: a venv with the pinned constraints (torch 2.14.1 / torchvision 0.29.1, ...).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,http,s3,dask,onnx,parquet,trackers]'
	touch $@

install: $(STAMP)

# The example third-party plugin package, installed with pip as a user would install it (not
# editable): the tests check it and train with it through the pipeline (tests/test_example_plugin.py).
EXAMPLE       := examples/pretextflow-denoising
EXAMPLE_STAMP := $(VENV)/.example-installed
$(EXAMPLE_STAMP): $(STAMP) $(EXAMPLE)/pyproject.toml $(wildcard $(EXAMPLE)/pretextflow_denoising/*.py)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -c constraints.txt ./$(EXAMPLE)
	touch $@

example: $(EXAMPLE_STAMP)

data: install
	@PRETEXTFLOW=$(BIN)/pretextflow sh scripts/fashion_mnist_dir.sh >/dev/null

browser:
	@sh scripts/chromium.sh

# Self-supervised pretraining on Fashion-MNIST, frozen, probed against supervised training on 1%,
# 10% and 100% of the labels, and reported (~20 min on 2 CPU cores).
demo: install
	@dir=$$(PRETEXTFLOW=$(BIN)/pretextflow sh scripts/fashion_mnist_dir.sh) && \
	$(BIN)/pretextflow run configs/fashion_mnist.yaml --set data.source=$$dir

# Lint, format and layering checks (ruff, import-linter contracts of pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	LINT_IMPORTS=$(abspath $(BIN))/lint-imports sh scripts/lint_imports.sh

# The test suite (Prefect and DVC run in temporary folders; nothing touches ~ or this repo's data/),
# after the lint and layering checks.
test: install lint data browser example
	$(BIN)/python -m pytest

# Refresh the lock file from the current venv (after changing dependencies in pyproject.toml).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^pretextflow' > constraints.txt

clean:
	rm -rf $(VENV) artifacts .pretextflow-tmp
