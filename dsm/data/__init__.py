"""Data sources, the prepared image store, and the A/B training splits.

``open_store(path)`` opens one part of a prepared store (see :mod:`dsm.data.store`);
``exact_density(meta)`` rebuilds the exact density of a synthetic source from a
store's ``meta`` (``field`` -> :class:`dsm.data.field.FieldDensity`, ``gsm`` ->
:class:`dsm.data.gsm.GaussianScaleMixture`), or returns None for real data.
Both expose ``.energy(y, t) -> (B,)`` nats, ``.score``, ``.time_score``, ``.denoise``.
"""

from __future__ import annotations

from dsm.data.store import Store, open_store


def exact_density(meta: dict):
    """The exact density object of a store's meta (or of its ``exact`` block), else None."""
    exact = meta.get("exact") if "kind" not in meta else meta
    if not exact:
        return None
    if exact["kind"] == "field":
        from dsm.data.field import FieldDensity

        return FieldDensity.from_meta(exact)
    if exact["kind"] == "gsm":
        from dsm.data.gsm import GaussianScaleMixture

        return GaussianScaleMixture.from_meta(exact)
    return None


__all__ = ["Store", "open_store", "exact_density"]
