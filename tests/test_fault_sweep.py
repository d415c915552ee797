"""The fault-injection sweep (scripts/fault_sweep.py), small: one `kill -9` per stage.

Every stage of the stage table at the smoke scale is killed once at a random moment
(fixed seed) and rerun; the reruns' outputs must be identical to an uninterrupted run,
no temporary may survive, and the previous outputs must be intact after each kill. The
docs/development.md's counts come from the larger run (`python scripts/fault_sweep.py --kills 10`).
The sweep runs in its own process: it forks its jobs, which must not inherit this
process's thread pools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.pipeline.stages import STAGES

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_stage_survives_kill_9(tmp_path):
    kills = int(os.environ.get("DSM_SWEEP_KILLS", "1"))
    seed = int(os.environ.get("DSM_SWEEP_SEED", "0"))
    out = tmp_path / "sweep.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts/fault_sweep.py"), "--kills", str(kills),
                          "--seed", str(seed), "--keep", str(tmp_path / "work"), "--json", str(out)],
                         env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=1800)
    print(res.stdout[-6000:], res.stderr[-3000:])
    assert out.is_file(), res.stderr[-3000:]
    result = json.loads(out.read_text())
    failures = [f for s in result["stages"].values() for f in s["failures"]]
    assert not failures and res.returncode == 0, "\n".join(failures)
    assert set(result["stages"]) == set(STAGES)                 # every stage, new ones too
    total = result["total"]
    assert total["kills"] == total["identical"] == kills * len(STAGES)
