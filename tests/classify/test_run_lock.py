"""One writer per output: a live run's lock refuses a second run; a dead run's lock is taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.classify.run_lock import OutputLocked, exclusive, lock_path


def test_second_writer_refused_and_lock_released(tmp_path: Path) -> None:
    out = tmp_path / "catalogue"
    with exclusive(out) as path:
        assert path == lock_path(out) and path.exists()
        with pytest.raises(OutputLocked, match=r"another skysieve run \(pid \d+"):
            with exclusive(out):
                pass
    assert not lock_path(out).exists()
    with exclusive(out):  # free again
        pass


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "catalogue"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock_path(out).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with exclusive(out) as path:
        assert json.loads(path.read_text())["pid"] != int(dead.stdout)


def test_lock_from_another_host_is_respected(tmp_path: Path) -> None:
    out = tmp_path / "catalogue"
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "some-other-node"}))
    with pytest.raises(OutputLocked, match="some-other-node"):
        with exclusive(out):
            pass
