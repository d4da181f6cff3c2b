"""`unime serve --ray --replicas 2`: the same app as a Ray Serve deployment with two replicas; on a Ray cluster it
did not start, beside the cluster's own Serve applications (slow).

The Ray parts the tests set up run as processes of their own, in their own session (ray_cluster.py), ended with
their process group; `unime serve` itself is the process under test."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.mining.helpers import _end_group, _wait_unreaped
from tests.serve.helpers import SRC, Server, free_port
from unime.cli.failures import EXIT_USER_ERROR

pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_two_ray_serve_replicas_answer_like_the_in_process_embedder(tiny_model_dir, tmp_path):
    from unime.models.embedder import Embedder

    model = tiny_model_dir("qwen2_vl")
    mark = uuid.uuid4().hex  # in the environment of the local cluster's processes (`marked_processes`)
    # the environment asks for 2 OpenMP threads; each replica runs the torch threads its CPU reservation
    # gives (floor(0.5) -> at least 1) and, reserving no GPU, on the CPU. Ray Serve's controller kills an HTTP
    # proxy not ready within 5 s, and `serve.start` then fails with ActorDiedError: on 2 cores busy with other
    # work that happened (CI beside a demo run); the proxy gets 60 s here
    s = Server(["--model", model, "--model-name", "tiny", "--no-auth", "--ray", "--replicas", "2",
                "--ray-cpus-per-replica", "0.5"], log_path=tmp_path / "ray.log",
               env={"OMP_NUM_THREADS": "2", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", MARK: mark})
    try:
        s.wait_ready(timeout=300)
        # both replicas serve requests (Ray's proxy learns of the second one shortly after the app is up)
        replicas: dict[int, dict] = {}
        deadline = time.time() + 120
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            while len(replicas) < 2 and time.time() < deadline:
                for h in pool.map(lambda _: httpx.get(s.base + "/health", timeout=60).json(), range(16)):
                    replicas[h["pid"]] = h
                time.sleep(1)
        assert len(replicas) == 2, replicas
        assert [(h["torch_threads"], h["device"]) for h in replicas.values()] == [(1, "cpu")] * 2, replicas
        texts = ["a red circle", "a blue square", "green"]
        r = httpx.post(s.base + "/v1/embeddings", json={"model": "tiny", "input": texts}, timeout=120)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, Embedder.from_pretrained(model, device="cpu").encode(texts), atol=1e-5)
        bad = httpx.post(s.base + "/v1/embeddings", json={"model": "tiny", "input": [{"image": "/etc/passwd"}]},
                         timeout=60)
        assert bad.status_code == 400 and "never reads files" in bad.json()["error"]["message"]
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(120) == 0
        # it started Ray and Serve here: it leaves none of their processes (GCS, raylet, controller, proxy, replicas)
        assert _wait_until(lambda: not marked_processes(mark), 30), marked_processes(mark)
    finally:
        s.stop()


MARK = "UNIME_TEST_RAY_MARK"
RAY_CLUSTER = Path(__file__).with_name("ray_cluster.py")


def marked_processes(mark: str) -> list[int]:
    """The processes whose environment has MARK=mark (those a test's command started, and what they started)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _ray_cluster_process(folder: Path, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`ray_cluster.py ARGS` in its own session (its Ray processes in its process group), output in folder/NAME.log."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    with open(folder / f"{name}.log", "w") as log:
        return subprocess.Popen([sys.executable, str(RAY_CLUSTER), *args], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _end(proc: subprocess.Popen) -> None:
    """End `proc`'s process group (its Ray processes with it), then reap it (its pid, the group's id, not reused
    before)."""
    _end_group(proc.pid)
    proc.wait()


def deploy_app(folder: Path, log_name: str, address: str, port: int, name: str, route: str, text: str,
               env: dict) -> None:
    """`ray_cluster.py deploy`: the app NAME on ROUTE answering TEXT, on the cluster at `address`."""
    proc = _ray_cluster_process(folder, log_name, "deploy", address, str(port), name, route, text, env=env)
    try:
        _wait_unreaped(proc.pid, 300)
    finally:
        _end(proc)
    assert proc.returncode == 0, (folder / f"{log_name}.log").read_text()[-3000:]


def _text(url: str) -> tuple[int, str]:
    try:
        r = httpx.get(url, timeout=30)
        return r.status_code, r.text
    except httpx.HTTPError as e:
        return -1, repr(e)


@pytest.mark.slow
def test_serve_ray_on_a_cluster_it_did_not_start_leaves_the_clusters_serve_applications(tiny_model_dir, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    serve_port = free_port()
    base = f"http://127.0.0.1:{serve_port}"
    # the cluster's token (Ray enables token authentication for a cluster ray.init starts), for whom connects
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    # the Serve controller (a process of the cluster) gives the HTTP proxy 60 s to be ready, as in the test above
    head = _ray_cluster_process(tmp_path, "head", "head", str(tmp_path / "cluster.json"),
                                env={**auth, "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"})
    try:
        assert _wait_until(lambda: (tmp_path / "cluster.json").exists() or head.poll() is not None, 300), \
            (tmp_path / "head.log").read_text()[-3000:]
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        address = json.loads((tmp_path / "cluster.json").read_text())["address"]
        args = ["--model", model, "--model-name", "tiny", "--no-auth", "--ray", "--ray-address", address,
                "--ray-cpus-per-replica", "0.5"]

        # (0) no Serve on the cluster: it starts Serve (on --host/--port) and on SIGTERM shuts Serve down, leaving
        # the cluster running
        s = Server(args, log_path=tmp_path / "unime0.log", env=auth)
        try:
            s.wait_ready(timeout=300)
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(120) == 0, (tmp_path / "unime0.log").read_text()[-3000:]
        finally:
            s.stop()
        assert _wait_until(lambda: _text(s.base + "/health")[0] == -1, 30), _text(s.base + "/health")  # no proxy

        # the cluster's own app "other" (Serve started again, on serve_port), deployed by another driver
        deploy_app(tmp_path, "deploy_other", address, serve_port, "other", "/other", "other", env=auth)
        assert _text(base + "/other") == (200, "other")

        # (1) beside the cluster's app "other": serves on the cluster's Serve (its HTTP port, not --port), and
        # on SIGTERM removes its own app only
        s = Server(args, log_path=tmp_path / "unime1.log", env=auth)
        try:
            s.base = base  # Serve keeps the HTTP options it runs with
            s.wait_ready(timeout=300)
            assert httpx.post(base + "/v1/embeddings", json={"model": "tiny", "input": ["a red circle"]},
                              timeout=120).status_code == 200
            assert _text(base + "/other") == (200, "other")
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(120) == 0
        finally:
            s.stop()
        log = (tmp_path / "unime1.log").read_text()
        warnings = [line for line in log.splitlines() if "Ray Serve already runs on the Ray cluster" in line]
        assert len(warnings) == 1 and f"at {address} with HTTP on 127.0.0.1:{serve_port}" in warnings[0] \
            and f"--port {s.port} do not apply" in warnings[0], log[-3000:]
        assert _text(base + "/other") == (200, "other"), log[-3000:]  # Serve (controller, proxy) still runs
        assert _wait_until(lambda: _text(base + "/health")[0] == 404, 30), _text(base + "/health")  # unime's app gone

        # (2) a colleague's app named "unime" already runs: refused in one line, before anything changes
        deploy_app(tmp_path, "deploy_theirs", address, serve_port, "unime", "/", "theirs", env=auth)
        assert _text(base + "/") == (200, "theirs")
        s = Server(args, log_path=tmp_path / "unime2.log", env=auth)
        try:
            try:
                code = s.proc.wait(240)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            s.stop()
        log = (tmp_path / "unime2.log").read_text()
        assert code == EXIT_USER_ERROR, log[-3000:]
        errors = [line for line in log.splitlines() if line.startswith("unime: error:")]
        assert errors == [f"unime: error: serve --ray: a Ray Serve application named 'unime' already runs (route "
                          f"prefix /) on the Ray cluster at {address}; unime does not replace an application it did "
                          "not deploy"], log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert _text(base + "/") == (200, "theirs") and _text(base + "/other") == (200, "other")
    finally:
        _end(head)
