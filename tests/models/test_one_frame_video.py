"""A one-frame video embeds and is judged on every family (QA: Qwen3-VL's processor refused t=1 < temporal_factor 2;
Qwen2-VL and Qwen2.5-VL padded it inside). The padding (`unime.data.video.pad_frames`) repeats the last frame, as
Qwen2-VL's processor does, so their vectors are the ones they gave before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAMILIES


def _img(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_one_frame_video_embeds_and_is_judged(tiny_model_dir, family):
    from unime import Embedder
    from unime.models.judge import JudgeScorer

    img = _img(1)
    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu")
    vecs = emb.encode([{"video": [img]}, {"text": "a clip", "video": [img]}, {"video": [img, img]}])
    assert np.all(np.isfinite(vecs)) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    if family != "qwen3_vl":  # Qwen3-VL writes each patch's timestamp in the text: (0, 0) for a padded frame
        np.testing.assert_allclose(vecs[0], vecs[2], atol=1e-6)
    judge = JudgeScorer.from_pretrained(tiny_model_dir(family), device="cpu")
    fast = judge.score_candidates("a red clip", [{"video": [img]}, "text"])
    assert fast.shape == (2,) and np.all((fast > 0) & (fast < 1))
    np.testing.assert_allclose(fast[0], judge.score_pair("a red clip", {"video": [img]}), atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_vectors_of_a_one_frame_video_are_those_without_the_padding(tiny_model_dir, family, monkeypatch):
    from unime import Embedder
    from unime.data import video as video_mod

    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu")
    items = [{"video": [_img(2)]}, {"text": "one frame", "video": [_img(3)]}]
    padded = emb.encode(items)
    monkeypatch.setattr(video_mod, "pad_frames", lambda v, n=2: v)  # the behaviour before: the processor pads
    np.testing.assert_array_equal(emb.encode(items), padded)
