"""The trainer: checkpoints, exact resume after SIGTERM/SIGUSR1, NaN guard, config hashing.

Tiny UNets, a few steps, one thread: the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dsm import checkpoint as ckpt
from dsm.errors import DsmError
from dsm.fit import FitResult, fit, lr_at
from dsm.runtime import resolve_device, use_threads
from dsm.train import ImageBatches

REPO = Path(__file__).resolve().parent.parent

# The same model, data and config in this process and in the subprocess that is killed.
SETUP = textwrap.dedent("""
    import time
    import torch
    from dsm.nets import build_model
    from dsm.fit import fit
    from dsm.runtime import seed_everything

    MODEL_CFG = {"kind": "energy", "widths": [4, 8], "mid_width": 8, "layers_per_block": 2,
                 "activation": "gelu", "embedding": "log"}
    CFG = dict(steps=24, batch_size=6, lr=2e-3, lr_halve_every=8, t_min=1e-6, t_max=1e3, seed=3,
               checkpoint_every=100, log_every=1, flush_denormal=True, threads=1, progress=False)
    DATA = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def make_model():
        seed_everything(0)
        return build_model(MODEL_CFG, 1, 8)

    def next_batch(step, g, delay=0.0):
        if delay:
            time.sleep(delay)   # leaves time to send a signal mid-run; no effect on values
        return DATA[torch.randint(0, len(DATA), (CFG["batch_size"],), generator=g)]

    def run(out, delay=0.0, **over):
        model = make_model()
        result = fit(model, lambda s, g: next_batch(s, g, delay), dict(CFG, **over), out)
        return model, result
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ns: dict = {}
    exec(compile(SETUP, "<setup>", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """An uninterrupted run: its final parameters are the target of every resume test."""
    out = tmp_path_factory.mktemp("reference")
    model, result = setup["run"](out)
    return {k: v.clone() for k, v in model.state_dict().items()}, result, out


def assert_same_params(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs"


def test_lr_halves_by_step():
    assert lr_at(0, 1e-3, 10) == 1e-3
    assert lr_at(9, 1e-3, 10) == 1e-3
    assert lr_at(10, 1e-3, 10) == 5e-4
    assert lr_at(25, 1e-3, 10) == 2.5e-4
    assert lr_at(10**6, 1e-3, None) == 1e-3


def test_device_and_threads(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DsmError, match="device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(DsmError, match="CUDA is not available"):
            resolve_device("cuda")
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")    # the environment is not consulted
    assert use_threads(1, "resources.train.threads") == 1 and torch.get_num_threads() == 1
    assert use_threads(None) == 1                   # None: leave as is
    with pytest.raises(DsmError, match="resources.train.threads"):
        use_threads("many", "resources.train.threads")
    with pytest.raises(DsmError, match="positive"):
        use_threads(0)
    torch.set_num_threads(before)


def test_reference_run_writes_checkpoints_and_metrics(reference):
    params, result, out = reference
    assert isinstance(result, FitResult) and result.step == 24 and result.resumed_from is None
    # pointer -> final checkpoint; only the last few are kept
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000024.pt"
    payload = torch.load(out / "checkpoints" / "step_00000024.pt", weights_only=True)
    assert payload["step"] == 24 and payload["config_sha256"] == result.config_sha256
    assert {"model", "optimizer", "schedule", "rng", "config", "seconds"} <= payload.keys()
    assert {"torch_cpu", "numpy", "python", "generators"} <= payload["rng"].keys()
    assert set(payload["rng"]["generators"]) == {"data", "noise"}
    assert payload["schedule"] == {"kind": "step_halving", "lr": 2e-3, "halve_every": 8}
    assert payload["config"]["train"]["steps"] == 24
    assert "log_every" not in payload["config"]["train"]   # bookkeeping is not hashed
    assert_same_params(payload["model"], params)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 25))
    for key in ("loss", "dsm", "tsm", "lr", "images_per_s", "seconds", "grad_norm"):
        assert key in lines[-1]
    assert lines[0]["lr"] == 2e-3 and lines[-1]["lr"] == 5e-4
    assert json.loads((out / "config.json").read_text())["config_sha256"] == result.config_sha256


def test_keep_last_checkpoints(setup, tmp_path):
    setup["run"](tmp_path, steps=8, checkpoint_every=1, keep_checkpoints=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [7, 8]


def test_sigterm_subprocess_then_resume_is_exact(setup, reference, tmp_path):
    """Kill a real training process with SIGTERM mid-run; the rerun ends bitwise equal."""
    script = tmp_path / "train_script.py"
    script.write_text(SETUP + "\nimport sys\nrun(sys.argv[1], delay=0.05)\n")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before the signal: {proc.communicate()}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err
    stopped = int(torch.load(ckpt.latest_checkpoint(out), weights_only=True)["step"])
    assert 3 <= stopped < 24

    model, result = setup["run"](out)
    assert result.resumed_from == stopped and result.step == 24
    assert_same_params(model.state_dict(), reference[0])
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 25))  # the log is continuous across the restart


def test_sigusr1_in_process_then_resume_is_exact(setup, reference, tmp_path):
    ns = setup

    def next_batch(step, g):
        if step == 10:
            os.kill(os.getpid(), signal.SIGUSR1)   # arrives during step 11
        return ns["next_batch"](step, g)

    with pytest.raises(SystemExit) as exc:
        fit(ns["make_model"](), next_batch, dict(ns["CFG"], log_every=4), tmp_path)
    assert exc.value.code == 128 + signal.SIGUSR1
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000011.pt"
    model, result = ns["run"](tmp_path, log_every=4)   # log_every is not part of the config hash
    assert result.resumed_from == 11
    assert_same_params(model.state_dict(), reference[0])
    # the metrics records equal an uninterrupted run's (interval sums are checkpointed)
    per_step = [json.loads(x)["loss"] for x in (reference[2] / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20, 24]
    for r in records:
        total = 0.0
        for v in per_step[r["step"] - 4:r["step"]]:
            total += v
        assert r["loss"] == total / 4


def test_finished_run_is_noop(setup, reference):
    params, first, out = reference
    before = (out / "checkpoints" / "latest").stat().st_mtime_ns
    model, result = setup["run"](out)
    assert result.step == 24 and result.resumed_from == 24
    assert result.last["step"] == 24
    assert_same_params(model.state_dict(), params)
    assert (out / "checkpoints" / "latest").stat().st_mtime_ns == before


def test_changed_config_starts_fresh(setup, tmp_path, capsys):
    setup["run"](tmp_path, steps=4, checkpoint_every=2)
    model, result = setup["run"](tmp_path, steps=4, checkpoint_every=2, lr=1e-3)
    assert result.resumed_from is None and result.step == 4
    assert "config changed" in capsys.readouterr().err
    payload = torch.load(ckpt.latest_checkpoint(tmp_path), weights_only=True)
    assert payload["config"]["train"]["lr"] == 1e-3
    # changing only bookkeeping (log/checkpoint frequency) keeps the run resumable
    _, again = setup["run"](tmp_path, steps=4, checkpoint_every=3, lr=1e-3, log_every=2)
    assert again.resumed_from == 4


def test_nan_in_data_stops_and_keeps_last_good_checkpoint(setup, tmp_path):
    ns = setup

    def next_batch(step, g):
        x = ns["next_batch"](step, g)
        if step == 6:   # the 7th step
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x

    with pytest.raises(DsmError, match=r"step 7: loss is nan") as exc:
        fit(ns["make_model"](), next_batch, dict(ns["CFG"], checkpoint_every=5), tmp_path)
    assert "step_00000005.pt" in str(exc.value)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == latest.name == "step_00000005.pt"
    payload = ckpt.load_checkpoint(latest)
    assert payload["step"] == 5 and ckpt.all_finite(payload["model"])
    assert ckpt.all_finite(payload["optimizer"]["state"])
    model = ns["make_model"]()
    model.load_state_dict(payload["model"])


def test_custom_loss_and_vector_data(tmp_path):
    """The generic loop on in-memory vectors with a caller-supplied loss (Figure-1 style)."""
    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.log_var = torch.nn.Parameter(torch.zeros(()))

        def energy(self, y, t):
            v = self.log_var.exp() + t   # N(0, v I) up to a constant, for the TSM term too
            return 0.5 * y.pow(2).sum(1) / v + 0.5 * y.shape[1] * torch.log(v)

    from dsm.objectives import dual_score_matching_loss

    data = 2.0 * torch.randn(512, 100, generator=torch.Generator().manual_seed(0))
    seen = []

    def loss_fn(model, x, t, z):
        seen.append(x.shape)
        return dual_score_matching_loss(model, x, t, z)

    model = Quadratic()
    cfg = dict(steps=300, batch_size=64, lr=5e-2, lr_halve_every=100, t_min=1e-2, t_max=1e2, seed=0,
               log_every=50, checkpoint_every=300, threads=1, progress=False)
    fit(model, lambda s, g: data[torch.randint(0, 512, (64,), generator=g)], cfg, tmp_path, loss_fn=loss_fn)
    assert seen[0] == (64, 100)
    assert abs(model.log_var.exp().item() - 4.0) < 0.3   # learns the data variance


def test_image_batches_cycle_small_sets_and_are_pure(tmp_path):
    class FakeStore:
        d = 4
        shape = (1, 2, 2)

        def images(self, idx):
            idx = np.asarray(idx)
            return np.broadcast_to(idx[:, None, None, None].astype(np.float32), (len(idx), 1, 2, 2)).copy()

    idx = np.array([10, 11, 12])
    b = ImageBatches(FakeStore(), idx, batch_size=7, seed=0, hflip=True, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x0 = b(0, g)
    assert x0.shape == (7, 1, 2, 2)
    seen = x0[:, 0, 0, 0].tolist()
    assert sorted(seen[:3]) == [10, 11, 12] and sorted(seen[3:6]) == [10, 11, 12]  # whole epochs
    # the batch of a step depends on the step only (resume needs no sampler state)
    def batch(step):
        return ImageBatches(FakeStore(), idx, 7, 0, False, torch.device("cpu"))(step, torch.Generator())

    later = ImageBatches(FakeStore(), idx, 7, 0, False, torch.device("cpu"))
    for s in range(5):
        later(s, torch.Generator())
    assert torch.equal(later(5, torch.Generator()), batch(5))
    assert not torch.equal(batch(5), batch(6))


def test_hflip_flips_half(tmp_path):
    class FakeStore:
        d = 2
        shape = (1, 1, 2)

        def images(self, idx):
            return np.tile(np.array([[[[0.0, 1.0]]]], np.float32), (len(idx), 1, 1, 1))

    b = ImageBatches(FakeStore(), np.arange(4), batch_size=400, seed=0, hflip=True,
                     device=torch.device("cpu"))
    x = b(0, torch.Generator().manual_seed(0))
    flipped = (x[:, 0, 0, 0] == 1.0).float().mean().item()
    assert 0.4 < flipped < 0.6


def test_ema_is_the_running_average_and_survives_resume(setup, tmp_path):
    """train.ema: the run ends with the EMA of the parameters, e_k = d e_{k-1} + (1 - d) p_k
    (e_0 = the initial weights), computed here by hand from a plain run's weights after each
    step; a run interrupted by SIGUSR1 and resumed ends with the same EMA, bit for bit."""
    decay, ns = 0.9, setup
    model = ns["make_model"]()
    ema = [p.detach().clone() for p in model.parameters()]

    def recording(step, g):   # called before step `step`: the weights after `step` steps
        if step > 0:
            with torch.no_grad():
                for e, p in zip(ema, model.parameters()):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        return ns["next_batch"](step, g)

    fit(model, recording, ns["CFG"], tmp_path / "plain")
    with torch.no_grad():
        for e, p in zip(ema, model.parameters()):   # the last step's weights
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
    got, _ = ns["run"](tmp_path / "ema", ema=decay)
    for e, p in zip(ema, got.parameters()):
        assert torch.allclose(p, e, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(got.parameters(), model.parameters()))

    def interrupt(step, g):
        if step == 10:
            os.kill(os.getpid(), signal.SIGUSR1)   # arrives during step 11
        return ns["next_batch"](step, g)

    with pytest.raises(SystemExit):
        fit(ns["make_model"](), interrupt, dict(ns["CFG"], ema=decay), tmp_path / "resume")
    again, result = ns["run"](tmp_path / "resume", ema=decay)
    assert result.resumed_from == 11
    assert_same_params(again.state_dict(), got.state_dict())
