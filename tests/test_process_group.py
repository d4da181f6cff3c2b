"""`unime.process_group`: under torchrun, a process that fails while the others wait in a collective (a trainer's
step) tells them; they end naming it, not on the lost connection."""

from __future__ import annotations

import multiprocessing
import socket

import pytest

from unime.errors import DataError
from unime.process_group import PeerFailed, lost_a_peer, peer_failed, sharing_failures


def test_one_process_runs_the_work_as_it_is():
    with pytest.raises(DataError, match="^bad$"):  # no group: its own error, nothing shared
        with sharing_failures():
            raise DataError("bad")
    assert str(peer_failed(1, 2, "DataError: x")) == "process 1 of 2 failed: DataError: x"
    assert lost_a_peer(RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:4020"))
    assert not lost_a_peer(RuntimeError("CUDA out of memory")) and not lost_a_peer(DataError("bad"))


def _member(rank: int, port: int, how_rank_1_ends: str, results) -> None:
    """Rank 1 ends in the shared work (`how_rank_1_ends`: an error, or a silent exit) while rank 0 waits for it in an
    all-gather, as in a training step; each puts what it raised on `results`, then leaves at once (os._exit: no
    teardown of the group whose peer is gone)."""
    import os

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        with sharing_failures():
            if rank == 1:
                if how_rank_1_ends == "silently":
                    os._exit(0)
                raise DataError("corrupt image images/bad.png: image file is truncated", source="bad.jsonl",
                                record="r7", field="query.images[0]")
            dist.all_gather([torch.zeros(1), torch.zeros(1)], torch.ones(1))
        out = "no error"
    except Exception as e:  # noqa: BLE001 - what each process raised is the test's result
        out = f"{type(e).__name__}: {e}"
    results.put((rank, out))
    results.close()
    results.join_thread()
    os._exit(0)


def _run_pair(how_rank_1_ends: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(rank, port, how_rank_1_ends, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in range(2 if how_rank_1_ends == "with an error" else 1))
    for p in procs:
        p.join(timeout=60)
    return got


def test_a_process_that_fails_in_a_step_is_named_by_the_others():
    got = _run_pair("with an error")
    failure = "DataError: bad.jsonl, record r7, field 'query.images[0]': corrupt image images/bad.png: image file " \
              "is truncated"
    assert got[1] == failure  # its own error, as it is
    assert got[0] == f"{PeerFailed.__name__}: process 1 of 2 failed: {failure}"


def test_a_process_that_ends_without_an_error_is_reported_as_lost():
    got = _run_pair("silently")
    assert got[0].startswith("PeerFailed: another of the 2 processes ended without an error of its own (killed? see "
                             "its output): ")
    assert lost_a_peer(RuntimeError(got[0]))  # the transport's words kept: the demo ranks it as a lost peer
