"""Drawing images of a prepared store in figures (Figures 3 and 6-8).

Images are (C, H, W) float arrays with pixels in [0, 1] (8-bit sources) or around it
(``field``: not clipped in the store); they are drawn clipped to [0, 1], gray for one
channel, RGB for three, without interpolation, with no ticks.
"""

from __future__ import annotations

import numpy as np


def as_display(img) -> np.ndarray:
    """(C, H, W) -> (H, W) or (H, W, 3), clipped to [0, 1]."""
    img = np.clip(np.asarray(img, np.float64), 0.0, 1.0)
    if img.ndim == 3 and img.shape[0] == 1:
        return img[0]
    if img.ndim == 3:
        return np.transpose(img, (1, 2, 0))
    return img


def show_image(ax, img) -> None:
    """Draw one image on ``ax`` (gray colormap with fixed limits 0..1 for one channel)."""
    ax.imshow(as_display(img), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
