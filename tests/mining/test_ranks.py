"""`unime.mining.ranks`: a process's place under torchrun, from its environment."""

from __future__ import annotations

import pytest

from unime.errors import UsageError
from unime.mining.ranks import Ranks


def test_one_process_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    r = Ranks.from_env()
    assert (r.rank, r.world, r.primary) == (0, 1, True)
    assert r.mine([3, 4, 7]) == [3, 4, 7]
    assert r.device("cuda") == "cuda"
    assert r.share({"a": 1}) == {"a": 1}
    r.check_backend("ray")  # one process: every backend
    assert r.start() is False  # no process group needed
    r.barrier()


def test_the_environment_of_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UsageError, match="RANK 6 / WORLD_SIZE 4"):
        Ranks.from_env()
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    r = Ranks.from_env()
    assert (r.rank, r.world, r.local_rank, r.primary) == (5, 8, 2, False)
    assert r.mine(list(range(20))) == [5, 13]
    assert r.device("cuda") == "cuda:2"
    assert r.device("cuda:1") == "cuda:1"  # an explicit GPU is the user's
    assert r.device("cpu") == "cpu"
    r.check_backend("local")
    r.check_backend("oracle")
    for backend in ("ray", "vllm"):
        with pytest.raises(UsageError, match=f"--backend {backend} spreads the judge's work itself"):
            r.check_backend(backend)
