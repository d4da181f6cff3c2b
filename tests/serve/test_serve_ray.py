"""`unime serve --ray --replicas 2`: the same app as a Ray Serve deployment with two replicas (slow)."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import httpx
import numpy as np
import pytest

from tests.serve.helpers import Server

pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_two_ray_serve_replicas_answer_like_the_in_process_embedder(tiny_model_dir, tmp_path):
    from unime.models.embedder import Embedder

    model = tiny_model_dir("qwen2_vl")
    # the environment asks for 2 OpenMP threads; each replica runs the torch threads its CPU reservation
    # gives (floor(0.5) -> at least 1) and, reserving no GPU, on the CPU. Ray Serve's controller kills an HTTP
    # proxy not ready within 5 s, and `serve.start` then fails with ActorDiedError: on 2 cores busy with other
    # work that happened (CI beside a demo run); the proxy gets 60 s here
    s = Server(["--model", model, "--model-name", "tiny", "--no-auth", "--ray", "--replicas", "2",
                "--ray-cpus-per-replica", "0.5"], log_path=tmp_path / "ray.log",
               env={"OMP_NUM_THREADS": "2", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"})
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
    finally:
        s.stop()
