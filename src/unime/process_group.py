"""What the processes of a torchrun group tell each other when one of them fails, so that every process ends with
one line naming the failure and the process it happened in, not with a lost connection's traceback:

    unime: error: bad.jsonl, record refer_grounding-0006, field 'query.images[0]': corrupt image ...   # process 1
    unime: error: process 1 of 2 failed: DataError: bad.jsonl, record refer_grounding-0006, ...        # process 0

The others' error is `PeerFailed`, worded by `peer_failed`. Two ways to learn of it, for two kinds of work:

- work that waits for every process at the end of each step (mining, `unime.mining.ranks.Ranks`) exchanges the
  step's failures in that wait (an all-gather), and every process raises;
- a training loop, whose processes meet inside the step (the embeddings' all-gather, DDP's all-reduce of the
  gradients) where no check can be added, runs in `sharing_failures`: a process that fails writes its failure
  into the group's key-value store before it ends; another, whose collective then fails on the lost connection,
  reads it there.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from unime.errors import UnimeError

# what a collective of gloo says when another process of its group went away (not the cause)
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "gloo/transport")
_FAILED_KEY = "unime/failed/{}"
_WAIT_FOR_A_RECORD = 2.0  # seconds a process whose peer went away waits for that peer's failure in the store


class PeerFailed(UnimeError):
    """Raised on the other processes of a group when one fails (`peer_failed`)."""


def failure_text(exc: BaseException) -> str:
    """A failure as the other processes tell it: `DataError: FILE, record 7, field 'x': ...`."""
    return f"{type(exc).__name__}: {exc}"


def peer_failed(rank: int, world: int, failure: str) -> PeerFailed:
    """The error of a process whose peer `rank` failed with `failure` (`failure_text`)."""
    return PeerFailed(f"process {rank} of {world} failed: {failure}")


def lost_a_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective's failure because another process of the group went away."""
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in PEER_LOST)


def _a_collectives_failure(exc: BaseException) -> bool:
    """Whether `exc` came from a collective (the transport or the backend: NCCL says so after its timeout)."""
    from torch.distributed import DistError

    return isinstance(exc, DistError) or lost_a_peer(exc)


def _group():
    """(rank, world size, key-value store) of the default process group with several processes, else None."""
    try:
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _get_default_store
    except ImportError:  # pragma: no cover - torch without distributed support
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.get_rank(), dist.get_world_size(), _get_default_store()


def _recorded_failure(store, rank: int, world: int) -> tuple[int, str] | None:
    """(rank, failure) of the lowest other process that recorded its failure, waiting a little for one; None if
    none did (it was killed) or the store went with it."""
    keys = {r: _FAILED_KEY.format(r) for r in range(world) if r != rank}
    deadline = time.monotonic() + _WAIT_FOR_A_RECORD
    while True:
        try:
            failed = [r for r, key in keys.items() if store.check([key])]
            if failed:
                return failed[0], store.get(keys[failed[0]]).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the store was hosted by the process that ended
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


@contextmanager
def sharing_failures():
    """Around work whose processes meet inside each step (a trainer's `train`): a failure of this process is
    written into the group's store (then raised as it is); a collective's failure because another process went
    away becomes `PeerFailed`, naming that process and its error, or saying that it ended without one. Without a
    group of several processes: nothing."""
    group = _group()
    if group is None:
        yield
        return
    rank, world, store = group
    try:
        yield
    except Exception as e:
        if not _a_collectives_failure(e):
            try:
                store.set(_FAILED_KEY.format(rank), failure_text(e))
            except Exception:  # noqa: BLE001 - the store went away: the others see a lost connection only
                pass
            raise
        recorded = _recorded_failure(store, rank, world)
        if recorded is not None:
            peer, failure = recorded
            raise peer_failed(peer, world, failure) from None
        if lost_a_peer(e):  # the transport's words kept: the demo tells a lost peer by them (`unime.demo.parallel`)
            raise PeerFailed(f"another of the {world} processes ended without an error of its own (killed? see its "
                             f"output): {str(e).splitlines()[0]}") from None
        raise
