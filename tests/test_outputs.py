"""What a command may write over (dsm/outputs.py): never what it was not pointed at.

* The command-line cases: a headline directory output (``dsm gumbel --out``) pointed at a
  folder of someone's files, at the current directory (a git checkout) or at the input
  table; an output equal to an input (``dsm logp``'s array or model, ``dsm normalize``'s
  model, ``dsm gumbel --details`` = the table). Each: exit 2, one line naming the path,
  every file as it was.
* A property of the writers: for random trees of files and directories and a random
  output among them (and ``.``, ``..``, paths under files, names with a trailing ``/``),
  each writer either refuses and changes nothing, or replaces only what the rule allows
  (absent, empty, of the writer's type, a directory of headline files), and nothing else
  in the tree changes.
* Two `dsm train` into one run directory: the second is refused while the first holds it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dsm import outputs
from dsm.cli import main
from dsm.errors import DsmError

REPO = Path(__file__).resolve().parent.parent
S = ["--params", str(REPO / "params.yaml"), "--scale", "smoke"]


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_line_error(err: str, cmd: str) -> str:
    """The error line: the only line of stderr that says ``error:``, and nothing before it
    that looks like a traceback or a library warning."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"dsm {cmd}: error: "), repr(err)
    assert not any("Traceback" in line or "Warning" in line for line in lines), err
    return errors[0]


def tree(root: Path) -> dict:
    """{relative path: bytes | "dir" | "link -> target"} of everything under ``root``."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(top) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = p.read_bytes()
    return found


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke store, one model (N = 10, A), its normalization constant and the per-image
    table of the test set (`dsm evaluate --full`)."""
    w = tmp_path_factory.mktemp("outputs")
    t = [*S, "--data", w / "images", "--splits", w / "sp.parquet", "--N", "10", "--split", "A"]
    for args in (["prepare", *S, "--out", w / "images"],
                 ["split", *S, "--data", w / "images", "--out", w / "sp.parquet"],
                 ["train", *t, "--out", w / "run"],
                 ["normalize", *S, "--model", w / "run/model.pt", "--data", w / "images",
                  "--out", w / "norm.json"],
                 ["evaluate", *S, "--model", w / "run/model.pt", "--norm", w / "norm.json",
                  "--data", w / "images", "--full", "--out", w / "t.parquet"]):
        assert main([str(a) for a in args]) == 0, args
    return w


# --- a headline directory output never deletes what it is pointed at -----------------------

def test_gumbel_out_is_a_folder_of_someone_elses_files(smoke, tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "src").mkdir(parents=True)
    (victim / "src/a.py").write_text("code\n")
    before = tree(tmp_path)
    rc, err = cli(capsys, "gumbel", *S, smoke / "t.parquet", "--out", victim)
    line = one_line_error(err, "gumbel")
    assert rc == 2 and str(victim) in line and "refusing to replace it" in line
    assert tree(tmp_path) == before                       # no details file beside it either


def test_gumbel_out_is_the_current_directory_of_a_checkout(smoke, tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg/mod.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    before = tree(tmp_path)
    monkeypatch.chdir(repo)
    for out in (".", "..", str(repo), "pkg/.."):
        rc, err = cli(capsys, "gumbel", *S, smoke / "t.parquet", "--out", out)
        line = one_line_error(err, "gumbel")
        assert rc == 2 and line.startswith(f"dsm gumbel: error: {out}: is "), line
        assert tree(tmp_path) == before


def test_gumbel_out_or_details_is_its_input_table(smoke, tmp_path, capsys):
    table = tmp_path / "u.parquet"
    shutil.copy(smoke / "t.parquet", table)
    before = tree(tmp_path)
    for extra in (["--out", table], ["--out", tmp_path / "g", "--details", table],
                  ["--out", tmp_path / "g", "--details", tmp_path / "." / "u.parquet"]):
        rc, err = cli(capsys, "gumbel", *S, table, *extra)
        line = one_line_error(err, "gumbel")
        assert rc == 2 and "never writes over one of its own inputs" in line and "u.parquet" in line
        assert tree(tmp_path) == before
    # and through a symbolic link to it
    (tmp_path / "link.parquet").symlink_to(table)
    rc, err = cli(capsys, "gumbel", *S, table, "--out", tmp_path / "g", "--details", tmp_path / "link.parquet")
    assert rc == 2 and "link.parquet" in one_line_error(err, "gumbel")


def test_gumbel_replaces_its_own_previous_output(smoke, tmp_path, capsys):
    out = tmp_path / "g"
    assert cli(capsys, "gumbel", *S, smoke / "t.parquet", "--out", out)[0] == 0
    first = tree(tmp_path)
    (out / ".snakemake_timestamp").write_bytes(b"")      # Snakemake marks its directory outputs
    assert cli(capsys, "gumbel", *S, smoke / "t.parquet", "--out", out)[0] == 0
    assert tree(tmp_path) == first                       # rerun: same bytes, the marker gone
    (out / "notes.txt").write_text("mine\n")             # no longer only headline files
    rc, err = cli(capsys, "gumbel", *S, smoke / "t.parquet", "--out", out)
    assert rc == 2 and "refusing to replace it" in one_line_error(err, "gumbel")
    assert (out / "notes.txt").read_text() == "mine\n"


# --- an output equal to one of the command's inputs ------------------------------------------

def test_logp_and_normalize_never_write_over_their_inputs(smoke, tmp_path, capsys):
    shutil.copy(smoke / "run/model.pt", tmp_path / "model.pt")
    shutil.copy(smoke / "norm.json", tmp_path / "norm.json")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32))
    before = tree(tmp_path)
    m, x, n = tmp_path / "model.pt", tmp_path / "x.npy", tmp_path / "norm.json"
    cases = [("logp", ["--model", m, x, "--norm", n, "--out", x]),
             ("logp", ["--model", m, x, "--norm", n, "--out", m]),
             ("logp", ["--model", m, x, "--norm", n, "--out", n]),
             ("normalize", [*S, "--model", m, "--data", smoke / "images", "--out", m])]
    for cmd, args in cases:
        rc, err = cli(capsys, cmd, *args)
        line = one_line_error(err, cmd)
        assert rc == 2 and "never writes over one of its own inputs" in line, line
        assert tree(tmp_path) == before
    # the same run with a fresh output works (the refusals were about the paths only)
    rc, err = cli(capsys, "logp", "--model", m, x, "--norm", n, "--out", tmp_path / "o.parquet")
    assert rc == 0, err


@pytest.mark.parametrize("out, words", [
    ("adir", "is a directory"),
    ("newdir/", "names a directory (trailing /)"),
    ("model.pt/x.parquet", "model.pt is not a directory"),
    ("a" * 250 + ".parquet", "file name too long"),
    ("notes.txt", "is not a Parquet file"),
])
def test_logp_out_that_is_no_place_for_a_table(smoke, tmp_path, capsys, monkeypatch, out, words):
    monkeypatch.chdir(tmp_path)
    shutil.copy(smoke / "run/model.pt", "model.pt")
    np.save("x.npy", np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32))
    Path("adir").mkdir()
    Path("adir/keep").write_text("keep\n")
    Path("notes.txt").write_text("my notes\n")
    before = tree(tmp_path)
    rc, err = cli(capsys, "logp", "--model", "model.pt", "x.npy", "--norm", smoke / "norm.json", "--out", out)
    line = one_line_error(err, "logp")
    assert rc == 2 and words in line, line
    assert tree(tmp_path) == before


# --- the property: random trees, random outputs -----------------------------------------------

HEADLINE = {"a_db_per_dim": 1.5, "b_db_per_dim": None}


def _random_tree(root: Path, rng: random.Random, depth: int = 0) -> None:
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(["dir", "text", "binary", "json", "headline", "parquet", "empty",
                           "emptydir", "headlinedir", "link", "pdf"] if depth < 2 else
                          ["text", "binary", "json", "headline", "parquet", "empty", "pdf"])
        p = root / f"{kind}{i}"
        if kind == "dir":
            p.mkdir()
            _random_tree(p, rng, depth + 1)
        elif kind == "text":
            p.write_text(f"notes {rng.random()}\n")
        elif kind == "binary":
            p.write_bytes(bytes(rng.randrange(256) for _ in range(64)))
        elif kind == "json":
            p.write_text(json.dumps({"name": "settings", "nested": {"x": 1}}))
        elif kind == "headline":
            p.write_text(json.dumps(HEADLINE))
        elif kind == "parquet":
            pd.DataFrame({"v": [1.0, 2.0]}).to_parquet(p)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "emptydir":
            p.mkdir()
        elif kind == "headlinedir":
            p.mkdir()
            for j in range(rng.randint(1, 3)):
                (p / f"r{j}.json").write_text(json.dumps(HEADLINE))
        elif kind == "link":
            targets = [q for q in root.iterdir() if q != p]
            if targets:
                p.symlink_to(rng.choice(targets).name)
        elif kind == "pdf":
            p.write_bytes(b"%PDF-1.4 not really\n")
    if depth == 0 and rng.random() < 0.3:
        (root / ".git").mkdir()                            # the root is a repository's
        (root / ".git/HEAD").write_text("ref: refs/heads/main\n")


WRITERS = {
    "json": lambda p: __import__("dsm.io", fromlist=["write_json"]).write_json(p, {"x": 1}),
    "text": lambda p: __import__("dsm.io", fromlist=["write_text"]).write_text(p, "x,y\n1,2\n"),
    "parquet": lambda p: __import__("dsm.io", fromlist=["write_parquet"]).write_parquet(
        p, pd.DataFrame({"logp": [1.0]})),
    "headline-dir": lambda p: __import__("dsm.headline", fromlist=["write_json_dir"]).write_json_dir(
        p, {"loc": {"value_db_per_dim": 1.0}}),
}


def _allowed(before: dict, rel: str, writer: str) -> bool:
    """Whether the rule allows ``writer`` to replace what was at ``rel`` (before)."""
    if rel not in before:
        return True
    old = before[rel]
    if writer == "headline-dir":
        if old == "dir":
            inside = {k: v for k, v in before.items() if k.startswith(rel + "/")}
            return all(k.endswith(".json") and isinstance(v, bytes) and outputs.is_headline_file_bytes(v)
                       for k, v in inside.items())
        return isinstance(old, bytes) and outputs.is_headline_file_bytes(old)
    if not isinstance(old, bytes):
        return isinstance(old, str) and old.startswith("link")        # a link: replaced itself
    if old == b"":
        return True
    sniff = {"json": lambda b: b.lstrip()[:1] in (b"{", b"["), "text": lambda b: b"\0" not in b,
             "parquet": lambda b: b.startswith(b"PAR1")}[writer]
    try:
        old.decode()
    except UnicodeDecodeError:
        if writer in ("json", "text"):
            return False
    return sniff(old)


def test_writers_change_nothing_but_their_own_previous_output(tmp_path, monkeypatch):
    rng = random.Random(20240521)
    trials = refused = replaced = 0
    for trial in range(120):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        _random_tree(root, rng)
        monkeypatch.chdir(root)
        existing = sorted(tree(root))
        candidates = existing + [".", "..", "new.out", "dir0/new.out", "text0/below",
                                 "newdir/", (existing or ["x"])[0] + "/"]
        out = rng.choice(candidates)
        writer = rng.choice(list(WRITERS))
        inputs = rng.sample(existing, k=min(len(existing), rng.randint(0, 2)))
        before = tree(root)
        try:
            with outputs.command([*(("INPUT", i) for i in inputs), ("--out", out)]):
                WRITERS[writer](Path(out))
        except DsmError:
            refused += 1
            assert tree(root) == before, (trial, out, writer)
            continue
        finally:
            monkeypatch.chdir(tmp_path)
        trials += 1
        rel = os.path.normpath(out)
        after = tree(root)
        assert not out.endswith("/") or writer == "headline-dir", (trial, out, writer)
        assert rel not in (".", "..") and not rel.startswith(".."), (trial, out)
        assert _allowed(before, rel, writer), (trial, out, writer, before.get(rel))
        replaced += rel in before
        # the output, and the directories made to hold it (absent before)
        made = {str(a) for a in Path(rel).parents if str(a) != "." and str(a) not in before}
        mine = lambda k: k == rel or k.startswith(rel + "/") or k in made     # noqa: E731
        assert {k: v for k, v in after.items() if not mine(k)} == \
            {k: v for k, v in before.items() if not mine(k)}, (trial, out, writer)
        for i in inputs:
            assert not mine(os.path.normpath(i)) and before.get(i) == after.get(i), (trial, out, i)
    # the draw covered both outcomes, and replacements of existing outputs
    print(f"written {trials}, refused {refused}, replaced an existing output {replaced}")
    assert trials > 20 and refused > 20 and replaced > 5, (trials, refused, replaced)


# --- one run directory, one trainer ------------------------------------------------------------

def test_second_train_into_one_run_directory_is_refused(smoke, tmp_path, capsys):
    from dsm.io import directory_lock

    run = tmp_path / "run"
    args = [*S, "--data", smoke / "images", "--splits", smoke / "sp.parquet", "--N", "10",
            "--split", "A", "--out", run]
    with directory_lock(run, "training"):                 # a first `dsm train` holds it
        rc, err = cli(capsys, "train", *args)
        line = one_line_error(err, "train")
        assert rc == 2 and str(run) in line and "another process is training" in line
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert cli(capsys, "train", *args)[0] == 0            # released: it trains
    assert (run / "model.pt").is_file()


def test_the_lock_is_held_across_processes(tmp_path):
    """flock between two processes (a second `dsm train` is another process)."""
    import sys

    code = ("import sys, time; from dsm.io import directory_lock\n"
            "with directory_lock(sys.argv[1], 'training'):\n"
            "    print('locked', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        from dsm.io import directory_lock

        with pytest.raises(DsmError, match="another process is training"):
            with directory_lock(tmp_path / "run", "training"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with directory_lock(tmp_path / "run", "training"):     # the holder is gone: free
        pass
