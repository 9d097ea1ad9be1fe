"""The HEALPix index of sources, computed once at ingest and kept in the store."""

from __future__ import annotations

import numpy as np

__all__ = ["healpix_index"]


def healpix_index(ra: np.ndarray, dec: np.ndarray, order: int) -> np.ndarray:
    """Nested HEALPix index of each (ra, dec) at ``order``; -1 without a finite position.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        ICRS degrees (NaN where unknown).
    order : int
        HEALPix order (nside ``2**order``), e.g. config ``classify.healpix-order``.

    Returns
    -------
    numpy.ndarray of int64
        As the catalogue's ``healpix`` column (:mod:`pipeline.classify.graph`).
    """
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    ra = np.asarray(ra, np.float64)
    dec = np.asarray(dec, np.float64)
    out = np.full(ra.shape, -1, dtype=np.int64)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.any():
        out[ok] = lonlat_to_healpix(ra[ok] * u.deg, dec[ok] * u.deg, 2**int(order),
                                    order="nested")
    return out
