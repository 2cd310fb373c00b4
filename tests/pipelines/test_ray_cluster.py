"""RayFwPKMStore(address=...) on a Ray cluster that was started outside this process (docs/scale-out.md).

The test starts a one-node cluster with the `ray start --head` command the docs give (2 CPUs, no dashboard,
token authentication as Ray enables it by default), connects a store to it by address, and stops that cluster
after: `ray start --block` runs in its own process group, so stopping it stops this cluster's processes only
(not any other Ray on the machine, which `ray stop` would), and its temp dir is its own, so no record of it
is left where a later `ray.init()` looks.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'fwpkm-rag[distributed]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on {host}:{port} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def cluster_address():
    port = _free_port()
    host = socket.gethostbyname(socket.gethostname())
    ray_cli = Path(sys.executable).with_name("ray")
    # Its own temp dir: `ray start` records "the latest cluster on this machine" there, and a later plain
    # `ray.init()` (other tests, the user's own Ray) reads that record from the default /tmp/ray and would try
    # to join this cluster once it is gone. A short path: Ray's socket paths must stay under 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=dict(os.environ, **DRIVER_ENV), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        _wait_for_port(host, port, head)
        yield f"{host}:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if Ray hangs on shutdown
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


# The driver runs as its own process, as it would on a cluster machine, with the environment docs/scale-out.md
# gives a driver (RAY_AUTH_MODE=token: send the cluster's token, which `ray start` keeps in ~/.ray/auth_token).
DRIVER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}
DRIVER = """
import json, sys
import ray
from fwpkm_rag.pipelines import FwPKMStore, RayFwPKMStore
from rag_helpers import rag_model

address, folder = sys.argv[1], sys.argv[2]
model = rag_model()
settings = dict(chunk_tokens=16, segment_tokens=96)
texts = [f"Ledger {i}: the locker code for room {i:03d} is {7100 + 53 * i}; checked every {i + 3} weeks."
         for i in range(10)]
ids = [f"ledger-{i}" for i in range(10)]
queries = ["the locker code for room 004", "checked every 9 weeks"]

def ranking(store):
    return [[[h.doc_id, h.chunk_index, h.rank] for h in store.search_with_provenance(q, k=4)] for q in queries]

local = FwPKMStore(model=model, **settings)
local.add_texts(texts, ids=ids)
store = RayFwPKMStore(num_workers=1, address=address, model=model, **settings)
out = {"started_ray": store.index._owns_ray}
store.add_texts(texts, ids=ids)
out["ray"], out["local"] = ranking(store), ranking(local)
store.save(folder)
store.close()
out["connected_after_close"] = ray.is_initialized()
ray.init(address=address, log_to_driver=False, configure_logging=False)  # the cluster outlives the store
out["cluster_cpus"] = ray.cluster_resources().get("CPU")
ray.shutdown()
reopened = FwPKMStore.load(folder, model=model)  # the folder written through the cluster opens in a plain store
out["reopened"] = ranking(reopened)
reopened.close()
print("RESULT " + json.dumps(out))
"""


def test_store_on_an_existing_cluster_answers_like_the_local_store(cluster_address, tmp_path):
    folder = tmp_path / "store"
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, **DRIVER_ENV, PYTHONPATH=os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", DRIVER, cluster_address, str(folder)], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["started_ray"] is False  # connected to the cluster, did not start a Ray of its own
    assert out["ray"] == out["local"]  # same documents, same model, one worker: the local store's rankings
    assert out["connected_after_close"] is False  # close() disconnects the driver it connected ...
    assert out["cluster_cpus"] == 2  # ... and leaves the cluster running
    assert out["reopened"] == out["local"]  # ... and what it wrote opens in a plain store, same answers
