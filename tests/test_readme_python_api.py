"""README's "Python API" block on training an embedder and indexing a corpus runs as written (on a tiny model,
with fewer steps), in a folder holding the files it names: base (a tiny model), mydata/train/records.jsonl (the
records `unime data import` writes: plain pairs here) and corpus.jsonl."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.train.helpers import write_world

README = Path(__file__).resolve().parents[1] / "README.md"
CORPUS = ["a red star", "a blue circle", "a green square", "a yellow triangle"]


def python_api_block() -> str:
    text = README.read_text()
    start = text.index("Training an embedder and indexing a corpus")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
def test_the_readme_training_and_index_block_runs(tmp_path, tiny_model_dir, monkeypatch):
    shutil.copytree(tiny_model_dir("qwen2_vl"), tmp_path / "base")
    write_world(tmp_path / "mydata" / "train")  # records.jsonl, negatives unused (hard_negatives=0)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "text": t}) + "\n"
                                                   for i, t in enumerate(CORPUS)))
    monkeypatch.chdir(tmp_path)
    code = python_api_block()
    assert "steps=300" in code and "batch_size=16" in code
    scope: dict = {}
    exec(compile(code.replace("steps=300", "steps=2").replace("batch_size=16", "batch_size=4"), str(README), "exec"),
         scope)
    assert (tmp_path / "emb" / "merged" / "config.json").is_file()
    assert scope["result"].metrics["steps"] == 2
    emb = scope["emb"]
    corpus = emb.encode(CORPUS)
    for hits, query in zip(scope["hits"], ["a red star", "a blue circle"]):  # against numpy's exact ranking
        scores = corpus @ emb.encode([query])[0]
        assert [h["id"] for h in hits] == [f"c{i}" for i in np.argsort(-scores, kind="stable")]
        np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1], rtol=1e-4, atol=1e-5)
