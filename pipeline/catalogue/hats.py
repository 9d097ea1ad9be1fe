"""Export a skysieve catalogue as a HATS catalogue that LSDB (and any HATS reader) opens.

HATS (Hierarchical Adaptive Tiling Scheme) is HEALPix-partitioned Parquet:
``dataset/Norder=K/Dir=D/Npix=N.parquet`` plus ``hats.properties``,
``partition_info.csv`` and ``dataset/_metadata``. The conversion is done by
``hats-import``'s map-reduce pipeline on a Dask cluster: the part files are
read in place, binned by position and written once per HEALPix partition, so
it scales with the cluster, not with the client's memory.

Rows without a sky position (``healpix == -1``: NaN ``ra``/``dec``) cannot be
placed in a HEALPix partition; they are left out and counted in the summary.
The ``skysieve`` Parquet metadata (classes, model, sha256, run config) is
carried into every HATS partition file.

>>> summary = to_hats("demo-out/catalogue", "demo-out/hats")  # doctest: +SKIP
>>> import lsdb; lsdb.open_catalog("demo-out/hats").cone_search(150.1, 2.2, 60)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.catalogue.part_files import parts, read_metadata
from pipeline.errors import HatsExportError

__all__ = ["HatsSummary", "HatsExportError", "to_hats", "HATS_REQUIREMENTS"]

#: What ``to_hats`` needs (the ``skysieve[hats]`` requirement lines).
HATS_REQUIREMENTS = ("hats-import>=0.11.1,<0.12", "lsdb>=0.11.1,<0.12")


@dataclass
class HatsSummary:
    """What :func:`to_hats` wrote."""

    path: str
    rows: int
    rows_without_position: int
    partitions: int
    orders: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """A few lines for the terminal."""
        lines = [f"HATS catalogue {self.path}",
                 f"rows           {self.rows:,} in {self.partitions} HEALPix partitions "
                 f"(orders {', '.join(map(str, self.orders)) or '-'})",
                 f"wall time      {self.seconds:.1f} s",
                 f"open with      lsdb.open_catalog({self.path!r})"]
        if self.rows_without_position:
            lines.insert(2, f"left out       {self.rows_without_position:,} rows without a "
                            "sky position (healpix == -1)")
        return "\n".join(lines)


try:  # optional: the ``skysieve[hats]`` extra
    from hats_import.catalog.file_readers.parquet import ParquetPyarrowReader as _ReaderBase
    _HATS_IMPORT_ERROR: ImportError | None = None
except ImportError as _exc:  # pragma: no cover - exercised where hats-import is absent
    _ReaderBase = object  # type: ignore[assignment, misc]
    _HATS_IMPORT_ERROR = _exc


def _require_hats() -> None:
    if _HATS_IMPORT_ERROR is not None:
        raise HatsExportError(
            f"HATS export needs hats-import and lsdb ({_HATS_IMPORT_ERROR}); install them with "
            f"`pip install {' '.join(repr(r) for r in HATS_REQUIREMENTS)}` "
            "(or `pip install 'skysieve[hats]'`)")


class PositionedParquetReader(_ReaderBase):  # type: ignore[misc, valid-type]
    """hats-import's pyarrow Parquet reader, dropping rows without a finite ``ra``/``dec``."""

    def read(self, input_file, read_columns=None):  # noqa: D401 - hats-import's API
        """Yield the file's tables, rows with a position only."""
        import pyarrow.compute as pc

        for table in super().read(input_file, read_columns=read_columns):
            ok = pc.and_(pc.is_finite(table["ra"]), pc.is_finite(table["dec"]))
            yield table.filter(pc.fill_null(ok, False))


@contextmanager
def _client(client: Any | None) -> Iterator[Any]:
    """The given client, the current default client, or a small in-process cluster."""
    if client is not None:
        yield client
        return
    from distributed import get_client

    try:
        current = get_client()
    except ValueError:  # no client: start one below
        current = None
    if current is not None:  # yield outside the try: errors of the body are not ours
        yield current
        return
    from distributed import Client, LocalCluster

    # Threads in this process: the conversion is I/O and Arrow (which releases the GIL).
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as lc, Client(lc) as new:
        yield new


def _count_positions(parts: list[Path]) -> tuple[int, int]:
    """(rows with a finite position, rows without) over the part files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    good = bad = 0
    for part in parts:
        t = pq.read_table(part, columns=["ra", "dec"])
        ok = pc.and_(pc.is_finite(t["ra"]), pc.is_finite(t["dec"]))
        n = pc.sum(pc.fill_null(ok, False).cast("int64")).as_py() or 0
        good += n
        bad += t.num_rows - n
    return good, bad


def _prepare_out(out: Path, overwrite: bool) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._\-]+", out.name):
        raise HatsExportError(f"{out}: the HATS catalogue's folder name {out.name!r} may hold only "
                              "letters, digits, '.', '_' and '-'; choose another OUT")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out}: already exists; pass overwrite=True (--overwrite) "
                                  "to replace it or choose another OUT")
        if not out.is_dir() or (any(out.iterdir()) and not (out / "hats.properties").exists()
                                and not (out / "properties").exists()):
            raise FileExistsError(f"{out}: exists and is not a HATS catalogue; refusing to "
                                  "delete it, choose another OUT")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def to_hats(catalogue_dir: Path, out: Path, *, pixel_threshold: int = 1_000_000,
            highest_order: int = 7, overwrite: bool = False, client: Any | None = None,
            progress: bool = False) -> HatsSummary:
    """Write the skysieve catalogue at ``catalogue_dir`` as a HATS catalogue at ``out``.

    Parameters
    ----------
    catalogue_dir : Path
        Catalogue directory written by ``skysieve classify``.
    out : Path
        The HATS catalogue directory to create (its name becomes the catalogue
        name; letters, digits, ``.``, ``_``, ``-`` only).
    pixel_threshold : int, default: 1_000_000
        Most rows in one HEALPix partition; denser sky is split into finer pixels.
    highest_order : int, default: 7
        Finest HEALPix order a partition may have (0-19). Order 7 pixels are
        0.46 deg wide; finer orders are slow to plan: hats-import's partition
        planning loops in Python over all 12*4**order pixels (order 10 took ~20 s
        here, order 7 ~0.3 s).
    overwrite : bool, default: False
        Replace an existing HATS catalogue at ``out``.
    client : distributed.Client, optional
        Where the map-reduce runs. Default: the current client, else a small
        in-process local cluster started for the conversion.
    progress : bool, default: False
        Show hats-import's progress bars.

    Returns
    -------
    HatsSummary

    Raises
    ------
    HatsExportError
        hats-import is not installed, bad arguments, or no row has a position.
    FileNotFoundError, FileExistsError
        No catalogue at ``catalogue_dir``; ``out`` exists (without ``overwrite``).
    """
    _require_hats()
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    t0 = time.perf_counter()
    catalogue_dir, out = Path(catalogue_dir), Path(out)
    files = parts(catalogue_dir)
    read_metadata(catalogue_dir)  # a skysieve catalogue, not any Parquet
    if not (isinstance(pixel_threshold, int) and pixel_threshold >= 1):
        raise HatsExportError(f"to_hats: pixel_threshold={pixel_threshold!r} must be a positive "
                              "integer (rows per partition)")
    if not (isinstance(highest_order, int) and 0 <= highest_order <= 19):
        raise HatsExportError(f"to_hats: highest_order={highest_order!r} must be an integer "
                              "in 0..19")
    rows, without = _count_positions(files)
    if rows == 0:
        raise HatsExportError(f"{catalogue_dir}: no row has a finite ra/dec ({without} rows "
                              "without a position); a HATS catalogue needs sky positions")
    _prepare_out(out, overwrite)
    tmp = out.parent / f".{out.name}.hats-import.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    reader = PositionedParquetReader()
    args = ImportArguments(
        output_path=str(out.parent), output_artifact_name=out.name,
        input_file_list=[str(f) for f in files], file_reader=reader,
        ra_column="ra", dec_column="dec", sort_columns="source_id",
        pixel_threshold=pixel_threshold, highest_healpix_order=highest_order,
        use_schema_file=str(files[0]), expected_total_rows=rows, tmp_dir=str(tmp),
        resume=False, progress_bar=progress, simple_progress_bar=True,
        addl_hats_properties={"obs_title": f"skysieve catalogue {catalogue_dir.name}"},
    )
    try:
        with _client(client) as c:
            pipeline_with_client(args, c)
    except ValueError as exc:
        if "exceeds threshold" in str(exc):
            raise HatsExportError(
                f"{catalogue_dir}: {exc} at HEALPix order {highest_order}; raise "
                f"--highest-order (finer pixels) or --pixel-threshold") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summarise(out, rows, without, time.perf_counter() - t0)


def _summarise(out: Path, rows: int, without: int, seconds: float) -> HatsSummary:
    import hats

    cat = hats.read_hats(out)
    pixels = cat.get_healpix_pixels()
    return HatsSummary(path=str(out), rows=rows, rows_without_position=without,
                       partitions=len(pixels), orders=sorted({p.order for p in pixels}),
                       seconds=seconds)
