# Two commands on a fresh machine with Python 3.11, pip and make:
#   make demo   # creates .venv, installs pcam_jax, runs the synthetic demo end to end
#   make test   # creates .venv, installs the test extra, runs the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= work/demo

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pcam-jax demo --workdir $(WORKDIR)

# --dist loadfile: all tests of a file on one worker, so a module fixture (the two-process jobs of
# tests/test_multiprocess.py, test_cli's trained run) runs once, not once per worker. (loadgroup
# with xdist_group marks would do it per module, but xdist 3.8 does not group under pytest 9.2.)
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

bench: $(VENV)/.installed
	$(BIN)/python experiments/benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .cache work
