"""The public entry points of the embedder, judge and reranker refuse malformed inputs with a clear error
instead of silently doing something else (QA): a single item where a list is expected."""

from __future__ import annotations

import pytest
from PIL import Image

from unime.data.items import Item


@pytest.fixture(scope="module")
def emb(tiny_model_dir):
    from unime import Embedder

    return Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu")


@pytest.fixture(scope="module")
def reranker(tiny_model_dir):
    from unime.models.reranker import Reranker

    return Reranker.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu")


SINGLES = ["hello", {"text": "hello"}, Item("hello"), Image.new("RGB", (8, 8))]


@pytest.mark.parametrize("single", SINGLES, ids=["str", "dict", "Item", "PIL"])
def test_encode_refuses_a_single_item_instead_of_a_list(emb, single):
    for call in (lambda: emb.encode(single), lambda: emb.embed(single), lambda: emb.batch_plan(single)):
        with pytest.raises(TypeError, match=r"items must be a list of items.*got a single"):
            call()
    assert emb.encode(["hello"]).shape == (1, emb.hidden_size)


def test_judge_and_reranker_refuse_a_single_candidate_instead_of_a_list(reranker):
    judge = reranker.judge
    with pytest.raises(TypeError, match="candidates must be a list"):
        judge.score_candidates("q", "hello")
    with pytest.raises(TypeError, match="candidates must be a list"):
        judge.margin_candidates("q", {"text": "hello"})
    with pytest.raises(TypeError, match="pairs must be a list"):
        judge.score_pairs("hello")
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(query, candidate\) pair"):
        judge.score_pairs(["ab"])
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(query, candidate\) pair"):
        judge.score_pairs_reference(["ab"])
    for call in (lambda: reranker.score_pairs("q", "hello"), lambda: reranker.pick("q", "hello"),
                 lambda: reranker.listwise_segments("q", Item("hello")), lambda: reranker.rerank("q", "hello")):
        with pytest.raises(TypeError, match="candidates|ranked"):
            call()
    with pytest.raises(TypeError, match="queries must be a list"):
        reranker.pick_many("q", [["a", "b"]])
    with pytest.raises(TypeError, match=r"candidate_lists\[0\] must be a list"):
        reranker.pick_many(["q"], ["ab"])
    with pytest.raises(TypeError, match="queries must be a list"):
        reranker.generate_answers("q", [["a", "b"]])
    assert judge.score_candidates("q", ["hello"]).shape == (1,)


@pytest.mark.parametrize("empty", [{}, "", "   ", {"text": ""}, {"text": None}, Item()])
def test_an_empty_item_is_refused_naming_it(emb, reranker, empty):
    """encode([{}]) / encode([""]) returned a vector; now an empty item is refused as the readers refuse it."""
    from unime.errors import DataError

    with pytest.raises(DataError, match=r"field 'items\[1\]'.*empty item"):
        emb.encode(["a", empty])
    with pytest.raises(DataError, match=r"field 'items\[0\]'.*empty item"):
        emb.embed([empty])
    with pytest.raises(DataError, match=r"field 'candidates\[0\]'.*empty item"):
        reranker.judge.score_candidates("q", [empty])
    with pytest.raises(DataError, match=r"field 'query'.*empty item"):
        reranker.judge.score_candidates(empty, ["a"])
    with pytest.raises(DataError, match=r"field 'candidate'.*empty item"):
        reranker.judge.score_pair("q", empty)
    with pytest.raises(DataError, match=r"field 'ranked\[1\]'.*empty item"):
        reranker.rerank("q", ["a", empty])


def test_a_missing_image_names_its_item(emb, reranker):
    """QA: encode([{"text": "ok"}, {"image": "imgs/nope.png"}]) said field 'images[0]' (and the judge
    'candidate.images[0]') without the item's position, while other item errors name it."""
    from unime.errors import DataError

    gone = "no_such_folder/nope.png"  # under the data root (the working directory)
    with pytest.raises(DataError, match=r"^field 'items\[1\]\.images\[0\]': image file not found"):
        emb.encode([{"text": "ok"}, {"image": gone}])
    with pytest.raises(DataError, match=r"^field 'items\[2\]\.images\[0\]': image file not found"):
        emb.encode(["a", "b", {"images": [gone]}, "c", {"images": [gone]}], batch_size=1)  # its first place
    with pytest.raises(DataError, match=r"^field 'candidates\[3\]\.images\[0\]': image file not found"):
        reranker.judge.score_candidates("q", ["a", "b", "a", {"images": [gone]}])
    with pytest.raises(DataError, match=r"^field 'query\.images\[0\]': image file not found"):
        reranker.judge.score_candidates({"images": [gone]}, ["a"])


@pytest.mark.parametrize("bad, match", [({"image": ""}, r"items\[0\]\.images.*non-empty path"),
                                        ({"text": 0}, r"items\[0\]\.text.*text must be a string, got int"),
                                        ({"text": False, "image": "x.png"}, r"text must be a string, got bool")])
def test_an_empty_image_path_or_a_non_string_text_is_refused(emb, bad, match):
    """{"image": ""} was dropped silently (while {"images": [""]} was refused) and {"text": 0} read as ""."""
    from unime.errors import DataError

    with pytest.raises(DataError, match=match):
        emb.encode([bad])


@pytest.mark.parametrize("bs", [0, -1, 1.5, True, "2"])
def test_batch_size_below_one_or_not_an_integer_is_refused(emb, bs):
    """batch_size=-1 raised a bare KeyError and batch_size=0 silently meant the default."""
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 \(or None for the default\)"):
        emb.encode(["a", "b"], batch_size=bs)
    with pytest.raises(ValueError, match="batch_size must be"):
        emb.batch_plan(["a", "b"], batch_size=bs)


def test_batch_size_none_is_the_default_and_one_works(emb):
    assert emb.batch_plan(["a", "b", "c"], batch_size=None) == emb.batch_plan(["a", "b", "c"])
    assert [len(b) for b in emb.batch_plan(["a", "b", "c"], batch_size=1)] == [1, 1, 1]
    assert emb.encode(["a", "b"], batch_size=1).shape == (2, emb.hidden_size)


def test_the_constructor_refuses_a_bad_default_batch_size(emb):
    from unime import Embedder

    with pytest.raises(ValueError, match="batch_size must be"):
        Embedder(emb.model, emb.processor, emb.adapter, batch_size=0)
