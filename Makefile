# seqjax: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test test-slow bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[test]"
	touch $@ $(STAMP_RUN)

## make run: install, then run the main job (TCN vs RNNs on its built-in default task).
run: $(STAMP_RUN)
	$(PY) experiments/tcn_vs_rnn.py --jobs 2

## make test: install with the test extra, then run the whole suite (CPU, < 15 minutes): two
## worker processes, one file per worker at a time (pytest-xdist), so compilation and Python
## overlap on the 2 cores; the 15 slowest tests are listed at the end (the suite is at ~14 min).
test: $(STAMP_TEST)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile --durations=15 tests

## make test-slow: the long tests kept out of `make test`.
test-slow: $(STAMP_TEST)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP_TEST)
	$(PY) benchmarks/rnn_cpu.py

## make docs: API docs and results pages with MkDocs + mkdocstrings into build/site (offline).
docs: $(STAMP_TEST)
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info
