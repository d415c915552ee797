"""``dsm split``: the disjoint, nested training sets A and B of docs/theory.md#the-analyses.

From a prepared training part of n images: A_N = images 0 … N-1 (the first N),
B_N = images n-N … n-1 (the last N), for each N of ``split.N``
(default [1, 10, 100, 1000, 10000, 100000]). Nested in N by construction, disjoint
by index while 2·max N ≤ n (otherwise a DsmError naming split.N and n; nothing is
written).

Split params (the ``split`` section of a scale; defaults in brackets):

* ``N``            [[1, 10, 100, 1000, 10000, 100000]] list of distinct positive integers.
* ``on_duplicate`` [warn] what to do when an image of A_N has an exact duplicate
                   (same content hash) in B_N: ``warn`` or ``error``.

Disjointness is also checked by content: the stored bytes of every selected image
are re-hashed and compared with the index (a mismatch means a corrupt store: error),
then A_N and B_N are compared by hash. Exact duplicates are a property of the
source (real datasets have some), so they are *reported*, not silently dropped:
the number of duplicated images in the training part is printed as a warning, and
a duplicate pair that straddles A_N and B_N is reported per N with its image ids.
Such pairs are kept (A and B stay "the first N" and "the last N", as in the paper's
release, so results stay comparable with it) and flagged in the column
``dup_in_other`` so an analysis can exclude them; ``on_duplicate: error`` refuses
instead.

Output Parquet columns: image_index (int64), image_id (str), content_hash (str),
split ('A'|'B'), N (int64), dup_in_other (bool). Schema metadata ``dsm.split`` holds
the params and the store's params hash; a finished file with the same is not rewritten.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dsm.errors import DsmError

def resolve(split_cfg: dict | None) -> dict:
    """The ``split`` params validated against the schema, defaults filled, N sorted."""
    from dsm.config import resolve_section

    out = resolve_section(split_cfg, "split", "split")
    out["N"] = sorted(out["N"])
    return out


def _meta_key(cfg: dict, store_hash: str, n: int) -> str:
    return json.dumps({"split": cfg, "store_params_hash": store_hash, "n": n}, sort_keys=True)


def make_splits(data, split_cfg: dict | None, out, progress: bool = True) -> Path:
    """Write the A/B splits of the store ``data`` (DIR, or DIR/train) to Parquet ``out``."""
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute)
    import pyarrow.parquet as pq

    from dsm.data.store import open_store, row_hashes
    from dsm.io import atomic_path, remove_stale_temps

    cfg = resolve(split_cfg)
    data = Path(data)
    store = open_store(data / "train" if (data / "train").is_dir() else data)
    n = len(store)
    Ns = cfg["N"]
    if 2 * max(Ns) > n:
        raise DsmError(f"split.N: 2·max N = {2 * max(Ns)} exceeds the n = {n} training images of "
                       f"{store.path}; A and B would overlap")
    key = _meta_key(cfg, store.meta.get("params_hash", ""), n)
    out = Path(out)
    if out.is_file():
        try:
            old = pq.read_schema(out).metadata or {}
        except (OSError, pa.ArrowInvalid):
            old = {}
        if old.get(b"dsm.split", b"").decode() == key:
            print(f"dsm split: {out} is already written with these params; not rewriting", file=sys.stderr)
            remove_stale_temps(out.parent, out.name)      # left by a killed run
            return out

    # Ids and hashes stay Arrow / fixed-width numpy arrays (no Python str per image), so
    # memory is a few tens of bytes per training image beyond the output rows.
    index = _read_index(store.path / "index.parquet")
    if index.num_rows != n:
        raise DsmError(f"{store.path / 'index.parquet'}: {index.num_rows} rows for {n} images")
    ids = index.column("image_id").combine_chunks()
    hashes = _fixed_width(index.column("content_hash").combine_chunks(), store.path / "index.parquet")
    del index
    M = max(Ns)
    _verify_hashes(store, [(0, M), (max(M, n - M), n)], hashes, progress, row_hashes)
    _report_source_duplicates(hashes, store.path)

    cols = {k: [] for k in ("image_index", "split", "N", "dup_in_other")}
    for N in Ns:
        a, b = np.arange(N), np.arange(n - N, n)
        assert not np.intersect1d(a, b).size
        common = np.intersect1d(hashes[a], hashes[b])
        if common.size:
            first_b = {h: j for j, h in zip(b.tolist(), hashes[b].tolist()) if h in set(common.tolist())}
            pairs = [(ids[i].as_py(), ids[first_b[hashes[i]]].as_py())
                     for i in a[np.isin(hashes[a], common)][:3]]
            msg = (f"split N={N}: {common.size} distinct image content(s) occur in both A and B "
                   f"(exact duplicates in the source): e.g. " + ", ".join(f"{p} = {q}" for p, q in pairs))
            if cfg["on_duplicate"] == "error":
                raise DsmError(msg + " (split.on_duplicate: error)")
            print(f"dsm split: warning: {msg}; kept and flagged in column dup_in_other", file=sys.stderr)
        for name, idx in (("A", a), ("B", b)):
            cols["image_index"].append(idx)
            cols["split"].append(np.full(N, name == "B", dtype=bool))
            cols["N"].append(np.full(N, N, dtype=np.int64))
            cols["dup_in_other"].append(np.isin(hashes[idx], common) if common.size else np.zeros(N, bool))
    rows = np.concatenate(cols["image_index"]).astype(np.int64)
    is_b = pa.array(np.concatenate(cols["split"]))
    table = pa.table({
        "image_index": pa.array(rows),
        "image_id": ids.take(pa.array(rows)),
        "content_hash": pa.array(hashes[rows]).cast(pa.string()),
        "split": pa.compute.if_else(is_b, "B", "A"),
        "N": pa.array(np.concatenate(cols["N"])),
        "dup_in_other": pa.array(np.concatenate(cols["dup_in_other"])),
    }).replace_schema_metadata({"dsm.split": key})
    with atomic_path(out, kind="parquet") as tmp:
        pq.write_table(table, tmp)
    print(f"dsm split: wrote {out} (N = {Ns}, n = {n})", file=sys.stderr)
    return out


def _verify_hashes(store, ranges, hashes, progress, row_hashes, chunk: int = 8192) -> None:
    """Re-hash the stored bytes of the images in ``ranges`` [(start, stop)] against the index."""
    from tqdm import tqdm

    total = sum(b - a for a, b in ranges)
    with tqdm(total=total, desc="split: verify content hashes", unit="img", file=sys.stderr,
              disable=not progress, mininterval=1.0, leave=False) as bar:
        for start, stop in ranges:
            for a in range(start, stop, chunk):
                b = min(stop, a + chunk)
                got = row_hashes(store.read_range(a, b))
                bad = (np.asarray([h.encode() for h in got], dtype="S64") != hashes[a:b]).nonzero()[0] + a
                if bad.size:
                    raise DsmError(f"{store.path}: image {bad[0]} does not match its content_hash in "
                                   f"index.parquet ({len(bad)} such in this chunk); the store is "
                                   f"corrupt, re-run `dsm prepare`")
                bar.update(b - a)


def _read_index(path):
    """image_id and content_hash of a store index, both as Arrow strings (every Arrow
    string type is accepted: string, large_string, string_view, dictionary-encoded)."""
    import pyarrow as pa

    from dsm.io import read_table

    index = read_table(path, "store index", columns=["image_id", "content_hash"])
    cols = {}
    for name in ("image_id", "content_hash"):
        col = index.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if not _is_string(col.type):
            raise DsmError(f"{path}: column {name} must hold strings, not {col.type}")
        cols[name] = col.cast(pa.large_string() if name == "content_hash" else pa.string())
    return pa.table(cols)


def _is_string(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or getattr(pa.types, "is_string_view", lambda _: False)(t))


def _fixed_width(col, where) -> np.ndarray:
    """A string column (large_string) of 64-character hex hashes as a zero-copy numpy
    'S64' array."""
    if len(col) == 0:
        return np.zeros(0, "S64")
    offs = np.frombuffer(col.buffers()[1], np.int64, count=len(col) + 1, offset=col.offset * 8)
    if col.null_count or not (np.diff(offs) == 64).all():
        raise DsmError(f"{where}: content_hash must be 64-character hex SHA-256 strings")
    return np.frombuffer(col.buffers()[2], "S64", count=len(col), offset=int(offs[0]))


def _report_source_duplicates(hashes: np.ndarray, where) -> int:
    """Warn with the number of training images that duplicate an earlier one."""
    dup = len(hashes) - len(np.unique(hashes))
    if dup:
        print(f"dsm split: warning: {dup} image(s) of {where} are exact duplicates of an earlier "
              f"image (same content hash)", file=sys.stderr)
    return dup


def read_split(path, N: int, split: str) -> np.ndarray:
    """Image indices (int64, ascending) of training set ``split`` ('A' or 'B') of size ``N``."""
    path = Path(path)
    if split not in ("A", "B"):
        raise DsmError(f"split must be 'A' or 'B', got {split!r}")
    if not path.is_file():
        raise DsmError(f"{path}: splits file not found; run `dsm split`")
    from dsm.io import read_table

    t = read_table(path, "splits file", columns=["image_index", "split", "N"],
                   filters=[("N", "=", int(N)), ("split", "=", split)])
    if t.num_rows == 0:
        have = sorted(set(read_table(path, "splits file", columns=["N"]).column("N").to_pylist()))
        raise DsmError(f"{path}: no split N={N} (available: {have})")
    return np.sort(t.column("image_index").to_numpy().astype(np.int64))
