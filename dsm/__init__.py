"""dsm: normalized image densities learned by dual score matching.

Guth, Kadkhodaie & Simoncelli, "Learning normalized image densities via dual
score matching", NeurIPS 2025. See docs/DESIGN.md for the module map.
"""

__version__ = "0.1.0"
