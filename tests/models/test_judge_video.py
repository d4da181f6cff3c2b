"""Video through the judge: the shared-prefix fast path equals per-pair full forwards on every family
(video queries and video candidates, clips decoded from files), and the vLLM request mapping."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FAMILIES
from tests.data.helpers import write_clip
from tests.models.helpers import sharpen
from unime.data.items import Item
from unime.data.video import FRAME_CACHE
from unime.models import adapters as adapters_mod
from unime.models.judge import JudgeScorer


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_judge")
    write_clip(root / "a.mp4", n=20, fps=10)
    write_clip(root / "b.mkv", n=31, fps=15, size=(80, 40), shift=7)
    write_clip(root / "c.mp4", n=12, fps=4, size=(48, 64), shift=30)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(root / "img.png")
    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 20, 0)).save(root / f"f{i}.png")
    FRAME_CACHE.clear()
    return root


QUERIES = {
    "text": Item(text="Find a video that contains the following visual content: a red square fades in"),
    "video": Item(text="Represent the given video for retrieval.", video=("a.mp4",)),
    "video+image": Item(text="<|image_1|> which clip shows this?", images=("img.png",), video=("c.mp4",)),
}
CANDIDATES = [
    Item(text="Understand the content of the provided video.", video=("a.mp4",)),
    Item(video=("b.mkv",)),
    Item(text="a red square", video=("c.mp4",)),
    Item(text="just text"),
    Item(text="a picture", images=("img.png",)),
    Item(text="frames", video=("f0.png", "f1.png", "f2.png", "f3.png")),
    Item(video=("b.mkv",)),  # duplicate
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("query", sorted(QUERIES))
def test_fast_path_equals_per_pair_for_video(family, query, video_root, tiny_model_dir):
    judge = JudgeScorer.from_pretrained(tiny_model_dir(family), device="cpu", data_root=video_root, chunk_size=3)
    sharpen(judge.model)
    q = QUERIES[query]
    fast = judge.margin_candidates(q, CANDIDATES)
    assert judge.stats.pairs_scored_fast == 6 and judge.stats.boundary_fallbacks == 0  # no video fallback
    ref = np.array([judge.margin_pair(q, c) for c in CANDIDATES])
    assert np.abs(ref).max() > 0.5  # margins big enough for a position error to show
    np.testing.assert_allclose(fast, ref, atol=1e-4, rtol=0)
    # second pass: candidate videos' vision features come from the cache, same numbers
    again = judge.margin_candidates(q, CANDIDATES)
    assert judge.stats.image_cache_hits >= 4
    np.testing.assert_allclose(again, fast, atol=1e-5, rtol=0)


def test_fast_path_without_the_feature_cache(video_root, tiny_model_dir):
    """image_cache_size=0: pixel values (images and videos) go through the model's own forward."""
    judge = JudgeScorer.from_pretrained(tiny_model_dir("qwen3_vl"), device="cpu", data_root=video_root,
                                        chunk_size=4, image_cache_size=0)
    sharpen(judge.model)
    q = QUERIES["video+image"]
    fast = judge.margin_candidates(q, CANDIDATES)
    assert judge.stats.image_cache_hits == judge.stats.image_cache_misses == 0
    np.testing.assert_allclose(fast, [judge.margin_pair(q, c) for c in CANDIDATES], atol=1e-4, rtol=0)


def test_temporal_spacing_matters_on_qwen2_5(video_root, tiny_model_dir, monkeypatch):
    """Negative control: positions computed without the clips' second-per-grid (1 s per temporal patch
    instead of the true spacing) move the scores of video candidates away from the reference."""
    judge = JudgeScorer.from_pretrained(tiny_model_dir("qwen2_5_vl"), device="cpu", data_root=video_root)
    sharpen(judge.model)
    q, cands = QUERIES["text"], CANDIDATES[:3]
    ref = np.array([judge.margin_pair(q, c) for c in cands])
    monkeypatch.setattr(adapters_mod, "_as_1d", lambda values, device: None)  # the adapter's position rule
    judge.clear_image_cache()
    wrong = judge.margin_candidates(q, cands)
    assert np.abs(wrong - ref).max() > 1e-3


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_reranker_prompts_carry_videos(family, video_root, tiny_model_dir):
    from unime.models.reranker import Reranker

    rr = Reranker.from_pretrained(tiny_model_dir(family), device="cpu", data_root=video_root)
    cands = [CANDIDATES[0], CANDIDATES[3], CANDIDATES[5]]  # a clip file, text, a frame list
    segs = rr.listwise_segments(QUERIES["text"], cands)
    assert [s.kind for s in segs].count("video") == 2
    text = rr.adapter.render_user_turn(segs, assistant_prefix=rr.answer_prefix)
    assert text.count("<|video_pad|>") == 2 and "(2) just text" in text
    inputs = rr.adapter.processor_inputs([text], [segs])
    assert inputs["video_grid_thw"].shape[0] == 2 and "pixel_values" not in inputs
    assert inputs["video_grid_thw"][:, 0].tolist() == [4, 2]  # 8 sampled frames; the 4-frame list
    assert isinstance(rr.generate_answer(QUERIES["text"], cands), str)  # generation runs with videos
    # the pairwise path is the judge's fast path, equal to per-pair forwards on video
    rr.judge.stats.reset()
    got = rr.score_pairs(QUERIES["video"], cands)
    assert rr.judge.stats.pairs_scored_fast == 3 and rr.judge.stats.pairs_scored_reference == 0
    np.testing.assert_allclose(got, [rr.judge.score_pair(QUERIES["video"], c) for c in cands], atol=1e-4)


# -- vLLM request mapping -----------------------------------------------------------------------------

class FakeVideoVLLM:
    """Stands in for `vllm.LLM`: runs each request through the HF processor + model of the same checkpoint
    with exactly what the request carries (prompt, images, video frames + metadata, processor kwargs)."""

    def __init__(self, judge):
        self.judge = judge
        self.seen = []

    def generate(self, requests, params, use_tqdm=False):
        from transformers.video_utils import VideoMetadata

        self.seen.append(requests)
        outs = []
        for r in requests:
            data = r.get("multi_modal_data") or {}
            kwargs = dict(r.get("mm_processor_kwargs") or {})
            if data.get("image"):
                kwargs["images"] = data["image"]
            if data.get("video"):
                frames, metas = zip(*data["video"])
                kwargs["videos"] = [list(f) for f in frames]  # (T, H, W, 3) arrays → frame lists
                kwargs["video_metadata"] = [VideoMetadata(**m) for m in metas]
            inputs = self.judge.processor(text=[r["prompt"]], return_tensors="pt", **kwargs)
            with torch.no_grad():
                logits = self.judge.model(**inputs).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            top = {int(t): SimpleNamespace(logprob=float(lp[t])) for t in (self.judge.yes_id, self.judge.no_id)}
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(logprobs=[top])]))
        return outs


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_vllm_video_requests_score_like_the_local_judge(family, video_root, tiny_model_dir, monkeypatch):
    from unime.mining.backends import JudgeSpec, make_backend
    from unime.mining.backends.local import LocalBackend

    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    spec = JudgeSpec(path=tiny_model_dir(family), device="cpu", data_root=str(video_root))
    local = LocalBackend(spec)
    engine = FakeVideoVLLM(local.judge)
    backend = make_backend("vllm", spec, logprobs=20, llm=engine)
    groups = [(QUERIES["video"], CANDIDATES[:4])]
    got = backend.score_groups(groups)
    (requests,) = engine.seen
    r0 = requests[0]
    assert r0["prompt"] == local.judge.prompt(*groups[0][0:1], groups[0][1][0])
    assert r0["mm_processor_kwargs"] == {"do_sample_frames": False}
    (qf, qm), (cf, cm) = r0["multi_modal_data"]["video"]  # the query's clip and the candidate's
    assert qf.shape == (8, 48, 64, 3) and qf.dtype == np.uint8
    assert qm["fps"] == 10.0 and qm["frames_indices"] == [0, 3, 5, 8, 11, 14, 16, 19] and qm["total_num_frames"] == 20
    assert "multi_modal_data" in requests[3] and "image" not in requests[3]["multi_modal_data"]
    np.testing.assert_allclose(got[0], local.score_groups(groups)[0], atol=1e-5)


def test_vllm_request_gives_a_variable_frame_rate_clip_its_real_times():
    """vLLM's video metadata was the header rate and frame numbers (frames at 0, 1, 3, 4 s timed 0, 1, 1.2, 1.3 s
    at 10 fps); it is now the real times in milliseconds, the patches (0.5 s and 3.5 s) 3 s apart: 2 frames of 4 per
    6000 ticks of 1000 per second is 2 / (4 / 6000 * 1000) = 3 s per temporal patch (Qwen2.5-VL's rule)."""
    from unime.data.video import Video
    from unime.mining.backends.vllm import video_request_item

    frames = tuple(Image.new("RGB", (28, 28), (12 * i, 0, 0)) for i in range(4))
    vfr = Video(frames=frames, fps=10.0, frame_indices=(0, 10, 12, 13), total_frames=20, frame_times=(0, 1, 3, 4),
                span=4.1)
    _, meta = video_request_item(vfr)
    assert meta == {"fps": 1000.0, "frames_indices": [0, 1000, 3000, 4000], "total_num_frames": 6000,
                    "duration": 4.1, "video_backend": "pyav"}
    cfr = Video(frames=frames, fps=10.0, frame_indices=(0, 6, 13, 19), total_frames=20)
    assert video_request_item(cfr)[1] == {"fps": 10.0, "frames_indices": [0, 6, 13, 19], "total_num_frames": 20,
                                          "duration": 2.0, "video_backend": "pyav"}
