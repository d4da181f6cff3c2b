"""`unime.models.embedding_cache.RunEncoder`: several processes encoding shares of the same items into one cache."""

from __future__ import annotations

import numpy as np
import pytest

from unime.data.items import Item
from unime.models.embedding_cache import RunEncoder


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


def _items():
    texts = [f"{c}{'x' * k}" for k, c in enumerate("abcdefghijk")]
    return [Item(t) for t in texts + texts[:3]]  # repeated items are encoded once


def test_shares_fill_the_cache_with_the_vectors_one_process_computes(tmp_path):
    items = _items()
    alone = BatchDependentEmbedder()
    one = RunEncoder(alone, "m", cache_dir=tmp_path / "alone", flush_every=3)
    rows = one.add(items, None)
    one.encode_pending()
    expected = one.vectors(rows)
    assert [len(b) for b in alone.batches] == [3, 3, 3, 2]  # 11 distinct items in blocks of 3

    # two processes: both open the cache before either saves; process i encodes blocks i, i + 2, ...
    models = [BatchDependentEmbedder(), BatchDependentEmbedder()]
    shares = [RunEncoder(m, "m", cache_dir=tmp_path / "shared", flush_every=3) for m in models]
    share_rows = [enc.add(items, None) for enc in shares]
    assert [enc.missing() for enc in shares] == [11, 11]
    for i, enc in enumerate(shares):
        enc.encode_pending(share=(i, 2))
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
    reader = RunEncoder(reader_model, "m", cache_dir=tmp_path / "shared", flush_every=3)
    rows = reader.add(items, None)
    reader.encode_pending()
    assert reader_model.batches == [] and reader.stats.from_cache == 11
    np.testing.assert_array_equal(reader.vectors(rows), expected)  # bit for bit


def test_a_share_needs_the_cache_it_is_read_from():
    enc = RunEncoder(BatchDependentEmbedder(), "m")
    enc.add(_items(), None)
    with pytest.raises(ValueError, match="needs the on-disk cache"):
        enc.encode_pending(share=(0, 2))
