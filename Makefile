# Golden Path Lab: the two commands of README's quick start, and the few around them.
#   make report   run all four investigations against the built-in reference server
#   make test     run the test suite
# Both create .venv and install the project on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=
LAB_PORT ?= 8888
LAB_ARGS ?=
# Jupyter refuses to run as root (containers, many dev VMs) unless told to: as root, allow it, but open
# no browser (it would run as root too) and listen on loopback only; the token stays required.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root --no-browser)

.PHONY: report test test-fast lab bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name golden-path-lab --display-name "Golden Path Lab" >/dev/null
	touch $(STAMP)

install: $(STAMP)

report: $(STAMP)
	$(BIN)/gp report $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not notebook and not browser and not lab" $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ --ip=127.0.0.1 --port=$(LAB_PORT) $(LAB_ROOT) $(LAB_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/client_overhead.py
	$(BIN)/python benchmarks/batch.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
