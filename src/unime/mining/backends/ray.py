"""Ray Data backend: judge scoring spread over a pool of actors, each holding one loaded judge.

    backend = RayBackend(spec, num_workers=8, num_gpus_per_worker=1, address="auto")

All pending shards go through one streaming Ray Data pipeline (so the judges load once per run, not
once per shard); a shard's scores are yielded as soon as all its groups are back, and the mining
pipeline writes it atomically. Query groups travel to the workers pickled; image paths are resolved
by each worker against `spec.data_root`, so on a multi-node cluster the data root must be on shared
storage. Scores are those of the local fast path (same code, same numbers).

The workers run in the cluster's working directory, not the driver's: the spec's local paths are made absolute
before it is sent. A worker's failure (a judge that does not load, an image that does not open) travels back as
data, the exception itself, and is raised by the driver: the CLI prints it as the one line it prints for the same
failure in one process. Raised inside the worker, Ray would hand over its own wrapping (an "actor died" or a task
error whose text is the worker's traceback, the exception lost) and log the traceback twice on the way.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup, require_backend

log = logging.getLogger(__name__)


class _JudgeWorker:
    """Ray Data callable class: loads the judge once, scores batches of pickled query groups."""

    def __init__(self, spec: JudgeSpec, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.judge, self.load_error = None, b""
        try:
            self.judge = spec.load()
        except Exception as e:  # noqa: BLE001 - sent back with each batch (`_failure`)
            self.load_error = _failure(e)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        scores, error = [], self.load_error
        if not error:
            try:
                for payload in batch["payload"]:
                    query, candidates = pickle.loads(payload)
                    scores.append(np.asarray(self.judge.score_candidates(query, list(candidates)),
                                             dtype=np.float64).tobytes())
            except Exception as e:  # noqa: BLE001 - sent back (`_failure`)
                error = _failure(e)
        n = len(batch["payload"])
        return {"shard": batch["shard"], "group": batch["group"],
                "scores": np.array(scores if not error else [b""] * n, dtype=object),
                "error": np.array([error] * n, dtype=object)}


def _failure(exc: Exception) -> bytes:
    """A worker's exception, pickled for the driver to raise (with the worker's traceback as a note, shown when
    the traceback is: a bug, or `--log-level DEBUG`); raised here if it does not pickle."""
    import traceback

    exc.add_note("in a Ray judge worker:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        return pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - Ray reports it its own way
        raise exc from None


class RayBackend(JudgeBackend):
    name = "ray"

    def __init__(self, spec: JudgeSpec, *, num_workers: int = 2, address: str | None = None,
                 num_cpus: int | None = None, cpus_per_worker: float = 1.0, num_gpus_per_worker: float = 0.0,
                 threads_per_worker: int | None = 1, groups_per_batch: int = 1):
        require_backend("ray")
        import ray

        self.spec = spec.with_absolute_paths()  # the workers' working directory is the cluster's
        self.num_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self.threads_per_worker = threads_per_worker
        self.groups_per_batch = groups_per_batch
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
            self._started_ray = True

    def score_groups(self, groups: Sequence[QueryGroup]) -> list[np.ndarray]:
        return next(iter(self.score_shards([(0, list(groups))])))[1] if groups else []

    def score_shards(self, shards: Iterable[tuple[int, Sequence[QueryGroup]]]
                     ) -> Iterator[tuple[int, list[np.ndarray]]]:
        import ray.data

        shards = [(sid, list(groups)) for sid, groups in shards]
        rows = [{"shard": sid, "group": g, "payload": pickle.dumps((q, list(c)))}
                for sid, groups in shards for g, (q, c) in enumerate(groups)]
        sizes = {sid: len(groups) for sid, groups in shards}
        for sid, n in sizes.items():
            if n == 0:
                yield sid, []
        if not rows:
            return
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * self.num_workers)))
        ds = ds.map_batches(_JudgeWorker, fn_constructor_kwargs={"spec": self.spec,
                                                                 "threads": self.threads_per_worker},
                            batch_size=self.groups_per_batch, concurrency=self.num_workers,
                            num_cpus=self.cpus_per_worker, num_gpus=self.num_gpus_per_worker or None,
                            batch_format="numpy")
        pending: dict[int, dict[int, np.ndarray]] = {}
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])
            sid, g = int(row["shard"]), int(row["group"])
            pending.setdefault(sid, {})[g] = np.frombuffer(row["scores"], dtype=np.float64).copy()
            if len(pending[sid]) == sizes[sid]:
                done = pending.pop(sid)
                yield sid, [done[i] for i in range(sizes[sid])]

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
