"""Where the judge runs (Stage B): in this process (`local`), on a Ray cluster (`ray`), or on vLLM (`vllm`);
`oracle` replaces the judge by a generated world's ground truth (a diagnostic, see its module).

Every backend takes query groups — `(query, [candidate, ...])`, the positive being one of the
candidates — and returns one float64 score array per group, in order. Backends are built from a
`JudgeSpec`, a small picklable description of the judge, so that remote workers can load it.
"""

from __future__ import annotations

from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup

__all__ = ["BACKENDS", "JudgeBackend", "JudgeSpec", "QueryGroup", "make_backend"]

BACKENDS = ("local", "ray", "vllm", "oracle")


def make_backend(name: str, spec: JudgeSpec, **options) -> JudgeBackend:
    """`local` (default), `ray` (options: num_workers, address, num_cpus, threads_per_worker) or
    `vllm` (options: logprobs, missing, engine_kwargs); `oracle` (`spec.path` = a generated world)."""
    if name == "local":
        from unime.mining.backends.local import LocalBackend

        return LocalBackend(spec, **options)
    if name == "ray":
        from unime.mining.backends.ray import RayBackend

        return RayBackend(spec, **options)
    if name == "vllm":
        from unime.mining.backends.vllm import VLLMBackend

        return VLLMBackend(spec, **options)
    if name == "oracle":
        from unime.mining.backends.oracle import WorldOracleBackend

        return WorldOracleBackend(spec, **options)
    raise ValueError(f"unknown judge backend {name!r}; choose one of {', '.join(BACKENDS)}")
