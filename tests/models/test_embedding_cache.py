"""`unime.models.embedding_cache.RunEncoder`: several processes encoding shares of the same items into one cache."""

from __future__ import annotations

import numpy as np
import pytest

from unime.data.items import Item
from unime.models.embedding_cache import EmbeddingStore, RunEncoder


class BatchDependentEmbedder:
    """A vector that depends on the batch the item is encoded in (its text's code plus the batch's mean code), as
    padding makes a real model's last bits depend on it; records each batch."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def encode(self, items, batch_size=None, show_progress=False):
        texts = [it.text for it in items]
        self.batches.append(texts)
        codes = np.array([[float(ord(t[0])), float(len(t)), float(sum(map(ord, t)) % 7)] for t in texts])
        return codes + codes.mean(axis=0, keepdims=True) / 3.0


class PlannedEmbedder(BatchDependentEmbedder):
    """Runs its items in planned batches (`batch_plan`, as `Embedder` does: distinct items by descending text
    length, cut every 2), each batch's vectors depending on the batch."""

    def batch_plan(self, items, batch_size=None):
        order = sorted(range(len(items)), key=lambda i: -len(items[i].text))
        return [order[s:s + (batch_size or 2)] for s in range(0, len(order), batch_size or 2)]

    def encode(self, items, batch_size=None, show_progress=False):
        out = np.zeros((len(items), 3))
        for batch in self.batch_plan(items, batch_size):
            out[batch] = super().encode([items[i] for i in batch])
        return out


def _items():
    texts = [f"{c}{'x' * k}" for k, c in enumerate("abcdefghijk")]
    return [Item(t) for t in texts + texts[:3]]  # repeated items are encoded once


def _encoded(model, folder, flush_every, share=None):
    """(encoder, rows) of `_items()` encoded by `model` into the cache `folder`; `share`: (encoders, rows) of two
    processes, both cache folders opened before either saves its share."""
    if share is None:
        enc = RunEncoder(model, "m", cache_dir=folder, flush_every=flush_every)
        rows = enc.add(_items(), None)
        enc.encode_pending()
        return enc, rows
    encoders = [RunEncoder(m, "m", cache_dir=folder, flush_every=flush_every) for m in model]
    rows = [enc.add(_items(), None) for enc in encoders]
    assert [enc.missing() for enc in encoders] == [11, 11]
    for i, enc in enumerate(encoders):
        enc.encode_pending(share=(i, 2))
    return encoders, rows


def test_shares_fill_the_cache_with_the_vectors_one_process_computes(tmp_path):
    alone = BatchDependentEmbedder()
    one, rows = _encoded(alone, tmp_path / "alone", 3)
    expected = one.vectors(rows)
    assert [len(b) for b in alone.batches] == [3, 3, 3, 2]  # 11 distinct items in blocks of 3

    # two processes; without a batch plan, process i encodes blocks i, i + 2, ...
    models = [BatchDependentEmbedder(), BatchDependentEmbedder()]
    shares, share_rows = _encoded(models, tmp_path / "shared", 3, share=True)
    assert models[0].batches == [alone.batches[0], alone.batches[2]]
    assert models[1].batches == [alone.batches[1], alone.batches[3]]
    assert [enc.stats.encoded for enc in shares] == [6, 5]
    with pytest.raises(RuntimeError, match="encode_pending"):  # the rows stay pending after a share
        shares[0].vectors(share_rows[0])
    assert shares[0].missing() == 5  # process 1's share is not read yet
    shares[0].store.refresh()
    assert shares[0].missing() == 0
    shares[0].encode_pending()
    assert len(models[0].batches) == 2  # nothing encoded again
    np.testing.assert_array_equal(shares[0].vectors(share_rows[0]), expected)  # bit for bit

    reader_model = BatchDependentEmbedder()
    reader, rows = _encoded(reader_model, tmp_path / "shared", 3)
    assert reader_model.batches == [] and reader.stats.from_cache == 11
    np.testing.assert_array_equal(reader.vectors(rows), expected)  # bit for bit


def test_a_share_needs_the_cache_it_is_read_from():
    enc = RunEncoder(BatchDependentEmbedder(), "m")
    enc.add(_items(), None)
    with pytest.raises(ValueError, match="needs the on-disk cache"):
        enc.encode_pending(share=(0, 2))


def test_shares_of_a_planning_embedder_are_its_batches(tmp_path):
    alone = PlannedEmbedder()
    one, rows = _encoded(alone, tmp_path / "alone", 5)
    expected = one.vectors(rows)
    assert [len(b) for b in alone.batches] == [2, 2, 1, 2, 2, 1, 1]  # blocks of 5, 5, 1; batches of 2 in each

    models = [PlannedEmbedder(), PlannedEmbedder()]
    _encoded(models, tmp_path / "shared", 5, share=True)
    assert models[0].batches == alone.batches[0::2] and models[1].batches == alone.batches[1::2]
    assert len(list((tmp_path / "shared" / "m").glob("shard-*.keys"))) == 5  # one per block and process with work
    reader, rows = _encoded(PlannedEmbedder(), tmp_path / "shared", 5)
    assert reader.stats.from_cache == 11
    np.testing.assert_array_equal(reader.vectors(rows), expected)  # bit for bit


def test_the_item_keys_use_the_callers_image_digests(tmp_path):
    from PIL import Image

    from unime.data.image_digests import ImageDigests
    from unime.errors import DataError

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    item = Item("what colour?", ("a.png",))
    digests = ImageDigests()
    digests.digest(tmp_path / "a.png")  # as `unime mine` digests its inputs first
    shared = RunEncoder(BatchDependentEmbedder(), "m", digests=digests)
    own = RunEncoder(BatchDependentEmbedder(), "m")
    assert shared.content_key(item, tmp_path) == own.content_key(item, tmp_path)
    assert digests.hashed == 1 and own.digests.hashed == 1  # the file read once for each set of digests, not again
    with pytest.raises(DataError, match=r"records.jsonl, field 'images\[0\]': image file not found: 'b.png'"):
        shared.add([Item("x", ("b.png",))], tmp_path, source="records.jsonl")


def test_the_settings_record_the_dtype_the_embedder_computes_in():
    import torch

    from unime.models.embedding_cache import embedding_settings

    class Fake:
        pooling, instruction_suffix, device, model = "last", "", "cpu", None

    fake = Fake()
    assert {embedding_settings(fake, d)["dtype"] for d in (None, "auto", "fp32", "float32", torch.float32)} == {"fp32"}
    assert embedding_settings(fake, "bf16")["dtype"] == "bf16"
    fake.model = type("Model", (), {"dtype": torch.bfloat16})()   # a loaded model: its own dtype
    assert embedding_settings(fake, None)["dtype"] == "bf16"


class InterruptedEmbedder(PlannedEmbedder):
    """Killed (Ctrl-C) when asked for its `stop_at`-th batch."""

    def __init__(self, stop_at):
        super().__init__()
        self.stop_at = stop_at

    def encode(self, items, batch_size=None, show_progress=False):
        if len(self.batches) + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().encode(items, batch_size, show_progress)


def test_an_interrupted_encoding_keeps_the_batches_it_finished(tmp_path):
    # QA: an eval killed at 58 of its 92 batches had saved nothing (the cache was written every 2048 items)
    whole, rows = _encoded(PlannedEmbedder(), tmp_path / "whole", 2048)
    expected = whole.vectors(rows)

    killed = RunEncoder(InterruptedEmbedder(stop_at=4), "m", cache_dir=tmp_path / "c", flush_seconds=0.0)
    killed.add(_items(), None)
    with pytest.raises(KeyboardInterrupt):
        killed.encode_pending()
    # 3 batches of 2 finished, each saved: 6 distinct items (9 of the 14 references) are in the cache
    assert killed.stats.encoded == 6 and len(list((tmp_path / "c" / "m").glob("shard-*.keys"))) == 3

    rerun_model = PlannedEmbedder()
    rerun, rows = _encoded(rerun_model, tmp_path / "c", 2048)
    assert rerun.stats.from_cache == 6 and rerun.stats.encoded == 5
    assert [len(b) for b in rerun_model.batches] == [2, 2, 1]
    np.testing.assert_array_equal(rerun.vectors(rows), expected)  # bit for bit: each batch as in the whole run


def test_flushes_come_every_flush_seconds_not_every_batch(tmp_path):
    enc = RunEncoder(PlannedEmbedder(), "m", cache_dir=tmp_path, flush_seconds=3600.0)
    enc.add(_items(), None)
    enc.encode_pending()
    assert enc.stats.encoded == 11 and len(list((tmp_path / "m").glob("shard-*.keys"))) == 1


def test_a_hub_adapter_is_keyed_by_its_files_as_its_local_folder_is(tmp_path, monkeypatch):
    """QA: a hub adapter whose repo also holds files beside the adapter (here a merged/ model the cache lacks) was
    keyed by its name only — huggingface_hub refuses the whole repo's cached snapshot as incomplete —, so an adapter
    changed under the same id was served the old adapter's embeddings. Now the key is its files', resolved as loading
    resolves it (`adapter_folder`): equal to its local folder's, and another when its weights change."""
    import json
    import shutil

    from tests.models.helpers import in_a_hub_cache
    from unime.models.embedding_cache import model_fingerprint

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "qwen2_vl"}')
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2,
                                                             "base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\1" * 64)
    in_a_hub_cache(adapter, tmp_path / "hub", "someone/an-adapter", monkeypatch,
                   not_fetched={"merged/model.safetensors": 5 * 10 ** 9})
    settings = {"pooling": "last"}
    first = model_fingerprint("someone/an-adapter", settings)
    assert first == model_fingerprint(adapter, settings)
    snapshot = tmp_path / "hub" / "models--someone--an-adapter" / "snapshots" / ("1" * 40)
    (snapshot / "adapter_model.safetensors").write_bytes(b"\2" * 64)  # the adapter changed under the same id
    shutil.copy(snapshot / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    assert model_fingerprint("someone/an-adapter", settings) == model_fingerprint(adapter, settings) != first


def _hand_key(files: dict[str, bytes], settings: dict, extra: str = "") -> str:
    """The key of a folder holding small `files` (content-hashed), computed by hand as the module doc describes."""
    import hashlib
    import json

    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0content\0{hashlib.sha1(files[name]).hexdigest()}\n".encode())
    h.update(extra.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


def test_a_run_folder_is_keyed_by_the_weights_loading_reads(tmp_path):
    """QA: a training run folder given as --model (RUN/merged/, RUN/adapter/, README.md, train_config.json) was
    keyed by its top-level files only, not the weights in the merged/ (or adapter/) folder loading reads: RUN's
    weights replaced (a resumed run, a new merged/) under the same top-level files were served the old vectors.
    Now it is keyed as that folder is; a plain model folder's and an adapter folder's keys are unchanged."""
    import hashlib
    import json

    from unime.models.embedding_cache import model_fingerprint

    settings = {"pooling": "last"}
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "adapter").mkdir()
    (run / "README.md").write_text("# a run\n")
    (run / "train_config.json").write_text("{}")
    merged = {"config.json": b'{"model_type": "qwen2_vl"}', "model.safetensors": b"\1" * 64}
    for name, data in merged.items():
        (run / "merged" / name).write_bytes(data)
    first = model_fingerprint(run, settings)
    assert first == model_fingerprint(run / "merged", settings) == _hand_key(merged, settings)
    (run / "merged" / "model.safetensors").write_bytes(b"\2" * 64)  # new weights, same top-level files
    assert model_fingerprint(run, settings) == _hand_key({**merged, "model.safetensors": b"\2" * 64}, settings)
    assert model_fingerprint(run, settings) != first

    # a run folder holding only its adapter/: keyed as that adapter folder (with its base), here hand-computed
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_bytes(merged["config.json"])
    adapter = {"adapter_config.json": json.dumps({"r": 2, "base_model_name_or_path": str(base)}).encode(),
               "adapter_model.safetensors": b"\3" * 64}
    lora_run = tmp_path / "lora_run"
    (lora_run / "adapter").mkdir(parents=True)
    (lora_run / "README.md").write_text("# a run\n")
    for name, data in adapter.items():
        (lora_run / "adapter" / name).write_bytes(data)
    base_part = f"base\0{base}\nconfig.json\0content\0{hashlib.sha1(merged['config.json']).hexdigest()}\n"
    expected = _hand_key(adapter, settings, base_part)
    assert model_fingerprint(lora_run / "adapter", settings) == expected  # an adapter folder's key, as before
    assert model_fingerprint(lora_run, settings) == expected
    (lora_run / "adapter" / "adapter_model.safetensors").write_bytes(b"\4" * 64)
    assert model_fingerprint(lora_run, settings) != expected

    # a plain model folder's key is its own files', as before
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, data in merged.items():
        (plain / name).write_bytes(data)
    assert model_fingerprint(plain, settings) == _hand_key(merged, settings)


def test_a_video_read_as_a_file_its_name_does_not_announce_has_a_key_of_its_own(tmp_path):
    """An animated GIF as an item's one video entry was read as its first frame twice before it was read as the GIF's
    frames (`unime.data.video.is_one_video_file`), under the same content key: the cache would have served the old
    vectors. Such an item's key is marked; an mp4 (named as a video) and a still image keep the key they had, the
    payload computed here independently."""
    import hashlib
    import json

    from PIL import Image

    from tests.data.helpers import animated_gif

    gif = animated_gif(tmp_path / "clips" / "anim.gif")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "clips" / "still.png")
    (tmp_path / "clips" / "clip.mp4").write_bytes(b"an mp4 by its name; its content is not opened for the key")
    enc = RunEncoder(BatchDependentEmbedder(), "m")

    def key(name: str, **extra) -> str:
        digest = hashlib.sha1((tmp_path / "clips" / name).read_bytes()).hexdigest()
        payload = {"t": "", "i": [], "v": [f"sha1:{digest}"], **extra}
        return hashlib.sha1(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    assert gif.is_file()
    for form in (["clips/anim.gif"], "clips/anim.gif"):  # the one-entry list and the path alone: one reading now
        assert enc.content_key(Item.from_dict({"video": form}), tmp_path) == key("anim.gif", video_file=1)
    assert enc.content_key(Item.from_dict({"video": ["clips/clip.mp4"]}), tmp_path) == key("clip.mp4")
    assert enc.content_key(Item.from_dict({"video": ["clips/still.png"]}), tmp_path) == key("still.png")


def test_an_item_whose_media_is_read_otherwise_now_has_a_key_of_its_own(tmp_path):
    """An APNG or animated WebP as an item's one video entry was read as its first frame twice, the inline bytes of an
    AVIF image as a video file (its ``ftyp`` box), an animated AVIF as its still image: all are read otherwise now,
    under keys of their own (marked ``video_file``, ``still_image``, ``avif_frames``), so that vectors cached then are
    not served. Items read as before keep their
    keys: an mp4, an animated GIF (marked already), a still PNG, an AVIF file by its path (one frame before too), an
    AVIF image as an item's image, inline mp4 bytes. The payloads are computed here independently."""
    import hashlib
    import json

    from PIL import Image, features

    from tests.data.helpers import animated_gif

    clips = tmp_path / "clips"
    for name, fmt in (("anim.gif", None), ("anim.png", "PNG"), ("anim.webp", "WEBP"), ("anim.bin", "PNG")):
        animated_gif(clips / name, fmt=fmt)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(clips / "still.png")
    (clips / "clip.mp4").write_bytes(b"\0\0\0\x18ftypisom\0\0\0\0isommp41 an mp4's first bytes")
    enc = RunEncoder(BatchDependentEmbedder(), "m")

    def key(data: bytes, field: str = "v", **extra) -> str:
        payload = {"t": "", "i": [], "v": [], **extra}
        payload[field] = [f"sha1:{hashlib.sha1(data).hexdigest()}"]
        return hashlib.sha1(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    def file_key(name: str, **extra) -> str:
        return key((clips / name).read_bytes(), **extra)

    for name in ("anim.png", "anim.webp", "anim.bin"):
        for form in ([f"clips/{name}"], f"clips/{name}"):
            assert enc.content_key(Item.from_dict({"video": form}), tmp_path) == file_key(name, video_file=1), name
        data = (clips / name).read_bytes()
        assert enc.content_key(Item(video=(data,)), tmp_path) == key(data, video_file=1), name
    assert enc.content_key(Item.from_dict({"video": ["clips/anim.gif"]}), tmp_path) == file_key("anim.gif",
                                                                                               video_file=1)
    assert enc.content_key(Item.from_dict({"video": ["clips/clip.mp4"]}), tmp_path) == file_key("clip.mp4")
    assert enc.content_key(Item.from_dict({"video": ["clips/still.png"]}), tmp_path) == file_key("still.png")
    mp4 = (clips / "clip.mp4").read_bytes()
    assert enc.content_key(Item(video=(mp4,)), tmp_path) == key(mp4)
    if not features.check("avif"):
        return
    Image.new("RGB", (8, 8), (200, 10, 10)).save(clips / "still.avif")
    avif = (clips / "still.avif").read_bytes()
    assert enc.content_key(Item(video=(avif,)), tmp_path) == key(avif, still_image=1)
    assert enc.content_key(Item.from_dict({"video": ["clips/still.avif"]}), tmp_path) == file_key("still.avif")
    assert enc.content_key(Item(images=(avif,)), tmp_path) == key(avif, "i")
    # an animated AVIF read as a video: PIL's frames, where FFmpeg gave its still image alone (in a list: its first
    # frame, marked as a video file its name does not announce too)
    animated_gif(clips / "anim.avif", fmt="AVIF")
    (clips / "anim.mp4").write_bytes((clips / "anim.avif").read_bytes())
    animated = (clips / "anim.avif").read_bytes()
    for form in (["clips/anim.avif"], "clips/anim.avif"):
        assert enc.content_key(Item.from_dict({"video": form}), tmp_path) == file_key("anim.avif", video_file=1,
                                                                                      avif_frames=1)
    for form in (["clips/anim.mp4"], "clips/anim.mp4"):
        assert enc.content_key(Item.from_dict({"video": form}), tmp_path) == file_key("anim.mp4", avif_frames=1)
    assert enc.content_key(Item(video=(animated,)), tmp_path) == key(animated, avif_frames=1)
    assert enc.content_key(Item(images=(animated,)), tmp_path) == key(animated, "i")  # an image: its first frame


class NaNForB(BatchDependentEmbedder):
    """Returns NaN for the items whose text starts with "b" and inf for those starting with "c"."""

    name = "nan-model"

    def encode(self, items, batch_size=None, show_progress=False):
        out = super().encode(items)
        out[[it.text.startswith("b") for it in items]] = np.nan
        out[[it.text.startswith("c") for it in items], 1] = np.inf
        return out


def test_an_embedder_returning_nan_is_a_model_error_naming_it_and_nothing_is_cached(tmp_path):
    """QA: `unime index build` with a NaN model wrote an index of NaN without a word, and `unime eval` ended in the
    metrics' traceback ('scores contain NaN or infinity'). The run encoder (their one path, `unime mine`'s too)
    refuses a vector holding NaN or inf naming the model, how many of the batch and the first, before it is cached;
    an embedder with no name is named by its model id."""
    from unime.errors import ModelError

    enc = RunEncoder(NaNForB(), "m", cache_dir=tmp_path)
    enc.add([Item("ax"), Item("bxx"), Item("cx"), Item("dx")], None)
    with pytest.raises(ModelError, match=r"^embedder 'nan-model' returned NaN or inf for 2 of 4 inputs \(the first: "
                                         r"item 'bxx'\); its weights may hold NaN or inf$"):
        enc.encode_pending()
    assert len(EmbeddingStore(tmp_path / "m")) == 0
    unnamed = RunEncoder(BatchDependentEmbedder(), "unnamed-id")
    unnamed.embedder.encode = lambda items, **kw: np.full((len(items), 3), np.inf)
    unnamed.add([Item("ax")], None)
    with pytest.raises(ModelError, match=r"^embedder 'unnamed-id' returned NaN or inf for 1 of 1 inputs"):
        unnamed.encode_pending()
    ok = RunEncoder(BatchDependentEmbedder(), "m2", cache_dir=tmp_path)
    rows = ok.add([Item("ax"), Item("bxx")], None)
    ok.encode_pending()
    assert np.isfinite(ok.vectors(np.asarray(rows))).all()
