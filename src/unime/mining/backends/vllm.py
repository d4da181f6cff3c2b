"""vLLM backend (extra `unime[vllm]`): the judge prompt as a generation request of one token with
logprobs, the score read from the logprobs of the `Yes` and `No` token ids.

Requests: `{"prompt": <rendered judge prompt>, "multi_modal_data": {"image": [PIL, ...], "video": [(frames,
metadata), ...]}}` (video: the frames `unime.data.video` sampled, `mm_processor_kwargs={"do_sample_frames":
False}` so vLLM's processor does not sample again) with
`SamplingParams(max_tokens=1, logprobs=K, temperature=0)`. The prompt is the exact text
`JudgeScorer.prompt` renders (one `<|image_pad|>` per image; vLLM expands it itself).

Since log-probabilities differ from logits by one normaliser, sigmoid(lp_Yes - lp_No) is exactly the
judge score of SPEC 1.3 whenever both tokens are among the K returned. When one is missing:
- `missing="bound"` (default): the missing token's logprob is at most the smallest returned one, which
  is used in its place. The score is then a bound: an upper bound when `Yes` is missing (a tiny true
  score is overestimated), a lower bound when `No` is missing. When both are missing the judge answered
  neither and the score is 0.5. All such cases are counted (`stats()`) and shown in the report; raise
  K (`logprobs`) to make them rare.
- `missing="error"`: raise `ModelError` naming the pair.
vLLM is imported lazily, only when the engine is created. The engine loads the folder every other loader
loads (`engine_model`: a trainer's output folder gives its merged/); vLLM takes full checkpoints only, so a
PEFT adapter is refused, naming what to give instead; the judge's --dtype is passed under vLLM's name for it
(`engine_dtype`: bf16 → bfloat16, ...). vLLM runs its own attention kernels (its VLLM_ATTENTION_BACKEND), not
transformers': --attn-implementation is not the judge's there (a WARNING says so; `unime mine`'s embedder loads with
it).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Sequence

import numpy as np

from unime.data.video import Video, as_video
from unime.errors import ModelError
from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup, require_backend
from unime.models.loading import peft_adapter_config, resolve_dtype, trained_model_folder

MISSING_POLICIES = ("bound", "error")
log = logging.getLogger(__name__)


def _logprob_value(entry: Any) -> float:
    """A vLLM `Logprob` object (`.logprob`) or a bare float."""
    return float(getattr(entry, "logprob", entry))


def score_from_logprobs(top: dict[int, Any] | None, yes_id: int, no_id: int, *, missing: str = "bound",
                        counts: Counter | None = None, where: str = "") -> float:
    """Judge score from the top-K logprob dict of the first generated token (see the module doc)."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    top = top or {}
    lp = {int(t): _logprob_value(v) for t, v in top.items()}
    has_yes, has_no = yes_id in lp, no_id in lp
    if not (has_yes and has_no):
        if missing == "error":
            absent = [w for w, ok in (("Yes", has_yes), ("No", has_no)) if not ok]
            raise ModelError(f"{where or 'a request'}: {' and '.join(absent)} not among the {len(lp)} returned "
                             "logprobs; raise logprobs= or use missing='bound'")
        if counts is not None:
            counts["both_missing" if not (has_yes or has_no) else "yes_missing" if not has_yes else "no_missing"] += 1
        if not (has_yes or has_no):
            return 0.5
        floor = min(lp.values())
        lp.setdefault(yes_id, floor)
        lp.setdefault(no_id, floor)
    d = lp[yes_id] - lp[no_id]
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


def engine_model(spec: JudgeSpec) -> str:
    """The checkpoint folder (or hub id) the vLLM engine loads for `spec`: resolved as the transformers backend
    resolves it (`unime.models.loading.trained_model_folder`: a trainer's output folder → its merged/, else its
    adapter/). An adapter (a folder, or a hub id naming one: `peft_adapter_config`) is a `ModelError`: vLLM would
    read it as a model."""
    path = trained_model_folder(spec.path)
    adapter = spec.adapter_path or (path if peft_adapter_config(path) is not None else None)
    if adapter:
        raise ModelError(f"the vllm backend loads full checkpoints, and {adapter} is a PEFT adapter: give the judge "
                         "with the adapter merged in (a trainer's merged/ folder: `unime train judge` writes one, "
                         "`unime train reranker --merge` too), or use --backend local or ray")
    return path


def engine_dtype(dtype: Any) -> str:
    """vLLM's name of the judge's --dtype (fp32 / bf16 / fp16, their long names, or a torch dtype): float32,
    bfloat16 or float16. vLLM's `dtype` takes those (and auto, half, float), not unime's short names."""
    return str(resolve_dtype(dtype, "cuda")).removeprefix("torch.")  # the device only decides "auto", not passed


def video_request_item(video: Video) -> tuple[np.ndarray, dict[str, Any]]:
    """vLLM's form of one video: the sampled frames as a (T, H, W, 3) uint8 array with the metadata its
    Qwen-VL processors read (frame rate, sampled indices; `Video.processor_metadata`: a variable frame-rate
    clip's real times) to place the frames in time."""
    frames = np.stack([np.asarray(f.convert("RGB")) for f in video.frames])
    meta = {**video.processor_metadata(), "video_backend": "pyav"}
    return frames, meta


class VLLMBackend(JudgeBackend):
    name = "vllm"

    def __init__(self, spec: JudgeSpec, *, logprobs: int = 20, missing: str = "bound", llm: Any = None,
                 engine_kwargs: dict | None = None):
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        if logprobs < 2:
            raise ValueError("logprobs must be >= 2 (Yes and No)")
        self.spec = spec
        self.logprobs = logprobs
        self.missing = missing
        self.engine_kwargs = dict(engine_kwargs or {})
        self._llm = llm  # an injected engine (tests) or created on first use
        self.model_path = engine_model(spec)  # an adapter is refused before any work
        if spec.attn_implementation is not None:
            log.warning("--attn-implementation %s: the vllm backend's judge runs vLLM's own attention kernels "
                        "(choose them with VLLM_ATTENTION_BACKEND), not transformers'", spec.attn_implementation)
        # prompts and token ids come from the checkpoint's processor; no weights loaded here
        self.prompter = spec.load(load_weights=False)
        self.counts: Counter = Counter()

    @property
    def llm(self):
        if self._llm is None:
            require_backend("vllm")
            from vllm import LLM

            kwargs = {"limit_mm_per_prompt": {"image": 4, "video": 2}, **self.engine_kwargs}
            # the judge's pixel bounds (recorded with it or given) go to vLLM's copy of the HF processor
            budget = self.prompter.adapter.image_budget
            bounds = {k: v for k, v in (("min_pixels", budget.min_pixels), ("max_pixels", budget.max_pixels)) if v}
            if bounds:
                kwargs.setdefault("mm_processor_kwargs", bounds)
            if self.spec.dtype and self.spec.dtype != "auto":
                kwargs.setdefault("dtype", engine_dtype(self.spec.dtype))
            self._llm = LLM(model=self.model_path, **kwargs)
        return self._llm

    def sampling_params(self):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=1, logprobs=self.logprobs, temperature=0.0)

    def build_request(self, query, candidate) -> dict[str, Any]:
        segs = self.prompter.prompt_segments(query, candidate)
        request: dict[str, Any] = {"prompt": self.prompter.adapter.render_user_turn(segs)}
        data: dict[str, Any] = {}
        images = [self.prompter.adapter.image_budget.prepare(s.value) for s in segs if s.kind == "image"]
        if images:
            data["image"] = images
        videos = [as_video(s.value) for s in segs if s.kind == "video"]
        if videos:
            data["video"] = [video_request_item(v) for v in videos]
            # frames are sampled already (same frames as the transformers path): no second sampling
            request["mm_processor_kwargs"] = {"do_sample_frames": False}
        if data:
            request["multi_modal_data"] = data
        return request

    def build_requests(self, groups: Sequence[QueryGroup]) -> tuple[list[dict], list[list[int]]]:
        """Requests for the distinct pairs of each group, and per group the request index of each candidate."""
        requests: list[dict] = []
        index: dict[tuple[str, str], int] = {}
        layout: list[list[int]] = []
        for q, cands in groups:
            row = []
            for c in cands:
                key = (q.key, c.key)
                if key not in index:
                    index[key] = len(requests)
                    requests.append(self.build_request(q, c))
                row.append(index[key])
            layout.append(row)
        return requests, layout

    def scores_from_outputs(self, outputs: Sequence[Any], layout: list[list[int]]) -> list[np.ndarray]:
        """Map vLLM `RequestOutput`s (in request order) to per-group score arrays."""
        flat = []
        for i, out in enumerate(outputs):
            completions = getattr(out, "outputs", None) or []
            first = completions[0].logprobs if completions else None
            top = first[0] if first else None
            flat.append(score_from_logprobs(top, self.prompter.yes_id, self.prompter.no_id, missing=self.missing,
                                            counts=self.counts, where=f"request {i}"))
        return [np.array([flat[j] for j in row], dtype=np.float64) for row in layout]

    def score_groups(self, groups: Sequence[QueryGroup]) -> list[np.ndarray]:
        requests, layout = self.build_requests(groups)
        if not requests:
            return [np.zeros(0) for _ in groups]
        outputs = self.llm.generate(requests, self.sampling_params(), use_tqdm=False)
        return self.scores_from_outputs(outputs, layout)

    def stats(self) -> dict[str, Any]:
        return {"logprobs": self.logprobs, "missing_policy": self.missing,
                **{k: int(v) for k, v in self.counts.items()}}
