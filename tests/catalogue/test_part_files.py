"""Catalogue parts written off the task's critical path: whole after the flush, failures named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.catalogue import part_files
from pipeline.catalogue.layout import METADATA_KEY, part_path


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"source_id": pa.array(np.arange(n, dtype=np.int64) + 1000 * seed),
                     "exposure": pa.array([f"exp{i % 3}" for i in range(n)], pa.string()),
                     "label": pa.array(["star", "galaxy"] * (n // 2), pa.string()),
                     "p_star": pa.array(rng.random(n).astype(np.float32))})


def test_parts_handed_to_the_writer_are_whole_after_the_flush(tmp_path: Path) -> None:
    tables = {i: _table(64, i) for i in range(3 * part_files.PENDING_PARTS)}  # > the queue
    for i, table in tables.items():
        part_files.write_part_soon(table, part_path(tmp_path, i), metadata={"part": i},
                                   row_group_size=16)
    assert part_files.flush_parts(tmp_path) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        part_path(tmp_path, i).name for i in tables)  # no temporary left
    for i, table in tables.items():
        path = part_path(tmp_path, i)
        got = pq.read_table(path)
        assert got.select(table.column_names).equals(table)
        rows, meta = part_files.read_footer(path)
        assert rows == 64 and meta == {"part": i}
        assert json.loads(pq.read_schema(path).metadata[METADATA_KEY]) == {"part": i}
        # dictionaries for the strings only; row groups and zstd as asked
        md = pq.ParquetFile(path).metadata
        assert md.num_row_groups == 4 and md.row_group(0).column(0).compression == "ZSTD"
        encodings = {md.row_group(0).column(k).path_in_schema: md.row_group(0).column(k).encodings
                     for k in range(md.num_columns)}
        assert any("DICTIONARY" in e for e in encodings["exposure"])
        assert not any("DICTIONARY" in e for e in encodings["p_star"])


def test_a_part_that_cannot_be_written_is_reported_and_nothing_is_left(tmp_path: Path) -> None:
    good, gone = tmp_path / "cat", tmp_path / "missing"
    good.mkdir()
    part_files.write_part_soon(_table(8, 0), part_path(gone, 0), metadata={})
    part_files.write_part_soon(_table(8, 1), part_path(good, 1), metadata={})
    # each catalogue gets its own failures, once
    assert part_files.flush_parts(good) == {}
    failed = part_files.flush_parts(gone)
    assert list(failed) == ["part-00000.parquet"] and "FileNotFoundError" in failed["part-00000.parquet"]
    assert part_files.flush_parts(gone) == {}
    assert [p.name for p in good.iterdir()] == ["part-00001.parquet"] and not gone.exists()
