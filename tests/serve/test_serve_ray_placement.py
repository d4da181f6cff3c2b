"""`unime serve --ray`: what each replica runs with, from what Ray reserves for it (no Ray needed)."""

from __future__ import annotations

import pytest

from unime.serve.config import ServeConfig
from unime.serve.runner import replica_placement, serve_conflict, serve_http


def cfg(**kw) -> ServeConfig:
    return ServeConfig(model="m", no_auth=True, **kw)


@pytest.mark.parametrize("num_cpus, threads, expected", [
    (1.0, None, 1), (0.5, None, 1), (0.0, None, 1), (2.0, None, 2), (3.7, None, 3), (8.0, None, 8),
    (2.0, 1, 1), (0.5, 4, 4),  # --threads given wins
])
def test_torch_threads_per_replica_follow_its_cpu_reservation(num_cpus, threads, expected):
    assert replica_placement(cfg(threads=threads), num_cpus=num_cpus, num_gpus=0).threads == expected


def test_a_replica_runs_on_the_gpus_ray_reserved_for_it_and_on_cpu_without():
    assert replica_placement(cfg(), num_cpus=1, num_gpus=0).device == "cpu"
    assert replica_placement(cfg(), num_cpus=4, num_gpus=1).device == "cuda"
    assert replica_placement(cfg(), num_cpus=1, num_gpus=0.5).device == "cuda"   # two replicas per GPU
    assert replica_placement(cfg(device="cuda:1"), num_cpus=1, num_gpus=2).device == "cuda:1"
    assert replica_placement(cfg(device="cpu"), num_cpus=1, num_gpus=0).device == "cpu"
    # the caller's config is not modified
    c = cfg()
    replica_placement(c, num_cpus=2, num_gpus=1)
    assert c.device is None and c.threads is None


@pytest.mark.parametrize("device, num_gpus, message", [
    ("cuda", 0, "Ray reserves no GPU"),
    ("cuda:0", 0, "Ray reserves no GPU"),
    ("cpu", 1, "reserve GPUs it does not use"),
    ("cuda:1", 1, "sees only the 1 GPU"),
    ("cuda:2", 1.5, "sees only the 2 GPU"),
])
def test_contradictory_device_and_gpu_reservation_is_refused(device, num_gpus, message):
    with pytest.raises(ValueError, match=message):
        replica_placement(cfg(device=device), num_cpus=1, num_gpus=num_gpus)


def test_negative_reservations_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        replica_placement(cfg(), num_cpus=-1, num_gpus=0)


def test_cli_refuses_a_contradictory_placement_before_starting_ray(capsys):
    from unime.cli import main

    assert main(["serve", "--model", "m", "--no-auth", "--ray", "--device", "cuda", "--ray-gpus-per-replica", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("unime: error: serve: --device cuda with --ray-gpus-per-replica 0: Ray reserves no GPU")


def details(apps: dict[str, str | None]) -> dict:
    """Ray Serve's `get_serve_details()` for apps {name: route prefix}, as far as unime reads it."""
    return {"applications": {name: {"name": name, "route_prefix": prefix, "status": "RUNNING"}
                             for name, prefix in apps.items()},
            "http_options": {"host": "0.0.0.0", "port": 8123, "root_path": ""}}


@pytest.mark.parametrize("apps, conflict", [
    ({}, None),
    ({"other": "/other", "batch": None}, None),  # route prefixes of their own, or none (handles only)
    ({"other": "/other", "unime": "/"}, "a Ray Serve application named 'unime' already runs (route prefix /)"),
    ({"unime": "/theirs"}, "a Ray Serve application named 'unime' already runs (route prefix /theirs)"),
    ({"unime": None}, "a Ray Serve application named 'unime' already runs"),
    ({"a": "/a", "frontend": "/"}, "the Ray Serve application 'frontend' already serves route prefix /"),
])
def test_the_serve_applications_unime_would_replace_are_named(apps, conflict):
    assert serve_conflict(details(apps)) == conflict


def test_the_http_options_serve_runs_with():
    assert serve_http(details({})) == ("0.0.0.0", 8123)
