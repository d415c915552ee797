# Entry points (see README): `make figures`, `make test` (the quick tier) and `make test-all`
# (everything; what CI runs).
# Both create ./.venv on first use with `pip install -e '.[pipeline,test]'`. On Linux a
# plain pip resolves torch to PyPI's CUDA build (several GB); on a machine without an
# NVIDIA GPU install the CPU build into the venv first:
#   python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CORES   ?= 2
# Both test tiers run on two pytest-xdist workers, one test module (the smoke build's
# users: one group) per worker at a time (tests/conftest.py). PARALLEL= runs them serially.
PARALLEL ?= -n 2 --no-loadscope-reorder    # pytest-xdist >= 3.8

.PHONY: venv figures report test test-all bench clean-venv

$(BIN)/dsm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[pipeline,test]'
	touch $(BIN)/dsm

venv: $(BIN)/dsm

# The main job: every figure of the active scale (params.yaml `run:`), locally. It ends
# with what it cost: wall and CPU time per stage (`dsm cost`, from benchmarks/<scale>/),
# the run's own wall time and how busy the cores were, also when snakemake fails.
figures: venv
	@start=$$(date +%s); \
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) all; status=$$?; \
	echo; $(BIN)/dsm cost --since $$start --cores $(CORES) || true; exit $$status

# The browsable report of the figures' run (report.html: figures, tables, captions).
report: figures
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --report report.html

# The quick tier: unit, property and closed-form tests and one shared smoke-scale
# `snakemake all` (tests/conftest.py); no system-wide side effect. Tests marked `tier2`
# (pyproject.toml) are left to `make test-all`.
test: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -ra --durations=25 $(PARALLEL) -m "not tier2" tests

# Everything: adds DVC as the second tool, the kill sweep and (as root with apt-get) the
# real SLURM cluster, which installs Debian packages and starts daemons (DSM_SLURM_TESTS=0
# skips it).
test-all: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -ra --durations=25 $(PARALLEL) tests

bench: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/step_time.py

clean-venv:
	rm -rf $(VENV)
