"""Atomic file writes, temporary files, reading inputs, content hashes and provenance.

Every output of the pipeline is written to a temporary file in the destination
directory and renamed into place, so a killed job never leaves a file that looks
complete. Temporary names carry the writer's host and PID
(``.<name>.<pid>.<host>.<random>.tmp``), so that the next run of a command can remove
the temporaries a killed run left (:func:`remove_stale_temps`) without touching those of
a run still going. Outputs get the permissions of an ordinary file (``0666 & ~umask``).
A full disk is a :class:`DsmError` naming the path ("no space left on ...").
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import dsm
from dsm.errors import DsmError

# --- temporary files: names, ownership, cleanup -----------------------------------------

TEMP_KINDS = ("tmp", "old")      # .tmp: being written; .old: a replaced store being removed
# A temporary of another host cannot be checked for a live owner: it is removed only when
# nothing in it changed for this long (a live writer keeps touching what it writes).
FOREIGN_STALE_SECONDS = 24 * 3600
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]{8}\."
                   r"(?P<kind>tmp|old)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:40] or "host"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary for ``name`` (``mkstemp``/``mkdtemp`` add 8 random characters
    and the suffix ``.tmp`` or ``.old``). The PID is read at each call (forked workers)."""
    return f".{name}.{os.getpid()}.{_host()}."


def _start_time(pid: int) -> float | None:
    """Wall-clock start time of a live process (Linux /proc), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for f in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, f)).st_mtime)
    return newest


def temp_is_stale(path) -> bool:
    """True when ``path`` is one of our temporaries whose writer is gone: on this host, its
    PID is not running, or runs a process started after the temporary was last written (a
    reused PID); on another host, nothing in it changed for ``FOREIGN_STALE_SECONDS``."""
    path = Path(path)
    m = _TEMP.match(path.name)
    if not m:
        return False
    try:
        mtime = _newest_mtime(path)
    except OSError:
        return False
    if m["host"] != _host():
        return time.time() - mtime > FOREIGN_STALE_SECONDS
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass                                    # alive, another user's
    start = _start_time(pid)
    return start is not None and start > mtime + 1.0


def remove_stale_temps(directory, name: str | None = None, quiet: bool = False) -> list[Path]:
    """Remove the stale temporaries (:func:`temp_is_stale`) in ``directory``, only those of
    the file ``name`` when given; a line on stderr for each. Returns what was removed."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or (name is not None and m["name"] != name) or not temp_is_stale(p):
            continue
        try:
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() \
                else p.stat().st_size
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
        if not quiet:
            print(f"dsm: removed {p} ({size / 1e6:.3g} MB), a temporary left by process {m['pid']} "
                  f"on {m['host']}, which is gone", file=sys.stderr)
    return removed


def umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(l for l in Path("/proc/self/status").read_text().splitlines()
                    if l.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_no_space(e: BaseException | None) -> bool:
    """True if ``e``, or an exception it was raised while handling, is a full disk."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def no_space_error(path) -> DsmError:
    path = Path(path)
    return DsmError(f"no space left on the device of {path.parent} (writing {path.name}); "
                    f"nothing was written")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, kind: str | None = None,
                replace_tracked: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    First the guard :func:`dsm.outputs.check_file`: an existing ``path`` is replaced only
    if it is a file of ``kind`` (what the writer writes: ``json``, ``text``, ``parquet``,
    ``torch``, ``pdf``, ...; None: any file) and not tracked by git (unless
    ``replace_tracked``); never a directory (the command's inputs are refused when its
    arguments are declared, :func:`dsm.outputs.declare`); a refusal is a DsmError and
    nothing is touched. On an exception the temporary file is removed and ``path`` is
    untouched. Stale temporaries of ``path`` left by killed runs are removed first. The file
    gets the mode ``0666 & ~umask`` (not mkstemp's 0600). A full disk raises a DsmError
    naming ``path``. The written content is recorded (:func:`dsm.outputs.record_written`).
    """
    from dsm import outputs

    path = outputs.check_file(path, kind, replace_tracked=replace_tracked)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as e:
        if is_no_space(e):
            raise no_space_error(path) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        outputs.record_written(path)
    except Exception as e:
        # a writer's own cleanup can mask the ENOSPC (matplotlib's PDF writer raises an
        # AttributeError while closing a stream it could not write): look down the chain
        if is_no_space(e):
            raise no_space_error(path) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_dir(new: Path, path: Path) -> None:
    """Put the directory ``new`` at ``path`` (absent, or a directory to discard): in one
    atomic exchange where the file system allows (Linux ``renameat2(RENAME_EXCHANGE)``),
    so a kill never leaves ``path`` missing; else the old directory is first moved aside
    under a temporary name (``.old``, removed by the next run if a kill leaves it)."""
    new, path = Path(new), Path(path)
    if os.path.lexists(path) and path.is_dir() and not path.is_symlink() and _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)           # now the old directory
        return
    old = None
    if os.path.lexists(path):
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".old", dir=path.parent))
        os.replace(path, old / "previous")
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return rc == 0


LOCK_NAME = ".lock"


@contextlib.contextmanager
def directory_lock(directory, what: str = "writing") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if absent) for the block: an
    advisory ``flock`` on ``DIR/.lock``, released when the block ends or the process dies
    (also by ``kill -9``). A second process asking for it gets a DsmError naming the
    directory, at once (no waiting on a job that may run for hours).
    The lock file stays (removing it would let a third process lock a new file while the
    second still holds the old one); it is empty, so a run directory's files do not
    depend on which process trained in it."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DsmError(f"{directory}: another process is {what} in this directory (it holds "
                           f"{path}); wait for it to finish or choose another --out") from None
        yield path
    finally:
        os.close(fd)                       # releases the lock


class _RecordingWriter:
    """A file object that remembers the OSError of a failed write: torch's archive writer
    swallows it and reports an unrelated C++ error ("unexpected pos ...")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        try:
            return self.f.flush()
        except OSError as e:
            self.error = e
            raise


def save_torch(payload, path) -> None:
    """``torch.save`` atomically, with bytes that depend on the payload only: saved through
    a file object, the archive's inner name is fixed (saving to a path names it after the
    path, here a random temp name), so equal payloads give equal files and hashes."""
    import torch

    with atomic_path(path, kind="torch") as tmp, open(tmp, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(payload, writer)
            f.flush()
        except (RuntimeError, OSError) as e:
            if writer.error is not None and writer.error is not e:
                raise writer.error from None
            raise


# --- reading inputs ------------------------------------------------------------------------

def _no_constant(name):
    raise ValueError(f"non-finite number {name}")


def read_json(path, what: str = "JSON file"):
    """The content of a JSON file; a missing, unreadable or invalid file, or a non-finite
    number (NaN, Infinity: not JSON, though Python writes them), is a DsmError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise DsmError(f"{path}: not a text file (expected {what})") from None
    except ValueError as e:
        raise DsmError(f"{path}: not valid JSON ({e})") from None


def check_finite(value, where: str) -> float:
    """``value`` as a float; a DsmError naming ``where`` unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DsmError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise DsmError(f"{where}: {value} is not a finite number")
    return float(value)


def arrow_error(path, e: BaseException) -> DsmError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return DsmError(f"{path}: cannot read Parquet ({first}); the file is truncated or corrupt, "
                    f"rerun the command that wrote it")


def read_parquet(path, what: str = "Parquet file", **kwargs):
    """``pandas.read_parquet``; a missing, truncated or corrupt file is a DsmError naming it."""
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: {what} not found")
    try:
        return pd.read_parquet(path, **kwargs)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise arrow_error(path, e) from None


def read_table(path, what: str = "Parquet file", **kwargs):
    """``pyarrow.parquet.read_table``; a missing, truncated or corrupt file is a DsmError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: {what} not found")
    try:
        return pq.read_table(path, **kwargs)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise arrow_error(path, e) from None


# --- writing ---------------------------------------------------------------------------------

def write_text(path, text: str, kind: str = "text", replace_tracked: bool = False) -> None:
    """Write ``text`` atomically (:func:`atomic_path`; ``kind``: what an existing file
    must be to be replaced)."""
    with atomic_path(path, kind=kind, replace_tracked=replace_tracked) as tmp:
        tmp.write_text(text)


def json_text(obj) -> str:
    """The text :func:`write_json` writes: sorted keys, indented, a final newline. JSON has
    no NaN or infinity (Python would write them, and no JSON reader, :func:`read_json`
    included, reads them back): each becomes ``null``, "no value"."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, default=json_default,
                      allow_nan=False) + "\n"


def write_json(path, obj) -> None:
    """Write ``obj`` as JSON atomically (:func:`json_text`)."""
    write_text(path, json_text(obj), kind="json")


def _finite(obj):
    """``obj`` with every NaN/infinite float (numpy scalars too) in dicts and lists None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _finite(obj.tolist())
    return obj


def write_parquet(path, df) -> None:
    """Write a pandas DataFrame to Parquet atomically."""
    with atomic_path(path, kind="parquet") as tmp:
        df.to_parquet(tmp, index=False)


def json_default(o):
    """``json.dumps(default=...)`` for numpy/torch scalars and arrays and paths."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hex SHA-256 of the canonical JSON of ``obj`` (sorted keys): a params hash."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``dsm <version>`` plus the git commit (and ``-dirty``) when run from a checkout;
    read once per process (the code a process runs does not change while it runs)."""
    version = f"dsm {dsm.__version__}"
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    if rev.returncode == 0 and rev.stdout.strip():
        return f"{version} ({rev.stdout.strip()})"
    return version
