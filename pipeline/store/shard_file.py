"""One Zarr v3 shard file written chunk by chunk, so a writer holds one chunk, not a shard.

Zarr writes a shard whole: a task that fills a 256 MiB shard holds the shard's pixels and
its encoded bytes at once (~3x the shard in memory).  :class:`ShardFile` writes the same
file the ``sharding_indexed`` codec reads (the Zarr v3 sharding spec): the encoded inner
chunks one after the other, then (or, with ``index_location: start``, before them) the index
of ``(offset, nbytes)`` little-endian uint64 pairs, one per inner chunk (``2**64 - 1`` twice
for a chunk never written), followed by its crc32c where the index codecs end in
``crc32c``.  Only inner chunks encoded by ``bytes`` alone are streamed (the store's default
uncompressed ``image``); :func:`pipeline.store.build.write_chunks` falls back to Zarr for
any other layout.  The file is written under a temporary name and renamed into place, so a
reader never sees half a shard.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np

from pipeline.errors import StoreError

__all__ = ["ShardFile", "streamable"]

_EMPTY = 2**64 - 1


def streamable(layout: object | None) -> bool:
    """Whether :class:`ShardFile` can write an array of this layout (``read.chunk_layout``)."""
    return (layout is not None and layout.shard is not None and layout.dtype is not None
            and not layout.zstd)


class ShardFile:
    """Write shard ``index`` of a sharded array one inner chunk at a time.

    Parameters
    ----------
    layout
        The array's layout, :func:`pipeline.store.read.chunk_layout` (must be
        :func:`streamable`).
    index : int
        Which shard along the first axis.

    Use as a context manager: :meth:`add` each inner chunk in order; on a clean exit the
    index is written and the file renamed into place; on an exception the partial file is
    removed and the shard is left as it was.
    """

    def __init__(self, layout: object, index: int) -> None:
        if not streamable(layout):
            raise StoreError(f"{getattr(layout, 'folder', layout)}: not a sharded array of "
                             "uncompressed chunks; write it through Zarr")
        self.layout = layout
        self.step = int(layout.chunks[0])
        self.per_shard = int(layout.shard) // self.step
        self.first_row = int(index) * int(layout.shard)
        rows_left = int(layout.shape[0]) - self.first_row
        if rows_left <= 0:
            raise StoreError(f"{layout.folder}: shard {index} lies beyond the array's "
                             f"{layout.shape[0]} rows")
        self.chunks_here = min(self.per_shard, -(-rows_left // self.step))
        key = layout.separator.join(["c", str(int(index)), *("0" * (len(layout.shape) - 1))])
        self.path = Path(layout.folder) / key
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._index = np.full((self.per_shard, 2), _EMPTY, dtype="<u8")
        self._header = 0 if layout.index_at_end else self._index_bytes()
        self._written = 0
        self._fh = None

    def _index_bytes(self) -> int:
        return 16 * self.per_shard + (4 if self.layout.index_crc else 0)

    def __enter__(self) -> "ShardFile":
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._tmp, "wb")
        if self._header:
            self._fh.write(b"\0" * self._header)  # the index goes here at the end
        return self

    def add(self, values: np.ndarray) -> None:
        """Append the next inner chunk: ``step`` rows (fewer only for the array's last)."""
        k = self._written
        if k >= self.chunks_here:
            raise StoreError(f"{self.path}: shard already holds its {self.chunks_here} chunks")
        rows = min(self.step, int(self.layout.shape[0]) - self.first_row - k * self.step)
        inner = tuple(self.layout.chunks[1:])
        if values.shape != (rows, *inner):
            raise StoreError(f"{self.path}: chunk {k} has shape {values.shape!r}, expected "
                             f"{(rows, *inner)!r}")
        data = np.asarray(values, dtype=self.layout.dtype)
        if rows < self.step:  # Zarr encodes every inner chunk at its full shape
            pad = np.full((self.step - rows, *inner), self.layout.fill, dtype=self.layout.dtype)
            data = np.concatenate([data, pad])
        payload = np.ascontiguousarray(data).data
        offset = self._fh.tell()
        self._fh.write(payload)
        self._index[k] = (offset, payload.nbytes)
        self._written += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fh, self._fh = self._fh, None
        if kind is not None or self._written != self.chunks_here:
            fh.close()
            self._tmp.unlink(missing_ok=True)
            if kind is None:
                raise StoreError(f"{self.path}: {self._written} of its {self.chunks_here} "
                                 "chunks given; nothing written")
            return
        index = self._index.tobytes()
        if self.layout.index_crc:
            import google_crc32c  # installed with zarr (its crc32c codec)

            index += np.uint32(google_crc32c.value(index)).astype("<u4").tobytes()
        if self._header:
            fh.seek(0)
        fh.write(index)
        fh.close()
        os.replace(self._tmp, self.path)
