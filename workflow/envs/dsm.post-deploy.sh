#!/usr/bin/env bash
# Run by Snakemake once after it created the environment of workflow/envs/dsm.yaml, inside
# it (CONDA_PREFIX is the environment). The rules run `dsm <stage> ...` from the repository
# root; this writes that `dsm` command into the environment: the environment's Python
# running the library of the checkout in the working directory (like `python -m dsm`).
# Nothing of the checkout is installed, so a shared --conda-prefix serves every checkout,
# each job running the code its rule depends on. (A `pip install -e .` in the environment
# file would not work: Snakemake copies the file to .snakemake/conda/<hash>.yaml, and conda
# resolves the `.` against the copied file's directory.)
set -euo pipefail
: "${CONDA_PREFIX:?run inside the environment}"
mkdir -p "$CONDA_PREFIX/bin"
cat > "$CONDA_PREFIX/bin/dsm" <<LAUNCHER
#!$CONDA_PREFIX/bin/python
import os
import sys

if not os.path.isfile(os.path.join(os.getcwd(), "dsm", "cli.py")):
    sys.exit(f"dsm: error: run from the repository root (no dsm/cli.py under {os.getcwd()})")
sys.path.insert(0, os.getcwd())
from dsm.cli import main

sys.exit(main())
LAUNCHER
chmod +x "$CONDA_PREFIX/bin/dsm"
