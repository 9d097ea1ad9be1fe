"""Faults during a run: dead workers, a SIGKILLed run, a worker over its memory, bad disks, two runs.

All real: the session's LocalCluster, child processes killed with SIGKILL at
exact points (``_driver.py``), a tiny tmpfs (or ``RLIMIT_FSIZE``) and a read-only
directory.  Each case records rows lost / doubled in the results table.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from _reliability import (ROOT, compare_catalogues, kill_group, record, start_driver,
                          wait_for)
from pipeline import catalogue
from pipeline.classify.graph import classify
from pipeline.classify.run_lock import OutputLocked, lock_path

pytestmark = pytest.mark.filterwarnings("ignore")


class KillWorkers(SchedulerPlugin):
    """After each of the first ``kills`` completed tasks, SIGKILL the next worker given a task.

    It kills the worker process (not the nanny) the moment the scheduler hands
    it a classify task, so that task is lost mid-run and must be rescheduled;
    the nanny starts a new worker process.  No task is killed twice, and no process: the
    scheduler may hand a task to a worker it has not yet seen die, and killing that dead
    process again would lose nothing.
    """

    name = "skysieve-kill-workers"

    def __init__(self, scheduler, kills: int = 3):
        self.scheduler = scheduler
        self.left = kills
        self.armed = False
        self.killed: list[tuple[str, int]] = []

    def transition(self, key, start, finish, *args, **kwargs):
        if not str(key).startswith(("classify_chunk-", "classify-")):
            return
        if finish == "memory" and self.left > 0:
            self.armed = True
        elif finish == "processing" and self.armed and key not in {k for k, _ in self.killed}:
            ws = self.scheduler.tasks[key].processing_on
            if ws is not None and ws.pid and ws.pid not in {p for _, p in self.killed}:
                os.kill(ws.pid, signal.SIGKILL)
                self.killed.append((str(key), ws.pid))
                self.left -= 1
                self.armed = False


def test_workers_killed_three_times_mid_classify(store, client, clean, tmp_path: Path) -> None:
    scheduler = client.cluster.scheduler
    plugin = KillWorkers(scheduler, kills=3)
    scheduler.add_plugin(plugin)
    try:
        summary = classify(store, tmp_path / "cat", progress=False)
    finally:
        scheduler.remove_plugin(name=plugin.name)
    assert len(plugin.killed) == 3, plugin.killed
    assert len({pid for _, pid in plugin.killed}) == 3  # three different worker processes
    assert not summary.failed, summary.failed
    got = catalogue.read_catalogue(tmp_path / "cat")
    lost, doubled = compare_catalogues(clean, got)
    assert summary.rows == len(clean)
    client.wait_for_workers(2, timeout=120)
    record("3 worker processes SIGKILLed mid-classify", "fault",
           "run finished; tasks rescheduled by distributed", lost=lost, doubled=doubled)


def _tmp_parts(out: Path) -> list[Path]:
    return list(out.glob(".part-*.tmp"))


def test_run_killed_during_ingest_then_rerun(survey, client, clean, chunk_config,
                                             tmp_path: Path) -> None:
    from pipeline.classify.night import run_night

    out = tmp_path / "night"
    marker = tmp_path / "stopped"
    proc = start_driver("ingest-chunk", str(out), str(marker), str(survey.truth),
                        *map(str, survey.files))
    wait_for(marker, proc)
    hidden = list(out.glob(".cutouts.zarr.tmp-*"))
    kill_group(proc)
    assert hidden, "the kill did not land inside the ingest"
    assert not (out / "cutouts.zarr").exists(), "a half-written store is in place"
    result = run_night(list(survey.files), out, truth=survey.truth, progress=False)
    assert not result.classify.failed
    assert not list(out.glob(".cutouts.zarr.tmp-*")), "the killed run's temporary store is left"
    lost, doubled = compare_catalogues(clean, catalogue.read_catalogue(out / "catalogue"))
    record("whole run SIGKILLed during ingest (1 chunk written)", "fault",
           "no store left in place; rerun ingests again, equal to a clean run",
           lost=lost, doubled=doubled)


def test_run_killed_mid_classify_second_run_refused_then_rerun(store, client, clean,
                                                               tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "cat"
    marker = tmp_path / "stopped"
    proc = start_driver("classify-after-part", str(out), str(marker), str(store))
    try:
        wait_for(marker, proc)
        assert len(list(out.glob("part-*.parquet"))) >= 1
        # A second run on the same output, while the first is alive: refused, nothing written.
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(OutputLocked, match=rf"another skysieve run \(pid {proc.pid}\b"):
            classify(store, out, progress=False)
        result = CliRunner().invoke(cli, ["classify", str(store), "--out", str(out),
                                          "--cluster", client.cluster.scheduler_address])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("skysieve: error: ") and str(out) in lines[-1]
        assert "another skysieve run" in lines[-1] and str(lock_path(out)) in lines[-1]
        assert sorted(p.name for p in out.iterdir()) == before
        record("second run on the same output while the first runs", "fault",
               "refused: one-line error naming the lock and the pid; nothing written",
               lost=None, doubled=None)
    finally:
        kill_group(proc)
    assert lock_path(out).exists()  # left by the dead run; the rerun takes it over
    summary = classify(store, out, progress=False)
    assert summary.parts_skipped >= 1 and not summary.failed
    assert not lock_path(out).exists()
    lost, doubled = compare_catalogues(clean, catalogue.read_catalogue(out))
    record("whole run SIGKILLed mid-classify (after a part)", "fault",
           f"rerun resumed ({summary.parts_skipped} parts kept), equal to a clean run",
           lost=lost, doubled=doubled)


def test_run_killed_while_writing_a_part_then_rerun(store, client, clean, tmp_path: Path) -> None:
    out = tmp_path / "cat"
    marker = tmp_path / "stopped"
    proc = start_driver("classify-in-part", str(out), str(marker), str(store))
    try:
        wait_for(marker, proc)
        assert _tmp_parts(out), "the kill did not land inside a part write"
    finally:
        kill_group(proc)
    whole = list(out.glob("part-*.parquet"))
    for part in whole:  # whatever is in place is whole
        assert pd.read_parquet(part).shape[0] > 0
    summary = classify(store, out, progress=False)
    assert not summary.failed
    assert not _tmp_parts(out), "the torn temporary part is still there"
    lost, doubled = compare_catalogues(clean, catalogue.read_catalogue(out))
    record("whole run SIGKILLed while a part is written (before rename)", "fault",
           "torn part never visible; rerun removes it and rewrites the part",
           lost=lost, doubled=doubled)


# ---------------------------------------------------------------------------- memory
def test_worker_over_its_memory_limit(tmp_path: Path) -> None:
    """One chunk needs more memory than the worker may use: the part fails loudly, no row is silently lost.

    The chunk holds 32,768 64-px stamps (512 MiB as float32, never written, so
    NaN-filled and free on disk); the worker may use 900 MiB.  distributed's
    nanny kills the worker at 95 % of that while it reads the chunk.
    """
    import distributed
    from cluster.local import local_cluster

    n = 32768
    big = _big_store(tmp_path / "big.zarr", n=n, stamp=64)
    config = {"distributed.scheduler.allowed-failures": 0,
              "distributed.worker.memory.pause": False,
              "distributed.worker.memory.spill": False,
              "distributed.worker.memory.target": False,
              "distributed.worker.memory.terminate": 0.95}
    with dask.config.set(config), local_cluster(n_workers=1, threads_per_worker=1,
                                                memory_limit="900MiB") as lc, \
            distributed.Client(lc):
        out = tmp_path / "cat"
        summary = classify(big, out, progress=False)
    failed = summary.failed
    assert failed, "the chunk was expected to exceed the 900 MiB limit"
    text = " ".join(f["error"] for f in failed)
    assert "memory limit" in text and f"chunk-sources (now {n})" in text, text
    # nothing silently dropped: the one chunk failed loudly, no part claims its rows
    assert len(failed) == summary.parts == 1 and summary.rows == 0
    assert not list(out.glob("part-*.parquet")) and not list(out.glob(".part-*"))
    assert "FAILED part" in summary.describe() and "rerun to retry" in summary.describe()
    record("worker over its memory limit (a 512 MiB chunk, 900 MiB worker)", "fault",
           "part reported FAILED naming the memory limit and the chunk size to lower; "
           "CLI exit 1, rerun to retry; no silent loss", lost=0, doubled=0)


def _big_store(path: Path, *, n: int, stamp: int) -> Path:
    """A valid store of ``n`` stamps in one chunk whose pixels were never written (NaN)."""
    from pipeline.store import create_store, pack_source_id

    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "source_id": pack_source_id(["big"] * n, [0] * n, np.arange(n)),
        "exposure": ["big"] * n, "ccd": np.zeros(n, np.int16),
        "x": rng.uniform(0, 4000, n), "y": rng.uniform(0, 4000, n),
        "ra": rng.uniform(10, 11, n), "dec": rng.uniform(-1, 1, n),
        **{c: np.ones(n, np.float32) for c in ("flux", "a", "b", "theta", "fwhm", "sky",
                                               "sky_rms", "snr")},
        "psf_fwhm": np.full(n, 3.0, np.float32), "flags": np.zeros(n, np.int32)})
    create_store(path, table, stamp=stamp, bands=["r"], chunk_sources=n, pixel_scale=0.25,
                 inputs=[], rejects=[])
    return path


# ---------------------------------------------------------------------------- disks
def _mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs at ``path`` (root with CAP_SYS_ADMIN only); False when not possible."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _driver_under_limits(store: Path, out: Path, marker: Path, *, fsize: int | None = None,
                         user: int | None = None) -> subprocess.CompletedProcess:
    def limits() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if user is not None:
            os.setgid(user)
            os.setgroups([])
            os.setuid(user)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(out.parent)}
    return subprocess.run([sys.executable, str(Path(__file__).with_name("_driver.py")),
                           "classify", str(out), str(marker), str(store)],
                          env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limits)


def _nothing_partial(out: Path) -> None:
    """Every visible part is whole and readable; no temporary part is left."""
    assert not list(out.glob(".part-*")), "temporary part files left behind"
    for part in out.glob("part-*.parquet"):
        assert len(pd.read_parquet(part)) > 0


def test_full_disk(store, clean, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if _mount_tmpfs(mnt, "size=24k"):
        how, kwargs = "tmpfs of 24 KiB (ENOSPC)", {}
    else:  # no privileges to mount: every file is capped instead (EFBIG)
        how, kwargs = "RLIMIT_FSIZE 4 KiB (EFBIG)", {"fsize": 4096}
    try:
        out = mnt / "cat"
        proc = _driver_under_limits(store, out, tmp_path / "done", **kwargs)
        assert proc.returncode != 0, proc.stdout[-2000:]
        text = proc.stdout + proc.stderr
        assert ("No space left on device" in text or "File too large" in text), text[-3000:]
        _nothing_partial(out)
        n_whole = len(list(out.glob("part-*.parquet")))
        assert n_whole < len(list(Path(store).glob("image/c/*")))
        # room again: the rerun completes the catalogue, keeping the whole parts
        moved = tmp_path / "cat"
        shutil.copytree(out, moved)
    finally:
        if not kwargs:
            _umount(mnt)
    summary = classify(store, moved, progress=False)
    assert not summary.failed and summary.parts_skipped == n_whole
    lost, doubled = compare_catalogues(clean, catalogue.read_catalogue(moved))
    record(f"output on a full disk ({how})", "fault",
           f"run failed naming the error; {n_whole} whole parts, no torn part; rerun completed",
           lost=lost, doubled=doubled)


def test_read_only_output(store, client, tmp_path: Path) -> None:
    """A read-only output directory: one clear error, nothing written."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    base = tmp_path / "ro"
    base.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: mount a read-only tmpfs instead
        if not _mount_tmpfs(base, "ro,size=64k"):
            pytest.skip("running as root without the right to mount: permissions cannot make "
                        "a directory read-only for root here")
        mounted = True
    else:
        base.chmod(0o555)
        mounted = False
    try:
        out = base / "cat"
        with pytest.raises(OSError) as info:
            classify(store, out, progress=False)
        assert str(base) in str(info.value)
        assert isinstance(info.value, PermissionError) or "Read-only file system" in str(info.value)
        result = CliRunner().invoke(cli, ["classify", str(store), "--out", str(out),
                                          "--cluster", client.cluster.scheduler_address])
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("skysieve: error: ") and str(base) in last, result.output
        assert not out.exists() and not any(base.iterdir())
    finally:
        if mounted:
            _umount(base)
        else:
            base.chmod(0o755)
    record("output directory read-only", "fault",
           f"refused before any work: {type(info.value).__name__} naming the path; nothing written",
           lost=None, doubled=None)


def test_lock_left_empty_by_a_kill_and_stale_store_builds(tmp_path: Path) -> None:
    """A run killed between creating its lock and writing its pid; a killed ingest's hidden store."""
    from pipeline.classify.run_lock import EMPTY_LOCK_GRACE_S, exclusive
    from pipeline.store import sweep_stale_temporaries, temporary_sibling

    out = tmp_path / "cat"
    lock_path(out).write_text("")
    with pytest.raises(OutputLocked):  # fresh: maybe a run that is just starting
        with exclusive(out):
            pass
    old = lock_path(out).stat().st_mtime - EMPTY_LOCK_GRACE_S - 5
    os.utime(lock_path(out), (old, old))
    with exclusive(out) as path:  # old and empty: stale, taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
    store = tmp_path / "s.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    mine = temporary_sibling(store)
    theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
    other_host = store.with_name(f".{store.name}.tmp-elsewhere-{int(dead.stdout)}-abcd1234")
    for d in (mine, theirs, other_host):
        d.mkdir()
    assert sweep_stale_temporaries(store) == [theirs]
    assert mine.exists() and other_host.exists() and not theirs.exists()
    record("lock file left empty by a kill; hidden store of a killed ingest", "fault",
           "empty lock taken over after 30 s; dead ingest's temporary swept, live/remote kept",
           lost=None, doubled=None)
