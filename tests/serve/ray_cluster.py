"""A Ray cluster with Ray Serve applications of its own, for the `unime serve --ray --ray-address` tests, run as
processes of their own (as tests/mining/ray_driver.py, and for the same reasons: no Ray driver in a pytest worker).

    python ray_cluster.py head OUT     start a cluster (its processes in this process's group; no Serve), write
                                       {"address": GCS address} to OUT, wait for SIGTERM
    python ray_cluster.py deploy ADDRESS PORT NAME ROUTE TEXT   on that cluster, with Serve on 127.0.0.1:PORT (started
                                       if it does not run), deploy the app NAME on ROUTE answering TEXT
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _text_app(text: str):
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Text:
        def __call__(self, request) -> str:
            return text

    return Text.bind()


def head(out: str) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with open(out + ".tmp", "w") as f:
        json.dump({"address": ray.get_runtime_context().gcs_address}, f)
    os.replace(out + ".tmp", out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)


def deploy(address: str, port: str, name: str, route: str, text: str) -> None:
    import ray
    from ray import serve

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
    serve.run(_text_app(text), name=name, route_prefix=route)
    ray.shutdown()


if __name__ == "__main__":
    {"head": head, "deploy": deploy}[sys.argv[1]](*sys.argv[2:])
