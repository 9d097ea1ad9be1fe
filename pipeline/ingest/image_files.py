"""Reading PNG/JPEG cutouts for ``import-images``: their channels, colour, and the store's bands.

Band plans
----------
A *band plan* says which band of the store each of an image's channels
becomes: a list of ``(band name, channel)`` with channel ``"R"``, ``"G"``,
``"B"`` or ``"mean"`` (the mean of the channels).  :func:`band_plan` reads it
from the ``--bands`` option:

- ``None`` (auto): greyscale images (one channel, or RGB with equal channels,
  like JPEG greyscale stored as RGB) give one band ``grey``, the channels'
  mean; colour images give three bands ``R``, ``G``, ``B``; a folder with both
  is an error (pass ``--bands`` to choose);
- one name (``grey``, ``r``): one band, the mean of the channels;
- three names (``i,r,g``): the R, G and B channels, in that order (SDSS gri
  composites put i in R, r in G and g in B);
- ``NAME:CHANNEL`` pairs (``g:B,r:G,i:R``): each band from the named channel,
  the bands in the order given.

With an explicit plan every image is accepted: a one-channel image gives its
plane to every channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import ImageFolderError

__all__ = ["CHANNELS", "COLOUR_TOLERANCE", "auto_band_plan", "band_plan", "fit_stamp",
           "is_colour", "read_planes", "select_bands"]

CHANNELS: tuple[str, ...] = ("R", "G", "B")
#: An RGB image is colour when two channels differ by more than this many levels somewhere.
COLOUR_TOLERANCE = 2.0
_GREY_MODES = ("L", "I", "I;16", "F")


def read_planes(path: Path) -> np.ndarray:
    """An image file's channels as float32 ``(C, ny, nx)``: C = 1 (greyscale modes) or 3 (RGB).

    Alpha is dropped; palette and other modes are converted to RGB; 16-bit and
    float greyscale keep their values.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in _GREY_MODES:
            return np.asarray(img, dtype=np.float32)[None]
        if img.mode == "LA":
            return np.asarray(img.convert("L"), dtype=np.float32)[None]
        return np.ascontiguousarray(np.moveaxis(np.asarray(img.convert("RGB"), np.float32), 2, 0))


def is_colour(planes: np.ndarray) -> bool:
    """Whether ``planes`` (C, ny, nx) holds colour: three channels that differ somewhere."""
    if planes.shape[0] < 3:
        return False
    return bool(max(float(np.max(np.abs(planes[0] - planes[1]))),
                    float(np.max(np.abs(planes[1] - planes[2])))) > COLOUR_TOLERANCE)


def band_plan(spec: str | Sequence[str] | None) -> list[tuple[str, str]] | None:
    """Parse a ``--bands`` value into a band plan (module docstring); None for auto.

    Raises
    ------
    ImageFolderError
        Empty or repeated names, two names, more than three, an unknown channel,
        or plain names mixed with ``NAME:CHANNEL`` pairs.
    """
    if spec is None:
        return None
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    how = ("--bands takes one name (the mean of the channels, e.g. grey), three names for "
           "the R,G,B channels (e.g. i,r,g) or NAME:CHANNEL pairs (e.g. g:B,r:G,i:R)")
    if not items or any(not s for s in items):
        raise ImageFolderError(f"--bands {spec!r}: empty band name; {how}")
    pairs = [s for s in items if ":" in s]
    if pairs and len(pairs) != len(items):
        raise ImageFolderError(f"--bands {spec!r}: mixes plain names and NAME:CHANNEL pairs; "
                               f"{how}")
    if pairs:
        plan = []
        for item in items:
            name, _, channel = (p.strip() for p in item.partition(":"))
            if not name or channel.upper() not in CHANNELS:
                raise ImageFolderError(f"--bands {spec!r}: {item!r} is not NAME:CHANNEL with "
                                       f"a channel R, G or B; {how}")
            plan.append((name, channel.upper()))
    elif len(items) == 1:
        plan = [(items[0], "mean")]
    elif len(items) == len(CHANNELS):
        plan = list(zip(items, CHANNELS))
    else:
        raise ImageFolderError(f"--bands {spec!r}: {len(items)} names; {how}")
    names = [name for name, _ in plan]
    if len(set(names)) != len(names):
        raise ImageFolderError(f"--bands {spec!r}: a band name repeats; {how}")
    return plan


def auto_band_plan(colour: Sequence[bool], paths: Sequence[str], where: str
                   ) -> list[tuple[str, str]]:
    """The band plan of a folder without ``--bands``: ``grey`` or ``R,G,B`` (module docstring).

    Raises
    ------
    ImageFolderError
        Colour and greyscale images mixed; names examples of both and the fix.
    """
    colour = np.asarray(colour, bool)
    if not colour.any():
        return [("grey", "mean")]
    if colour.all():
        return list(zip(CHANNELS, CHANNELS))
    grey_eg = [p for p, c in zip(paths, colour) if not c][:3]
    colour_eg = [p for p, c in zip(paths, colour) if c][:3]
    raise ImageFolderError(
        f"{where}: {int(colour.sum())} colour and {int((~colour).sum())} greyscale image(s) "
        f"(colour e.g. {colour_eg!r}; greyscale e.g. {grey_eg!r}); choose the store's bands "
        "with --bands: one name (e.g. --bands grey) makes every image one band, the mean of "
        "its channels; three (e.g. --bands R,G,B) keep the channels, greyscale images "
        "repeating their one plane")


def select_bands(planes: np.ndarray, plan: Sequence[tuple[str, str]]) -> np.ndarray:
    """The store bands ``(n_band, ny, nx)`` float32 of one image's ``planes`` under ``plan``."""
    out = np.empty((len(plan), *planes.shape[1:]), np.float32)
    for k, (_, channel) in enumerate(plan):
        if planes.shape[0] == 1:
            out[k] = planes[0]
        elif channel == "mean":
            out[k] = planes.mean(axis=0)
        else:
            out[k] = planes[CHANNELS.index(channel)]
    return out


def fit_stamp(image: np.ndarray, stamp: int) -> tuple[np.ndarray, bool]:
    """Centre-crop or NaN-pad ``image`` (..., ny, nx) to (..., stamp, stamp); True when padded."""
    *lead, ny, nx = image.shape
    out = np.full((*lead, stamp, stamp), np.nan, np.float32)
    # source and destination windows per axis, centred
    sy0, dy0 = max(0, (ny - stamp) // 2), max(0, (stamp - ny) // 2)
    sx0, dx0 = max(0, (nx - stamp) // 2), max(0, (stamp - nx) // 2)
    h, w = min(ny, stamp), min(nx, stamp)
    out[..., dy0:dy0 + h, dx0:dx0 + w] = image[..., sy0:sy0 + h, sx0:sx0 + w]
    return out, (ny < stamp or nx < stamp)
