"""NaN or inf embeddings are refused in one place, `Embedder.encode` (`refuse_non_finite`), for every encode path of
every command, unless the caller opts out (`check_finite=False`: `unime serve`, which answers them per request with a
500); the error names the first bad item by the file and record it was read from where the caller knows them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.models.helpers import with_nan_weights
from unime.data.items import Item


@pytest.fixture(scope="module")
def nan_model(tiny_model_dir, tmp_path_factory):
    return str(with_nan_weights(tiny_model_dir("qwen2_vl"), tmp_path_factory.mktemp("nan") / "model"))


def test_encode_refuses_nan_naming_the_first_item_unless_its_caller_opts_out(nan_model):
    from unime.models.embedder import Embedder, NonFiniteEmbedding

    emb = Embedder.from_pretrained(nan_model, device="cpu")
    items = [Item(text="a red circle"), Item(text="a cat"), Item(text="a red circle")]
    with pytest.raises(NonFiniteEmbedding) as refused:
        emb.encode(items)
    assert str(refused.value) == (f"embedder '{nan_model}' returned NaN or inf for 3 of 3 inputs (the first: item "
                                  "'a red circle'); its weights may hold NaN or inf")
    assert (refused.value.index, refused.value.item) == (0, items[0])
    # serve's call: the vectors as the model gives them, token counts too
    vecs, tokens = emb.encode(items, check_finite=False, return_token_counts=True)
    assert vecs.shape == (3, emb.hidden_size) and np.isnan(vecs).all() and (tokens > 0).all()
    placed = refused.value.naming(where=("items.jsonl", "line 4 (id x)", None))
    assert str(placed) == (f"embedder '{nan_model}' returned NaN or inf for 3 of 3 inputs (the first: items.jsonl, "
                           "record line 4 (id x): item 'a red circle'); its weights may hold NaN or inf")


def test_serve_with_a_nan_model_answers_500_naming_the_input(nan_model):
    """serve opts out of the check: a request's NaN is its 500 (README: `non_finite_embedding`), from the real
    model's vectors, not a refusal of the whole batch."""
    from fastapi.testclient import TestClient

    from unime.models.embedder import Embedder
    from unime.serve.app import create_app
    from unime.serve.config import ServeConfig
    from unime.serve.engine import Engine

    engine = Engine(Embedder.from_pretrained(nan_model, device="cpu"), "nan")
    try:
        with TestClient(create_app(engine, ServeConfig(model=nan_model, no_auth=True))) as c:
            got = c.post("/v1/embeddings", json={"model": "nan", "input": ["a red circle", "a cat"]})
    finally:
        engine.close()
    assert got.status_code == 500, got.text
    err = got.json()["error"]
    assert (err["param"], err["code"]) == ("input[0]", "non_finite_embedding")
    assert err["message"] == "input[0]: the embedding model returned NaN or inf for this input (a model fault)"


def test_index_build_with_a_nan_model_names_the_first_item_by_its_line_and_id(nan_model, tmp_path, capsys):
    """The embedding cache's path (`index build`, `eval`, `mine`) names the item by where it was read (it named its
    text only)."""
    from unime.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(["a dog", "a cat"])))
    assert main(["index", "build", "--model", nan_model, "--items", str(corpus), "--out", str(tmp_path / "idx"),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: embedder '{nan_model}' returned NaN or inf for 2 of 2 inputs (the first: {corpus}, record "
        "line 1 (id t0), field 'item': item 'a dog'); its weights may hold NaN or inf")


def test_search_with_a_nan_model_is_one_error_line_naming_the_model_and_the_query(tiny_model_dir, nan_model,
                                                                                  tmp_path, monkeypatch, capsys):
    """QA path not covered before: `unime search` encodes its query with `Embedder.encode` directly (no embedding
    cache); a NaN query vector ended in a ValueError traceback from the index's search ('query vector 0 ... holds
    NaN or inf'), naming neither the model nor the query. (The index's model check is bypassed: the model here is
    the index's with its weights made NaN, as a model overflowing in another dtype on another device gives.)"""
    import unime.index.store as store
    from unime.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "t0", "text": "a dog"}) + "\n")
    assert main(["index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(corpus), "--out",
                 str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    monkeypatch.setattr(store, "check_model", lambda *a, **k: None)
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--model", nan_model, "--query", "a red dog",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [
        f"unime: error: embedder '{nan_model}' returned NaN or inf for 1 of 1 inputs (the first: item 'a red dog'); "
        "its weights may hold NaN or inf"]
