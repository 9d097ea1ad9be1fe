"""Helpers of the job-script tests (tests/cluster is on sys.path: pytest's rootdir insertion)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

__all__ = ["bash_n", "profile_file"]


def profile_file(tmp_path: Path, **values) -> Path:
    """Write ``values`` as the YAML profile ``tmp_path/profile.yaml``; return its path."""
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def bash_n(script: str, tmp_path: Path) -> None:
    """Syntax-check a script with `bash -n` (parses, runs nothing); skip without bash."""
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    path = tmp_path / "script.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
