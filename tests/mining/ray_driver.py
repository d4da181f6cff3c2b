"""The Ray driver of a Ray backend test, run as its own process: `python ray_driver.py CASE IN OUT`.

A Ray driver is not a process a test can share: `ray.init` starts the cluster's processes (GCS, raylet, agents) as
the driver's children, in its process group, and Ray's C++ core worker ends the driver's process by itself, with no
Python exception, when it loses its raylet or its GCS, or is used after `ray.shutdown()`. In the pytest-xdist
worker that ran the driver, that was the worker's death ("node down: Not properly terminated"), a crash no test
reports. Here the driver is this process (started in its own session by `run_ray_driver`, `tests/mining/helpers.py`):
it reads the case's inputs (pickled) from IN, and writes what the test asserts on (pickled) to OUT.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time


def two_workers(spec, shards, num_workers, num_cpus):
    """The backend starts a cluster of its own and stops it (`close`)."""
    import ray

    from unime.mining.backends import make_backend

    backend = make_backend("ray", spec, num_workers=num_workers, num_cpus=num_cpus)
    try:
        got = dict(backend.score_shards(shards))
        nodes = ray.nodes()
    finally:
        backend.close()
    return {"scores": got, "nodes": len(nodes), "initialized_after_close": ray.is_initialized()}


def cluster_started_elsewhere(sub, spec, bad_spec, groups):
    """The cluster starts in this process's working directory (the test's folder); the backends are made in `sub`
    with `spec`'s relative paths and score `groups`; `bad_spec`'s judge does not load."""
    import ray

    from unime.mining.backends import make_backend

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        os.chdir(sub)
        backend = make_backend("ray", spec, num_workers=1)
        out = {"spec_paths": (backend.spec.path, backend.spec.data_root), "scores": backend.score_groups(groups)}
        try:
            make_backend("ray", bad_spec, num_workers=1).score_groups(groups)
            out["error"] = None
        except Exception as e:  # noqa: BLE001 - the test checks its type and text
            out["error"] = _picklable(e)
        return out
    finally:
        ray.shutdown()


def crash(pid_file, hang):
    """Stands in for a driver that Ray ends (exit status 3, no result; `hang`: one that never ends), leaving a
    process of its group running (its pid in `pid_file`), as a crashed driver leaves its cluster's processes."""
    child = subprocess.Popen(["sleep", "600"])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    print("a driver's last words", file=sys.stderr, flush=True)
    if hang:
        time.sleep(600)
    os._exit(3)


def _picklable(exc: Exception) -> Exception:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - the test then fails on its type, with this text
        return RuntimeError(f"unpicklable {type(exc).__module__}.{type(exc).__qualname__}: {exc}")


CASES = {"two_workers": two_workers, "cluster_started_elsewhere": cluster_started_elsewhere, "crash": crash}


def main(argv: list[str]) -> int:
    case, in_path, out_path = argv
    with open(in_path, "rb") as f:
        inputs = pickle.load(f)
    result = CASES[case](**inputs)
    with open(out_path, "wb") as f:
        pickle.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
