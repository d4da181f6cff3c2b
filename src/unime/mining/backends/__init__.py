"""Where the judge runs (Stage B): in this process (`local`), on a Ray cluster (`ray`), or on vLLM (`vllm`);
`oracle` replaces the judge by a generated world's ground truth (a diagnostic, see its module).

Every backend takes query groups — `(query, [candidate, ...])`, the positive being one of the
candidates — and returns one float64 score array per group, in order. Backends are built from a
`JudgeSpec`, a small picklable description of the judge, so that remote workers can load it.
"""

from __future__ import annotations

from dataclasses import dataclass

from unime.data.video import VideoOptions, sampling_video_options
from unime.errors import UsageError
from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup
from unime.models.image_budget import ImageBudget, ImageOptions
from unime.models.loading import DeviceOptions, dtype_option
from unime.options import RangeChecked, allow_outside_root_option, key_value_pairs, option

__all__ = ["BACKENDS", "BackendOptions", "JudgeBackend", "JudgeOptions", "JudgeSpec", "QueryGroup", "make_backend"]

BACKENDS = ("local", "ray", "vllm", "oracle")


@dataclass(kw_only=True)
class JudgeOptions(DeviceOptions, ImageOptions, VideoOptions):
    """How the judge (and `unime mine`'s embedder) is loaded, and where the judge runs: the options
    `unime mine` and `unime judge` share."""

    dtype: str | None = dtype_option(None, "the default: bf16 on GPU, fp32 on CPU")
    allow_outside_root: bool = allow_outside_root_option()
    backend: str = option("local", "where the judge runs; `oracle` = diagnostic: --judge is a generated world or a "
                          "labels / qrels JSONL file (e.g. `data import`'s train/qrels.jsonl) whose ground truth "
                          "replaces the judge's scores (unlisted pairs: 0)", choices=list(BACKENDS))
    judge_chunk_size: int = option(JudgeSpec.chunk_size, "candidate continuations per judge forward",
                                   dest="chunk_size", at_least=1)
    judge_image_cache: int = option(JudgeSpec.image_cache_size, "candidate images whose vision-encoder outputs "
                                    "the judge keeps on its device, within --image-cache-mib (0 = off)",
                                    dest="image_cache", at_least=0)
    judge_image_cache_mib: float = option(JudgeSpec.image_cache_bytes / 2**20, "memory (MiB) the judge's cache of "
                                          "vision-encoder outputs may hold on its device, least recently used "
                                          "dropped first (default %(default)g; 0 = off)", dest="image_cache_mib",
                                          at_least=0)

    @property
    def image_budget(self) -> ImageBudget:
        return ImageBudget.from_args(self)

    @property
    def video_options(self) -> dict:
        return {"frames": self.video_frames, "fps": self.video_fps, "max_frames": self.video_max_frames,
                "max_pixels": self.video_max_pixels}

    def judge_spec(self, path: str, data_root: str | None) -> JudgeSpec:
        return JudgeSpec(path=path, device=self.device, dtype=self.dtype, data_root=data_root,
                         allow_outside_root=self.allow_outside_root, chunk_size=self.judge_chunk_size,
                         image_cache_size=self.judge_image_cache,
                         image_cache_bytes=int(self.judge_image_cache_mib * 2**20),
                         image_budget=self.image_budget.as_items(),
                         video_sampling=tuple(sorted(sampling_video_options(self.video_options).items())),
                         attn_implementation=self.attn_implementation)


@dataclass(kw_only=True)
class BackendOptions(RangeChecked):
    """The judge backends' own settings (`make_backend`'s options) and torch's CPU threads: options of
    `unime mine` and `unime judge` that are not part of a run's identity."""

    threads: int | None = option(None, "CPU threads for torch (default: torch's choice; 1 is often fastest on a "
                                 "busy machine)", at_least=1)
    ray_workers: int = option(2, "ray: number of judge actors", at_least=1)
    ray_address: str | None = option(None, "ray: cluster address (default: start a local cluster)")
    ray_gpus_per_worker: float = option(0.0, "ray: GPUs per judge actor", at_least=0)
    vllm_logprobs: int = option(20, "vllm: top-K logprobs returned per request", at_least=1)
    vllm_missing: str = option("bound", "vllm: Yes/No missing from the top-K (see unime.mining.backends.vllm)",
                               choices=["bound", "error"])
    vllm_engine_arg: list[str] = option(help="vllm: an argument of vllm.LLM (value read as YAML), e.g. "
                                        "tensor_parallel_size=8, distributed_executor_backend=ray, "
                                        "gpu_memory_utilization=0.9 (repeatable)", factory=list, action="append",
                                        metavar="KEY=VALUE", cli_default=[])

    def for_backend(self, backend: str) -> dict:
        """`make_backend`'s options for `backend`."""
        if backend == "ray":
            return {"num_workers": self.ray_workers, "address": self.ray_address,
                    "num_gpus_per_worker": self.ray_gpus_per_worker}
        if backend == "vllm":
            return {"logprobs": self.vllm_logprobs, "missing": self.vllm_missing,
                    "engine_kwargs": vllm_engine_kwargs(self.vllm_engine_arg)}
        return {}

    def set_threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)


def vllm_engine_kwargs(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings → keyword arguments of `vllm.LLM` (values parsed as YAML: 8 → int, true → bool)."""
    try:
        return key_value_pairs(pairs, "--vllm-engine-arg")
    except ValueError as e:
        raise UsageError(str(e), command="mine") from None


def judge_models(judge: str, backend: str) -> list[str]:
    """The checkpoints that see the judge's images (whose processor's limits apply): `judge`; none for the oracle
    (`judge` is a world or labels there)."""
    return [] if backend == "oracle" else [judge]


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
