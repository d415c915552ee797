"""Figures: fig1.py (single vs dual score matching on a Gaussian scale mixture, which also
runs its small experiment), fig2.py and later ones (plotting of pipeline results)."""
