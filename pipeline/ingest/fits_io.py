"""Opening FITS exposures: every 2-D image HDU is a CCD.

Plain, gzip (``.fits.gz``) and tile-compressed (``.fits.fz``, ``CompImageHDU``)
files are read through :mod:`astropy.io.fits`, memory-mapped where the format
allows it.  Anything unusable raises :class:`~pipeline.errors.BadExposure`
naming the file (and HDU) and the reason; ingest turns those into rejects rows.

Pixel conventions: ``data[y, x]`` (row, column), 0-based; the WCS is used with
origin 0.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from pipeline.errors import BadExposure

__all__ = [
    "CCD",
    "celestial_wcs",
    "FITS_SUFFIXES",
    "exposure_name",
    "file_sha256",
    "image_hdus",
    "open_fits",
    "read_ccd",
]

#: Suffixes stripped (longest first) to turn a file name into an exposure name.
FITS_SUFFIXES: tuple[str, ...] = (
    ".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz", ".fz", ".fits", ".fit", ".fts",
)


def exposure_name(path: str | Path) -> str:
    """Return the exposure name of ``path``: its file name without a FITS suffix.

    >>> exposure_name("/data/night1/exp_0001.fits.fz")
    'exp_0001'
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in FITS_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def file_sha256(path: str | Path, *, block: int = 1 << 20) -> tuple[str, int]:
    """Return ``(sha256 hex digest, size in bytes)`` of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def open_fits(path: str | Path, *, memmap: bool = True) -> fits.HDUList:
    """Open ``path`` as FITS (memory-mapped where possible) and check its structure.

    ``memmap=False`` reads instead of mapping (astropy cannot map integer data
    scaled by BZERO/BSCALE/BLANK).

    Raises
    ------
    BadExposure
        Empty, truncated or non-FITS files; the message names the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadExposure(f"{path}: cannot read the file ({exc})") from exc
    if size == 0:
        raise BadExposure(f"{path}: empty file (0 bytes); not a FITS exposure")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=memmap, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
        raise BadExposure(f"{path}: not a readable FITS file ({exc})") from exc
    if len(hdul) == 0:
        hdul.close()
        raise BadExposure(f"{path}: empty or corrupt FITS file (no HDUs)")
    return hdul


def _is_image(hdu: Any) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def image_hdus(path: str | Path) -> tuple[list[int], list[dict[str, Any]]]:
    """List the CCDs of an exposure: the indices of its 2-D image HDUs.

    Parameters
    ----------
    path : str or Path
        FITS file.

    Returns
    -------
    ccds : list of int
        0-based HDU indices holding a 2-D image.
    rejects : list of dict
        ``{file, hdu, reason}`` for image HDUs that are not 2-D.

    Raises
    ------
    BadExposure
        When the file is not FITS, or holds no image data at all.
    """
    path = Path(path)
    ccds: list[int] = []
    rejects: list[dict[str, Any]] = []
    with open_fits(path) as hdul:
        for index, hdu in enumerate(hdul):
            if not _is_image(hdu):
                continue
            naxis = _shape(hdu)
            if len(naxis) == 0 or 0 in naxis:
                continue  # an empty primary HDU in front of extensions
            squeezed = tuple(n for n in naxis if n != 1) if len(naxis) > 2 else naxis
            if len(squeezed) != 2:
                rejects.append({"file": str(path), "hdu": index,
                                "reason": f"{path}[{index}]: {len(naxis)}-D array of shape {naxis!r}; "
                                          "expected a 2-D image"})
                continue
            ccds.append(index)
    if not ccds and not rejects:
        raise BadExposure(f"{path}: no image data (no 2-D image HDU; only "
                          "tables or empty HDUs)")
    return ccds, rejects


def _shape(hdu: Any) -> tuple[int, ...]:
    """Array shape (numpy order) from the header, without reading the data."""
    try:
        return tuple(int(n) for n in hdu.shape)
    except (AttributeError, TypeError, ValueError, KeyError):
        header = hdu.header
        naxis = int(header.get("NAXIS", 0))
        return tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))


@dataclass
class CCD:
    """One 2-D image of an exposure.

    Attributes
    ----------
    path : Path
        The exposure file.
    hdu : int
        0-based HDU index (the ``ccd`` coordinate of the store).
    data : numpy.ndarray
        Native-endian float32 pixels, ``data[y, x]``, C-contiguous.
    header : astropy.io.fits.Header
        The HDU's header.
    wcs : astropy.wcs.WCS or None
        Celestial WCS (origin 0 when used), ``None`` when the HDU has none.
    band : str
        ``FILTER`` (or ``BAND``) header value, ``"unknown"`` when absent.
    pixel_scale : float
        Arcsec per pixel from the WCS or header (``PIXSCALE``), NaN if unknown.
    saturation : float or None
        Saturation level in ADU (``SATURATE``/``SATLEVEL``, else the top of an
        integer BITPIX range), ``None`` if unknown.
    """

    path: Path
    hdu: int
    data: np.ndarray
    header: fits.Header
    wcs: WCS | None
    band: str
    pixel_scale: float
    saturation: float | None

    @property
    def name(self) -> str:
        """``file[hdu]`` for messages."""
        return f"{self.path}[{self.hdu}]"


def read_ccd(path: str | Path, hdu: int, *, need_wcs: bool = False,
             check_values: bool = True) -> CCD:
    """Read one CCD (a 2-D image HDU) as native float32 with its WCS.

    Parameters
    ----------
    path : str or Path
        FITS file.
    hdu : int
        0-based HDU index.
    need_wcs : bool, default: False
        Raise when the HDU has no usable celestial WCS (forced RA/Dec cutouts).
    check_values : bool, default: True
        Reject all-NaN or constant images.

    Raises
    ------
    BadExposure
        Not 2-D, unreadable or truncated data, all NaN or constant pixels, or a
        missing WCS when ``need_wcs``; the message names ``file[hdu]``.
    """
    path = Path(path)
    where = f"{path}[{hdu}]"
    with open_fits(path) as hdul:
        if hdu >= len(hdul) or not _is_image(hdul[hdu]):
            raise BadExposure(f"{where}: no image HDU at index {hdu}")
        item = hdul[hdu]
        header = item.header.copy()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = _data(path, hdu, item)
                if raw is None:
                    raise BadExposure(f"{where}: the HDU has no data")
                raw = np.asarray(raw)
                if raw.ndim > 2:
                    raw = raw.reshape([n for n in raw.shape if n != 1]) if sum(
                        n != 1 for n in raw.shape) == 2 else raw
                if raw.ndim != 2:
                    raise BadExposure(f"{where}: {raw.ndim}-D array of shape "
                                      f"{raw.shape!r}; expected a 2-D image")
                data = np.ascontiguousarray(raw, dtype=np.float32)
        except BadExposure:
            raise
        except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
            raise BadExposure(f"{where}: truncated or corrupt data ({exc})") from exc
        bitpix = int(item.header.get("ZBITPIX", item.header.get("BITPIX", -32)))
    if check_values:
        finite = np.isfinite(data)
        if not finite.any():
            raise BadExposure(f"{where}: every pixel is NaN or infinite")
        values = data[finite]
        if float(values.min()) == float(values.max()):
            raise BadExposure(f"{where}: constant image (every pixel is "
                              f"{float(values.min())!r}); nothing to detect")
    wcs = celestial_wcs(header)
    if need_wcs and wcs is None:
        raise BadExposure(f"{where}: no usable celestial WCS; forced RA/Dec cutouts "
                          "need one (give x/y positions instead)")
    return CCD(path=path, hdu=hdu, data=data, header=header, wcs=wcs,
               band=_band(header), pixel_scale=_pixel_scale(header, wcs),
               saturation=_saturation(header, bitpix))


def _data(path: Path, hdu: int, item: Any) -> np.ndarray | None:
    """The HDU's pixels (physical values); re-read without memmap for scaled integer data."""
    try:
        return item.data
    except ValueError as exc:
        if "memmap=False" not in str(exc):
            raise
    # Integer data with BZERO/BSCALE/BLANK: astropy refuses to memory-map it.
    with open_fits(path, memmap=False) as hdul:
        return np.array(hdul[hdu].data)


def celestial_wcs(header: fits.Header) -> WCS | None:
    """The celestial part of the header's WCS, or ``None`` when absent or unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            warnings.simplefilter("ignore", UserWarning)
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            wcs = wcs.celestial
            if _singular_cd(header):
                return None  # wcslib would silently fall back to 1 deg/px
            wcs.pixel_to_world_values(0.0, 0.0)  # fails early on a broken solution
    except Exception:  # noqa: BLE001 - any WCS failure means "no usable WCS"
        return None
    return wcs


def _singular_cd(header: fits.Header) -> bool:
    """Whether the header gives a CD matrix that is singular or not finite (a broken WCS)."""
    keys = ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
    if not any(k in header for k in keys):
        return False
    try:
        cd = np.array([[float(header.get(k, 0.0)) for k in keys[:2]],
                       [float(header.get(k, 0.0)) for k in keys[2:]]])
    except (TypeError, ValueError):
        return True
    return not np.isfinite(cd).all() or abs(float(np.linalg.det(cd))) == 0.0


def _band(header: fits.Header) -> str:
    for key in ("FILTER", "BAND", "FILTNAM1"):
        value = header.get(key)
        if value not in (None, ""):
            return str(value).strip() or "unknown"
    return "unknown"


def _pixel_scale(header: fits.Header, wcs: WCS | None) -> float:
    if wcs is not None:
        try:
            scales = proj_plane_pixel_scales(wcs) * 3600.0
            value = float(np.mean(scales))
            if math.isfinite(value) and value > 0:
                return value
        except Exception:  # noqa: BLE001
            pass
    for key in ("PIXSCALE", "PIXSCAL1", "SECPIX"):
        value = header.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return math.nan


def _saturation(header: fits.Header, bitpix: int) -> float | None:
    for key in ("SATURATE", "SATLEVEL", "SATURATION"):
        value = header.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    if bitpix > 0:  # integer data: the top of the stored range, after BZERO/BSCALE
        top = float(2 ** (bitpix - 1) - 1)
        return top * float(header.get("BSCALE", 1.0)) + float(header.get("BZERO", 0.0))
    return None
