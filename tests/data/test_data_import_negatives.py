"""The negatives `unime data import` draws (judge records, eval rows, judge pairs): never one of the query's own,
and drawn without a scan of the pool per record (QA: the import took time quadratic in the captions)."""

from __future__ import annotations

import random

import pytest

from unime.data.collections import CaptionedImage
from unime.data.import_collection import (ImportOptions, _image_ids, _judge_pairs, _judge_records, _mmeb_rows,
                                          _owner_map, _relevant_images, _sample_without, _train_records,
                                          caption_query)
from unime.data.items import Item

# four images; "a dog" is shared by images 1 and 2, which are therefore about it both
CAPTIONS = {"images/1.png": ["a dog", "a brown dog"], "images/2.png": ["a dog", "a dog on grass"],
            "images/3.png": ["a cat"], "images/4.png": ["a red car", "a car"]}


def _side(captions: dict[str, list[str]], labels: dict[str, str] | None = None) -> list[tuple[CaptionedImage, str]]:
    return [(CaptionedImage(id=rel, image=rel, captions=list(caps), label=(labels or {}).get(rel, "")), rel)
            for rel, caps in captions.items()]


@pytest.mark.parametrize("n, excluded, k", [(5, [], 3), (5, [0, 4], 3), (10, [2, 3, 9], 10), (30, [0, 29], 3),
                                            (200, [5, 6, 7, 150], 3), (2000, list(range(0, 2000, 3)), 99),
                                            (4, [0, 1, 2, 3], 3)])
def test_sampling_without_positions_draws_what_sampling_the_filtered_list_draws(n, excluded, k):
    items = [f"item{i}" for i in range(n)]
    kept = [x for i, x in enumerate(items) if i not in set(excluded)]
    for seed in range(5):
        expected = random.Random(seed).sample(kept, min(k, len(kept)))
        assert _sample_without(random.Random(seed), items, excluded, k) == expected


def test_judge_negatives_are_never_the_querys_own_caption_or_image_nor_of_an_image_sharing_its_caption():
    train = _side(CAPTIONS)
    opts = ImportOptions(out="x", name="d", judge_negatives=2)
    records = _train_records(train, opts, _image_ids(list(CAPTIONS)))
    owners_of_caption = {c: {rel for rel, caps in CAPTIONS.items() if c in caps} for caps in CAPTIONS.values()
                         for c in caps}
    caption_of_query = {caption_query(c).text: c for c in owners_of_caption}
    for seed in range(20):
        judge = _judge_records(records, _owner_map(train), _relevant_images(train), ImportOptions(
            out="x", name="d", judge_negatives=2, seed=seed))
        assert [r.id for r in judge] == [r.id for r in records]
        for r in judge:
            if r.query.images:  # i2t: image -> caption; the images the caption is about are the query's own
                own = {r.query.images[0]} | owners_of_caption[r.positive.text]
            else:  # t2i: caption -> image; every image with the caption is the query's own
                own = owners_of_caption[caption_of_query[r.query.text]]
            assert len(r.negatives) == 2 and len({n.key for n in r.negatives}) == 2
            for n in r.negatives:
                assert bool(n.images) == bool(r.positive.images)
                about = {n.images[0]} if n.images else owners_of_caption[n.text]
                assert not about & own, (r.id, n)


def test_eval_rows_and_judge_pairs_never_list_an_own_caption_or_an_image_with_the_querys_caption():
    held = _side(CAPTIONS, {"images/1.png": "dog", "images/2.png": "dog", "images/3.png": "cat",
                            "images/4.png": "car"})
    ids = _image_ids(list(CAPTIONS))
    for seed in range(20):
        opts = ImportOptions(out="x", name="d", eval_candidates=100, judge_negatives=10, seed=seed)
        tasks = _mmeb_rows(held, opts, ids)
        for row in tasks["d_i2t"]:
            own = CAPTIONS[row.query.images[0]]
            others = {c for rel, caps in CAPTIONS.items() for c in caps} - set(own)
            assert row.candidates[0].text == own[0] and {c.text for c in row.candidates[1:]} == others
        for row, (img, rel) in zip(tasks["d_t2i"], held):
            with_caption = {r for r, caps in CAPTIONS.items() if img.captions[0] in caps}
            assert row.candidates[0].images == (rel,)
            assert {c.images[0] for c in row.candidates[1:]} == set(CAPTIONS) - with_caption
        for row, (img, _) in zip(tasks["d_cls"], held):
            assert row.candidates[0].text == img.label
            assert sorted(c.text for c in row.candidates[1:]) == sorted({"dog", "cat", "car"} - {img.label})
        for pair in _judge_pairs(held, opts, ids):
            if pair["label"] == 1:
                continue
            if "images" in pair["query"]:  # i2t: a caption of another image, none of the query image's
                assert pair["candidate"]["text"] not in CAPTIONS[pair["query"]["images"][0]]
            else:  # t2i: an image without the query's caption
                rel = pair["candidate"]["images"][0]
                assert pair["query"]["text"] not in {caption_query(c).text for c in CAPTIONS[rel]}


def _many(n: int) -> dict[str, list[str]]:
    return {f"images/{i}.png": [f"caption {i} a", f"caption {i} b"] + (["shared"] if i % 10 == 0 else [])
            for i in range(n)}


def test_judge_records_compute_each_items_key_a_bounded_number_of_times(monkeypatch):
    """Was: for every record a scan of the whole pool computing each pool item's key (json + SHA-1), 19 M key
    computations for 5,000 captions."""
    train = _side(_many(150))
    opts = ImportOptions(out="x", name="d")
    records = _train_records(train, opts, _image_ids([rel for _, rel in train]))
    owners, relevant = _owner_map(train), _relevant_images(train)
    calls = 0
    key = Item.key

    def counted(self):
        nonlocal calls
        calls += 1
        return key.fget(self)

    monkeypatch.setattr(Item, "key", property(counted))
    judge = _judge_records(records, owners, relevant, opts)
    assert len(judge) == len(records) == 630
    assert calls <= 3 * len(records)  # a record's query and positive (the pool: positives)


class _ReadCounted(list):
    """Captions that count how often they are read whole (iterated or searched)."""

    reads = 0

    def __iter__(self):
        _ReadCounted.reads += 1
        return super().__iter__()

    def __contains__(self, x):
        _ReadCounted.reads += 1
        return super().__contains__(x)


def test_eval_rows_and_judge_pairs_read_each_held_out_images_captions_a_bounded_number_of_times():
    """Was: for each held-out image, a set or list of every other held-out image's captions rebuilt."""
    held = [(CaptionedImage(id=rel, image=rel, captions=_ReadCounted(caps)), rel) for rel, caps in _many(200).items()]
    ids = _image_ids([rel for _, rel in held])
    opts = ImportOptions(out="x", name="d", eval_candidates=5)
    _ReadCounted.reads = 0
    tasks = _mmeb_rows(held, opts, ids)
    assert [len(rows) for rows in tasks.values()] == [200, 200]
    assert _ReadCounted.reads <= 5 * len(held)
    _ReadCounted.reads = 0
    assert len(_judge_pairs(held, opts, ids)) == 200 * 2 * 4
    assert _ReadCounted.reads <= 5 * len(held)
