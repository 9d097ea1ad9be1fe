"""Per-stamp statistics measured once, as the stamps are cut (ingest) or written (import-images).

They do not depend on the model, so ``classify`` reads them instead of measuring
them again for every run and every model:

- ``stamp_bg``, ``stamp_noise`` (source, band), float32: the residual background
  and noise of each stamp's border, exactly
  :func:`pipeline.imaging.preprocess.background_noise`, which ``prepare`` then skips;
- ``stamp_fwhm`` (source), float32: the apparent FWHM in pixels of the source at
  the stamp centre, :func:`pipeline.imaging.blur_score.apparent_fwhm` (NaN where the
  weighted flux is not positive); the catalogue's blur score is it over the
  store's reference PSF FWHM.

Stores written before these variables existed still classify: the statistics
are then measured per chunk, as before (same numbers, more time).
"""

from __future__ import annotations

import numpy as np

from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.imaging.preprocess import background_noise

__all__ = ["STAMP_STATS", "stamp_statistics"]

#: Variable name -> dims, as stored next to ``image``.
STAMP_STATS: dict[str, tuple[str, ...]] = {
    "stamp_bg": ("source", "band"),
    "stamp_noise": ("source", "band"),
    "stamp_fwhm": ("source",),
}


def stamp_statistics(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """Measure :data:`STAMP_STATS` on a chunk of stamps.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(N, band, y, x)`` float32, background-subtracted ADU, NaN outside the image.

    Returns
    -------
    dict of str to numpy.ndarray
        ``stamp_bg``, ``stamp_noise`` float32 ``(N, band)`` and ``stamp_fwhm`` float32 ``(N,)``.
    """
    bg, noise = background_noise(stamps)
    return {"stamp_bg": bg.numpy().astype(np.float32, copy=False),
            "stamp_noise": noise.numpy().astype(np.float32, copy=False),
            "stamp_fwhm": apparent_fwhm(stamps)}
