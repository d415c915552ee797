"""Faults a user can hit by accident (issue 10), each reproduced as the issue states it.

Setup (the issue's): the smoke scale of params.yaml, a prepared store, splits, one model
(N = 10, split A), its normalization constant and per-image table, all through the `dsm`
command line (in this process: ``dsm.cli.main``; one-line errors go to stderr).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsm.cli import main
from dsm.errors import DsmError

REPO = Path(__file__).resolve().parent.parent
S = ["--params", str(REPO / "params.yaml"), "--scale", "smoke"]


def cli(capsys, *args) -> tuple[int, str]:
    """``dsm ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_line_error(err: str, cmd: str) -> str:
    """The error line of ``err``: it must start a line and be the only ``error:`` line."""
    lines = [line for line in err.split("\n") if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dsm {cmd}: error: "), repr(err)
    return lines[0]


def files(path: Path) -> dict:
    """{relative path: bytes} of every file under ``path``."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    w = tmp_path_factory.mktemp("smoke")
    t = [*S, "--data", w / "images", "--splits", w / "sp.parquet", "--N", "10", "--split", "A"]
    for args in (["prepare", *S, "--out", w / "images"],
                 ["split", *S, "--data", w / "images", "--out", w / "sp.parquet"],
                 ["train", *t, "--out", w / "run"],
                 ["normalize", *S, "--model", w / "run/model.pt", "--data", w / "images",
                  "--out", w / "norm.json"],
                 ["evaluate", *t, "--model", w / "run/model.pt", "--norm", w / "norm.json",
                  "--out", w / "logp.parquet"]):
        assert main([str(a) for a in args]) == 0, args
    return {"w": w, "T": t}


def temps(path: Path) -> list[str]:
    """Temporary files or directories (hidden, named *.tmp*, *.old*) anywhere under ``path``."""
    return sorted(p.name for p in path.rglob(".*") if ".tmp" in p.name or ".old" in p.name)


# --- 1. `dsm prepare --out` deletes whatever is there --------------------------------------

def test_prepare_refuses_a_folder_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "d/x").mkdir(parents=True)
    (tmp_path / "d/x/f").write_text("keep\n")
    rc, err = cli(capsys, "prepare", *S, "--out", tmp_path / "d")
    assert rc == 2 and "refusing to replace it" in one_line_error(err, "prepare")
    assert str(tmp_path / "d") in err
    assert (tmp_path / "d/x/f").read_text() == "keep\n" and not temps(tmp_path)
    (tmp_path / "f").write_text("a file\n")
    rc, err = cli(capsys, "prepare", *S, "--out", tmp_path / "f")
    assert rc == 2 and (tmp_path / "f").read_text() == "a file\n"
    # an empty directory (what Snakemake or a user creates beforehand) is fine
    (tmp_path / "empty").mkdir()
    rc, err = cli(capsys, "prepare", *S, "--out", tmp_path / "empty")
    assert rc == 0, err
    assert (tmp_path / "empty/done").is_file() and (tmp_path / "empty/train/pixels.npy").is_file()


def test_train_refuses_a_folder_that_is_not_a_run(smoke, tmp_path, capsys):
    """`dsm train --out` is the other command that deletes in its directory (model.pt)."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/todo.txt").write_text("keep\n")
    rc, err = cli(capsys, "train", *smoke["T"], "--out", tmp_path / "notes")
    assert rc == 2 and "not a run directory" in one_line_error(err, "train")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other/model.pt").write_bytes(b"someone else's model")
    rc, err = cli(capsys, "train", *smoke["T"], "--out", tmp_path / "other")
    assert rc == 2 and "refusing to replace it" in one_line_error(err, "train")
    assert files(tmp_path / "other") == {"model.pt": b"someone else's model"}


# --- 2. a failing retrain deletes the good model ---------------------------------------------

def test_failing_retrain_keeps_the_previous_run(smoke, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke["w"] / "run", run)
    good = files(run)
    assert {"model.pt", "checkpoints/step_00000010.pt", "checkpoints/step_00000020.pt"} <= set(good)
    # the reproduction: refused before anything is touched
    rc, err = cli(capsys, "train", *smoke["T"], "--out", run, "--set", "train.batch_size=0")
    assert rc == 2 and "train.batch_size" in one_line_error(err, "train")
    assert files(run) == good
    # a changed config that fails while training (non-finite loss at step 2, before the
    # first checkpoint at step 10): the previous run is untouched, logs included
    rc, err = cli(capsys, "train", *smoke["T"], "--out", run, "--set", "train.lr=1.0e+30")
    assert rc == 2 and "loss is nan" in one_line_error(err, "train")
    assert "the previous run is kept" in err
    assert files(run) == good
    # the changed config that works replaces the previous run once it has a checkpoint
    rc, err = cli(capsys, "train", *smoke["T"], "--out", run, "--set", "train.lr=2.0e-3")
    assert rc == 0 and "removed the previous run" in err
    new = files(run)
    assert new["model.pt"] != good["model.pt"]
    from dsm.checkpoint import list_checkpoints, load_checkpoint

    hashes = {load_checkpoint(p)["config_sha256"] for _, p in list_checkpoints(run)}
    assert hashes == {json.loads(new["config.json"])["config_sha256"]}


# --- 3. Snakemake's --config/--configfile overrides are ignored by the jobs ------------------

def test_config_overrides_other_than_scale_are_refused(tmp_path):
    from dsm.config import check_workflow_config, read_yaml

    params = read_yaml(REPO / "params.yaml")
    check_workflow_config(dict(params, scale="smoke"), REPO / "params.yaml")      # accepted
    changed = json.loads(json.dumps(params))
    changed["scales"]["smoke"]["train"]["lr"] = 0.5
    with pytest.raises(DsmError, match=r"scales\.smoke\.train\.lr = 0\.5 differs from .*params\.yaml "
                                       r"\(0\.001\).*edit .*params\.yaml"):
        check_workflow_config(changed, REPO / "params.yaml")
    with pytest.raises(DsmError, match=r"seeds = \[0, 1\] differs .*\(absent\)"):
        check_workflow_config(dict(params, seeds=[0, 1]), REPO / "params.yaml")


@pytest.mark.slow
def test_snakemake_refuses_a_configfile_override(tmp_path):
    from test_pipeline_util import copy_repo, snakemake

    repo = copy_repo(tmp_path / "r")
    (tmp_path / "o.yaml").write_text("scales: {smoke: {train: {lr: 0.5}}}\n")
    res = snakemake(["all", "--dry-run", "--configfile", str(tmp_path / "o.yaml"), "--config",
                     "scale=smoke"], repo, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "scales.smoke.train.lr = 0.5 differs from params.yaml" in out
    assert "edit params.yaml" in out


# --- 4. --set is validated like the file (after the overrides), same errors ------------------

@pytest.mark.parametrize("override,words", [
    ("train.steps=abc", "train.steps: 'abc' is not of type 'integer'"),
    ("train.lr=fast", "train.lr: 'fast' is not of type 'number'"),
    ("batch_size=0", "batch_size: unknown key"),
    ("train.batch_size=0", "train.batch_size: 0 is less than the minimum of 1"),
    ("train.foo=1", "train.foo: unknown key"),
    ("train.steps=0", "train.steps: 0 is less than the minimum of 1"),
])
def test_set_overrides_are_validated(smoke, tmp_path, capsys, override, words):
    rc, err = cli(capsys, "train", *smoke["T"], "--out", tmp_path / "run", "--set", override)
    line = one_line_error(err, "train")
    assert rc == 2 and line.startswith("dsm train: error: --set (") and words in line
    assert not (tmp_path / "run").exists()


# --- 5. temporaries left by a kill are removed by the next run -------------------------------

def test_stale_temp_rules(tmp_path):
    """Removed: a dead writer's, a reused PID's, an old one of another host. Kept: a live
    writer's (a concurrent run), this process's, a recent one of another host, other names."""
    from dsm.io import remove_stale_temps, temp_prefix

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.05)
        me = temp_prefix("x.parquet")
        host = me.split(".")[-2]
        made = {
            "dead": f".x.parquet.{dead.pid}.{host}.abcdefgh.tmp",
            "live": f".x.parquet.{live.pid}.{host}.abcdefgh.tmp",
            "reused": f".x.parquet.{live.pid}.{host}.reusedpi.tmp",
            "mine": f"{me}abcdefgh.tmp",
            "foreign_old": f".x.parquet.{dead.pid}.elsewhere.abcdefgh.tmp",
            "foreign_new": f".x.parquet.{dead.pid}.elsewhere.newnewne.tmp",
            "other_name": f".y.parquet.{dead.pid}.{host}.abcdefgh.tmp",
        }
        for p in made.values():
            (tmp_path / p).write_text("partial")
        old = time.time() - 2 * 24 * 3600
        os.utime(tmp_path / made["reused"], (old, old))        # written before `live` started
        os.utime(tmp_path / made["foreign_old"], (old, old))
        removed = {p.name for p in remove_stale_temps(tmp_path, "x.parquet", quiet=True)}
        assert removed == {made["dead"], made["reused"], made["foreign_old"]}
    finally:
        live.kill()
        live.wait()


def _kill_when(cmd_code: str, cwd: Path, glob: str, timeout=120) -> Path:
    """Run ``python -c cmd_code``; SIGKILL it once a file matching ``glob`` exists in cwd."""
    proc = subprocess.Popen([sys.executable, "-c", cmd_code], cwd=cwd, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = list(cwd.glob(glob))
            if found:
                time.sleep(0.2)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return found[0]
            if proc.poll() is not None:
                raise AssertionError(f"ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        raise AssertionError("no temporary appeared")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SLOW = textwrap.dedent("""
    import sys, time
    import {module} as m
    orig = m.{name}
    def slow(*a, **k):
        out = orig(*a, **k)
        if hasattr(out, "__next__"):
            def gen():
                for x in out:
                    time.sleep(0.3)
                    yield x
            return gen()
        time.sleep(0.3)
        return out
    m.{name} = slow           # a slower run of the real command, so the kill lands mid-write
    from dsm.cli import main
    sys.exit(main({argv!r}))
""")


def test_killed_prepare_and_evaluate_leave_temps_the_next_run_removes(smoke, tmp_path, capsys):
    w = smoke["w"]
    # prepare: the temporary store directory beside --out
    argv = ["prepare", *S, "--out", str(tmp_path / "images")]
    tmp = _kill_when(SLOW.format(module="dsm.data.store", name="row_hashes", argv=argv), tmp_path,
                     ".images.*.tmp")
    assert tmp.is_dir() and not (tmp_path / "images").exists()
    rc, err = cli(capsys, *argv)
    assert rc == 0 and f"removed {tmp}" in err and not tmp.exists() and not temps(tmp_path)
    assert files(tmp_path / "images") == files(w / "images")
    # evaluate: the temporary Parquet file beside --out
    argv = ["evaluate", *[str(a) for a in smoke["T"]], "--model", str(w / "run/model.pt"),
            "--norm", str(w / "norm.json"), "--out", str(tmp_path / "N10-A.parquet")]
    tmp = _kill_when(SLOW.format(module="dsm.evaluate", name="evaluate_images", argv=argv), tmp_path,
                     ".N10-A.parquet.*.tmp")
    assert tmp.is_file() and not (tmp_path / "N10-A.parquet").exists()
    rc, err = cli(capsys, *argv)
    assert rc == 0 and f"removed {tmp}" in err and not temps(tmp_path)
    assert (tmp_path / "N10-A.parquet").read_bytes() == (w / "logp.parquet").read_bytes()


def test_a_concurrent_runs_temp_is_left_alone(tmp_path):
    from dsm.io import write_json

    code = textwrap.dedent(f"""
        import time
        from dsm.io import atomic_path
        with atomic_path({str(tmp_path / "m.json")!r}) as tmp:
            tmp.write_text("{{}}")
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 60
        while not temps(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        theirs = temps(tmp_path)
        assert len(theirs) == 1
        write_json(tmp_path / "m.json", {"a": 1})            # another run writes the same file
        assert temps(tmp_path) == theirs                      # the live writer's temp survives
    finally:
        proc.kill()
        proc.wait()
    write_json(tmp_path / "m.json", {"a": 2})                 # its writer is gone now
    assert not temps(tmp_path)


# --- 6. tracebacks instead of one-line errors: corrupt inputs, a full disk ---------------------

def _truncate(path: Path, keep: int = 300) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_corrupt_inputs_give_one_line_errors(smoke, tmp_path, capsys):
    w = smoke["w"]
    shutil.copyfile(w / "sp.parquet", tmp_path / "sp.parquet")
    _truncate(tmp_path / "sp.parquet")
    t = [*S, "--data", w / "images", "--N", "10", "--split", "A"]
    rc, err = cli(capsys, "train", *t, "--splits", tmp_path / "sp.parquet", "--out", tmp_path / "run")
    assert rc == 2 and f"{tmp_path / 'sp.parquet'}: cannot read Parquet" in one_line_error(err, "train")

    shutil.copytree(w / "images", tmp_path / "images")
    _truncate(tmp_path / "images/train/index.parquet")
    rc, err = cli(capsys, "split", *S, "--data", tmp_path / "images", "--out", tmp_path / "s.parquet")
    assert rc == 2 and "index.parquet: cannot read Parquet" in one_line_error(err, "split")
    (tmp_path / "images/train/meta.json").write_text('{"n": ')
    rc, err = cli(capsys, "split", *S, "--data", tmp_path / "images", "--out", tmp_path / "s.parquet")
    assert rc == 2 and "meta.json: not valid JSON" in one_line_error(err, "split")

    logp = tmp_path / "logp/seed0"
    logp.mkdir(parents=True)
    shutil.copyfile(w / "logp.parquet", logp / "N1-A.parquet")
    _truncate(logp / "N1-A.parquet")
    rc, err = cli(capsys, "compare", *S, "--logp", tmp_path / "logp", "--metrics", tmp_path / "m",
                  "--details", tmp_path / "d.json")
    assert rc == 2 and "N1-A.parquet: cannot read Parquet" in one_line_error(err, "compare")

    (tmp_path / "d.json").write_text('{"by_N": {"1": ')
    rc, err = cli(capsys, "fig2", *S, "--logp", tmp_path / "logp", "--details", tmp_path / "d.json",
                  "--out", tmp_path / "f.pdf")
    assert rc == 2 and "d.json: not valid JSON" in one_line_error(err, "fig2")

    (tmp_path / "norm.json").write_text('{"c_nats": 1.')
    rc, err = cli(capsys, "evaluate", *smoke["T"], "--model", w / "run/model.pt", "--norm",
                  tmp_path / "norm.json", "--out", tmp_path / "e.parquet")
    assert rc == 2 and "norm.json: not valid JSON" in one_line_error(err, "evaluate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "images", "logp", "norm.json",
                                                          "sp.parquet"]


@pytest.fixture
def small_disk(tmp_path):
    """A 5 MB tmpfs (as root where mount works); None otherwise."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0 or os.environ.get("DSM_TEST_NO_TMPFS"):
        yield None
        return
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)],
                         capture_output=True)
    if res.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_is_a_one_line_error_naming_the_path(smoke, small_disk, tmp_path, capsys,
                                                       monkeypatch):
    """On a 5 MB tmpfs: `dsm train` (3.6 MB of checkpoints and model) runs out of space at
    its second checkpoint; `dsm fig2` on the full disk. Where no tmpfs can be mounted, the
    write is made to fail with ENOSPC instead (monkeypatched; the message is the same)."""
    import dsm.io

    w = smoke["w"]
    logp = tmp_path / "logp"
    for n in (1, 10):
        for s in "AB":
            (logp / "seed0").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(w / "logp.parquet", logp / f"seed0/N{n}-{s}.parquet")
    assert main([str(a) for a in ["compare", *S, "--logp", logp, "--metrics", tmp_path / "m",
                                   "--details", tmp_path / "d.json"]]) == 0
    if small_disk is None:
        def full(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(dsm.io._RecordingWriter, "write", full)
        import matplotlib.figure

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                            lambda *a, **k: full(None, None))
        disk = tmp_path / "disk"
    else:
        disk = small_disk
        (disk / "fill").write_bytes(b"\0" * (2500 * 1024))
    rc, err = cli(capsys, "train", *smoke["T"], "--out", disk / "run")
    line = one_line_error(err, "train")
    assert rc == 2 and "no space left on the device of" in line and str(disk / "run/checkpoints") in line
    assert not temps(disk) and not (disk / "run/model.pt").exists()
    if small_disk is not None:
        # what was written before is intact: the first checkpoint (a rerun resumes from it)
        assert sorted(p.name for p in (disk / "run/checkpoints").iterdir()) == ["latest", "step_00000010.pt"]
        with open(disk / "fill", "ab", buffering=0) as f:      # now fill the disk
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    rc, err = cli(capsys, "fig2", *S, "--logp", logp, "--details", tmp_path / "d.json", "--out",
                  disk / "fig2.pdf")
    line = one_line_error(err, "fig2")
    assert rc == 2 and "no space left on the device of" in line and "fig2.pdf" in line
    assert not temps(disk) and not (disk / "fig2.pdf").exists()


# --- 7. a NaN normalization constant is accepted --------------------------------------------

@pytest.mark.parametrize("text,key", [('{"c_nats": NaN}', "non-finite number NaN"),
                                      ('{"c_nats": Infinity}', "non-finite number Infinity"),
                                      ('{"c_nats": 3.0, "c_sem_nats": NaN}', "non-finite number NaN"),
                                      ('{"c_nats": "3"}', "c_nats: expected a number")])
def test_non_finite_normalization_constant_is_refused(smoke, tmp_path, capsys, text, key):
    w = smoke["w"]
    (tmp_path / "norm.json").write_text(text)
    rc, err = cli(capsys, "evaluate", *smoke["T"], "--model", w / "run/model.pt", "--norm",
                  tmp_path / "norm.json", "--out", tmp_path / "e.parquet")
    line = one_line_error(err, "evaluate")
    assert rc == 2 and key in line and str(tmp_path / "norm.json") in line
    assert not (tmp_path / "e.parquet").exists() and not temps(tmp_path)


# --- 8. a corrupt latest checkpoint blocks the run forever ------------------------------------

def test_corrupt_latest_checkpoint_falls_back_to_an_older_one(smoke, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke["w"] / "run", run)
    _truncate(run / "model.pt", 1000)             # damaged too: replaced, not refused
    _truncate(run / "checkpoints/step_00000020.pt", 100_000)
    rc, err = cli(capsys, "train", *smoke["T"], "--out", run)
    assert rc == 0, err
    assert "model.pt: cannot read model file" in err and "it will be replaced" in err
    assert "step_00000020.pt: cannot read checkpoint" in err and "falling back" in err
    assert f"resuming from {run / 'checkpoints/step_00000010.pt'}" in err
    # resumed from step 10 exactly: the same model file as the uninterrupted run
    assert (run / "model.pt").read_bytes() == (smoke["w"] / "run/model.pt").read_bytes()


# --- 9. outputs are mode 0600 whatever the umask --------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(smoke, tmp_path, capsys, mask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from dsm.figures.output import save_figure
    from dsm.io import write_json, write_parquet
    from dsm.modelfile import save_deterministic

    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        write_parquet(tmp_path / "a.parquet", pd.DataFrame({"a": [1]}))
        save_deterministic({"a": 1}, tmp_path / "a.pt")
        save_figure(plt.figure(), tmp_path / "a.pdf")
        w = smoke["w"]
        rc, err = cli(capsys, "normalize", *S, "--model", w / "run/model.pt", "--data", w / "images",
                      "--out", tmp_path / "norm.json")
        assert rc == 0, err
        rc, err = cli(capsys, "prepare", *S, "--set", "data.n_train=20", "--set", "split.N=[1]",
                      "--out", tmp_path / "images")
        assert rc == 0, err
    finally:
        os.umask(old)
    for name in ("a.json", "a.parquet", "a.pt", "a.pdf", "norm.json", "images/train/index.parquet",
                 "images/done"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    assert (tmp_path / "images").stat().st_mode & 0o777 == 0o777 & ~mask


# --- 10. an index rewritten by pandas is called corrupt --------------------------------------

@pytest.mark.parametrize("kind", ["pandas", "large_string", "string_view", "dictionary"])
def test_split_accepts_every_arrow_string_type(smoke, tmp_path, capsys, kind):
    w = smoke["w"]
    shutil.copytree(w / "images", tmp_path / "images")
    index = tmp_path / "images/train/index.parquet"
    if kind == "pandas":
        import pandas as pd

        df = pd.read_parquet(index)
        df["content_hash"] = df["content_hash"].astype(pd.ArrowDtype(pa.large_string()))
        df.to_parquet(index, index=False)
    else:
        table = pq.read_table(index)
        for col in ("image_id", "content_hash"):
            arr = table.column(col)
            arr = arr.dictionary_encode() if kind == "dictionary" else arr.cast(getattr(pa, kind)())
            table = table.set_column(table.schema.get_field_index(col), col, arr)
        pq.write_table(table, index)
    rc, err = cli(capsys, "split", *S, "--data", tmp_path / "images", "--out", tmp_path / "sp.parquet")
    assert rc == 0, err
    assert (tmp_path / "sp.parquet").read_bytes() == (w / "sp.parquet").read_bytes()


# --- also: error lines after a progress bar; a bad key inherited through a YAML merge ---------

def test_error_line_starts_a_line_after_a_progress_bar(smoke, tmp_path, capsys):
    shutil.copytree(smoke["w"] / "images", tmp_path / "images")
    px = np.load(tmp_path / "images/train/pixels.npy", mmap_mode="r+")
    px[3, 0, 0, 0] += 0.5                 # image 3 no longer matches its content hash
    px.flush()
    del px
    rc, err = cli(capsys, "split", *S, "--data", tmp_path / "images", "--out", tmp_path / "sp.parquet")
    assert rc == 2 and "split: verify content hashes" in err       # the bar was drawn
    assert "image 3 does not match its content_hash" in one_line_error(err, "split")


def test_bad_key_through_a_yaml_merge_names_both_sections(tmp_path):
    from dsm.config import load_scale

    lines = (REPO / "params.yaml").read_text().splitlines(keepends=True)
    paper = next(i for i, line in enumerate(lines) if line.startswith("  paper:"))
    ev = next(i for i in range(paper, len(lines)) if lines[i].startswith("    evaluate:"))
    lines.insert(ev + 1, "      bogus: 1\n")                     # fashion-mnist inherits it
    (tmp_path / "params.yaml").write_text("".join(lines))
    with pytest.raises(DsmError) as e:
        load_scale(tmp_path / "params.yaml", "smoke")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'params.yaml'}: scales.paper.evaluate.bogus (line {ev + 2}; ")
    assert "inherited by scales.fashion-mnist" in msg and "scales.fashion-mnist.evaluate.bogus" in msg
    assert msg.endswith("unknown key (known: n_norm, batch_size, max_per_set, noise_seed, norm_entropy, norm_t, norm_check_t, norm_check_entropy)")
