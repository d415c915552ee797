"""What a command may write over: the one guard every writer of ``dsm`` calls.

The rule: a command replaces only what is recognisably its own previous output, and
never one of its own inputs.

* A **file** output (:func:`check_file`, called by :func:`dsm.io.atomic_path`, so by every
  atomic writer: JSON, text, Parquet, torch files, figures) may replace an existing file
  only if that file is of the type the writer writes (``KINDS``: a Parquet file for a
  Parquet writer, a JSON document for a JSON writer, ...; an empty file too) and is not
  tracked by git (source, docs, params: a generated output is never committed). It is
  never an existing directory, never below something that is not a directory, and its
  name leaves room for the temporary file's suffix.
* A **directory** output that is replaced whole (:func:`check_dir`: the headline-number
  directories of :mod:`dsm.headline`) may replace only an empty directory or a directory
  of headline files (flat JSON objects of numbers, what :func:`dsm.headline.write_json_dir`
  writes), never ``/``, the home directory, the current directory or one of its parents,
  a git or DVC repository's root, or a parent of one of the command's arguments.
* **Inputs**: the command line declares the command's path arguments once
  (:func:`declare_cli` in ``dsm.cli.main``; library callers may use :func:`declare`).
  Two arguments naming the same file (``--model m.pt --out m.pt``, ``x.npy --out x.npy``)
  are refused before any work; a directory output never contains an argument; an
  argument written with a trailing ``/`` names a directory, never a file output.

Each refusal is a :class:`DsmError` (one line naming the path, exit 2) raised before
anything is written. Commands with several outputs call :func:`preflight` first, so a
refusal of their last output leaves the others untouched too.

**What was written** (:func:`record_written`): inside a pipeline working copy (a directory
holding ``dvc.yaml``), every output written through these writers gets a record of its
content hash in ``<root>/.dsm/written/``, so that ``dsm sync dvc`` adopts into dvc.lock
only content a ``dsm`` command wrote (:func:`verify_written`), never a hand edit.

A leaf module: it imports only :mod:`dsm.errors`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterable, Iterator

from dsm.errors import DsmError

# Argument destinations of the `dsm` subcommands that hold no path.
NON_PATH_ARGUMENTS = frozenset({
    "command", "scale", "device", "column", "estimator", "prior", "split", "kind", "tool",
    "overrides", "option", "func", "stage", "option_dests", "table"})

# Bytes a temporary name adds to a file's name: ".{name}.{pid}.{host}.{8 random}.tmp"
# (dsm.io.temp_prefix); pid <= 7 digits, host <= 40 characters.
TEMP_OVERHEAD = 1 + 1 + 7 + 1 + 40 + 1 + 8 + 4

RECORD_DIR = Path(".dsm") / "written"
# The empty file Snakemake puts into each directory output it made (its time stamp).
SNAKEMAKE_MARKER = ".snakemake_timestamp"
_HEADLINE_MAX_FILES, _HEADLINE_MAX_BYTES = 10_000, 1 << 20


# --- the command's arguments -------------------------------------------------------------

class _Context:
    def __init__(self):
        self.arguments: list[tuple[str, str]] = []      # (label, value as given)

    def resolved(self) -> list[tuple[str, str, str]]:
        """(label, value, real absolute path) of each argument."""
        return [(label, value, _real(value)) for label, value in self.arguments]


_context = _Context()


def _real(path) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def declare(arguments: Iterable[tuple[str, object]]) -> None:
    """Declare the path arguments of the running command: ``(label, value)`` pairs (label:
    how the user wrote the option, e.g. ``--out``; value: a path or a list of paths).
    Refuses two arguments that name the same file (DsmError naming both)."""
    flat = []
    for label, value in arguments:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, os.PathLike)) and os.fspath(v) != "":
                flat.append((label, os.fspath(v)))
    _context.arguments = flat
    seen: dict[str, tuple[str, str]] = {}
    for label, value, real in _context.resolved():
        if real in seen and seen[real][0] != label:
            first_label, first_value = seen[real]
            raise DsmError(f"{value}: named by both {first_label} ({first_value}) and {label}; a "
                           f"command never writes over one of its own inputs: choose another path")
        seen.setdefault(real, (label, value))


def declare_cli(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """:func:`declare` the path arguments of a parsed ``dsm`` command line: every string
    (or list of strings) argument except those in ``NON_PATH_ARGUMENTS``, labelled with
    its option string (``--out``) or, for a positional, its metavar."""
    labels = _labels(parser, getattr(args, "command", None))
    pairs = [(labels.get(dest, f"--{dest.replace('_', '-')}"), value)
             for dest, value in vars(args).items()
             if dest not in NON_PATH_ARGUMENTS and (isinstance(value, str) or (
                 isinstance(value, list) and all(isinstance(v, str) for v in value)))]
    declare(pairs)


def _labels(parser: argparse.ArgumentParser, command) -> dict[str, str]:
    sub = parser
    for action in parser._actions:                    # noqa: SLF001 - argparse has no public API
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            sub = action.choices[command]
    labels = {}
    for action in sub._actions:                       # noqa: SLF001
        if action.option_strings:
            labels[action.dest] = max(action.option_strings, key=len)
        else:
            labels[action.dest] = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return labels


def reset() -> None:
    """Forget the declared arguments (the end of a command run in-process)."""
    _context.arguments = []


@contextlib.contextmanager
def command(arguments: Iterable[tuple[str, object]] = ()) -> Iterator[None]:
    """``with command([("--out", out), ...]):`` a command's arguments, declared for its span."""
    saved = _context.arguments
    try:
        declare(arguments)
        yield
    finally:
        _context.arguments = saved


# --- the checks ------------------------------------------------------------------------------

def _sniff(path: Path, n: int = 65536) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3              # a character cut at the end of the sample
    return True


def _is_json(head: bytes) -> bool:
    return _is_text(head) and head.lstrip()[:1] in (b"{", b"[")


# The types a writer declares, each recognised by its first bytes.
KINDS = {
    "json": ("a JSON document", _is_json),
    "text": ("a text file", _is_text),
    "parquet": ("a Parquet file", lambda h: h.startswith(b"PAR1")),
    "torch": ("a torch file", lambda h: h.startswith(b"PK\x03\x04")),
    "pdf": ("a PDF", lambda h: h.startswith(b"%PDF")),
    "png": ("a PNG image", lambda h: h.startswith(b"\x89PNG")),
    "svg": ("an SVG image", lambda h: _is_text(h) and (b"<svg" in h or b"<?xml" in h)),
    "npy": ("a NumPy array file", lambda h: h.startswith(b"\x93NUMPY")),
}


def _name_max(directory: Path) -> int:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_name(path: Path) -> None:
    size = len(os.fsencode(path.name))
    most = _name_max(path.parent) - TEMP_OVERHEAD
    if size > most:
        raise DsmError(f"{path}: file name too long ({size} bytes; at most {most} here, as the "
                       f"temporary file written beside it adds {TEMP_OVERHEAD})")


def _check_parents(path: Path) -> None:
    """Every existing ancestor of ``path`` must be a directory (not a path under a file)."""
    for parent in [path.parent, *path.parent.parents]:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise DsmError(f"{path}: {parent} is not a directory")
            return


def _given_as_directory(path: Path) -> str | None:
    real = _real(path)
    for label, value, r in _context.resolved():
        if r == real and value.endswith(("/", os.sep)):
            return label
    return None


def _tracked_by_git(path: Path) -> bool:
    """True if ``path`` (an existing file) is tracked by the git checkout around it."""
    real = Path(_real(path))
    top = next((d for d in real.parents if (d / ".git").exists()), None)
    if top is None:
        return False
    try:
        res = subprocess.run(["git", "-C", str(top), "ls-files", "--error-unmatch", "--",
                              str(real.relative_to(top))], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def check_file(path, kind: str | None = None, replace_tracked: bool = False) -> Path:
    """Refuse to write the file ``path`` (DsmError, nothing touched) unless it is absent or
    a file of ``kind`` (a key of ``KINDS``; None: any file) that git does not track
    (``replace_tracked``: the command's own committed output, e.g. dvc.yaml)."""
    path = Path(path)
    label = _given_as_directory(path)
    if label is not None:
        raise DsmError(f"{path}{os.sep}: {label} names a directory (trailing {os.sep}); this "
                       f"output is a file: give its file name")
    _check_name(path)
    _check_parents(path)
    if not os.path.lexists(path):
        return path
    if path.is_dir():
        raise DsmError(f"{path}: is a directory; this output is a file: refusing to replace "
                       f"the directory (choose a file name)")
    if not path.exists():                              # a dangling link: replaced by the file
        return path
    if not stat.S_ISREG(path.stat().st_mode):
        raise DsmError(f"{path}: exists and is not a regular file; refusing to replace it")
    if kind is not None and path.stat().st_size > 0:
        what, matches = KINDS[kind]
        try:
            ok = matches(_sniff(path))
        except OSError:
            ok = False
        if not ok:
            raise DsmError(f"{path}: exists and is not {what} (this command writes {what}, so it "
                           f"is not a previous output of it); refusing to replace it: remove it "
                           f"yourself or choose another path")
    if not replace_tracked and _tracked_by_git(path):
        raise DsmError(f"{path}: tracked by git (outputs are never committed); refusing to "
                       f"replace it: choose another path")
    return path


def is_headline_file(path: Path) -> bool:
    """True for a file that :func:`dsm.headline.write_metrics_dir` could have written: a JSON
    object whose values are numbers or null."""
    try:
        if path.stat().st_size > _HEADLINE_MAX_BYTES:
            return False
        return is_headline_file_bytes(path.read_bytes())
    except OSError:
        return False


def is_headline_file_bytes(data: bytes) -> bool:
    """:func:`is_headline_file` of a file's content."""
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in obj.values())


def is_headline_dir(path: Path, depth: int = 1) -> bool:
    """True for a directory that :func:`dsm.headline.write_json_dir` could have written:
    nothing but ``*.json`` headline files and, ``depth`` levels down, subdirectories of them
    (one per row of a table), or nothing at all; Snakemake's empty time stamp of a directory
    output, ``SNAKEMAKE_MARKER``, may be there too."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    if len(entries) > _HEADLINE_MAX_FILES:
        return False
    return all(_is_snakemake_marker(e) or (
        e.name.endswith(".json") and not e.name.startswith(".")
        and e.is_file(follow_symlinks=False) and is_headline_file(Path(e.path))) or (
        depth > 0 and not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
        and is_headline_dir(Path(e.path), depth - 1)) for e in entries)


def _is_snakemake_marker(entry: os.DirEntry) -> bool:
    return entry.name == SNAKEMAKE_MARKER and entry.is_file(follow_symlinks=False) \
        and entry.stat(follow_symlinks=False).st_size == 0


def _protected_place(real: Path) -> str | None:
    """Why the directory ``real`` (a real path) can never be replaced, or None."""
    cwd = Path(_real("."))
    if real == Path(real.anchor):
        return "the file system's root"
    with contextlib.suppress(RuntimeError, KeyError):
        if real == Path(_real(Path.home())):
            return "the home directory"
    if real == cwd:
        return "the current directory"
    if real in cwd.parents:
        return "a parent of the current directory"
    for marker in (".git", ".dvc"):
        if (real / marker).exists():
            return f"the root of a {'git' if marker == '.git' else 'DVC'} repository"
    for label, value, r in _context.resolved():
        if real in Path(r).parents:
            return f"a parent of {value} ({label})"
    return None


def check_place(path) -> Path:
    """Refuse a directory output ``path`` that is a protected place (DsmError): ``/``, the
    home directory, the current directory or a parent of it, the root of a git or DVC
    repository, a parent of one of the command's arguments; or whose name is too long or
    lies under something that is not a directory."""
    path = Path(path)
    _check_name(path)
    _check_parents(path)
    why = _protected_place(Path(_real(path)))
    if why is not None:
        raise DsmError(f"{path}: is {why}; refusing to replace it with this command's output "
                       f"directory: choose another path")
    return path


def check_dir(path) -> Path:
    """Refuse to replace the directory ``path`` whole (DsmError, nothing touched) unless it
    is absent, empty or a directory of headline files (:func:`is_headline_dir`), and is not
    a protected place (:func:`_protected_place`). A headline file where the directory
    goes (an older layout) may be replaced too."""
    path = check_place(path)
    if not os.path.lexists(path):
        return path
    if path.is_symlink():
        raise DsmError(f"{path}: is a symbolic link; refusing to replace it with this command's "
                       f"output directory")
    if path.is_dir():
        if not is_headline_dir(path):
            raise DsmError(f"{path}: exists and is not an output directory of this command (it "
                           f"holds more than headline JSON files); refusing to replace it: "
                           f"remove it yourself or choose another path")
    elif not (stat.S_ISREG(path.stat().st_mode) and is_headline_file(path)):
        raise DsmError(f"{path}: exists and is not a directory; refusing to replace it with "
                       f"this command's output directory: choose another path")
    return path


def preflight(files: dict | Iterable = (), dirs: Iterable = ()) -> None:
    """Check every output of a command before its work starts (:func:`check_file` for
    ``files``, ``{path: kind}`` or paths, None entries skipped; :func:`check_dir` for
    ``dirs``), so that a refusal leaves every output untouched."""
    items = files.items() if isinstance(files, dict) else ((f, None) for f in files)
    for f, kind in items:
        if f is not None:
            check_file(f, kind)
    for d in dirs:
        if d is not None:
            check_dir(d)


# --- what was written: the content records of a pipeline working copy -----------------------

def project_root(path) -> Path | None:
    """The nearest directory above ``path`` holding ``dvc.yaml`` (a pipeline working copy)."""
    real = Path(_real(path))
    return next((d for d in real.parents if (d / "dvc.yaml").is_file()), None)


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def content_digest(path) -> dict | None:
    """``{"file": sha256}`` of a file, ``{"files": {relative path: sha256}}`` of a directory
    (every file below it but Snakemake's empty time stamp, which it adds after the
    command), None if absent."""
    path = Path(path)
    if path.is_file():
        return {"file": sha256_of(path)}
    if path.is_dir():
        return {"files": {str(p.relative_to(path)): sha256_of(p) for p in sorted(path.rglob("*"))
                          if p.is_file() and not (p.name == SNAKEMAKE_MARKER and p.stat().st_size == 0)}}
    return None


def _record_path(root: Path, rel: str) -> Path:
    return root / RECORD_DIR / (hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:40] + ".json")


def record_written(path) -> None:
    """Record the content of the output ``path`` just written, if it lies in a pipeline
    working copy (:func:`project_root`). Best effort: a record that cannot be written is
    only a later refusal of ``dsm sync dvc`` (the output is then rerun or restored)."""
    root = project_root(path)
    if root is None:
        return
    with contextlib.suppress(OSError, ValueError):
        rel = Path(_real(path)).relative_to(root).as_posix()
        record = {"path": rel, **(content_digest(path) or {})}
        target = _record_path(root, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        # one write of a small file; a torn record reads as none (the output is then refused)
        target.write_text(json.dumps(record, sort_keys=True) + "\n")


def written_record(root, rel: str) -> dict | None:
    """The record of the output ``rel`` (relative to ``root``), None if there is none."""
    try:
        record = json.loads(_record_path(Path(root), rel).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("path") == rel else None


def verify_written(root, rel: str) -> str | None:
    """None if the output ``rel`` holds exactly what a ``dsm`` command last wrote there;
    otherwise what differs (the first changed file, or that there is no record)."""
    root = Path(root)
    record = written_record(root, rel)
    if record is None:
        return "no record that a dsm command wrote it"
    now = content_digest(root / rel) or {}
    if "file" in record:
        return None if now.get("file") == record["file"] else "its content is not what the command wrote"
    files, had = now.get("files", {}), record.get("files", {})
    for name in sorted(set(files) | set(had)):
        if files.get(name) != had.get(name):
            what = "added" if name not in had else "removed" if name not in files else "changed"
            return f"{rel}/{name} was {what} after the command wrote it"
    return None
