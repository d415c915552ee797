# Two entry points (see README): `make figures` and `make test`.
# Both create ./.venv on first use with `pip install -e '.[pipeline,test]'`. On Linux a
# plain pip resolves torch to PyPI's CUDA build (several GB); on a machine without an
# NVIDIA GPU install the CPU build into the venv first:
#   python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CORES   ?= 2

.PHONY: venv figures report test bench clean-venv

$(BIN)/dsm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[pipeline,test]'
	touch $(BIN)/dsm

venv: $(BIN)/dsm

# The main job: every figure of the active scale (params.yaml `run:`), locally.
figures: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) all

# The browsable report of the figures' run (report.html: figures, tables, captions).
report: figures
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --report report.html

test: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -ra --durations=15 tests

bench: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/step_time.py

clean-venv:
	rm -rf $(VENV)
