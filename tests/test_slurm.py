"""The SLURM profile (workflow/profiles/slurm), proven against a real SLURM.

* Without a cluster (always): a dry run at the paper scale through the SLURM profile plans
  one GPU for every training job, and the profile only uses options the plugin accepts.
* With a cluster (marker `slurm`): as root with apt-get, scripts/slurm-localhost.sh installs
  and starts a single-node SLURM on localhost (one fake GPU, accounting in MariaDB); the
  smoke-scale pipeline runs through the profile to figures/fig2.pdf and `sacct` must list
  every job of the DAG as COMPLETED, the training jobs with gres/gpu=1; a training job
  cancelled with `scancel --signal=TERM` is retried by Snakemake, resumes from its
  checkpoint, and ends bitwise equal to an uninterrupted run. The cluster is stopped (by
  PID) at the end if this session started it.

Environment: DSM_SLURM_TESTS=0 skips the cluster tests; otherwise they run whenever root and
apt-get (or an installed SLURM) are there, and say why when they skip.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dsm.pipeline.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-localhost.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
VENV_BIN = Path(sys.executable).parent
PARTITION = "debug"            # what slurm-localhost.sh creates
ACCOUNT = "dsm"
TRAIN_RULES = {"train", "train_full", "train_score"}   # rules that train a model (must get a GPU)
# the copies of finished figures (publish_*, fig1_figure) run on the submitting host
LOCAL_RULES = {s.name for s in STAGES.values() if s.local}
COPY_EXCLUDES = {".venv", ".git", ".snakemake", ".pytest_cache", "data", "models", "results",
                 "logs", "benchmarks", "dvc_plots", "__pycache__", ".dvc"}


def _env() -> dict:
    """The environment of the Snakemake runs: the venv's `dsm`/`snakemake` first on PATH.

    sbatch --export=ALL hands it to the jobs, so they find `dsm` the same way.
    """
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SNAKEMAKE_PROFILE", None)
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        del env[var]
    return env


def _snakemake() -> str:
    exe = VENV_BIN / "snakemake"
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "snakemake")


# --- without a cluster ------------------------------------------------------------------

def _job_blocks(text: str):
    """(rule, block text) for every job Snakemake prints (dry run or real run)."""
    parts = re.split(r"^(?:local)?rule (\S+):\s*$", text, flags=re.M)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _resources(block: str) -> dict:
    m = re.search(r"^\s*resources: (.*)$", block, flags=re.M)
    out = {}
    if m:
        for item in m.group(1).split(", "):
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_paper_dry_run_plans_a_gpu_for_every_training_job(tmp_path):
    """`snakemake --profile workflow/profiles/slurm -n all` at the paper scale."""
    cmd = ["timeout", "-k", "10", "240", _snakemake(), "--profile", str(PROFILE), "-n", "--nolock",
           "all", "--config", "scale=paper"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = _job_blocks(out)
    train = [(rule, _resources(block)) for rule, block in jobs if rule in TRAIN_RULES]
    assert train, f"no training job in the paper-scale plan:\n{out[-3000:]}"
    for rule, res in train:
        assert int(res.get("gpu", 0)) >= 1, f"{rule} without a GPU: {res}"
    # The profile's cluster settings reach every job (a workflow profile that sets
    # default-resources would silently replace them).
    planned = [(rule, _resources(block)) for rule, block in jobs if rule != "all" and rule not in LOCAL_RULES]
    for rule, res in planned:
        assert "slurm_partition" in res and "slurm_account" in res, (rule, res)
    evaluate = [res for rule, res in planned if rule in {"normalize", "evaluate"}]
    assert evaluate and all(int(r.get("gpu", 0)) >= 1 for r in evaluate), evaluate


def test_profile_only_uses_what_the_plugin_accepts():
    from snakemake_executor_plugin_slurm.validation import get_forbidden_slurm_options

    cfg = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    assert {"slurm_partition", "slurm_account", "mem_mb", "runtime"} <= set(cfg["default-resources"])
    assert int(cfg["retries"]) >= 1 and cfg["slurm-requeue"] is True
    for rule, res in (cfg.get("set-resources") or {}).items():
        extra = str(res.get("slurm_extra", ""))
        for pattern, name in get_forbidden_slurm_options().items():
            assert not re.search(pattern, extra), f"{rule}: slurm_extra sets the {name}"
        assert "gpu" not in extra and "gres" not in extra, f"{rule}: GPUs belong in `gpu`, not slurm_extra"


# --- the real cluster -------------------------------------------------------------------

def _sh(*args, timeout=60, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _skip(reason: str):
    msg = f"SLURM tests skipped: {reason}"
    print(msg, file=sys.stderr)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM; started (and at the end stopped) here if needed."""
    if os.environ.get("DSM_SLURM_TESTS", "") == "0":
        _skip("DSM_SLURM_TESTS=0")
    if os.name != "posix" or os.geteuid() != 0:
        _skip("not root (scripts/slurm-localhost.sh installs and starts SLURM as root)")
    installed = all(shutil.which(b) or Path("/usr/sbin", b).exists()
                    for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sacct"))
    if not installed and not shutil.which("apt-get"):
        _skip("no apt-get to install SLURM (Debian/Ubuntu only)")
    if not (VENV_BIN / "dsm").exists():
        pytest.fail(f"{VENV_BIN}/dsm missing: the jobs need the dsm command (make venv)")
    already = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=30)
    ours = already.returncode != 0

    def stop():
        if ours:  # we started it: stop every daemon it started, by PID, in reverse order
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=180)

    t0 = time.monotonic()
    # Two fake GPUs, so that two training jobs run at once on a 2-core node.
    env = dict(os.environ, DSM_SLURM_GPUS=os.environ.get("DSM_SLURM_GPUS", "2"))
    try:
        started = _sh(str(SCRIPT), "start", timeout=900, check=False, env=env)
    except subprocess.TimeoutExpired:
        stop()
        pytest.fail("scripts/slurm-localhost.sh start: no cluster after 900 s")
    if started.returncode != 0:
        stop()
        pytest.fail(f"scripts/slurm-localhost.sh start failed ({started.returncode}):\n"
                    f"{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    print(f"SLURM up in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    try:
        yield {"partition": PARTITION, "account": ACCOUNT}
    finally:
        stop()


def _copy_tree(dest: Path) -> Path:
    """The working tree (committed or not) without outputs, venv or metadata."""
    def ignore(folder, names):
        top = Path(folder) == REPO
        return [n for n in names if (top and n in COPY_EXCLUDES) or n in {"__pycache__", ".snakemake"}]
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    for stale in (dest / "figures").glob("*.pdf"):
        stale.unlink()
    return dest


def _test_profile(repo: Path, cluster: dict) -> Path:
    """The repo's SLURM profile, pointed at the local partition/account (the one place a
    user edits), a GPU for training also at the smoke scale, and quicker status polling."""
    cfg = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    dr = cfg.setdefault("default-resources", {})
    dr["slurm_partition"] = f"'{cluster['partition']}'"
    dr["slurm_account"] = f"'{cluster['account']}'"
    sr = cfg.setdefault("set-resources", {}) or {}
    cfg["set-resources"] = sr
    for rule in TRAIN_RULES:
        sr.setdefault(rule, {})["gpu"] = 1   # smoke params ask for none; the paper's ask for 1
    cfg["slurm-init-seconds-before-status-checks"] = 2
    cfg["jobs"] = 8
    cfg["show-failed-logs"] = True
    out = repo / ".test-profile-slurm"
    out.mkdir(exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


@pytest.fixture(scope="session")
def slurm_repo(slurm_cluster, tmp_path_factory):
    repo = _copy_tree(tmp_path_factory.mktemp("slurm") / "repo")
    return repo, _test_profile(repo, slurm_cluster)


def _sacct(run_id: str) -> list[dict]:
    out = _sh("sacct", "-X", "-P", "-n", "--starttime", "now-1days", "--name", run_id,
              "-o", "JobIDRaw,State,ExitCode,AllocTRES,Comment%200", timeout=30).stdout
    rows = []
    for line in out.splitlines():
        jid, state, code, tres, comment = (line.split("|") + [""] * 5)[:5]
        rule = re.sub(r"^rule_", "", comment).split("_wildcards_")[0]
        rows.append({"id": jid, "state": state, "exit": code, "tres": tres, "rule": rule,
                     "comment": comment})
    return rows


def _run_id(log: str) -> str:
    m = re.search(r"SLURM run ID: (\S+)", log)
    assert m, f"no SLURM run ID in the Snakemake output:\n{log[-3000:]}"
    return m.group(1)


def _job_stats(log: str) -> dict:
    """Snakemake's 'Job stats' table: rule -> number of jobs in the DAG."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", log, flags=re.S)
    assert m, f"no job stats in the Snakemake output:\n{log[-3000:]}"
    return {r: int(n) for r, n in (line.split() for line in m.group(1).splitlines())}


def _snakemake_cmd(profile: Path, targets: list[str], limit: int) -> list[str]:
    # The plugin waits through SIGTERM; SIGINT makes Snakemake cancel its jobs and stop.
    return ["timeout", "-s", "INT", "-k", "15", str(limit), _snakemake(), "--profile", str(profile),
            *targets, "--config", "scale=smoke"]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.tier2
def test_smoke_pipeline_runs_through_slurm(slurm_repo):
    repo, profile = slurm_repo
    t0 = time.monotonic()
    proc = subprocess.run(_snakemake_cmd(profile, ["figures/fig2.pdf"], 600), cwd=repo, env=_env(),
                          capture_output=True, text=True, timeout=660)
    log = proc.stdout + proc.stderr
    (repo / "snakemake-slurm.log").write_text(log)
    print(f"smoke pipeline through SLURM: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    assert proc.returncode == 0, log[-6000:]
    assert (repo / "figures" / "fig2.pdf").stat().st_size > 0

    stats = {rule: n for rule, n in _job_stats(log).items() if rule not in LOCAL_RULES}
    local = set(re.findall(r"^localrule (\S+):", log, flags=re.M))
    assert local <= LOCAL_RULES, f"jobs of the DAG ran outside SLURM: {local - LOCAL_RULES}"
    rows = _sacct(_run_id(log))
    table = "\n".join(f"{r['id']:>6} {r['state']:<10} {r['rule']:<10} {r['tres']}" for r in rows)
    print(f"sacct:\n{table}", file=sys.stderr)
    (repo / "sacct.txt").write_text(table + "\n")
    assert all(r["state"] == "COMPLETED" for r in rows), table
    ran = {}
    for r in rows:
        ran[r["rule"]] = ran.get(r["rule"], 0) + 1
    assert ran == stats, f"DAG {stats} != SLURM jobs {ran}\n{table}"
    train = [r for r in rows if r["rule"] in TRAIN_RULES]
    assert train and all("gres/gpu=1" in r["tres"].split(",") for r in train), table


def _edit_smoke_train(repo: Path, **train):
    """Change keys of the smoke scale's `train:` section of the copy's params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    smoke = copy.deepcopy(params["scales"]["smoke"])
    smoke["train"].update(train)
    params["scales"]["smoke"] = smoke
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _tensors(obj, prefix=""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.tier2
def test_training_job_resumes_after_sigterm(slurm_repo):
    """scancel --signal=TERM a running training job: the retry resumes, same final model."""
    import torch

    repo, profile = slurm_repo
    steps, every = 200, 10
    _edit_smoke_train(repo, steps=steps, checkpoint_every=every, log_every=every)
    n, split = 10, "A"
    run_dir = repo / f"models/smoke/seed0/N{n}-{split}"
    shutil.rmtree(run_dir, ignore_errors=True)
    ref_dir = repo / "ref" / f"N{n}-{split}"
    shutil.rmtree(ref_dir, ignore_errors=True)
    target = f"models/smoke/seed0/N{n}-{split}/model.pt"

    t0 = time.monotonic()
    log_path = repo / "snakemake-preempt.log"
    with open(log_path, "w") as log_file:
        sm = subprocess.Popen(_snakemake_cmd(profile, [target], 420), cwd=repo, env=_env(),
                              stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # The data (prepare, split) may have to be made first; then wait for the training
            # job to run and to have written a checkpoint.
            latest = run_dir / "checkpoints" / "latest"
            job = None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and sm.poll() is None:
                if latest.exists():
                    q = _sh("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k", timeout=30).stdout
                    jobs = [line.split("|")[0] for line in q.splitlines() if "|rule_train_wildcards_" in line]
                    if jobs:
                        job = jobs[0]
                        break
                time.sleep(0.2)
            assert job, f"no running training job with a checkpoint:\n{log_path.read_text()[-4000:]}"
            signalled_at = latest.read_text().strip()
            _sh("scancel", "--signal=TERM", job, timeout=30)
            print(f"SIGTERM to SLURM job {job} (latest checkpoint: {signalled_at})", file=sys.stderr)

            # Meanwhile, the uninterrupted reference run (same params, data, threads).
            ref_env = _env()
            ref_env.update(OMP_NUM_THREADS="2")   # the job's threads come from params, not from here
            ref = subprocess.run(
                ["timeout", "-k", "10", "420", str(VENV_BIN / "dsm"), "train", "--params", "params.yaml",
                 "--scale", "smoke", "--data", "data/smoke/images", "--splits", "data/smoke/splits.parquet",
                 "--N", str(n), "--split", split, "--seed", "0", "--out", str(ref_dir)],
                cwd=repo, env=ref_env, capture_output=True, text=True, timeout=480)
            assert ref.returncode == 0, ref.stderr[-3000:]
            rc = sm.wait(timeout=480)
        finally:
            if sm.poll() is None:
                os.killpg(sm.pid, signal.SIGINT)
                try:
                    sm.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(sm.pid, signal.SIGKILL)
    log = log_path.read_text()
    print(f"preemption test: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    assert rc == 0, log[-6000:]

    rows = [r for r in _sacct(_run_id(log)) if r["rule"] == "train"]
    table = "\n".join(f"{r['id']:>6} {r['state']:<10} {r['exit']:<6} {r['tres']}" for r in rows)
    print(f"sacct (training jobs):\n{table}", file=sys.stderr)
    (repo / "sacct-preempt.txt").write_text(table + "\n")
    assert len(rows) >= 2, f"no retry:\n{table}"
    first, last = rows[0], rows[-1]
    assert first["id"] == job and first["state"] in {"FAILED", "CANCELLED"}, table
    assert last["state"] == "COMPLETED" and "gres/gpu=1" in last["tres"], table

    # The retry resumed from the checkpoint instead of starting over.
    train_log = (repo / f"logs/smoke/train/seed0/N{n}-{split}.log").read_text()
    m = re.search(r"resuming from \S+ \(step (\d+)/(\d+)\)", train_log)
    assert m, f"the retry did not resume:\n{train_log[-3000:]}"
    resumed = int(m.group(1))
    assert 0 < resumed < steps, m.group(0)
    # ... and from the checkpoint written on SIGTERM, not only from the periodic one seen before.
    mp = re.search(r"step_(\d+)", signalled_at)
    periodic = int(mp.group(1)) if mp else 0
    assert resumed > periodic, (m.group(0), signalled_at)
    # Diagnostic: did the shell around `dsm train` survive the signal? (`exec dsm train` in
    # the rule keeps the trainer the direct child of Snakemake, which waits for it.)
    failed_log = "\n".join(p.read_text() for p in (repo / "logs/slurm/rule_train").rglob(f"{job}.log"))
    how = "shell died of SIGTERM" if "died with <Signals.SIGTERM" in failed_log else "clean non-zero exit"
    print(f"interrupted attempt: {how}; resumed from step {resumed} "
          f"(periodic checkpoint before the signal: {periodic})", file=sys.stderr)
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if line.strip()]
    assert logged == sorted(set(logged)) and logged[-1] == steps, logged

    # Bitwise the same model as the uninterrupted run.
    got = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    want = torch.load(ref_dir / "model.pt", map_location="cpu", weights_only=True)
    got_t, want_t = dict(_tensors(got)), dict(_tensors(want))
    assert got_t and got_t.keys() == want_t.keys()
    differ = [k for k in got_t if not torch.equal(got_t[k], want_t[k])]
    assert not differ, f"tensors differ from the uninterrupted run: {differ[:10]}"
