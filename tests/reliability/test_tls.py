"""Local clusters bind to localhost; a TLS-configured LocalCluster classifies like a plain one.

The certificates come from ``distributed.security.Security.temporary()`` when
``cryptography`` is installed, else from the ``openssl`` command line (an
argument list, no shell): a self-signed CA-free certificate used by scheduler,
workers and client alike, and ``require_encryption=True``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import dask
import pytest

from _reliability import compare_catalogues, record
from pipeline import catalogue
from pipeline.classify.graph import classify

pytestmark = pytest.mark.filterwarnings("ignore")


def _security(tmp_path: Path):
    from distributed.security import Security

    if importlib.util.find_spec("cryptography") is not None:
        return Security.temporary(), "Security.temporary()"
    openssl = shutil.which("openssl")
    assert openssl, "TLS test needs the `cryptography` package or the `openssl` command"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=skysieve-test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    files = {"tls_ca_file": str(cert)}
    for who in ("client", "scheduler", "worker"):
        files[f"tls_{who}_cert"] = str(cert)
        files[f"tls_{who}_key"] = str(key)
    return Security(require_encryption=True, **files), "openssl self-signed certificate"


def test_local_cluster_binds_localhost(client) -> None:
    cluster = client.cluster
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert client.dashboard_link.startswith("http://127.0.0.1:")
    for ws in cluster.scheduler.workers.values():
        assert ws.address.startswith("tcp://127.0.0.1:"), ws.address
    record("local cluster network exposure", "security",
           "scheduler, workers and dashboard bound to 127.0.0.1", lost=None, doubled=None)


def test_tls_local_cluster_classifies_like_the_plain_one(store, clean, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    security, how = _security(tmp_path)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            LocalCluster(n_workers=1, threads_per_worker=1, protocol="tls", host="127.0.0.1",
                         security=security, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, security=security) as tls_client:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert tls_client.dashboard_link.startswith("http://127.0.0.1:")
        # a client without the certificates cannot talk to it
        with pytest.raises(Exception):
            Client(cluster.scheduler_address, timeout="3s", set_as_default=False)
        out = tmp_path / "cat"
        summary = classify(store, out, progress=False)
    assert not summary.failed
    lost, doubled = compare_catalogues(clean, catalogue.read_catalogue(out))
    record(f"TLS LocalCluster ({how})", "security",
           "classify over tls:// equals the plain run; a client without certificates is refused",
           lost=lost, doubled=doubled)
