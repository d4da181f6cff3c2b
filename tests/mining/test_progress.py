"""Mining's INFO progress lines (`unime.mining.progress`): the retrieval's encoding and search say how far they are
without --progress, from the first process only."""

from __future__ import annotations

import logging
import re

import numpy as np

from unime.data.items import Item
from unime.index.ann import build_index
from unime.mining import progress as progress_mod
from unime.mining.progress import ProgressLog
from unime.mining.ranks import Ranks
from unime.mining.retrieval import search_hard_negatives
from unime.mining.stages import encoding_logged
from unime.models.embedding_cache import RunEncoder

LOGGER = "unime.test.progress"


class CodeEmbedder:
    def encode(self, items, batch_size=None, show_progress=False):
        return np.array([[float(ord(it.text[0])), float(len(it.text)), 1.0] for it in items])


def _messages(caplog):
    return [re.sub(r", \d+ s$", ", T s", r.getMessage()) for r in caplog.records]


def test_progress_lines_every_interval_and_the_last_one_once(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = logging.getLogger(LOGGER)
    every = ProgressLog(log, "step: done", 2500, "things", every=0.0)
    every.add(1000)
    every.add(1500)
    every.finish()  # the total was logged already: no repeat
    quiet = ProgressLog(log, "other: done", 3, "things", every=3600.0)
    quiet.add(1)  # within the interval, not at the total: no line
    quiet.finish()  # ended short of the total: the last count is logged
    ProgressLog(log, "rank 1: done", 5, "things", every=0.0, enabled=False).add(5)
    assert _messages(caplog)[:3] == ["step: done 1,000 of 2,500 things, T s", "step: done 2,500 of 2,500 things, T s",
                                     "other: done 1 of 3 things, T s"]
    assert len(_messages(caplog)) == 3


def _encoder(folder, texts):
    enc = RunEncoder(CodeEmbedder(), "m", cache_dir=folder, flush_every=4)
    enc.add([Item(t) for t in texts], None)
    return enc


def test_encoding_logs_its_progress_at_info_from_the_first_process_only(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress_mod, "LOG_EVERY_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="unime.mining.stages")
    texts = [f"{c}{'x' * k}" for k, c in enumerate("abcdefghij")]
    enc = _encoder(tmp_path / "one", texts[:3])
    enc.encode_pending()  # 3 from the cache below
    enc = _encoder(tmp_path / "one", texts)
    with encoding_logged(enc, Ranks()):
        enc.encode_pending()
    assert _messages(caplog) == ["retrieval: 10 distinct items, 7 to encode (the rest from the embedding cache)",
                                 "retrieval: encoded 4 of 7 items, T s", "retrieval: encoded 7 of 7 items, T s"]
    caplog.clear()
    enc = _encoder(tmp_path / "one", texts)
    with encoding_logged(enc, Ranks()):
        enc.encode_pending()  # all from the cache: no count of nothing
    assert _messages(caplog) == ["retrieval: 10 distinct items, 0 to encode (the rest from the embedding cache)"]
    caplog.clear()
    shares = [_encoder(tmp_path / "two", texts) for _ in range(2)]
    for rank, enc in enumerate(shares):
        with encoding_logged(enc, Ranks(rank=rank, world=2)):
            enc.encode_pending(share=(rank, 2))
    assert _messages(caplog)[0] == "retrieval: 10 distinct items, 10 to encode (the rest from the embedding cache)"
    assert _messages(caplog)[-1].startswith("retrieval: process 0 encoded ")
    assert _messages(caplog)[-1].endswith(" of 5 items (its share of 10 over 2 processes), T s")
    assert not any("process 1" in m for m in _messages(caplog)) and len(_messages(caplog)) <= 4


def test_search_logs_how_many_queries_it_finished(caplog):
    caplog.set_level(logging.INFO, logger="unime.mining.retrieval")
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(200, 8)).astype(np.float32)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    pos = [int(np.argsort(-(pool @ q[i]))[[0, 150][i % 2]]) for i in range(30)]  # half re-searched
    search_hard_negatives(build_index(pool), q, pool[pos], pos, k=5, overfetch=2)
    assert _messages(caplog)[-1] == "retrieval: searched 30 of 30 queries, T s"
