"""Stable int64 ``source_id`` values: packing, unpacking, path hashes and the uniqueness check.

Bits 27-62 hold the first 36 bits of blake2b(exposure name), bits 20-26 the ccd
(0-127), bits 0-19 the detection number (0-1,048,575); ids are always positive.
Images imported from a folder use a 63-bit hash of their relative path instead.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import StoreError

__all__ = ["check_unique_ids", "pack_source_id", "path_source_id", "unpack_source_id"]

_HASH_BITS, _CCD_BITS, _DET_BITS = 36, 7, 20


def _name_hash(text: str, bits: int) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - bits)


def pack_source_id(exposure: Sequence[str] | np.ndarray, ccd: Iterable[int] | np.ndarray,
                   detection: Iterable[int] | np.ndarray) -> np.ndarray:
    """Stable int64 source ids: ``hash36(exposure) << 27 | ccd << 20 | detection``.

    Parameters
    ----------
    exposure : sequence of str
        Exposure names (file stems).
    ccd : array_like of int
        0-based HDU indices, 0-127.
    detection : array_like of int
        Detection numbers within the CCD, 0-1,048,575.

    Raises
    ------
    StoreError
        A ccd or detection number outside its bit field.
    """
    exposure = np.asarray(exposure, dtype=object)
    ccd = np.asarray(ccd, dtype=np.int64)
    detection = np.asarray(detection, dtype=np.int64)
    if ccd.size and (ccd.min() < 0 or ccd.max() >= 1 << _CCD_BITS):
        raise StoreError(f"ccd index {int(ccd.max())!r} does not fit the {_CCD_BITS}-bit field "
                         f"of source_id (0..{(1 << _CCD_BITS) - 1}); split the exposure file")
    if detection.size and (detection.min() < 0 or detection.max() >= 1 << _DET_BITS):
        raise StoreError(f"detection number {int(detection.max())!r} does not fit the "
                         f"{_DET_BITS}-bit field of source_id; raise the detection threshold "
                         "or give source_id in the source table")
    names, inverse = np.unique(exposure.astype(str), return_inverse=True)
    hashes = np.array([_name_hash(n, _HASH_BITS) for n in names], dtype=np.int64)
    return (hashes[inverse] << (_CCD_BITS + _DET_BITS)) | (ccd << _DET_BITS) | detection


def unpack_source_id(source_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split packed ids into ``(exposure hash, ccd, detection)`` arrays."""
    sid = np.asarray(source_id, dtype=np.int64)
    return (sid >> (_CCD_BITS + _DET_BITS), (sid >> _DET_BITS) & ((1 << _CCD_BITS) - 1),
            sid & ((1 << _DET_BITS) - 1))


def path_source_id(relative_paths: Sequence[str]) -> np.ndarray:
    """Stable positive int64 ids from a 63-bit hash of each (POSIX) relative path."""
    return np.array([_name_hash(str(p), 63) for p in relative_paths], dtype=np.int64)


def check_unique_ids(source_id: np.ndarray, labels: Sequence[str] | np.ndarray, *,
                     where: str) -> None:
    """Raise :class:`StoreError` naming the colliding entries when ids repeat.

    Parameters
    ----------
    source_id : numpy.ndarray
        The ids, one per source.
    labels : sequence of str
        A human name of each source (``exposure[ccd]#detection``), for the message.
    where : str
        The store being written, prefixed to the message.
    """
    sid = np.asarray(source_id, dtype=np.int64)
    uniq, counts = np.unique(sid, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        labels = np.asarray(labels, dtype=object)
        examples = [f"{int(d)}: {sorted(set(labels[sid == d].tolist()))[:4]!r}" for d in dup[:3]]
        raise StoreError(f"{where}: {int((counts > 1).sum())} source_id collision(s) "
                         f"({'; '.join(examples)}); rename the exposures (hash collision) or "
                         "give unique source_id values")
