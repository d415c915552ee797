"""Analyses of per-image results: generalization (A vs B, Figure 2), ..."""
