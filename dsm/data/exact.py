"""The exact density of a synthetic source, rebuilt from a prepared store's ``meta``.

``field`` -> :class:`dsm.data.field.FieldDensity`, ``gsm`` ->
:class:`dsm.data.gsm.GaussianScaleMixture`, real data -> None. Both expose
``.energy(y, t) -> (B,)`` nats (exact -log p(y | t)), ``.score``, ``.time_score``,
``.denoise``. :class:`ExactModel` presents one through the model interface (including
``energy_and_scores``), so an analysis runs the truth exactly like a trained model.
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


class ExactModel:
    """An exact density seen through the model interface of :mod:`dsm.nets` (the
    analyses run it exactly like a trained energy model, as the truth to compare with).

    ``energy(y, t)`` (B,) nats (exact, normalized: its normalization constant is 0),
    ``score`` = ∇_y U, ``time_score`` = ∂_t U, ``energy_and_scores(y, t)`` -> (U, ∇_y U,
    ∂_t U), ``denoise`` = E[x | y] (the optimal denoiser). y (B, ...) and t (B,) tensors of
    any float dtype; the density computes in float64 and the results are float64, on y's
    device. Nothing to train, no parameters.
    """

    def __init__(self, density):
        self.density = density

    def _run(self, name, y, t):
        return getattr(self.density, name)(y, t)

    def energy(self, y, t):
        return self._run("energy", y, t)

    def score(self, y, t):
        return self._run("score", y, t)

    def time_score(self, y, t):
        return self._run("time_score", y, t)

    def denoise(self, y, t):
        return self._run("denoise", y, t)

    def energy_and_scores(self, y, t, create_graph: bool = False):
        return self.energy(y, t), self.score(y, t), self.time_score(y, t)

    def parameters(self):
        return iter(())

    def eval(self):
        return self
