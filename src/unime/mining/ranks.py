"""`unime mine` under torchrun: the retrieval's encoding and the judge's shards spread over the processes.

    torchrun --standalone --nproc-per-node 8 --no-python unime mine --device cuda ...   # one judge per GPU

Judge scoring is most of mining's work (K + 1 pairs per query); encoding the pool for the retrieval comes next. Under
`torchrun` (its `RANK` / `WORLD_SIZE` / `LOCAL_RANK` environment) every process loads its own models — on
`cuda:LOCAL_RANK` with `--device cuda` or no `--device` on a machine with CUDA (`--device cuda:N` is refused) —,
encodes every `WORLD_SIZE`-th batch of the retrieval's items missing from the embedding cache (the batches one
process runs) and scores every `WORLD_SIZE`-th of the judge shards still to do; rank 0 alone reads the inputs first
(its image digests are the others' cache), writes the manifest, retrieves from the filled cache (the other ranks
wait, then read the result from disk), and after the last shard filters, samples, audits and reports. A shard's
scores do not depend on which process computed them, so at the same torch threads the outputs equal a one-process
run's byte for byte, and a killed run resumes shard by shard under any number of processes. The ranks wait for each
other at the end of each step (`primary_step`, `every_step`: a `torch.distributed` all-gather over gloo, CPU tensors
whatever the device, allowed `BARRIER_TIMEOUT` for rank 0's retrieval), where each learns whether another failed: a
failure in any process's step (rank 0's folder claim, inputs or retrieval; a process's judge) stops every process
with that error (`PeerFailed` on the others, `unime.process_group`), not with a lost connection. The `ray` and `vllm`
backends spread the work themselves and are refused under several processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from unime.errors import UsageError
from unime.process_group import failure_text, peer_failed

BARRIER_TIMEOUT = timedelta(hours=24)  # the other ranks wait that long for rank 0's retrieval of a large pool
SHARDED_BACKENDS = ("local", "oracle")


def leave_without_teardown() -> None:
    """End this process at once, with exit status 0, after flushing its logs and streams: for a torchrun process
    whose mining finished (outputs written, the process group left). In CI, process 1 of a finished two-process
    run twice died in the interpreter's teardown (SIGABRT, "terminate called without an active exception", from
    a C++ thread of gloo or Arrow), which turned the finished run into a failed one for torchrun; skipping the
    teardown avoids it. Called directly (`unime mine`) or as the last exit handler (the demo's torchrun workers,
    whose launcher reads their return value first)."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced by a caller
            pass
    os._exit(0)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the mining processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        if world < 1 or not 0 <= rank < world:
            raise UsageError(f"RANK {rank} / WORLD_SIZE {world}: not a process of a torchrun group")
        return cls(rank=rank, world=world, local_rank=int(env.get("LOCAL_RANK", str(rank))))

    @property
    def primary(self) -> bool:
        return self.rank == 0

    def check_backend(self, backend: str) -> None:
        if self.world > 1 and backend not in SHARDED_BACKENDS:
            raise UsageError(f"--backend {backend} spreads the judge's work itself: run it as one process, not "
                             f"under torchrun ({self.world} processes)", command="mine")

    def device(self, device: str | None) -> str | None:
        """The device of this process's models. One process: `device` unchanged. Several: `cuda`, or no --device
        on a machine with CUDA, → this process's GPU (`cuda:LOCAL_RANK`; no --device without CUDA stays the CPU);
        an explicit `cuda:N`, which would put every process on the same GPU, is a UsageError naming the way to
        choose the GPUs (CUDA_VISIBLE_DEVICES)."""
        if self.world == 1:
            return device
        if device is None or device == "":
            import torch

            return f"cuda:{self.local_rank}" if torch.cuda.is_available() else device
        if device == "cuda":
            return f"cuda:{self.local_rank}"
        if device.startswith("cuda:"):
            raise UsageError(f"--device {device}: under torchrun ({self.world} processes) each process uses its own "
                             f"GPU (cuda:LOCAL_RANK); pass --device cuda and choose the GPUs with "
                             f"CUDA_VISIBLE_DEVICES", command="mine")
        return device

    def start(self) -> bool:
        """Join the process group (gloo) if there are several processes and nobody joined it yet; True if this
        call joined it (then `stop` leaves it)."""
        if self.world == 1:
            return False
        import torch.distributed as dist

        if dist.is_initialized():
            return False
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world, timeout=BARRIER_TIMEOUT)
        return True

    def stop(self, *, together: bool = True) -> None:
        """Leave the process group. `together` (a run that ended without an error): first wait for every process
        to get here, so that no process tears its connections down while another still works (rank 0 writes the
        report after the last shared step); a process that left early sometimes died at exit in gloo's threads
        (SIGABRT, "terminate called without an active exception")."""
        import torch.distributed as dist

        if dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()

    def share(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def primary_step(self, fn):
        """`fn()` on rank 0 alone (its value returned there, None on the other ranks), then `every_step`'s check."""
        return self._step(fn, self.primary)

    def every_step(self, fn):
        """`fn()` on every process, then every process learns whether any failed: a failed process raises its own
        exception, the others `PeerFailed` with the lowest failed rank's error type and message — instead of
        waiting on a process that has died and failing on the lost connection."""
        return self._step(fn, True)

    def _step(self, fn, runs: bool):
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        value = error = None
        if runs:
            try:
                value = fn()
            except Exception as e:
                error = e
        failures: list = [None] * self.world
        dist.all_gather_object(failures, None if error is None else failure_text(error))
        if error is not None:
            raise error
        for rank, failure in enumerate(failures):
            if failure is not None:
                raise peer_failed(rank, self.world, failure)
        return value

    def mine(self, shards: list[int]) -> list[int]:
        """The shards this process scores: every `world`-th, from its rank."""
        return shards[self.rank::self.world]
