"""`train_embedder(config, records=[...])` / `prepare_embedder_training`: records given in memory as `Record`s or
as dicts (a records file's JSON objects), a bad one named by its index and field; a missing image says where it
was looked for (QA: a dict failed with "'dict' object has no attribute 'negatives'")."""

from __future__ import annotations

import json

import pytest

from tests.train.helpers import base_config, write_world
from unime.data.items import Item, Record
from unime.errors import DataError


def test_dict_records_train_as_the_same_records_read_from_a_file(tmp_path, tiny_model_dir):
    from unime.data.io import read_records
    from unime.train.embedder_trainer import prepare_embedder_training

    path = write_world(tmp_path / "world")
    dicts = [json.loads(line) for line in open(path)]
    config = base_config(tiny_model_dir("qwen2_vl"), tmp_path / "out", tmp_path / "world", loss="infonce")
    run = prepare_embedder_training(config, records=dicts)
    assert run.records == read_records(path) and len(run.records) == 4
    assert run.config.records == "<in-memory records>"


def test_a_bad_in_memory_record_is_named_by_its_index(tmp_path, tiny_model_dir):
    from unime.train.embedder_trainer import train_embedder

    config = base_config(tiny_model_dir("qwen2_vl"), tmp_path / "out", tmp_path, loss="infonce", hard_negatives=0)
    good = {"query": {"text": "a"}, "positive": {"text": "b"}}
    with pytest.raises(DataError, match=r"^<in-memory records>, record records\[1\], field 'positive': unknown keys"):
        train_embedder(config, records=[good, {"query": {"text": "a"}, "positive": {"txt": "b"}}])
    with pytest.raises(TypeError, match=r"^records\[1\]: expected a unime.data.items.Record or a dict .*got int"):
        train_embedder(config, records=[good, 3])
    with pytest.raises(TypeError, match=r"^records must be a list of Records or dicts, got a single dict"):
        train_embedder(config, records=good)
    assert not (tmp_path / "out").exists()


def test_a_missing_image_of_an_in_memory_record_says_where_it_was_looked_for(tmp_path, tiny_model_dir, monkeypatch):
    from unime.train.embedder_trainer import train_embedder

    monkeypatch.chdir(tmp_path)
    config = base_config(tiny_model_dir("qwen2_vl"), tmp_path / "out", tmp_path, loss="infonce", hard_negatives=0,
                         data_root=None)
    records = [Record(query=Item(text="a"), positive=Item(images=("imgs/nope.png",))),
               Record(query=Item(text="c"), positive=Item(text="d"))]
    with pytest.raises(DataError, match=rf"field 'positive.images\[0\]': image file not found: 'imgs/nope.png' "
                                        rf"\(looked in '{tmp_path.resolve()}': the paths of in-memory records are "
                                        r"relative to data_root, the working directory unless set\)$"):
        train_embedder(config, records=records)


def test_in_memory_records_are_named_by_their_python_index_records_or_dicts_alike(tmp_path, tiny_model_dir):
    """A bad in-memory record was named `records[1]` when a dict failed to parse (0-based), but `record 2` when it
    had too few negatives and `record item 2` when an image was missing (1-based): one name now, its index in the
    list given, whether it is a Record or a dict."""
    from unime.data.io import record_to_dict
    from unime.train.embedder_trainer import train_embedder

    config = base_config(tiny_model_dir("qwen2_vl"), tmp_path / "out", tmp_path, loss="infonce", hard_negatives=1)
    good = Record(query=Item(text="a"), positive=Item(text="b"), negatives=[Item(text="c")])
    few = Record(query=Item(text="d"), positive=Item(text="e"))
    no_image = Record(query=Item(text="f"), positive=Item(images=("nope.png",)), negatives=[Item(text="g")])
    for make in (lambda r: r, record_to_dict):
        with pytest.raises(DataError) as refused:
            train_embedder(config, records=[make(good), make(few)])
        assert str(refused.value).startswith("<in-memory records>, record records[1], field 'negatives': 0 hard "
                                             "negatives, but training uses k=1 per query")
        with pytest.raises(DataError) as refused:
            train_embedder(config, records=[make(good), make(good), make(no_image)])
        assert str(refused.value).startswith("<in-memory records>, record records[2], field 'positive.images[0]': "
                                             "image file not found: 'nope.png'")
    assert not (tmp_path / "out").exists()


def test_an_in_memory_record_keeps_its_index_once_bad_ones_before_it_are_skipped(tmp_path):
    """Under on_error="skip" the records left are checked again (their images): the one named is still the one at
    that index in the list given, not its position among the records left. The caller's records are not changed."""
    from unime.data.images import ImageLoader
    from unime.data.io import check_images, origin_of
    from unime.data.skips import SkipReport
    from unime.train.batching import check_records
    from unime.train.embedder_trainer import in_memory_records

    few = Record(query=Item(text="d"), positive=Item(text="e"))
    no_image = Record(query=Item(text="f"), positive=Item(images=("nope.png",)), negatives=[Item(text="g")])
    skips = SkipReport()
    given = in_memory_records([few, no_image], "<in-memory records>")
    kept = check_records(given, num_negatives=1, needs_scores=False, source="<in-memory records>", on_error="skip",
                         skips=skips)
    assert kept == [no_image] and check_images(kept, ImageLoader(tmp_path), on_error="skip", skips=skips) == []
    assert [e.record for e in skips.examples] == ["records[0]", "records[1]"]
    assert origin_of(no_image) is None  # the caller's record is not tagged


def test_a_missing_video_of_a_records_file_is_not_called_an_in_memory_record(tmp_path, tiny_model_dir):
    """QA (video): `unime train embedder --records FILE` without --hard-negatives (auto) reads the file before the
    records are checked, and a missing file was then explained as one of "in-memory records ... relative to
    data_root, the working directory unless set" — a file's paths are relative to its folder (or --data-root)."""
    from unime.train.embedder_trainer import train_embedder

    path = tmp_path / "data" / "records.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"id": "q1", "query": {"text": "a"}, "positive": {"text": "b"}}) + "\n"
                    + json.dumps({"id": "q2", "query": {"text": "c"}, "positive": {"video": "clips/nope.mp4"}}) + "\n")
    config = base_config(tiny_model_dir("qwen2_vl"), tmp_path / "out", tmp_path, loss="infonce", hard_negatives=None,
                         data_root=None, records=str(path))
    with pytest.raises(DataError) as refused:
        train_embedder(config)
    assert str(refused.value) == (f"{path}, record line 2 (id q2), field 'positive.video[0]': video file not found: "
                                  f"'clips/nope.mp4' (looked in {str(path.parent)!r})")
    assert not (tmp_path / "out").exists()
