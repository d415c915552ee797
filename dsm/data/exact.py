"""The exact density of a synthetic source, rebuilt from a prepared store's ``meta``.

``field`` -> :class:`dsm.data.field.FieldDensity`, ``gsm`` ->
:class:`dsm.data.gsm.GaussianScaleMixture`, real data -> None. Both expose
``.energy(y, t) -> (B,)`` nats (exact -log p(y | t)), ``.score``, ``.time_score``,
``.denoise``.
"""

from __future__ import annotations


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
