"""Data sources, the prepared image store, and the A/B training splits.

``open_store(path)`` opens one part of a prepared store (see :mod:`dsm.data.store`);
``dsm.data.exact.exact_density(meta)`` rebuilds the exact density of a synthetic
source from a store's ``meta``. This package file imports only the store, so a stage
that reads images does not depend on every source module.
"""

from __future__ import annotations

from dsm.data.store import Store, open_store

__all__ = ["Store", "open_store"]
