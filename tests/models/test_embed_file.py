"""`unime embed` reads the item files `unime index build` reads (`unime.data.corpus`)."""

from __future__ import annotations

import json

import numpy as np

from unime.cli import main
from unime.data.items import Item

from tests.models.helpers import Killed, check_a_resumed_run_reads_no_image_again, paint, write_pngs


def test_embed_reads_a_generated_worlds_items_file_like_index_build(tiny_world_dir, tiny_model_dir, tmp_path, capsys):
    """QA: `unime embed` refused `unime data synth`'s items.jsonl ({"key", "item", "meta"} lines), which
    `unime index build` reads."""
    from unime.models.embedder import Embedder

    world = tiny_world_dir(0)
    lines = (world / "items.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    assert any(json.loads(x)["item"].get("images") for x in lines) and all("meta" in json.loads(x) for x in lines)
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "x.npy"
    assert main(["embed", "--model", model, "--items", str(items), "--data-root", str(world), "--out", str(out),
                 "--device", "cpu"]) == 0
    got = np.load(out)
    # independently: each line's "item" object, encoded by the embedder itself
    expected = Embedder.from_pretrained(model, device="cpu", data_root=str(world)).encode(
        [Item.from_dict(json.loads(x)["item"]) for x in lines])
    assert got.shape == (6, expected.shape[1]) and f"{out}: 6 x {expected.shape[1]}" in capsys.readouterr().out
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_unknown_dtype_is_one_error_line_naming_it_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    """The commands whose `--dtype` had no parse-time choices (embed, eval, serve, reason ...) ended `--dtype fp8`
    — or `--dtype checkpoint`, once the loader's internal word — in a traceback (`ValueError: unknown dtype`). Every
    `--dtype` takes its choices at parse time now: argparse's one error line naming the option, exit code 2, no
    output; `resolve_dtype` (the Python API) refuses it as the error contract's one line."""
    import pytest

    from unime.models.loading import UnknownDtypeError, resolve_dtype

    items, out = tmp_path / "items.jsonl", tmp_path / "x.npy"
    items.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n", encoding="utf-8")
    for value in ("fp8", "checkpoint"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(["embed", "--model", tiny_model_dir("qwen2_vl"), "--items", str(items), "--out", str(out),
                  "--device", "cpu", "--dtype", value])
        assert stop.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1] == (f"unime embed: error: argument --dtype: invalid choice: '{value}' (choose from 'auto', "
                           "'fp32', 'float32', 'bf16', 'bfloat16', 'fp16', 'float16')")
        assert not out.exists()
        with pytest.raises(UnknownDtypeError) as refused:
            resolve_dtype(value, "cpu")
        assert str(refused.value) == (f"unknown dtype '{value}'; choose one of auto, fp32, float32, bf16, bfloat16, "
                                      "fp16, float16")


def _watched_forward(monkeypatch):
    """(encoded, kill_after): `Embedder.forward` records each batch's size in encoded, and raises `Killed` instead of
    the call number kill_after[0]."""
    from unime.models.embedder import Embedder

    encoded, kill_after = [], [None]
    forward = Embedder.forward

    def counted(self, inputs, **kw):
        if kill_after[0] is not None and len(encoded) == kill_after[0]:
            raise Killed()
        encoded.append(int(inputs["input_ids"].shape[0]))
        return forward(self, inputs, **kw)

    monkeypatch.setattr(Embedder, "forward", counted)
    return encoded, kill_after


def _six_items(tmp_path, monkeypatch, model: str, n_images: int):
    """6 items, item i showing img/(i % n_images).png (`n_images` PNGs of random pixels), encoded in chunks of 2 by
    batches of 2 (one forward per chunk, watched: `_watched_forward`). Returns (images, items file, encoded,
    kill_after, the command line without --out)."""
    from unime.models import embed_file

    images = write_pngs(tmp_path, n_images, np.random.default_rng(0))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{i}", "text": f"item {i}", "images": [f"img/{i % n_images}.png"]})
                             + "\n" for i in range(6)), encoding="utf-8")
    monkeypatch.setattr(embed_file, "ITEMS_PER_CHUNK", 2, raising=False)
    encoded, kill_after = _watched_forward(monkeypatch)
    argv = ["embed", "--model", model, "--items", str(items), "--device", "cpu", "--batch-size", "2"]
    return images, items, encoded, kill_after, argv


def test_a_killed_embed_run_resumes_from_its_finished_chunks_and_writes_the_uninterrupted_output(
        tiny_world_dir, tiny_model_dir, tmp_path, monkeypatch, caplog):
    """QA: `unime embed` killed mid-way and run again encoded every item again (a million-item corpus: hours of GPU
    time). Its chunks (here of 4 items, batches of 2) are kept beside the output until it is written: the re-run
    encodes only the items of the chunks not finished, and writes the array an uninterrupted run writes."""
    import logging

    import pytest

    from unime.models import embed_file

    world = tiny_world_dir(0)
    lines = (world / "items.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(embed_file, "ITEMS_PER_CHUNK", 4, raising=False)
    encoded, kill_after = _watched_forward(monkeypatch)
    argv = ["embed", "--model", tiny_model_dir("qwen2_vl"), "--items", str(items), "--data-root", str(world),
            "--device", "cpu", "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole.npy")]) == 0
    assert sum(encoded) == 10
    out = tmp_path / "vecs.npy"
    encoded.clear()
    kill_after[0] = 4  # killed as the third chunk starts: two chunks (8 items) done
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    assert not out.exists() and sum(encoded) == 8
    encoded.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main([*argv, "--out", str(out)]) == 0
    assert sum(encoded) == 2  # the last chunk's items only
    assert f"{out}: resuming: 2 of 3 chunks done before" in caplog.text
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "whole.npy"))
    # the chunks gone with the array written; the record of the finished run (and its image digests) stays
    assert sorted(p.name for p in (tmp_path / ".vecs.npy.unime-work").iterdir()) == ["image_digests.tsv",
                                                                                   "unime-work.json"]

    encoded.clear()  # another model setting (the dtype): the chunks of a killed run are not reused
    kill_after[0] = 3
    with pytest.raises(Killed):
        main([*argv, "--out", str(out), "--overwrite"])
    encoded.clear()
    kill_after[0] = None
    assert main([*argv, "--out", str(out), "--dtype", "bf16", "--overwrite"]) == 0 and sum(encoded) == 10


def test_a_resumed_embed_run_reads_no_image_again_for_its_key_and_a_changed_image_still_changes_it(
        tiny_model_dir, tmp_path, monkeypatch, caplog, image_sha1_reads):
    """QA: `unime embed` hashed every image of the items at every run for its chunks' key, so the re-run of a killed
    run over a million images read them all again just to find the key unchanged. Their digests (by path, size and
    mtime) are kept in the work folder with the chunks and go with them: the re-run reads none and writes the
    uninterrupted array; an image whose bytes changed is read and changes the key (the chunks are not reused)."""
    images, _, encoded, kill_after, argv = _six_items(tmp_path, monkeypatch, tiny_model_dir("qwen2_vl"), 3)
    rng = np.random.default_rng(1)
    assert main([*argv, "--out", str(tmp_path / "whole.npy")]) == 0
    assert len(image_sha1_reads) == 3 and sum(encoded) == 6

    def run(out, *args):
        assert main([*argv, "--out", str(out), *args]) == 0

    check_a_resumed_run_reads_no_image_again(run, out=tmp_path / "vecs.npy", whole=tmp_path / "whole.npy",
                                             images=images, calls=encoded, kill_after=kill_after,
                                             reads=image_sha1_reads, caplog=caplog, rng=rng,
                                             kept=("image_digests.tsv", "unime-work.json"))
    assert not np.array_equal(np.load(tmp_path / "vecs.npy"), np.load(tmp_path / "whole.npy"))  # the changed image


def test_a_resumed_embed_run_opens_only_the_images_of_the_items_left_to_encode(
        tiny_model_dir, tmp_path, monkeypatch, image_opens):
    """QA: the re-run of a killed `unime embed` opened every image of the items file again in its check before the
    model loads, those of the chunks already encoded too (a million-image corpus: the slow part of a resume). Now it
    opens only the images of the items left to encode (6 items of one image each in chunks of 2, killed after 2
    chunks: images 4 and 5), and writes the array an uninterrupted run writes."""
    import pytest

    images, _, encoded, kill_after, argv = _six_items(tmp_path, monkeypatch, tiny_model_dir("qwen2_vl"), 6)
    assert main([*argv, "--out", str(tmp_path / "whole.npy")]) == 0
    assert sorted(set(image_opens)) == sorted(map(str, images))
    out = tmp_path / "vecs.npy"
    encoded.clear()
    kill_after[0] = 2
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    encoded.clear()
    image_opens.clear()
    kill_after[0] = None
    assert main([*argv, "--out", str(out)]) == 0
    assert sum(encoded) == 2
    assert sorted(set(image_opens)) == [str(images[4]), str(images[5])]
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "whole.npy"))


def test_a_resume_whose_chunks_are_discarded_checks_their_images_before_encoding(
        tiny_model_dir, tmp_path, monkeypatch, image_opens):
    """The first run's check is not weakened by a resume: when the finished chunks are not reused after all (here an
    image of the second chunk changed: the key changed), their items' images are opened before any item is encoded:
    a corrupt one stops the run naming its line, before the model encodes anything; under --on-error skip it is left
    out and the rest encoded, as an uninterrupted run does."""
    import pytest

    from unime.errors import DataError
    from unime.models import embed_file

    images, items, encoded, kill_after, argv = _six_items(tmp_path, monkeypatch, tiny_model_dir("qwen2_vl"), 6)
    kill_after[0] = 2
    with pytest.raises(Killed):
        main([*argv, "--out", str(tmp_path / "vecs.npy")])
    images[3].write_bytes(b"not a png")  # in the second chunk, encoded
    encoded.clear()
    kill_after[0] = None
    cfg = embed_file.EmbedConfig(model=tiny_model_dir("qwen2_vl"), items=str(items), out=str(tmp_path / "vecs.npy"),
                                 device="cpu", batch_size=2)
    with pytest.raises(DataError) as err:
        embed_file.encode_items_file(cfg)
    assert "line 4" in str(err.value) and "img/3.png" in str(err.value) and encoded == []
    image_opens.clear()
    path, rows, _, skips = embed_file.encode_items_file(embed_file.EmbedConfig(
        model=tiny_model_dir("qwen2_vl"), items=str(items), out=str(tmp_path / "vecs.npy"), device="cpu", batch_size=2,
        on_error="skip"))
    assert rows == 5 and skips.total == 1 and sum(encoded) == 5
    assert json.loads((tmp_path / "vecs.npy.lines.json").read_text())["lines"] == [1, 2, 3, 5, 6]


def test_an_item_repeated_in_a_later_chunk_is_encoded_once(tiny_model_dir, tmp_path, monkeypatch):
    """An item that appears again in a later chunk (same text and images) was encoded again there (the embedder
    encodes a repeat once within a call only). Now its vector is the first occurrence's, read from that chunk: 6 lines,
    the last 3 repeating the first 3, in chunks of 2, encode 3 items; the rows stay in line order, a repeat's row equal
    to its first occurrence's, and a resumed run writes the same array."""
    import pytest

    from unime.models import embed_file
    from unime.models.embedder import Embedder

    write_pngs(tmp_path, 3, np.random.default_rng(0))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{i}", "text": f"item {i % 3}", "images": [f"img/{i % 3}.png"]})
                             + "\n" for i in range(6)), encoding="utf-8")
    monkeypatch.setattr(embed_file, "ITEMS_PER_CHUNK", 2, raising=False)
    encoded, kill_after = _watched_forward(monkeypatch)
    model = tiny_model_dir("qwen2_vl")
    argv = ["embed", "--model", model, "--items", str(items), "--device", "cpu", "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole.npy")]) == 0
    assert sum(encoded) == 3
    whole = np.load(tmp_path / "whole.npy")
    np.testing.assert_array_equal(whole[3:], whole[:3])
    emb = Embedder.from_pretrained(model, device="cpu", data_root=str(tmp_path), batch_size=2)
    alone = np.stack([emb.encode([Item(text=f"item {i}", images=[f"img/{i}.png"])])[0] for i in range(3)])
    np.testing.assert_allclose(whole[:3], alone, atol=1e-5)
    encoded.clear()
    kill_after[0] = 1  # the first chunk (items 0, 1) done
    with pytest.raises(Killed):
        main([*argv, "--out", str(tmp_path / "vecs.npy")])
    encoded.clear()
    kill_after[0] = None
    assert main([*argv, "--out", str(tmp_path / "vecs.npy")]) == 0
    assert sum(encoded) == 1  # item 2; items 3 to 5 repeat items 0 to 2
    np.testing.assert_array_equal(np.load(tmp_path / "vecs.npy"), whole)


def test_a_finished_embed_run_rerun_with_the_same_options_does_nothing(tiny_model_dir, tmp_path, monkeypatch, caplog,
                                                                      image_sha1_reads, image_opens):
    """QA: a finished `unime embed` run again (same options, same inputs) encoded every item again; README's resume
    rule says a finished run says so and does nothing. It does now, before the model loads, opening and reading no
    image; --overwrite, another option, an image changed, the array removed or changed since encode again."""
    import logging

    from unime.models import embed_file
    from unime.models.embedder import Embedder

    images, items, encoded, _, argv = _six_items(tmp_path, monkeypatch, tiny_model_dir("qwen2_vl"), 3)
    out = tmp_path / "vecs.npy"
    argv = [*argv, "--out", str(out)]
    assert main(argv) == 0 and sum(encoded) == 6
    written = out.read_bytes()
    loads, real_load = [], Embedder.from_pretrained
    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(
        *a, **k)))
    encoded.clear()
    image_sha1_reads.clear()
    image_opens.clear()
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main(argv) == 0
    assert encoded == [] and loads == [] and image_sha1_reads == [] and image_opens == []
    assert out.read_bytes() == written
    assert f"{out}: this embed run finished earlier (same options and inputs); nothing to do (--overwrite encodes " \
           "again)" in caplog.text
    assert main([*argv, "--overwrite"]) == 0 and sum(encoded) == 6 and len(loads) == 1  # asked to encode again
    encoded.clear()
    assert main([*argv, "--dtype", "bf16"]) == 0 and sum(encoded) == 6  # another option: other vectors
    encoded.clear()
    assert main([*argv, "--dtype", "bf16"]) == 0 and encoded == []  # that run finished too
    paint(images[1], np.random.default_rng(2))  # an image given other pixels: encoded again
    assert main([*argv, "--dtype", "bf16"]) == 0 and sum(encoded) == 6
    encoded.clear()
    out.unlink()  # the array removed: encoded again
    assert main([*argv, "--dtype", "bf16"]) == 0 and sum(encoded) == 6
    encoded.clear()
    np.save(out, np.zeros((6, 4), dtype=np.float32))  # the array changed since (the command refuses it: from Python)
    cfg = embed_file.EmbedConfig(model=tiny_model_dir("qwen2_vl"), items=str(items), out=str(out), device="cpu",
                                 batch_size=2, dtype="bf16")
    assert embed_file.encode_items_file(cfg)[1:3] == (6, int(np.load(out).shape[1])) and sum(encoded) == 6
    encoded.clear()
    assert embed_file.encode_items_file(cfg)[1] == 6 and encoded == []  # finished again: nothing to do


def test_a_model_returning_nan_is_one_error_line_naming_it_and_the_first_item_and_writes_nothing(
        tiny_model_dir, tmp_path, capsys):
    """QA: `unime embed --model M`, M's weights NaN, wrote an all-NaN array (489 x 64) without a word. It is the
    error line of the embedder's check (`Embedder.encode`: `refuse_non_finite`): the model, how many items, the first
    by its line and id in the items file; exit 2, no output. The same items with the model's own weights are encoded
    as before."""
    from tests.models.helpers import with_nan_weights

    items, out = tmp_path / "items.jsonl", tmp_path / "x.npy"
    items.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(["a red circle", "a cat"])),
                     encoding="utf-8")
    assert main(["embed", "--model", tiny_model_dir("qwen2_vl"), "--items", str(items), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert np.isfinite(np.load(out)).all() and np.load(out).shape[0] == 2
    out.unlink()
    model = with_nan_weights(tiny_model_dir("qwen2_vl"), tmp_path / "nan")
    capsys.readouterr()
    assert main(["embed", "--model", str(model), "--items", str(items), "--out", str(out), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"unime: error: embedder '{model}' returned NaN or inf for 2 of 2 inputs (the first: {items}, record line 1 "
        "(id 0): item 'a red circle'); its weights may hold NaN or inf")
    assert not out.exists()


def test_a_text_over_the_models_context_is_refused_naming_its_line_id_and_tokens_or_skipped_and_counted(
        tiny_model_dir, tmp_path, capsys):
    """QA: `unime embed` encoded a text of 5,000 tokens with a model built for 4,096 (its max_position_embeddings)
    without a word: the model reads it whole, on positions it was never trained on. It is refused as `unime serve`
    refuses it (the same limit and token count, `unime.models.context`): one error line naming the file, the line,
    the id, the tokens and the limit, no output; under --on-error skip it is left out and counted (too_long)."""
    from transformers import AutoTokenizer

    from tests.models.helpers import with_context

    model = with_context(tiny_model_dir("qwen2_vl"), tmp_path / "m", 24)
    long = " ".join(["red circle"] * 20)
    tokens = len(AutoTokenizer.from_pretrained(model)(long, add_special_tokens=False)["input_ids"])
    assert tokens > 24
    items, out = tmp_path / "items.jsonl", tmp_path / "x.npy"
    items.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                             for i, t in [("a", "a red circle"), ("big", long), ("c", "a cat")]), encoding="utf-8")
    argv = ["embed", "--model", str(model), "--items", str(items), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"unime: error: {items}, record line 2 (id big), field 'item.text': text of {tokens} tokens is over the limit "
        "of 24 (the model's max_position_embeddings, the longest text it is built for)")
    assert not out.exists()
    assert main([*argv, "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 2 x " in printed and "skipped 1 record(s) (too_long: 1)" in printed and "(id big)" in printed
    assert json.loads((tmp_path / "x.npy.lines.json").read_text())["lines"] == [1, 3]
    from unime.models.embedder import Embedder

    expected = Embedder.from_pretrained(str(model), device="cpu").encode(["a red circle", "a cat"])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_the_encode_bar_moves_with_each_batch_not_only_at_the_end_of_a_chunk(tiny_model_dir, tmp_path, monkeypatch):
    """QA: `unime embed` of 200 video clips showed "encode: 0/200" until every one was encoded (the bar moved once per
    chunk of 2,048 items): it looked hung. The bar now counts the items of each batch as it is encoded (5 items in
    batches of 2: 0, 2, 4 before the three forwards, 5 at the end), a repeated item (the last line repeats the
    first) with its chunk."""
    import tqdm.auto

    from unime.models.embedder import Embedder

    bars, seen = [], []
    real_bar, forward = tqdm.auto.tqdm, Embedder.forward

    class Bar(real_bar):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)

    def watched(self, inputs, **kw):
        seen.append([b.n for b in bars if b.desc == "encode"])
        return forward(self, inputs, **kw)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(Embedder, "forward", watched)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{i}", "text": f"item {i % 5 if i < 5 else 0}"}) + "\n"
                             for i in range(6)), encoding="utf-8")
    assert main(["embed", "--model", tiny_model_dir("qwen2_vl"), "--items", str(items), "--device", "cpu",
                 "--batch-size", "2", "--out", str(tmp_path / "x.npy")]) == 0
    assert seen == [[0], [2], [4]]
    assert [b.n for b in bars if b.desc == "encode"] == [6]


def test_embed_says_once_that_a_model_not_on_disk_keys_its_record_by_its_name(tiny_model_dir, tmp_path, monkeypatch,
                                                                              caplog):
    """QA: `unime embed --model <hub id>` logged `model_fingerprint`'s warning (the model keyed by its name only)
    twice: for its finished run's key, before the model loads, and again for its chunks' key. Once now, with the
    keys of before (`model_fingerprinter` gives what `model_fingerprint` gives: a run resumed across the change keeps
    its chunks). (The tiny model is taken as not on disk: `_local_model_dir` answers None, as for a hub id.)"""
    import logging

    from unime.models import embedding_cache

    model = tiny_model_dir()
    monkeypatch.setattr(embedding_cache, "_local_model_dir", lambda path: None)
    (tmp_path / "items.jsonl").write_text(json.dumps({"text": "a red square"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="unime.models.embedding_cache"):
        assert main(["embed", "--model", model, "--items", str(tmp_path / "items.jsonl"), "--out",
                     str(tmp_path / "e.npy"), "--device", "cpu"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "unime.models.embedding_cache"] == [
        f"model {model} is not a local folder; unime embed's record of its finished run and chunks is keyed by its "
        "name only"]
    from unime.models.embedding_cache import model_fingerprint, model_fingerprinter

    fingerprint = model_fingerprinter(model, keyed="x")
    for settings in (None, {"dtype": "fp32"}):
        assert fingerprint(settings) == model_fingerprint(model, settings)
    monkeypatch.undo()  # on disk: keyed by its files, as before
    assert model_fingerprinter(model, keyed="x")({"a": 1}) == model_fingerprint(model, {"a": 1}) != \
        model_fingerprint("elsewhere", {"a": 1})
