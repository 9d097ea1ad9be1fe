"""Training that resumes: stopped at a time limit or killed, it ends with the weights of an
uninterrupted run (pipeline.training.loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import TrainingError, TrainingStopped
from pipeline.training.fit import train
from workers.checkpoint import load_card
from _blob_stores import make_store  # tests/ on sys.path

KW = dict(arch="smallcnn", epochs=4, batch_size=32, seed=3, patience=10, progress=False)
BIN = Path(sys.executable).with_name("skysieve")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module on one torch thread, as the killed CLI run
    (``OMP_NUM_THREADS=1``): other thread counts round differently, and the order of the
    suite would otherwise decide what this process has."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("resume") / "blobs.zarr", n=150, size=32, seed=5)


@pytest.fixture(scope="module")
def straight(store, tmp_path_factory):
    """The sha256 of the weights of an uninterrupted run."""
    return train(store, out=tmp_path_factory.mktemp("straight") / "m.pt", **KW).sha256


def test_stopped_at_each_epoch_it_ends_with_the_same_weights(store, straight, tmp_path):
    out = tmp_path / "m.pt"
    stops = 0
    while True:
        try:
            card = train(store, out=out, resume=True, time_limit_s=0.0, **KW)
            break
        except TrainingStopped as stop:
            stops += 1
            assert "rerun" in str(stop) and (tmp_path / "m.resume.pt").is_file()
            assert not out.is_file()                 # no checkpoint until the end
            assert stops < 10
    assert stops == 3                                # after epochs 1, 2 and 3
    assert card.sha256 == straight                   # byte-identical weights
    assert card.training["resumed_after_epoch"] == 3 and len(card.training["history"]) == 4
    assert not (tmp_path / "m.resume.pt").exists()   # removed once the checkpoint is written


def test_killed_mid_run_it_goes_on_to_the_same_weights(store, straight, tmp_path):
    out, state = tmp_path / "k.pt", tmp_path / "k.resume.pt"
    cmd = [str(BIN), "train", str(store), "--out", str(out), "--arch", "smallcnn", "--epochs",
           "4", "--batch-size", "32", "--seed", "3", "--patience", "10", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.is_file(), "the run saved no state"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.is_file()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    assert load_card(out).sha256 == straight


def test_a_state_of_other_settings_is_refused(store, tmp_path):
    out = tmp_path / "s.pt"
    with pytest.raises(TrainingStopped):
        train(store, out=out, resume=True, time_limit_s=0.0, **KW)
    with pytest.raises(TrainingError, match="other settings"):
        train(store, out=out, resume=True, **{**KW, "lr": 1e-3})
    (tmp_path / "s.resume.pt").write_bytes(b"not a state")
    with pytest.raises(TrainingError, match="cannot read"):
        train(store, out=out, resume=True, **KW)


def test_cli_time_limit_exits_75_and_needs_resume(store, tmp_path):
    runner = CliRunner()
    base = ["train", str(store), "--out", str(tmp_path / "c.pt"), "--epochs", "2",
            "--batch-size", "32"]
    bad = runner.invoke(cli, base + ["--time-limit", "0"])
    assert bad.exit_code == 2 and "--resume" in bad.output
    stopped = runner.invoke(cli, base + ["--resume", "--time-limit", "0"])
    assert stopped.exit_code == 75 and (tmp_path / "c.resume.pt").is_file()
    done = runner.invoke(cli, base + ["--resume"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "c.pt").is_file() and not (tmp_path / "c.resume.pt").exists()
