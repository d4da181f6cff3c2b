"""JudgeScorer: the SPEC 1.3 prompt, and the fast (shared-prefix KV cache) path equal to per-pair full forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FAMILIES
from tests.models.helpers import sharpen
from unime.data.items import Item
from unime.errors import ModelError
from unime.models import judge_prompt as judge_mod
from unime.models.judge import JudgeScorer


def _img(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def judges(tiny_model_dir):
    cache = {}

    def get(family):
        if family not in cache:
            j = JudgeScorer.from_pretrained(tiny_model_dir(family), device="cpu", chunk_size=3)
            sharpen(j.model)
            cache[family] = j
        return cache[family]

    return get


QUERY_IMAGE = Item(text="<|image_1|>\nRepresent the given image with the following question: what colour is "
                        "the circle?", images=(_img(1, (96, 64)),))
QUERY_TEXT = Item(text="Find an image that matches the given caption: a small red circle")
CANDIDATES = [
    Item(text="red"),
    Item(text="a large blue star on the left of a small red circle, and a green square below the star"),
    Item(images=(_img(2, (64, 96)),)),
    Item(text="a blue square", images=(_img(3, (128, 128)),)),
    Item(text="red"),  # duplicate of the first
    Item(text="two pictures", images=(_img(4, (56, 56)), _img(5, (84, 60)))),
    Item(text="\n:  odd spacing"),
]


def test_prompt_is_the_spec_prompt(judges):
    j = judges("qwen2_vl")
    q = Item(text="<|image_1|>\nwhat is it?", images=(_img(1, (64, 64)),))
    c = Item(text="a red circle")
    text = j.prompt(q, c)
    expected_user = ("I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
                     "requirements of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'. "
                     "Query: <|vision_start|><|image_pad|><|vision_end|>what is it?, Candidate: a red circle.")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + expected_user
                    + "<|im_end|>\n<|im_start|>assistant\n")
    # image-only candidate: the candidate image comes right after the label
    text = j.prompt(Item(text="a red circle"), Item(images=(_img(2, (64, 64)),)))
    assert "Query: a red circle, Candidate: <|vision_start|><|image_pad|><|vision_end|>.<|im_end|>" in text


# the KV cache under the name the installed transformers takes (its old name warns before it is dropped)
@pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("query", [QUERY_IMAGE, QUERY_TEXT], ids=["image_query", "text_query"])
def test_fast_path_equals_per_pair_full_forward(judges, family, query):
    j = judges(family)
    j.stats.reset()
    fast = j.margin_candidates(query, CANDIDATES)
    assert j.stats.boundary_fallbacks == 0 and j.stats.pairs_scored_reference == 0
    assert j.stats.prefix_forwards == 1 and j.stats.duplicate_pairs == 1
    assert j.stats.pairs_scored_fast == len(CANDIDATES) - 1
    reference = np.array([j.margin_pair(query, c) for c in CANDIDATES])
    assert np.abs(reference).max() > 0.2 and np.ptp(reference) > 0.2  # margins that a wrong position would move
    np.testing.assert_allclose(fast, reference, atol=1e-4, rtol=0)
    scores = j.score_candidates(query, CANDIDATES)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-reference)), atol=1e-4, rtol=0)
    np.testing.assert_allclose(j.score_pair(query, CANDIDATES[3]), scores[3], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_positions_are_detected(judges, family, monkeypatch):
    """Negative control: positions by token count (what a naive cache continuation does) move the margins
    far beyond the tolerance, so the equality test above can fail."""
    j = judges(family)
    reference = np.array([j.margin_pair(QUERY_IMAGE, c) for c in CANDIDATES])

    def token_count_positions(self, model, input_ids, *args, **kwargs):
        return torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)

    # the position rule lives in the family adapter; the fast path must take it from there
    monkeypatch.setattr(type(j.adapter), "sequence_positions", token_count_positions)
    wrong = j.margin_candidates(QUERY_IMAGE, CANDIDATES)
    assert np.abs(wrong - reference).max() > 1e-2


def test_chunking_order_and_cache_reuse_do_not_change_scores(judges):
    j = judges("qwen2_5_vl")
    base = j.margin_candidates(QUERY_IMAGE, CANDIDATES)
    for chunk in (1, 2, 16):
        j.engine.chunk_size = chunk
        np.testing.assert_allclose(j.margin_candidates(QUERY_IMAGE, CANDIDATES), base, atol=1e-5)
    j.engine.chunk_size = 3
    perm = [5, 2, 0, 6, 3, 1, 4]
    np.testing.assert_allclose(j.margin_candidates(QUERY_IMAGE, [CANDIDATES[i] for i in perm]), base[perm], atol=1e-5)


def test_score_pairs_groups_by_query_and_deduplicates(judges):
    j = judges("qwen3_vl")
    pairs = [(QUERY_IMAGE, CANDIDATES[0]), (QUERY_TEXT, CANDIDATES[2]), (QUERY_IMAGE, CANDIDATES[3]),
             (QUERY_IMAGE, CANDIDATES[0]), (QUERY_TEXT, CANDIDATES[0])]
    j.stats.reset()
    scores = j.score_pairs(pairs)
    assert j.stats.prefix_forwards == 2 and j.stats.pairs_scored_fast == 4 and j.stats.duplicate_pairs == 1
    expected = np.array([j.score_pair(q, c) for q, c in pairs])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert scores[0] == scores[3]


def test_items_as_dicts_and_strings_score_like_items(judges):
    """QA: `score_candidates` took only `Item`s where `Embedder.encode` and `Reranker` take dicts and strings."""
    j = judges("qwen2_vl")
    as_dicts = [{"text": "red"}, {"images": [CANDIDATES[2].images[0]]}, "a blue square"]
    as_items = [CANDIDATES[0], CANDIDATES[2], Item(text="a blue square")]
    query = {"text": QUERY_IMAGE.text, "image": QUERY_IMAGE.images[0]}
    np.testing.assert_array_equal(j.score_candidates(query, as_dicts), j.score_candidates(QUERY_IMAGE, as_items))
    np.testing.assert_array_equal(j.score_pairs([(query, c) for c in as_dicts]),
                                  j.score_pairs([(QUERY_IMAGE, c) for c in as_items]))
    assert j.score_pair(QUERY_TEXT.text, "red") == j.score_pair(QUERY_TEXT, CANDIDATES[0])


def test_a_pair_of_the_wrong_length_says_its_length(tiny_model_dir):
    """QA (Python API): `judge.score_pairs([("a query",)])` said "pairs[0] must be a (query, candidate) pair, got
    tuple" — a tuple is what a pair is; a list or tuple of another length than 2 says its length."""
    judge = JudgeScorer.from_pretrained(tiny_model_dir("qwen2_vl"), load_weights=False)
    for pairs, said in (([("q", "c"), ("a query",)], "pairs[1] must be a (query, candidate) pair, got a tuple of 1"),
                        ([["q", "c", "d"]], "pairs[0] must be a (query, candidate) pair, got a list of 3"),
                        (["qc"], "pairs[0] must be a (query, candidate) pair, got str")):
        for score in (judge.score_pairs, judge.score_pairs_reference):
            with pytest.raises(TypeError) as refused:
                score(pairs)
            assert str(refused.value) == said


def test_only_yes_no_rows_of_the_lm_head_are_used(judges, monkeypatch):
    """The fast path must not compute the full vocabulary projection."""
    j = judges("qwen2_vl")
    head = j.adapter.lm_head(j.model)
    calls = []
    handle = head.register_forward_hook(lambda *a: calls.append(1))
    try:
        j.margin_candidates(QUERY_TEXT, CANDIDATES[:3])
    finally:
        handle.remove()
    assert calls == []


def test_judge_refuses_multi_token_answers():
    class Tok:
        def encode(self, word, add_special_tokens=False):
            return [5, 6] if word == "Yes" else [7]

    class Proc:
        tokenizer = Tok()

    from unime.models.adapters import QwenVLAdapter

    with pytest.raises(ModelError, match="'Yes'.*2 tokens"):
        JudgeScorer(torch.nn.Linear(1, 1), Proc(), QwenVLAdapter(Proc()))


def test_candidate_segments_split_before_the_labels_whitespace():
    from unime.models.adapters import Segment

    prefix = judge_mod.judge_prefix_segments([Segment("text", "q")])
    cand = judge_mod.judge_candidate_segments([Segment("text", "c")])
    assert prefix[-1].value.endswith("q, Candidate:") and cand[0].value == " c."
    full = judge_mod.judge_prompt_segments([Segment("text", "q")], [Segment("text", "c")])
    assert [s.value for s in full] == [prefix[0].value + " c."]


@pytest.mark.parametrize("family", FAMILIES)
def test_candidate_image_features_are_cached_across_queries(judges, family):
    """A pool image retrieved for several queries goes through the vision tower once; cached features
    (with Qwen3-VL's deepstack features) give the reference scores."""
    j = judges(family)
    j.clear_image_cache()
    j.stats.reset()
    cands = [CANDIDATES[2], CANDIDATES[3], CANDIDATES[5]]  # 4 images
    j.margin_candidates(QUERY_TEXT, cands)
    assert j.stats.image_cache_misses == 4 and j.stats.image_cache_hits == 0
    fast = j.margin_candidates(QUERY_IMAGE, cands)
    assert j.stats.image_cache_misses == 4 and j.stats.image_cache_hits == 4
    reference = np.array([j.margin_pair(QUERY_IMAGE, c) for c in cands])
    np.testing.assert_allclose(fast, reference, atol=1e-4, rtol=0)
    j.engine.image_cache_size = 2  # LRU bound
    j.margin_candidates(QUERY_TEXT, cands)
    assert len(j.engine.image_cache) == 2
    j.engine.image_cache_size = 1024


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_feature_cache_is_bounded_by_bytes_and_scores_stay_those_without_it(judges, family):
    """The cached features sit on the judge's device (a 7B judge's ~4 MB an image): beside the item bound, a byte
    budget (least recently used first). A budget of one image's features, then of none, forces evictions; the
    scores equal a run without any cache."""
    from unime.models.prefix_scoring import IMAGE_CACHE_BYTES

    j = judges(family)
    cands = [CANDIDATES[2], CANDIDATES[3], CANDIDATES[5]]  # 4 images
    j.engine.image_cache_size = 0
    uncached = [j.margin_candidates(q, cands) for q in (QUERY_TEXT, QUERY_IMAGE)]
    j.engine.image_cache_size = 1024
    j.clear_image_cache()
    j.margin_candidates(QUERY_TEXT, cands)  # unbounded: all 4 kept
    cache = j.engine.image_cache
    sizes = [entry[1] for entry in cache._entries.values()]
    pooled, deep = next(iter(cache._entries.values()))[0]
    assert sizes[0] == sum(t.element_size() * t.nelement() for t in [pooled, *(deep or [])]) > 0
    assert len(cache) == 4 and cache.nbytes == sum(sizes)
    try:
        j.engine.image_cache_bytes = max(sizes)  # the features of one image: the last used stays
        j.clear_image_cache()
        j.stats.reset()
        got = [j.margin_candidates(q, cands) for q in (QUERY_TEXT, QUERY_IMAGE)]
        assert len(cache) == 1 and cache.nbytes <= max(sizes)
        # unbounded, the second query's 4 images are all hits (4 misses, 4 hits): evicted ones are encoded again
        assert j.stats.image_cache_hits + j.stats.image_cache_misses == 8 and j.stats.image_cache_misses > 4
        j.engine.image_cache_bytes = min(sizes) - 1  # no image fits: nothing kept
        got.append(j.margin_candidates(QUERY_TEXT, cands))
        assert len(cache) == 0 and cache.nbytes == 0
    finally:
        j.engine.image_cache_bytes = IMAGE_CACHE_BYTES
    for g, u in zip(got, uncached + uncached[:1]):
        np.testing.assert_array_equal(g, u)


def test_a_trainers_output_folder_is_a_judge_its_adapter_or_its_merged_model(tiny_model_dir, tmp_path):
    """`unime train reranker` writes OUT/adapter only (OUT/merged with --merge): JudgeScorer (so `unime mine
    --judge`, `unime judge --model`) loads OUT as a Reranker does."""
    from unime.models.export import ModelCard, export_final
    from unime.models.loading import load_model
    from unime.models.lora import LoraSettings, apply_lora

    loaded = load_model(tiny_model_dir("qwen2_vl"), device="cpu")
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8, dropout=0.0), task_type="CAUSAL_LM")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    card = ModelCard(title="t", base_model="b", summary="s", usage="u")
    export_final(model, loaded.processor, tmp_path / "rr1", card=card, merged=False)
    query, candidates = QUERY_TEXT, CANDIDATES[:3]
    base = JudgeScorer.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu").margin_candidates(query, candidates)
    judge = JudgeScorer.from_pretrained(tmp_path / "rr1", device="cpu")
    assert judge.name == str(tmp_path / "rr1" / "adapter")
    scores = judge.margin_candidates(query, candidates)
    adapter = JudgeScorer.from_pretrained(tmp_path / "rr1" / "adapter", device="cpu")
    np.testing.assert_allclose(scores, adapter.margin_candidates(query, candidates), atol=1e-6)
    assert np.abs(scores - base).max() > 1e-4                     # the adapter is applied
    assert JudgeScorer.from_pretrained(tmp_path / "rr1", load_weights=False).yes_id == judge.yes_id
    export_final(model, loaded.processor, tmp_path / "rr2", card=card, adapter=False)
    merged = JudgeScorer.from_pretrained(tmp_path / "rr2", device="cpu")
    assert merged.name == str(tmp_path / "rr2" / "merged")
    np.testing.assert_allclose(merged.margin_candidates(query, candidates), scores, atol=1e-4)
