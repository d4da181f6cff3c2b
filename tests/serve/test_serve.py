"""`unime serve` against a real uvicorn process on a free loopback port: each endpoint, the OpenAI client,
rerank order vs the in-process Reranker, a bad-request corpus, dynamic batching, SIGTERM drain."""

from __future__ import annotations

import base64
import io
import signal
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs import png_header_only
from tests.data.helpers import write_clip
from tests.index.helpers import mapped_files, needs_proc_maps
from tests.serve.helpers import COLOURS, Server, png_uri, write_corpus
from unime.data.items import Item
from unime.serve.auth import key_matches
from unime.serve.config import ServeConfig

KEY = "test-key-0123456789abcdef"
MODEL = "tiny-embedder"
RERANKER = "tiny-reranker"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A corpus index built with the tiny embedder, and the in-process models to compare with."""
    from unime.index.store import build_corpus_index
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings
    from unime.models.reranker import Reranker

    root = tmp_path_factory.mktemp("serve_world")
    corpus = write_corpus(root)
    model = tiny_model_dir("qwen2_vl")
    emb = Embedder.from_pretrained(model, device="cpu", dtype="auto", data_root=str(root))
    idx, _ = build_corpus_index(corpus, root / "idx", embedder=emb, model=model, cache_dir=root / "cache",
                                model_settings=embedding_settings(emb, "auto"))
    rr = Reranker.from_pretrained(model, device="cpu", data_root=str(root))
    (root / "keys.txt").write_text(f"# keys\n{KEY}\nanother-key-abcdefghijklmnop\n")
    return {"root": root, "model": model, "emb": emb, "rr": rr, "idx": idx}


def test_a_vlm2vec_index_is_served_with_the_vlm2vec_embedder_it_was_built_with(world, tmp_path):
    """`index build --item-format vlm2vec` records the embedder's settings, its video sampling (VLM2Vec's frame
    rule) with them; the service's embedder, whose loader reads inline images only, keeps that sampling, so the
    index is its own (it was refused: 'settings differ: video_sampling')."""
    from unime.index.store import build_corpus_index
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings
    from unime.serve.engine import Engine

    emb = Embedder.from_pretrained(world["model"], device="cpu", dtype="auto", data_root=str(world["root"]),
                                   item_format="vlm2vec")
    build_corpus_index(write_corpus(tmp_path), tmp_path / "idx", embedder=emb, model=world["model"],
                       cache_dir=tmp_path / "cache", model_settings=embedding_settings(emb, "auto"))
    engine = Engine.load(ServeConfig(model=world["model"], dtype="auto", index=str(tmp_path / "idx"),
                                     item_format="vlm2vec", no_auth=True))
    assert engine.embedder.image_loader.video_sampling.frame_rule == "vlm2vec"


def test_an_index_of_another_video_sampling_is_served_with_that_sampling(world, tmp_path):
    """`index build --video-frames 4` records the sampling with the index's model settings; the service's embedder
    takes the index's sampling (it was refused: 'settings differ: video_sampling'), its loader still inline only."""
    from unime.data.video import VideoSampling
    from unime.index.store import build_corpus_index
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings
    from unime.serve.engine import Engine
    from unime.serve.inputs import InlineOnlyLoader

    emb = Embedder.from_pretrained(world["model"], device="cpu", dtype="auto", data_root=str(world["root"]),
                                   video_sampling=VideoSampling(num_frames=4))
    build_corpus_index(write_corpus(tmp_path), tmp_path / "idx", embedder=emb, model=world["model"],
                       cache_dir=tmp_path / "cache", model_settings=embedding_settings(emb, "auto"))
    engine = Engine.load(ServeConfig(model=world["model"], dtype="auto", index=str(tmp_path / "idx"), no_auth=True))
    assert engine.embedder.image_loader.video_sampling == VideoSampling(num_frames=4)
    assert isinstance(engine.embedder.image_loader, InlineOnlyLoader)
    default = Engine.load(ServeConfig(model=world["model"], dtype="auto", index=str(world["root"] / "idx"),
                                      no_auth=True))
    assert default.embedder.image_loader.video_sampling is None  # an index of the default sampling: the default
    given = Engine.load(ServeConfig(model=world["model"], dtype="auto", index=str(world["root"] / "idx"),
                                    no_auth=True, video_frames=8))  # the default given explicitly: the index's
    assert given.embedder.image_loader.video_sampling is None


@pytest.fixture(scope="module")
def server(world):
    s = Server(["--model", world["model"], "--model-name", MODEL, "--reranker", world["model"], "--reranker-name",
                RERANKER, "--index", str(world["root"] / "idx"), "--api-key-file", str(world["root"] / "keys.txt"),
                "--max-body-bytes", "200000", "--max-image-pixels", "1000000", "--max-items", "16",
                "--max-text-chars", "500", "--max-wait-ms", "20", "--max-batch-size", "8"],
               log_path=world["root"] / "server.log")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def _client(server, key=KEY):
    return httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


def test_health_and_docs(server):
    r = httpx.get(server.base + "/health")
    assert r.status_code == 200 and r.json()["model"] == MODEL and r.json()["index_items"] == 8
    assert r.json()["auth"] is True and r.json()["dim"] > 0
    assert httpx.get(server.base + "/docs").status_code == 200
    paths = httpx.get(server.base + "/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/rerank", "/v1/search", "/health", "/metrics"} <= set(paths)


def test_openai_client_gets_the_in_process_embeddings(server, world):
    import openai

    client = openai.OpenAI(base_url=server.base + "/v1", api_key=KEY)
    texts = ["a red circle", "a blue square", "a red circle", "green"]
    resp = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64 by default
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    np.testing.assert_allclose(got, world["emb"].encode(texts), atol=1e-5)
    assert [d.index for d in resp.data] == [0, 1, 2, 3] and resp.model == MODEL
    assert resp.usage.prompt_tokens > 0 and resp.usage.total_tokens == resp.usage.prompt_tokens
    one = client.embeddings.create(model=MODEL, input="green", encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, world["emb"].encode(["green"])[0], atol=1e-5)


def test_multimodal_items_with_instruction_and_base64(server, world):
    img = Image.new("RGB", (40, 30), COLOURS["blue"])
    body = {"model": MODEL, "encoding_format": "base64", "instruction": "Represent the given image.",
            "input": [{"image": png_uri(img)}, {"text": "what colour?", "image": png_uri(img)}, "plain text"]}
    with _client(server) as c:
        r = c.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    expected = world["emb"].encode([Item(text="Represent the given image.", images=(buf.getvalue(),)),
                                    Item(text="Represent the given image.\nwhat colour?", images=(buf.getvalue(),)),
                                    Item(text="Represent the given image.\nplain text")])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embeddings_usage_counts_the_tokens_the_model_read(server, world):
    """usage.prompt_tokens = the processor's input_ids per item (chat template, image placeholder tokens), not the
    text's tokens alone (3 for "what shape")."""
    proc = world["emb"].processor
    img = Image.new("RGB", (40, 30), COLOURS["blue"])

    def input_ids_length(text, images):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return proc(text=[prompt], images=images or None, return_tensors="pt")["input_ids"].shape[1]

    expected = input_ids_length("what shape", [img]) + input_ids_length("plain text", [])
    assert expected > len(proc.tokenizer("what shape plain text", add_special_tokens=False)["input_ids"]) + 20
    with _client(server) as c:
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": [{"text": "what shape", "image": png_uri(img)},
                                                                     "plain text"]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_rerank_usage_counts_the_tokens_the_model_read(server, world):
    """QA: /v1/rerank's usage.total_tokens counted the query's and documents' text tokens only (with the embedder's
    tokenizer), while /v1/embeddings counts the tokens the model read. Pairwise: each judge prompt's tokens (chat
    template included), the query's shared prefix read once (the fast path's KV cache): L1 + L2 - the prefix the
    two prompts share. Listwise: the multi-candidate prompt's tokens (+ the pairwise ones when it falls back)."""
    rr = world["rr"]
    tok = rr.adapter.tokenizer
    query, docs = "something red", ["a red square", "blue circle"]

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    prompts = [ids(rr.judge.prompt(Item(text=query), Item(text=d))) for d in docs]
    shared = next(i for i, (a, b) in enumerate(zip(*prompts)) if a != b)
    pairwise = len(prompts[0]) + len(prompts[1]) - shared
    text_only = sum(len(ids(t)) for t in [query, *docs])
    assert pairwise > 2 * text_only
    listwise = len(ids(rr.adapter.render_user_turn(rr.listwise_segments(Item(text=query), [Item(text=d) for d in docs]),
                                                   assistant_prefix=rr.answer_prefix)))
    with _client(server) as c:
        r = c.post("/v1/rerank", json={"query": query, "documents": docs})
        one = c.post("/v1/rerank", json={"query": query, "documents": docs[:1]})
        r2 = c.post("/v1/rerank", json={"query": query, "documents": docs, "mode": "listwise"})
    assert r.status_code == 200 and one.status_code == 200 and r2.status_code == 200, (r.text, r2.text)
    assert r.json()["usage"] == {"total_tokens": pairwise}
    assert one.json()["usage"] == {"total_tokens": len(prompts[0])}
    fallback = r2.json()["meta"]["listwise"] == "fallback"
    assert r2.json()["usage"] == {"total_tokens": listwise + (pairwise if fallback else 0)}


def test_rerank_pairwise_and_listwise_equal_the_in_process_reranker(server, world):
    rr = world["rr"]
    docs = ["a red square", "a blue circle", "green grass", "a yellow star", "red"]
    with _client(server) as c:
        r = c.post("/v1/rerank", json={"model": RERANKER, "query": "something red", "documents": docs,
                                        "return_documents": True, "top_n": 3})
        r2 = c.post("/v1/rerank", json={"query": "something red", "documents": docs, "mode": "listwise"})
    assert r.status_code == 200, r.text
    scores = rr.score_pairs(Item(text="something red"), docs)
    expected = np.argsort(-scores, kind="stable")[:3].tolist()
    res = r.json()["results"]
    assert [x["index"] for x in res] == expected
    np.testing.assert_allclose([x["relevance_score"] for x in res], scores[expected], atol=1e-5)
    assert [x["document"]["text"] for x in res] == [docs[i] for i in expected]
    assert r2.status_code == 200, r2.text
    picked = rr.pick(Item(text="something red"), docs)
    assert [x["index"] for x in r2.json()["results"]] == [picked] + [i for i in range(5) if i != picked]
    assert r2.json()["results"][0]["relevance_score"] == 1.0


@pytest.mark.parametrize("answer, source", [("Ans: (2)", "answer"), ("no idea at all", "fallback"),
                                            ("Ans: (9)", "fallback")])
def test_listwise_responses_say_whether_the_answer_or_the_pairwise_fallback_ordered_them(world, monkeypatch,
                                                                                      caplog, answer, source):
    """The real app in process, its reranker's generation patched: an answer naming a document orders by it
    ("answer"); one naming none (unparsable, or out of range) falls back to the pairwise scores' argmax, and the
    response says "fallback" (rerank: meta.listwise; search: listwise), the log warns, /metrics counts it."""
    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex
    from unime.serve.app import create_app
    from unime.serve.engine import Engine

    rr = world["rr"]

    def generate_answers(queries, lists, return_token_counts=False):
        return ([answer] * len(queries), [0] * len(queries)) if return_token_counts else [answer] * len(queries)

    monkeypatch.setattr(rr, "generate_answers", generate_answers)
    docs = ["a red square", "a blue circle", "green grass"]
    expected = 1 if source == "answer" else int(np.argmax(rr.score_pairs(Item(text="something red"), docs)))
    engine = Engine(world["emb"], MODEL, rr, RERANKER, CorpusIndex(world["root"] / "idx"))
    app = create_app(engine, ServeConfig(model=world["model"], no_auth=True))
    try:
        with TestClient(app) as c, caplog.at_level("WARNING", logger="unime.serve"):
            r = c.post("/v1/rerank", json={"query": "something red", "documents": docs, "mode": "listwise"})
            pairwise = c.post("/v1/rerank", json={"query": "something red", "documents": docs})
            s = c.post("/v1/search", json={"query": "red", "top_k": 4, "rerank": True, "rerank_mode": "listwise",
                                           "rerank_top_k": 3})
            plain = c.post("/v1/search", json={"query": "red", "top_k": 4})
            metrics = c.get("/metrics").text
    finally:
        engine.close()
    assert r.status_code == 200, r.text
    assert r.json()["meta"] == {"listwise": source}
    assert [x["index"] for x in r.json()["results"]] == [expected] + [i for i in range(3) if i != expected]
    assert "meta" not in pairwise.json()
    assert s.status_code == 200, s.text
    assert s.json()["reranked"] is True and s.json()["listwise"] == source
    assert "listwise" not in plain.json()
    assert _metric(metrics, f'unime_listwise_picks_total{{source="{source}"}}') == 2
    warned = [rec for rec in caplog.records if "named none" in rec.getMessage()]
    assert len(warned) == (2 if source == "fallback" else 0)


def test_concurrent_listwise_requests_share_generation_batches(server, world):
    """Listwise requests arriving together are picked in shared `pick_many` calls (at most the reranker's batch of
    8 each), and each gets the pick the in-process reranker makes for it alone."""
    rr = world["rr"]
    queries = [f"something {c}" for c in ("red", "blue", "green", "yellow")] * 3
    docs = [["a red square", "a blue circle", "green grass", "a yellow star", "red"][i % 5:] + ["sky"]
            for i in range(len(queries))]
    out: dict[int, list] = {}

    def call(i):
        with _client(server) as c:
            r = c.post("/v1/rerank", json={"query": queries[i], "documents": docs[i], "mode": "listwise"})
            assert r.status_code == 200, r.text
            out[i] = [x["index"] for x in r.json()["results"]]

    with _client(server) as c:
        before = _metric(c.get("/metrics").text, "unime_rerank_batch_size_count")
        summed = _metric(c.get("/metrics").text, "unime_rerank_batch_size_sum")
    m = _concurrently(server, call, len(queries))
    assert _metric(m, "unime_rerank_batch_size_sum") - summed == len(queries)  # every request in some batch
    assert 2 <= _metric(m, "unime_rerank_batch_size_count") - before < len(queries)
    for i, (q, d) in enumerate(zip(queries, docs)):
        picked = rr.pick(Item(text=q), d)
        assert out[i] == [picked] + [j for j in range(len(d)) if j != picked], i


def test_listwise_order_and_the_engine_refuses_an_empty_request():
    from unime.serve.engine import Engine, listwise_order

    assert listwise_order(2, 4) == ([2, 0, 1, 3], [0.0, 0.0, 1.0, 0.0])
    assert listwise_order(0, 1) == ([0], [1.0])
    engine = Engine(embedder=None, model_name="m", reranker=object())
    try:
        with pytest.raises(ValueError, match="without documents"):
            engine.pick_many([(Item(text="q"), [Item(text="a")]), (Item(text="q"), [])])
    finally:
        engine.close()


def test_search_with_and_without_rerank(server, world):
    from unime.index.store import search_items

    q = world["emb"].encode(["a red square"])
    expected = search_items(world["idx"], q, 5)[0]
    with _client(server) as c:
        r = c.post("/v1/search", json={"query": "a red square", "top_k": 5})
        rr = c.post("/v1/search", json={"query": "a red square", "top_k": 5, "rerank": True, "rerank_top_k": 4})
        listwise = c.post("/v1/search", json={"query": "a red square", "top_k": 5, "rerank": True, "rerank_top_k": 4,
                                              "rerank_mode": "listwise"})
        img = c.post("/v1/search", json={"query": {"image": png_uri(Image.new("RGB", (48, 40), COLOURS["green"]))},
                                          "top_k": 2, "include_thumbnails": False})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert [h["id"] for h in hits] == [h["id"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in expected], atol=1e-5)
    assert hits[0]["metadata"]["colour"] and any(h.get("thumbnail", "").startswith("data:image/jpeg") for h in hits)
    # rerank: the top 4 reordered by P(Yes) of the in-process reranker (on the indexed items), rank 5 untouched
    cands = [world["idx"].item(h["row"]) for h in expected[:4]]
    p = world["rr"].score_pairs(Item(text="a red square"), cands)
    order = np.argsort(-p, kind="stable").tolist()
    got = rr.json()
    assert got["reranked"] is True
    assert [h["id"] for h in got["data"]] == [expected[i]["id"] for i in order] + [expected[4]["id"]]
    np.testing.assert_allclose([h["rerank_score"] for h in got["data"][:4]], p[order], atol=1e-5)
    assert [h["rank"] for h in got["data"]] == [1, 2, 3, 4, 5]
    # listwise: the in-process pick among the top 4 moves to rank 1 (through the pick batcher)
    picked = world["rr"].pick(Item(text="a red square"), cands)
    moved = [picked] + [i for i in range(4) if i != picked] + [4]
    assert listwise.status_code == 200, listwise.text
    assert [h["id"] for h in listwise.json()["data"]] == [expected[i]["id"] for i in moved]
    assert [h["rerank_score"] for h in listwise.json()["data"][:4]] == [1.0, 0.0, 0.0, 0.0]
    assert img.status_code == 200 and img.json()["data"][0]["id"] == "img-green"
    assert "thumbnail" not in img.json()["data"][0]


def test_dynamic_batching_coalesces_concurrent_requests(server, world):
    texts = [f"query number {i}" for i in range(24)]
    out: dict[int, list] = {}

    def call(i):
        with _client(server) as c:
            out[i] = c.post("/v1/embeddings", json={"model": MODEL, "input": texts[i]}).json()["data"][0]["embedding"]

    with _client(server) as c:
        before = _metric(c.get("/metrics").text, "unime_batch_size_count")
    m = _concurrently(server, call, 24)
    batches = _metric(m, "unime_batch_size_count") - before
    assert 3 <= batches < 24  # 24 single-item requests in fewer encoder calls (at most 8 items each)
    np.testing.assert_allclose(np.array([out[i] for i in range(24)]), world["emb"].encode(texts), atol=1e-5)
    assert 'unime_requests_total{endpoint="/v1/embeddings",status="200"}' in m
    assert "unime_request_latency_seconds_bucket" in m and "unime_queue_depth" in m


def _concurrently(server, call, n: int) -> str:
    """`call(i)` for i < n, each on its own thread, all started before any is joined; then the server's metrics."""
    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with _client(server) as c:
        return c.get("/metrics").text


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def _bomb() -> str:
    # 4000 x 4000 = 16 M pixels of one colour: a small PNG over the 1 M pixel limit
    buf = io.BytesIO()
    Image.new("L", (4000, 4000), 0).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 150_000
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BAD = [
    ("malformed json",
     dict(content=b'{"model": "tiny-embedder", "input": ', headers={"Content-Type": "application/json"}),
     400, "malformed JSON"),
    # QA: a body that is not UTF-8 was FastAPI's "There was an error parsing the body", naming nothing
    ("non-UTF-8 body", dict(content=b'{"model": "tiny-embedder", "input": "caf\xe9"}',
                            headers={"Content-Type": "application/json"}), 400,
     "malformed JSON body: not UTF-8 (byte 0xe9 at position 40)"),
    # QA: a body sent without the JSON content type (`curl -d`: a form's) was "body: Input should be a valid
    # dictionary or object to extract fields from"
    ("form content type", dict(content=b'{"model": "tiny-embedder", "input": "x"}',
                               headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
     "send the JSON body with 'Content-Type: application/json' (got 'application/x-www-form-urlencoded')"),
    ("no content type", dict(content=b'{"model": "tiny-embedder", "input": "x"}'), 415,
     "send the JSON body with 'Content-Type: application/json' (got none)"),
    ("wrong type", dict(json={"model": MODEL, "input": 5}), 422, "input"),
    ("token arrays", dict(json={"model": MODEL, "input": [[1, 2, 3]]}), 422, "input"),
    ("unknown field", dict(json={"model": MODEL, "input": "x", "colour": 1}), 422, "colour"),
    ("empty list", dict(json={"model": MODEL, "input": []}), 400, "empty input list"),
    ("empty string", dict(json={"model": MODEL, "input": ""}), 400, "empty input"),
    ("oversized body", dict(json={"model": MODEL, "input": "x" * 300_000}), 413, "over the limit"),
    ("too many items", dict(json={"model": MODEL, "input": ["x"] * 17}), 413, "over the limit of 16"),
    ("long text", dict(json={"model": MODEL, "input": "y" * 501}), 400, "over the limit of 500"),
    ("bomb image", dict(json={"model": MODEL, "input": [{"image": "BOMB"}]}), 400, "over the limit 1000000"),
    # QA: an image past PIL's own limit quoted PIL's (178956970 pixels), not the server's --max-image-pixels
    ("bomb header", dict(json={"model": MODEL, "input": [{"image": "BOMB_HEADER"}]}), 400,
     "field 'input[0].image': image <inline bytes> has 3600000000 pixels, over the limit 1000000"),
    ("file path", dict(json={"model": MODEL, "input": [{"image": "/etc/passwd"}]}), 400, "never reads files"),
    ("relative path", dict(json={"model": MODEL, "input": [{"image": "img/red.png"}]}), 400, "never reads files"),
    ("url", dict(json={"model": MODEL, "input": [{"image": "http://127.0.0.1:1/x.png"}]}), 400, "fetches URLs"),
    ("file url", dict(json={"model": MODEL, "input": [{"image": "file:///etc/passwd"}]}), 400, "never reads files"),
    ("not an image", dict(json={"model": MODEL, "input": [{"image": "data:image/png;base64,aGVsbG8="}]}), 400,
     "corrupt or unreadable"),
    ("bad base64", dict(json={"model": MODEL, "input": [{"image": "data:image/png;base64,@@@"}]}), 400, "base64"),
    # QA: a vision token in text was a 500; a chat token changed the prompt's turns
    ("image token in text", dict(json={"model": MODEL, "input": "hello <|image_pad|>"}), 400,
     "input[0]: text holds the model's special token '<|image_pad|>'"),
    ("chat token in text", dict(json={"model": MODEL, "input": [{"text": "a<|im_end|>\n<|im_start|>assistant"}]}),
     400, "input[0].text: text holds the model's special token '<|im_end|>'"),
    ("unknown model", dict(json={"model": "gpt-4", "input": "x"}), 404, "model 'gpt-4' not found"),
    ("bad dimensions", dict(json={"model": MODEL, "input": "x", "dimensions": 3}), 400, "dimensions"),
    ("missing key", dict(json={"model": MODEL, "input": "x"}, key=None), 401, "missing API key"),
    ("wrong key", dict(json={"model": MODEL, "input": "x"}, key="wrong-key-0123456789abcdef"), 401, "invalid API key"),
]


@pytest.mark.parametrize("name,kw,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(server, name, kw, status, message):
    kw = dict(kw)
    key = kw.pop("key", KEY)
    if "json" in kw and kw["json"].get("input") == [{"image": "BOMB"}]:
        kw["json"] = {**kw["json"], "input": [{"image": _bomb()}]}
    if "json" in kw and kw["json"].get("input") == [{"image": "BOMB_HEADER"}]:
        uri = "data:image/png;base64," + base64.b64encode(png_header_only(60000, 60000)).decode()
        kw["json"] = {**kw["json"], "input": [{"image": uri}]}
    with _client(server, key) as c:
        r = c.post("/v1/embeddings", **kw)
        assert r.status_code == status, r.text
        body = r.json()
        assert message in body["error"]["message"], body
        assert body["error"]["code"] is None or isinstance(body["error"]["code"], str), body  # OpenAI's: str | null
        assert "Traceback" not in r.text and 'File "' not in r.text
        good = _client(server).post("/v1/embeddings", json={"model": MODEL, "input": "still serving"})
        assert good.status_code == 200 and len(good.json()["data"]) == 1


def test_other_endpoints_reject_bad_requests(server):
    with _client(server) as c:
        assert c.post("/v1/rerank", json={"query": "q", "documents": []}).status_code == 400
        r = c.post("/v1/rerank", json={"model": MODEL, "query": "q", "documents": ["a"]})
        assert r.status_code == 404 and "reranker is 'tiny-reranker'" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "model_not_found"
        r = c.post("/v1/search", json={"query": "q", "top_k": 5000})
        assert r.status_code == 400 and "top_k" in r.json()["error"]["message"]
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/embeddings").status_code == 405
    assert httpx.get(server.base + "/metrics").status_code == 401


def test_cors_is_off_by_default(server):
    r = httpx.options(server.base + "/v1/embeddings", headers={"Origin": "http://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


def test_auth_rules():
    assert key_matches("k" * 20, ["x" * 20, "k" * 20]) and not key_matches("k" * 19, ["k" * 20])
    with pytest.raises(ValueError, match="only allowed when binding to loopback"):
        ServeConfig(model="m", no_auth=True, host="0.0.0.0").check()
    with pytest.raises(ValueError, match="no API keys"):
        ServeConfig(model="m", host="127.0.0.1").check()
    ServeConfig(model="m", no_auth=True, host="127.0.0.1").check()
    ServeConfig(model="m", api_keys=["k" * 20], host="0.0.0.0").check()


def test_bad_api_keys_are_one_line_errors_naming_where_they_are(tmp_path, monkeypatch, capsys):
    """QA: a key shorter than 16 characters ended `unime serve` with a traceback."""
    from unime.cli import main

    keys = tmp_path / "keys.txt"
    keys.write_text("# keys\n" + "k" * 16 + "\nsk-test-123\n")
    monkeypatch.setenv("UNIME_API_KEYS", "x" * 20 + ",abc")
    assert main(["serve", "--model", str(tmp_path / "no-model"), "--api-key-file", str(keys)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"unime: error: API keys must have at least 16 characters; too short: --api-key-file {keys}, "
                   "line 3, UNIME_API_KEYS, key 2"]
    monkeypatch.delenv("UNIME_API_KEYS")
    assert main(["serve", "--model", "m", "--api-key-file", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err.startswith(f"unime: error: --api-key-file {tmp_path / 'missing.txt'}: cannot read")


def test_a_key_file_saved_with_a_byte_order_mark_and_crlf_gives_its_keys(tmp_path, monkeypatch):
    """QA: a key file saved by Windows Notepad (UTF-8 with a byte order mark, CRLF line ends) gave its first key with
    the mark in front ('\\ufeffkey-...'), which no client sends: every request with that key was a 401."""
    from unime.serve.auth import load_api_keys

    monkeypatch.delenv("UNIME_API_KEYS", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"\xef\xbb\xbfkey-aaaaaaaaaaaaaaaa1\r\n# a comment\r\nkey-bbbbbbbbbbbbbbbb2\r\n")
    assert load_api_keys(keys) == ["key-aaaaaaaaaaaaaaaa1", "key-bbbbbbbbbbbbbbbb2"]
    assert key_matches("key-aaaaaaaaaaaaaaaa1", load_api_keys(keys))


def test_batching_options_are_checked():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        ServeConfig(model="m", no_auth=True, max_batch_size=0).check()
    with pytest.raises(ValueError, match="rerank_batch must be >= 1, got 0"):
        ServeConfig(model="m", no_auth=True, rerank_batch=0).check()
    ServeConfig(model="m", no_auth=True, rerank_batch=1).check()


BAD_OPTIONS = [  # (field, value, the value on the command line or None: the parser's type refuses it, problem)
    ("max_text_tokens", 0, "0", "must be >= 1, got 0"),
    ("max_items", -1, "-1", "must be >= 1, got -1"),
    ("max_body_bytes", 0, "0", "must be >= 1, got 0"),
    ("max_text_chars", 0, "0", "must be >= 1, got 0"),
    ("max_image_bytes", -5, "-5", "must be >= 1, got -5"),
    ("max_image_pixels", 0, "0", "must be >= 1, got 0"),
    ("max_top_k", 0, "0", "must be >= 1, got 0"),
    ("request_timeout_s", 0.0, "0.0", "must be > 0, got 0.0"),
    ("request_timeout_s", float("nan"), "nan", "must be > 0, got nan"),
    ("max_top_k", True, None, "must be an int, got True (bool)"),  # True is an int to Python: it was a limit of 1
    ("max_text_tokens", 2.5, None, "must be an int, got 2.5 (float)"),
    ("max_items", "16", None, "must be an int, got '16' (str)"),
    ("request_timeout_s", False, None, "must be a number, got False (bool)"),
    ("max_batch_tokens", True, None, "must be an int, got True (bool)"),
    ("max_batch_tokens", 0, "0", "must be >= 1, got 0"),
    ("max_wait_ms", float("nan"), "nan", "must be >= 0, got nan"),
    ("graceful_timeout_s", -1.0, "-1.0", "must be >= 0, got -1.0"),
    ("threads", 0, "0", "must be >= 1, got 0"),
    # QA: inf was taken (--max-wait-ms inf: a batch waited forever for more items), and --port had no range
    ("request_timeout_s", float("inf"), "inf", "must be a finite number, got inf"),
    ("max_wait_ms", float("inf"), "inf", "must be a finite number, got inf"),
    ("graceful_timeout_s", float("inf"), "inf", "must be a finite number, got inf"),
    ("index_check_s", float("inf"), "inf", "must be a finite number, got inf"),
    ("max_wait_ms", float("-inf"), "-inf", "must be >= 0, got -inf"),
    ("port", 0, "0", "must be >= 1 and <= 65535, got 0"),
    ("port", 65536, "65536", "must be >= 1 and <= 65535, got 65536"),
    ("port", -1, "-1", "must be >= 1 and <= 65535, got -1"),
]


@pytest.mark.parametrize("field,value,cli,problem", BAD_OPTIONS, ids=[f"{b[0]}={b[1]!r}" for b in BAD_OPTIONS])
def test_a_limit_out_of_range_or_of_another_type_is_refused_from_python_as_on_the_command_line(field, value, cli,
                                                                                                 problem, capsys):
    """QA: `ServeConfig(limits=Limits(max_text_tokens=0)).check()` passed (a service that refused every text), as
    did a negative, NaN or bool limit, and most limits had no range on the command line either. Each is refused,
    naming the field: from Python an OptionError as the config is made (`RangeChecked`), on the command line a
    usage error naming the option."""
    from dataclasses import fields

    from unime.cli import main
    from unime.cli.dataclass_options import prefixed_flags
    from unime.errors import OptionError
    from unime.serve.config import Limits

    in_limits = field in {f.name for f in fields(Limits)}
    with pytest.raises(OptionError) as e:
        ServeConfig(model="m", no_auth=True, **({"limits": Limits(**{field: value})} if in_limits
                                                else {field: value})).check()
    assert str(e.value) == f"{field} {problem}"
    if cli is not None:
        flag = prefixed_flags(next(f for f in fields(Limits if in_limits else ServeConfig) if f.name == field))[0]
        assert main(["serve", "--model", "m", "--no-auth", "--device", "cpu", f"{flag}={cli}"]) == 2
        out = capsys.readouterr().err
        assert out == f"unime: error: serve: {flag} {problem}\n", out


def test_the_edges_of_the_ranges_are_accepted():
    """The bounds themselves pass: port 1 and 65535, a wait of 0 ms, a large finite timeout."""
    from unime.serve.config import Limits

    for port in (1, 65535):
        ServeConfig(model="m", no_auth=True, port=port, max_wait_ms=0.0, graceful_timeout_s=1e9, index_check_s=0.0,
                    limits=Limits(request_timeout_s=1e9)).check()


def test_a_port_in_use_is_refused_in_unimes_error_format_before_the_models_load(monkeypatch, capsys):
    """QA: a port already taken was found by uvicorn only after the models loaded (minutes with a real model):
    its own "[Errno 98] ... address already in use", exit 3. Now the address is bound first: one `unime: error:`
    line naming --host and --port, exit 2, and no model is loaded."""
    import socket

    from unime.cli import main
    from unime.serve.engine import Engine

    def load(cls, config):
        raise AssertionError("the models were loaded before the address was bound")

    monkeypatch.setattr(Engine, "load", classmethod(load))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "m", "--no-auth", "--port", str(port), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"unime: error: serve: --host 127.0.0.1 --port {port}: cannot listen there "
                                       "(Address already in use); stop what uses it or give another --port / --host\n")


def test_a_client_that_sends_half_its_body_and_waits_gets_a_408_and_the_others_are_served(world, tmp_path):
    """QA: a client that sent its headers and half its body, then waited, was never answered (100 s and counting:
    the request timeout counted only once the whole body was read), its connection held for good. Now a body not
    received within --request-timeout is a JSON 408 naming the option, the connection closed; the other requests
    are served meanwhile."""
    import json
    import socket

    s = Server(["--model", world["model"], "--no-auth", "--request-timeout", "2"],
               log_path=tmp_path / "log").wait_ready()
    try:
        body = json.dumps({"model": "model", "input": "half of this body is never sent"}).encode()
        slow = socket.create_connection(("127.0.0.1", s.port))
        slow.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        t0 = time.monotonic()
        r = httpx.post(s.base + "/v1/embeddings", json={"model": "model", "input": "another client"}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - t0 < 2
        slow.settimeout(30)
        answer = b""
        while chunk := slow.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        waited = time.monotonic() - t0
        slow.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in head.lower()
        error = json.loads(payload)["error"]
        assert error["message"] == "request body not received in full within 2 s (the server's --request-timeout)"
        assert error["type"] == "timeout" and error["code"] == "request_body_timeout"
        assert 1.5 < waited < 10
    finally:
        s.stop()


def _wait_until_served(s: Server, result: dict) -> None:
    """Returns once server `s` serves a request other than /metrics (before `result` gets its "r")."""
    deadline = time.monotonic() + 60  # the gauge counts the /metrics request itself too
    while time.monotonic() < deadline and "r" not in result:
        if s.proc.poll() is None and _metric(httpx.get(s.base + "/metrics").text, "unime_in_flight_requests") > 1:
            return
        time.sleep(0.01)
    pytest.fail("the request was never seen being served")


def _embedding_in_flight(s: Server, texts: list[str], timeout: float) -> tuple[threading.Thread, dict]:
    """A thread that posts `texts` to server `s`'s /v1/embeddings, returned once the server serves them: (the thread,
    its result, whose "r" is the response or the client's error's name)."""
    result = {}

    def call():
        try:
            result["r"] = httpx.post(s.base + "/v1/embeddings", json={"model": "model", "input": texts},
                                     timeout=timeout)
        except httpx.HTTPError as e:
            result["r"] = type(e).__name__

    t = threading.Thread(target=call)
    t.start()
    _wait_until_served(s, result)
    return t, result


def test_sigterm_drains_in_flight_requests(world, tmp_path):
    s = Server(["--model", world["model"], "--no-auth", "--max-batch-size", "4"],
               log_path=tmp_path / "log").wait_ready()
    try:
        t, result = _embedding_in_flight(s, [f"a long request item {i} " * 8 for i in range(48)], 120)
        s.proc.send_signal(signal.SIGTERM)  # the request being served
        t.join(120)
        assert s.proc.wait(60) == 0  # a clean drain is a normal end (uvicorn's re-raised signal was -15)
        r = result["r"]  # the served model's name defaults to its folder's name, 'model'
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 48
    finally:
        s.stop()


def test_from_the_first_sigterm_no_new_request_is_taken_and_the_port_is_free_while_it_drains(world, tmp_path):
    """What a request arriving during the drain gets (README): nothing, at once. uvicorn's shutdown closes the port
    (a new connection is refused: a client's retry or its load balancer goes elsewhere without waiting for the drain,
    and another server can listen on the port meanwhile) and the idle keep-alive connections (a request sent on one
    gets no response), and serves the request in flight to its end (200)."""
    import socket

    from unime.serve.runner import bind_address

    s = Server(["--model", world["model"], "--no-auth", "--max-batch-size", "1", "--graceful-timeout", "120"],
               log_path=tmp_path / "log").wait_ready()
    try:
        idle = socket.create_connection(("127.0.0.1", s.port))
        idle.settimeout(30)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not (answer.partition(b"\r\n\r\n")[2].endswith(b"}")):  # the headers, then the JSON body
            answer += idle.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        t, result = _embedding_in_flight(s, [f"a long request item {i} " * 40 for i in range(128)], 300)
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the port closes as the shutdown starts
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the port still took connections 30 s after SIGTERM")
        with pytest.raises(httpx.ConnectError):
            httpx.post(s.base + "/v1/embeddings", json={"model": "model", "input": "late"}, timeout=10)
        try:
            idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.recv(65536) == b""  # closed by the server, no response
        except ConnectionResetError:
            pass
        idle.close()
        other = bind_address("127.0.0.1", s.port)  # another server could listen there now
        other.listen()
        other.close()
        assert s.proc.poll() is None and "r" not in result  # all that while the drain went on
        t.join(300)
        assert s.proc.wait(60) == 0
        assert result["r"].status_code == 200 and len(result["r"].json()["data"]) == 128
    finally:
        s.stop()


def test_ctrl_c_stops_the_server_cleanly_with_exit_status_0(world, tmp_path):
    """QA: after draining, SIGTERM ended the process by the signal uvicorn re-raised (-15) and Ctrl-C as "unime:
    interrupted" (130); a service manager or a script sees a clean stop as a failure. Both now exit 0."""
    s = Server(["--model", world["model"], "--no-auth"], log_path=tmp_path / "log").wait_ready()
    try:
        s.proc.send_signal(signal.SIGINT)
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
    assert "interrupted" not in (tmp_path / "log").read_text()


def _signal_twice_during_a_request(world, tmp_path, sig: int) -> tuple[int, object]:
    """A server sent `sig` twice while it serves a long request, the second once it drains: (its exit status, the
    request's response or the client's error's name)."""
    s = Server(["--model", world["model"], "--no-auth", "--max-batch-size", "1", "--graceful-timeout", "120"],
               log_path=tmp_path / "log").wait_ready()
    try:
        t, result = _embedding_in_flight(s, [f"a long request item {i} " * 40 for i in range(256)], 300)
        s.proc.send_signal(sig)
        time.sleep(0.3)
        assert s.proc.poll() is None and "r" not in result  # draining: the request still runs
        s.proc.send_signal(sig)
        status = s.proc.wait(60)
        t.join(60)
        return status, result["r"]
    finally:
        s.stop()


def _cut_by_the_shutdown(response) -> None:
    """`response` is the JSON 503 of a request cut by the server's shutdown (`app.Observe`)."""
    assert getattr(response, "status_code", None) == 503, response
    assert response.json()["error"] == {"message": "server shutting down", "type": "unavailable", "param": None,
                                        "code": "server_shutting_down"}
    assert response.headers["retry-after"] == "5"


def test_a_second_sigterm_forces_the_exit_as_a_second_ctrl_c_does(world, tmp_path):
    """QA: the README says a second signal is a forced exit (requests cut; SIGTERM: 143), but uvicorn forces only on a
    second Ctrl-C: a second SIGTERM was ignored, the drain ran on to its end (up to --graceful-timeout) and the
    process exited 0. Now a second SIGTERM forces the exit as a second Ctrl-C does: the request in flight is cut and
    the process ends by SIGTERM. The request cut is answered the JSON 503 "server shutting down", as the README and
    the log say: the process died of the SIGTERM uvicorn re-raises before the request was answered, its connection
    closed without a response ("Server disconnected without sending a response")."""
    status, request = _signal_twice_during_a_request(world, tmp_path, signal.SIGTERM)
    assert status == -signal.SIGTERM
    _cut_by_the_shutdown(request)
    log = (tmp_path / "log").read_text()
    assert "shutting down: a second SIGTERM forced the exit: the requests still running are answered 503" in log, log


def test_a_second_ctrl_c_cuts_the_request_in_flight_without_a_traceback_in_the_log(world, tmp_path):
    """QA: a second Ctrl-C (uvicorn's forced exit) cut the request in flight (a 503) and exited 130 as it should, but
    logged `ERROR: Traceback ... KeyboardInterrupt / CancelledError` from uvicorn's shutdown."""
    status, request = _signal_twice_during_a_request(world, tmp_path, signal.SIGINT)
    assert status == 130
    _cut_by_the_shutdown(request)  # answered, as a second SIGTERM's: the forced exit cuts them (`_cut_requests`)
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log and "CancelledError" not in log, log
    # the request was cut by the second Ctrl-C (its --graceful-timeout, 120 s, was far from over): the log said the
    # graceful timeout had run out (QA)
    assert "graceful timeout" not in log, log
    assert "shutting down: a second Ctrl-C (SIGINT) forced the exit: the requests still running are answered 503" \
        in log, log


def test_the_lifespans_logger_on_a_forced_exit_drops_its_cancellation_alone(caplog):
    """The filter of a forced exit (`_quiet_lifespan_cancel`) drops the lifespan task's cancellation, raised or told
    in Starlette's traceback text, and nothing else: another error is still logged."""
    import asyncio
    import logging

    from unime.serve.runner import _quiet_lifespan_cancel

    quiet = _quiet_lifespan_cancel(logging.getLogger("uvicorn.error"))
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        quiet.error("Traceback (most recent call last):\n  File x\nasyncio.exceptions.CancelledError\n")
        quiet.error("Exception in 'lifespan' protocol\n", exc_info=asyncio.CancelledError())
        quiet.error("Traceback (most recent call last):\n  File x\nRuntimeError: the index is gone\n")
        quiet.error("Exception in 'lifespan' protocol\n", exc_info=ValueError("bad"))
    assert [(r.getMessage().splitlines()[0], r.exc_info and type(r.exc_info[1]).__name__) for r in caplog.records] == [
        ("Traceback (most recent call last):", None), ("Exception in 'lifespan' protocol", "ValueError")]
    assert caplog.records[0].getMessage().endswith("RuntimeError: the index is gone\n")


def test_requests_cut_by_the_graceful_timeout_get_a_503_and_no_traceback(world, tmp_path):
    """QA: with --graceful-timeout 0.5, the requests still running when it ran out were cancelled by uvicorn and each
    answered 500 "Internal Server Error" with a CancelledError traceback in the log. Now each is a JSON 503 "server
    shutting down" (type unavailable, Retry-After), with one log line; those that finished in time are 200s."""
    s = Server(["--model", world["model"], "--no-auth", "--max-batch-size", "4", "--graceful-timeout", "0.2"],
               log_path=tmp_path / "log").wait_ready()
    texts = [f"a long request item {i} " * 8 for i in range(32)]
    results = []

    def call():
        try:
            results.append(httpx.post(s.base + "/v1/embeddings", json={"model": "model", "input": texts}, timeout=120))
        except httpx.TransportError as e:  # a connection uvicorn had not read a request from yet: closed
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(24)]
    try:
        for t in threads:
            t.start()
        # every request has been read by the server (so none is cut at the socket) and enough are still being
        # served that the 0.2 s graceful timeout cuts some. The gauge counts the /metrics request itself too. On a
        # busy machine the first requests may finish before the last arrive: those count as read.
        deadline, seen = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            serving = _metric(httpx.get(s.base + "/metrics").text, "unime_in_flight_requests") - 1
            seen.append((serving, len(results)))
            if serving >= 8 and serving + len(results) >= 24:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"the requests never were all read with 8 still being served: {seen[-5:]}")
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
    codes = [getattr(r, "status_code", type(r).__name__) for r in results]
    assert len(codes) == 24 and set(codes) <= {200, 503}, codes
    cut = [r for r in results if r.status_code == 503]
    assert cut, codes  # the graceful timeout (0.2 s) ran out long before 8 * 32 items were encoded
    for r in cut:
        assert r.json()["error"] == {"message": "server shutting down", "type": "unavailable", "param": None,
                                     "code": "server_shutting_down"}
        assert r.headers["retry-after"] == "5"
    assert all(len(r.json()["data"]) == 32 for r in results if r.status_code == 200)
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "CancelledError" not in log and "Exception in ASGI application" not in log, log
    assert log.count("answered 503") == 1, log


def test_only_the_shutdowns_cancellation_becomes_a_503_any_other_propagates():
    """The middleware answers a request cancelled once the server shuts down with the 503 and ends that
    cancellation (the request's task finishes, uncancelled); a cancellation before the shutdown (a caller's own
    timeout, a task group) still propagates, nothing sent."""
    import asyncio

    from unime.serve.app import Observe
    from unime.serve.metrics import Metrics

    async def run(shutting_down: bool):
        sent, started = [], asyncio.Event()

        async def endless(scope, receive, send):
            started.set()
            await asyncio.Event().wait()

        async def send(msg):
            sent.append(msg)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        mw = Observe(endless, Metrics(), shutting_down=lambda: shutting_down)
        task = asyncio.create_task(mw({"type": "http", "path": "/v1/search", "method": "POST", "headers": []},
                                      receive, send))
        await started.wait()
        task.cancel()
        try:
            await task
            outcome = "returned"
        except asyncio.CancelledError:
            outcome = "cancelled"
        return outcome, task.cancelling() if hasattr(task, "cancelling") else None, sent  # (3.11+)

    outcome, cancelling, sent = asyncio.run(run(True))
    assert outcome == "returned" and cancelling in (0, None)
    assert sent[0]["status"] == 503 and (b"retry-after", b"5") in sent[0]["headers"]
    assert b'"message":"server shutting down"' in sent[1]["body"]
    outcome, cancelling, sent = asyncio.run(run(False))
    assert outcome == "cancelled" and cancelling in (1, None) and sent == []


@pytest.mark.parametrize("forced_by, said", [
    (None, "shutting down: the requests still running after the graceful timeout are answered 503"),
    ("Ctrl-C (SIGINT)", "shutting down: a second Ctrl-C (SIGINT) forced the exit: the requests still running are "
                        "answered 503"),
    ("SIGTERM", "shutting down: a second SIGTERM forced the exit: the requests still running are answered 503")])
def test_the_503s_of_a_shutdown_are_logged_once_saying_what_cut_them(caplog, forced_by, said):
    """QA: the requests a second Ctrl-C cut were logged as cut by the graceful timeout, which had not run out. The
    line names the second signal when one forced the exit (`forced_by`, set by the runner), the graceful timeout
    otherwise; once, whatever the number of requests cut."""
    import asyncio
    import logging

    from unime.serve.app import Observe
    from unime.serve.metrics import Metrics

    async def run():
        started = asyncio.Event()

        async def endless(scope, receive, send):
            started.set()
            await asyncio.Event().wait()

        async def send(msg):
            pass

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        mw = Observe(endless, Metrics(), shutting_down=lambda: True, forced_by=lambda: forced_by)
        for _ in range(2):
            started.clear()
            task = asyncio.create_task(mw({"type": "http", "path": "/v1/search", "method": "POST", "headers": []},
                                          receive, send))
            await started.wait()
            task.cancel()
            await task

    with caplog.at_level(logging.WARNING, logger="unime.serve"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records if r.name == "unime.serve"] == [said]


def test_a_build_appended_to_the_served_index_is_swapped_in_and_a_broken_one_keeps_the_old_serving(world, tmp_path,
                                                                                                     caplog):
    """QA: items added by `unime index build --out IDX` to the index a server serves were never seen (/health kept
    the startup count, /v1/search missed them, no warning). Now the folder is looked at every --index-check-interval
    (2 s): a finished build is loaded, checked and swapped in, with one log line; a state that cannot be served (here
    a manifest whose dim disagrees with its vectors) keeps the old index serving, with a warning in the log and in
    /health, until a good one comes."""
    import json
    import logging

    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex, build_corpus_index
    from unime.serve.app import create_app
    from unime.serve.engine import Engine

    corpus = write_corpus(tmp_path)
    build = dict(embedder=world["emb"], model=world["model"], cache_dir=tmp_path / "cache",
                 model_settings=world["idx"].manifest["model_settings"])
    build_corpus_index(corpus, tmp_path / "idx", **build)
    engine = Engine(world["emb"], MODEL, index=CorpusIndex(tmp_path / "idx"))
    app = create_app(engine, ServeConfig(model=world["model"], no_auth=True))
    query = "a violet triangle over a grey sea"

    def wait_for(c, done):
        for _ in range(600):  # the check runs every 2 s
            health = c.get("/health").json()
            if done(health):
                return health
            time.sleep(0.05)
        pytest.fail(f"never happened; /health: {health}")

    caplog.set_level(logging.INFO, logger="unime.serve")
    try:
        with TestClient(app) as c:
            assert c.get("/health").json()["index_items"] == 8
            assert query not in [h["item"]["text"] for h in c.post("/v1/search", json={"query": query, "top_k": 8})
                                 .json()["data"]]
            with open(corpus, "a") as fh:
                fh.write(json.dumps({"id": "new-1", "text": query}) + "\n")
            build_corpus_index(corpus, tmp_path / "idx", **build)
            health = wait_for(c, lambda h: h["index_items"] == 9)
            assert health["index_warning"] is None
            hits = c.post("/v1/search", json={"query": query, "top_k": 1}).json()["data"]
            assert [(h["id"], h["item"]["text"]) for h in hits] == [("new-1", query)]
            assert sum("reloaded: 9 items (was 8)" in r.getMessage() for r in caplog.records) == 1

            manifest = tmp_path / "idx" / "manifest.json"
            good = manifest.read_text()
            manifest.write_text(good.replace('"dim": 64', '"dim": 32'))
            health = wait_for(c, lambda h: h["index_warning"] is not None)
            assert health["index_items"] == 9
            assert "changed on disk but its new state cannot be served" in health["index_warning"]
            assert "the field 'dim' of" in health["index_warning"] and "still serving the 9 items" in \
                health["index_warning"]
            assert c.post("/v1/search", json={"query": query, "top_k": 1}).json()["data"][0]["id"] == "new-1"
            assert sum(r.levelno == logging.WARNING and "cannot be served" in r.getMessage()
                       for r in caplog.records) == 1

            manifest.write_text(good)  # a good state again: served, the warning gone
            health = wait_for(c, lambda h: h["index_warning"] is None)
            assert health["index_items"] == 9
    finally:
        engine.close()


def _build_stopped_before_its_first_chunk(corpus, out, build: dict, monkeypatch) -> None:
    """`out`: the folder of an index build of `corpus` that stopped (or still runs) before its first chunk, as it
    is then: its first manifest only."""
    from unime.index.store import build_corpus_index

    class Stopped(Exception):
        pass

    def stop(*a, **k):
        raise Stopped

    with monkeypatch.context() as m:
        m.setattr(build["embedder"], "encode", stop)
        with pytest.raises(Stopped):
            build_corpus_index(corpus, out, **{**build, "cache_dir": out.parent / "stopped-cache"})
    assert (out / "manifest.json").is_file() and not list(out.glob("chunks/*.npy"))


def test_serve_and_search_refuse_an_index_whose_build_stored_no_item_yet(world, tmp_path, monkeypatch, capsys):
    """QA: `unime serve --index IDX` on the folder of a build that had stored no chunk yet started, and every
    /v1/search was a 500 (a TypeError in `CorpusIndex.dim`, the manifest's dim still null); `unime search` ended in
    that traceback. Both now refuse it in one line naming the folder and what to do."""
    from unime.cli import main
    from unime.index.store import IndexError_
    from unime.serve.engine import Engine

    build = dict(embedder=world["emb"], model=world["model"], cache_dir=tmp_path / "cache",
                 model_settings=world["idx"].manifest["model_settings"])
    _build_stopped_before_its_first_chunk(write_corpus(tmp_path), tmp_path / "idx", build, monkeypatch)
    why = (f"{tmp_path / 'idx'}: the index holds no items yet (its build has stored none: still running, or stopped "
           "before its first chunk; re-run `unime index build` to finish it)")
    with pytest.raises(IndexError_) as e:
        Engine.load(ServeConfig(model=world["model"], dtype="auto", index=str(tmp_path / "idx"), no_auth=True))
    assert str(e.value) == why
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", "a red square", "--device", "cpu"]) != 0
    assert capsys.readouterr().err.strip().splitlines() == [f"unime: error: {why}"]


def test_a_new_build_begun_in_the_served_index_folder_keeps_the_old_index_serving_until_it_finishes(world, tmp_path,
                                                                                                     monkeypatch):
    """QA: the served index folder removed and built anew (`rm -r IDX; unime index build --out IDX`) under search
    load: the build's first manifest (no vectors yet, `dim` null) was swapped in as a state of 0 items
    ("reloaded: 0 items (was 539)") and every search was a 500 (TypeError in `CorpusIndex.dim`) until the build
    finished. A state that holds no items yet is a build not finished: the old index keeps serving, with the
    warning, and the finished build is swapped in."""
    import asyncio
    import shutil

    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex, build_corpus_index
    from unime.serve.app import create_app
    from unime.serve.engine import Engine
    from unime.serve.index_reload import IndexReloader

    corpus = write_corpus(tmp_path)
    build = dict(embedder=world["emb"], model=world["model"], cache_dir=tmp_path / "cache",
                 model_settings=world["idx"].manifest["model_settings"])
    build_corpus_index(corpus, tmp_path / "idx", **build)
    engine = Engine(world["emb"], MODEL, index=CorpusIndex(tmp_path / "idx"))
    reloader = IndexReloader(engine, model=world["model"], dtype="auto", interval_s=1.0, fixed_rerank_root=False)
    shutil.rmtree(tmp_path / "idx")
    _build_stopped_before_its_first_chunk(corpus, tmp_path / "idx", build, monkeypatch)
    try:
        assert asyncio.run(reloader.check()) is False
        assert len(engine.index) == 8
        assert "holds no items yet" in reloader.warning and "still serving the 8 items" in reloader.warning
        with TestClient(create_app(engine, ServeConfig(model=world["model"], no_auth=True, index_check_s=0))) as c:
            r = c.post("/v1/search", json={"query": "a red square", "top_k": 3})
            assert r.status_code == 200 and len(r.json()["data"]) == 3
        build_corpus_index(corpus, tmp_path / "idx", **build)  # the build run again to its end
        assert asyncio.run(reloader.check()) is True
        assert len(engine.index) == 8 and reloader.warning is None
    finally:
        engine.close()


@needs_proc_maps
def test_serve_mmap_serves_the_index_memory_mapped_and_a_reload_reads_the_new_build_so_too(world, tmp_path):
    """`unime serve --mmap`: the served index's faiss.index is read memory-mapped (mapped by the process, as
    /proc/self/maps lists it), its hits those of the default read; a build appended to it is swapped in read the
    same way, the old state (still held by a request that took it) searching the file it opened, replaced since."""
    import asyncio
    import json

    from unime.cli import build_parser
    from unime.cli.serve import config_from_args
    from unime.index.store import CorpusIndex, build_corpus_index
    from unime.serve.engine import Engine
    from unime.serve.index_reload import IndexReloader

    corpus = write_corpus(tmp_path)
    build = dict(embedder=world["emb"], model=world["model"], cache_dir=tmp_path / "cache",
                 model_settings=world["idx"].manifest["model_settings"])
    build_corpus_index(corpus, tmp_path / "idx", **build)
    path = str((tmp_path / "idx" / "faiss.index").resolve())
    config = config_from_args(build_parser().parse_args(["serve", "--model", world["model"], "--index",
                                                         str(tmp_path / "idx"), "--mmap", "--no-auth", "--dtype",
                                                         "auto", "--device", "cpu"]))
    assert config.mmap is True
    engine = Engine.load(config)
    try:
        old = engine.index
        assert old.mmap and path in mapped_files()
        q = engine.embedder.encode([Item(text="a red square")])
        expected = CorpusIndex(tmp_path / "idx").search(q, 8)
        for got, want in zip(old.search(q, 8), expected):
            np.testing.assert_array_equal(got, want)
        query = "a violet triangle over a grey sea"
        with open(corpus, "a") as fh:
            fh.write(json.dumps({"id": "new-1", "text": query}) + "\n")
        build_corpus_index(corpus, tmp_path / "idx", **build)
        reloader = IndexReloader(engine, model=config.model, dtype=config.dtype, interval_s=1.0,
                                 fixed_rerank_root=False)
        assert asyncio.run(reloader.check()) and engine.index is not old and reloader.warning is None
        assert engine.index.mmap and len(engine.index) == 9
        assert path in mapped_files() and f"{path} (deleted)" in mapped_files()  # the new file; the old one, replaced
        _, rows = engine.index.search(engine.embedder.encode([Item(text=query)]), 1)
        assert engine.index.entries[rows[0, 0]]["id"] == "new-1"
        np.testing.assert_array_equal(old.search(q, 8)[1], expected[1])
    finally:
        engine.close()


def _chromium():
    import shutil

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_search_page_in_a_real_browser(server, world, tmp_path):
    import os
    import shutil

    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chromium()
    try:
        browser.get(server.base + "/")
        # the page re-renders its grid when a search returns: an element read mid-render is stale, so the
        # waits retry on that, and the ids are read inside the wait
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))

        def results(reranked: str):
            def ids(b):
                if b.find_element(By.ID, "grid").get_attribute("data-reranked") != reranked:
                    return False
                return [e.get_attribute("data-id") for e in b.find_elements(By.CSS_SELECTOR, "#grid .result")] or False
            return wait.until(ids)

        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.find_element(By.ID, "k").clear()
        browser.find_element(By.ID, "k").send_keys("6")
        browser.find_element(By.ID, "q").send_keys("a red square")
        browser.find_element(By.ID, "go").click()
        with _client(server) as c:
            api_hits = c.post("/v1/search", json={"query": "a red square", "top_k": 6}).json()["data"]
            api = [h["id"] for h in api_hits]
            api_rr = [h["id"] for h in c.post("/v1/search", json={"query": "a red square", "top_k": 6,
                                                                   "rerank": True}).json()["data"]]
        assert results("false") == api
        thumbs = browser.find_elements(By.CSS_SELECTOR, "#grid .result img")
        assert len(thumbs) == sum("thumbnail" in h for h in api_hits) > 0
        assert all(t.get_attribute("naturalWidth") != "0" for t in thumbs)
        scores = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#grid .score")]
        assert scores[0].startswith("#1 ") and "rerank" not in scores[0]
        # the rerank toggle
        browser.find_element(By.ID, "rerank").click()
        browser.find_element(By.ID, "go").click()
        assert results("true") == api_rr
        assert "rerank" in browser.find_elements(By.CSS_SELECTOR, "#grid .score")[0].text
        # an image query chosen in the page (the browser reads the file, the server gets a data URI)
        browser.find_element(By.ID, "rerank").click()
        browser.find_element(By.ID, "q").clear()
        browser.find_element(By.ID, "file").send_keys(str(world["root"] / "img" / "green.png"))
        wait.until(EC.presence_of_element_located((By.ID, "query-image")))
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#grid .result")
                   and b.find_elements(By.CSS_SELECTOR, "#grid .result")[0].get_attribute("data-id") == "img-green")
        shot = tmp_path / "search_page.png"
        assert browser.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size[0] >= 800
        if os.environ.get("UNIME_TEST_ARTIFACTS"):
            os.makedirs(os.environ["UNIME_TEST_ARTIFACTS"], exist_ok=True)
            shutil.copy(shot, os.path.join(os.environ["UNIME_TEST_ARTIFACTS"], "search_page.png"))
        assert browser.find_element(By.ID, "status").text == ""
        # a video query chosen in the page, sent as {"video": "data:video/mp4;base64,..."} (the page took images only)
        clip = write_clip(tmp_path / "query.mp4", n=12, fps=10)
        uri = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
        browser.execute_script("window.sent = []; const f = window.fetch; window.fetch = (url, opts) => "
                               "{ window.sent.push(JSON.parse(opts.body)); return f(url, opts); };")
        browser.find_element(By.ID, "video").send_keys(str(clip))
        wait.until(EC.presence_of_element_located((By.ID, "query-video")))
        assert not browser.find_elements(By.ID, "query-image")  # one image or one video, the last chosen
        browser.execute_script("document.getElementById('grid').innerHTML = '';")
        browser.find_element(By.ID, "go").click()
        with _client(server) as c:
            r = c.post("/v1/search", json={"query": {"video": uri}, "top_k": 6})
            assert r.status_code == 200, r.text
            api_video = [h["id"] for h in r.json()["data"]]
        assert wait.until(lambda b: b.execute_script("return window.sent"))[0]["query"] == {"text": None, "video": uri}
        assert wait.until(lambda b: [e.get_attribute("data-id") for e in b.find_elements(By.CSS_SELECTOR,
                                                                                         "#grid .result")]
                          or False) == api_video
        assert browser.find_element(By.ID, "status").text == ""
        # a video over the server's limit is told as an image over it is: the server's message
        told = {}
        for kind, name in (("video", "big.mp4"), ("file", "big.png")):
            (tmp_path / name).write_bytes(bytes(160_000))  # its data URI: over --max-body-bytes 200000
            browser.find_element(By.ID, "clear").click()
            browser.find_element(By.ID, kind).send_keys(str(tmp_path / name))
            wait.until(EC.presence_of_element_located((By.ID, "query-video" if kind == "video" else "query-image")))
            browser.find_element(By.ID, "go").click()
            told[kind] = wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("error")
                                    and b.find_element(By.ID, "status").text)
        body_limit = ("error 413: request body over the limit of 200000 bytes (the server's --max-body-bytes; an "
                      "inline image or video takes 4/3 of its bytes in base64)")
        assert told["video"] == told["file"] == body_limit, told
    finally:
        browser.quit()



def test_the_search_page_sends_a_chosen_video_as_a_data_uri(tmp_path):
    """The page (no server: its fetch answered in the browser) sends a video chosen in its video input as
    {"query": {"text": null, "video": "data:video/mp4;base64,..."}}, and shows the server's size refusal as it shows
    an image's. (The page took images only.)"""
    from importlib import resources

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = tmp_path / "page.html"
    page.write_text(resources.files("unime.serve").joinpath("page.html").read_text(encoding="utf-8"))
    clip = write_clip(tmp_path / "query.mp4", n=12, fps=10)
    browser = _chromium()
    try:
        browser.get(page.as_uri())
        browser.execute_script("window.sent = []; window.fetch = async (url, opts) => { window.sent.push("
                               "JSON.parse(opts.body)); return { ok: false, status: 413, json: async () => "
                               "({ error: { message: 'query.video: video is over 10 bytes' } }) }; };")
        browser.find_element(By.ID, "video").send_keys(str(clip))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.ID, "query-video"))
        browser.find_element(By.ID, "go").click()
        sent = wait.until(lambda b: b.execute_script("return window.sent"))
        uri = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
        assert sent == [{"query": {"text": None, "video": uri}, "top_k": 12, "rerank": False}]
        assert wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("error")
                          and b.find_element(By.ID, "status").text) == "error 413: query.video: video is over 10 bytes"
    finally:
        browser.quit()


def test_search_reranks_rerank_top_k_candidates_even_beyond_top_k(world, monkeypatch):
    """QA: `rerank_top_k` over `top_k` reranked only the `top_k` hits retrieved ("how many of the top results to
    rerank"). Now max(top_k, rerank_top_k) hits are retrieved, the first rerank_top_k reranked and the best top_k
    returned. A fake pairwise reranker that prefers the 5th plain hit: with rerank_top_k 5 and top_k 2, it comes
    first, then the plain first hit; a rerank_top_k over the server's max_top_k is refused like top_k."""
    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex, search_items
    from unime.serve.app import create_app
    from unime.serve.config import Limits
    from unime.serve.engine import Engine

    plain = search_items(world["idx"], world["emb"].encode(["a red square"]), 5)[0]
    assert len(plain) == 5
    engine = Engine(world["emb"], MODEL, world["rr"], RERANKER, CorpusIndex(world["root"] / "idx"))
    target = engine.index.item(plain[4]["row"])
    seen = []

    def rerank_pairwise(query, docs):
        seen.append(len(docs))
        scores = [1.0 if d == target else 0.0 for d in docs]
        return sorted(range(len(docs)), key=lambda i: -scores[i]), scores, 0

    monkeypatch.setattr(engine, "rerank_pairwise", rerank_pairwise)
    app = create_app(engine, ServeConfig(model=world["model"], no_auth=True,
                                         limits=Limits(max_top_k=6)))
    try:
        with TestClient(app) as c:
            r = c.post("/v1/search", json={"query": "a red square", "top_k": 2, "rerank": True, "rerank_top_k": 5})
            over = c.post("/v1/search", json={"query": "a red square", "top_k": 2, "rerank": True,
                                              "rerank_top_k": 7})
    finally:
        engine.close()
    assert r.status_code == 200, r.text
    assert seen == [5]
    assert [h["id"] for h in r.json()["data"]] == [plain[4]["id"], plain[0]["id"]]
    assert [h["rerank_score"] for h in r.json()["data"]] == [1.0, 0.0]
    assert [h["rank"] for h in r.json()["data"]] == [1, 2]
    assert over.status_code == 400 and "rerank_top_k: 7 is over the limit of 6" in over.text, over.text


@contextmanager
def _in_process(world, reranker=None, **limits):
    """A TestClient of the real app in process, on the module's models and index (no auth), with `limits`;
    `reranker`: another than the module's."""
    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex
    from unime.serve.app import create_app
    from unime.serve.config import Limits
    from unime.serve.engine import Engine

    engine = Engine(world["emb"], MODEL, reranker or world["rr"], RERANKER, CorpusIndex(world["root"] / "idx"))
    try:
        with TestClient(create_app(engine, ServeConfig(model=world["model"], no_auth=True,
                                                       limits=Limits(**limits)))) as c:
            yield c
    finally:
        engine.close()


def test_docs_is_a_reference_of_every_endpoint_that_reads_offline(world):
    """QA: /docs was FastAPI's Swagger UI, whose scripts come from a CDN: offline, a blank page. It is rendered on the
    server from the OpenAPI schema, without scripts: every operation of /openapi.json (method, path, summary), each
    request body's fields (the pydantic models') and the item type's; links to the schema, the search page and the
    Swagger UI, which moved to /docs/swagger."""
    import html
    import re

    from unime.serve.schemas import EmbeddingsRequest, MultimodalInput, RerankRequest, SearchRequest

    with _in_process(world) as c:
        page = c.get("/docs")
        schema = c.get("/openapi.json").json()
        swagger = c.get("/docs/swagger")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<script" not in text and "http://" not in text and "https://" not in text  # nothing loaded from elsewhere

    def plain(fragment: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()

    operations = {f"{method.upper()} {path}": op for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert {"POST /v1/embeddings", "POST /v1/rerank", "POST /v1/search", "GET /health", "GET /metrics"} <= \
        set(operations)
    headings = [plain(h) for h in re.findall(r"<h2[^>]*>(.*?)</h2>", text, re.S)]
    assert headings == list(operations) + ["request types"]
    for op in operations.values():
        assert html.escape(op["summary"]) in text
    cells = {plain(td) for td in re.findall(r"<td>(.*?)</td>", text, re.S)}
    for model in (EmbeddingsRequest, RerankRequest, SearchRequest, MultimodalInput):
        assert set(model.model_fields) <= cells, model
    for link in ("/openapi.json", "/", "/docs/swagger"):
        assert f"href='{link}'" in text
    assert swagger.status_code == 200 and "swagger-ui" in swagger.text and "/openapi.json" in swagger.text


def test_redoc_goes_to_the_reference_that_reads_offline(world):
    """QA: /redoc was FastAPI's ReDoc page, whose script comes from a CDN: offline, a blank page. It redirects to
    /docs, rendered on the server without scripts."""
    with _in_process(world) as c:
        moved = c.get("/redoc", follow_redirects=False)
        page = c.get("/redoc")
    assert moved.status_code == 307 and moved.headers["location"] == "/docs"
    assert page.status_code == 200 and page.url.path == "/docs"
    assert "<script" not in page.text and "redoc" not in page.text.lower()


SURROGATE = [  # raw JSON: the "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder writes
    ("/v1/embeddings", '{"model": "%s", "input": "a\\ud800b"}' % MODEL, "input[0]", 1),
    ("/v1/embeddings", '{"model": "%s", "input": ["ok", {"text": "\\udc00"}]}' % MODEL, "input[1].text", 0),
    ("/v1/embeddings", '{"model": "%s", "input": "ok", "instruction": "ab\\ud83d"}' % MODEL, "instruction", 2),
    ("/v1/rerank", '{"query": "q\\ud800", "documents": ["a"]}', "query", 1),
    ("/v1/rerank", '{"query": "q", "documents": ["a", "b\\udfff"]}', "documents[1]", 1),
    ("/v1/search", '{"query": "\\ud800"}', "query", 0),
    ("/v1/search", '{"query": "q", "instruction": "\\ud800"}', "instruction", 0),
]


@pytest.mark.parametrize("path,body,field,at", SURROGATE, ids=[f"{p} {f}" for p, _, f, _ in SURROGATE])
def test_a_lone_surrogate_in_a_text_is_a_400_naming_the_field(world, path, body, field, at):
    """QA: `{"query": "a\\ud800b"}` was a 500 (UnicodeEncodeError at `Item.key`)."""
    with _in_process(world) as c:
        r = c.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
        good = c.post("/v1/search", json={"query": "a red square", "top_k": 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    assert r.json()["error"]["message"].startswith(f"{field}: text holds a lone UTF-16 surrogate ")
    assert f"at character {at}," in r.json()["error"]["message"]
    assert good.status_code == 200


LOOSE = [  # a string, a bool or a float where an integer is expected, a string or a number where a bool is
    ("/v1/search", {"query": "q", "top_k": "3"}, "top_k"),
    ("/v1/search", {"query": "q", "top_k": True}, "top_k"),  # was a top_k of 1
    ("/v1/search", {"query": "q", "top_k": 3.0}, "top_k"),
    ("/v1/search", {"query": "q", "rerank": "yes"}, "rerank"),
    ("/v1/search", {"query": "q", "rerank": 1}, "rerank"),
    ("/v1/search", {"query": "q", "rerank": True, "rerank_top_k": "4"}, "rerank_top_k"),
    ("/v1/search", {"query": "q", "include_thumbnails": "false"}, "include_thumbnails"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "1"}, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "true"}, "return_documents"),
    ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": "8"}, "dimensions"),
]


@pytest.mark.parametrize("path,body,field", LOOSE, ids=[f"{p} {f}={b[f]!r}" for p, b, f in LOOSE])
def test_a_string_or_bool_where_an_int_or_bool_is_expected_is_a_422_naming_the_field(world, path, body, field):
    """QA: `"top_k": "3"`, `"top_k": true` (a top_k of 1), `"top_k": 3.0` and `"rerank": "yes"` were accepted."""
    with _in_process(world) as c:
        r = c.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field
    assert r.json()["error"]["message"].startswith(f"invalid request: {field}: ")


@pytest.mark.parametrize("token_ids", [[[1, 2, 3]], [1, 2, 3], [[1], [2, 3]], 7])
def test_token_id_input_is_one_clear_422_on_input(world, token_ids):
    """QA: `{"input": [[1, 2, 3]]}` (OpenAI's schema allows token IDs; LangChain's OpenAIEmbeddings sends them by
    default) was a 422 listing pydantic's every union alternative, with param 'input.str'."""
    with _in_process(world) as c:
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": token_ids})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "input"
    assert r.json()["error"]["message"] == \
        "invalid request: input: token-ID input is not supported; send text or multimodal items"


def test_json_integers_and_booleans_are_accepted(world):
    """What the OpenAI / Cohere clients send: JSON integers and booleans."""
    with _in_process(world) as c:
        s = c.post("/v1/search", json={"query": "a red square", "top_k": 3, "rerank": False,
                                       "include_thumbnails": False})
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"], "top_n": 1, "return_documents": True})
        e = c.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": world["emb"].hidden_size})
    assert s.status_code == 200 and len(s.json()["data"]) == 3 and "thumbnail" not in s.json()["data"][0], s.text
    assert r.status_code == 200 and len(r.json()["results"]) == 1 and "document" in r.json()["results"][0], r.text
    assert e.status_code == 200 and len(e.json()["data"][0]["embedding"]) == world["emb"].hidden_size, e.text


def _tokens(world, text: str) -> int:
    """`text`'s tokens by the embedder's tokenizer (the transformers tokenizer's own call, not the service's copy)."""
    return len(world["emb"].adapter.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_text_over_the_token_limit_is_a_400_naming_the_field_and_the_count(world):
    """QA: 8,000 emoji pass the 8,192-character limit but are 32,000 tokens (8 times the tiny model's context), which
    held the model thread, and every request behind it, past the request timeout. A text is held to
    `max_text_tokens` (default 2048) too: 600 emoji are 2,400 tokens in 600 characters."""
    rockets = "\N{ROCKET}" * 600
    n = _tokens(world, rockets)
    assert n == 2400 and len(rockets) < 8192
    long_doc = "a red rocket: " + rockets
    with _in_process(world) as c:
        s = c.post("/v1/search", json={"query": rockets, "top_k": 1})
        e = c.post("/v1/embeddings", json={"model": MODEL, "input": ["ok", {"text": rockets}]})
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a", long_doc]})
        good = c.post("/v1/search", json={"query": "\N{ROCKET}" * 500, "top_k": 1})  # 2,000 tokens
    assert s.status_code == 400 and s.json()["error"]["param"] == "query", s.text
    assert s.json()["error"]["message"] == f"query: text of {n} tokens is over the limit of 2048"
    assert e.status_code == 400 and e.json()["error"]["message"] == \
        f"input[1].text: text of {n} tokens is over the limit of 2048", e.text
    assert r.status_code == 400 and r.json()["error"]["message"] == \
        f"documents[1]: text of {_tokens(world, long_doc)} tokens is over the limit of 2048", r.text
    assert good.status_code == 200, good.text


def test_the_token_limit_counts_the_instruction_and_is_at_most_the_models_context(world):
    """The text with its instruction (on its own line) is counted; a `max_text_tokens` over the served models'
    max_position_embeddings (the tiny models': 4096) is capped to it."""
    context = world["emb"].model.config.text_config.max_position_embeddings
    assert context == 4096
    instruction, text = "Find the picture.", "\N{ROCKET}" * 10
    n = _tokens(world, f"{instruction}\n{text}")
    assert n > _tokens(world, text) + _tokens(world, instruction)  # the newline is a token of its own
    over = "\N{ROCKET}" * 1100  # 4,400 tokens
    with _in_process(world, max_text_tokens=n) as c:
        at = c.post("/v1/embeddings", json={"model": MODEL, "input": text, "instruction": instruction})
    with _in_process(world, max_text_tokens=n - 1) as c:
        past = c.post("/v1/embeddings", json={"model": MODEL, "input": text, "instruction": instruction})
    with _in_process(world, max_text_tokens=10 ** 6, max_text_chars=10 ** 6) as c:
        capped = c.post("/v1/search", json={"query": over})
    assert at.status_code == 200, at.text
    assert past.status_code == 400 and past.json()["error"]["message"] == \
        f"input[0]: text of {n} tokens with the instruction is over the limit of {n - 1}", past.text
    assert capped.status_code == 400 and capped.json()["error"]["message"] == \
        f"query: text of {_tokens(world, over)} tokens is over the limit of {context}", capped.text


def test_the_token_limit_counts_a_text_by_the_tokenizer_of_the_model_that_reads_it(world, tmp_path):
    """QA: a rerank request's texts were counted by the embedder's tokenizer, though the reranker reads them. A
    reranker whose tokenizer has "xylophone quartz" as whole tokens: 5 of them are 15 of its tokens, 60 of the
    embedder's. Under a limit of 15 the reranker takes them (they were a 400 naming the embedder's 60); the embedder
    does not; a search that reranks counts its query by both (the more)."""
    from unime.models.reranker import Reranker
    from unime.models.tiny import build_tiny

    rr = Reranker.from_pretrained(build_tiny("qwen2_vl", tmp_path / "rr", tokenizer_corpus_lines=["xylophone quartz"]
                                             * 200), device="cpu")
    text = "xylophone quartz " * 5
    by_embedder = _tokens(world, text)
    by_reranker = len(rr.adapter.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert (by_embedder, by_reranker) == (60, 15)
    with _in_process(world, reranker=rr, max_text_tokens=15) as c:
        query = c.post("/v1/rerank", json={"query": text, "documents": ["a"]})
        doc = c.post("/v1/rerank", json={"query": "q", "documents": ["a", text], "mode": "listwise"})
        over = c.post("/v1/rerank", json={"query": "q", "documents": [text + "xylophone"]})
        embedded = c.post("/v1/embeddings", json={"model": MODEL, "input": text})
        searched = c.post("/v1/search", json={"query": text, "rerank": True})
    assert query.status_code == 200 and doc.status_code == 200, (query.text, doc.text)
    assert over.status_code == 400 and over.json()["error"]["message"] == \
        "documents[0]: text of 16 tokens is over the limit of 15", over.text
    for r, field in ((embedded, "input[0]"), (searched, "query")):
        assert r.status_code == 400 and r.json()["error"]["message"] == \
            f"{field}: text of 60 tokens is over the limit of 15", r.text


@pytest.mark.parametrize("ends", ["disconnect", "timeout"])
def test_a_request_whose_client_disconnected_or_that_timed_out_is_not_encoded(world, monkeypatch, ends):
    """QA: an abandoned request's item was still encoded, and every request behind it waited for that. The app
    called as uvicorn calls it: request 1 holds the model thread; request 2's client goes away (499), or its
    request times out (503), while its item is queued: its work is cancelled and its item dropped from the queue;
    request 3, sent once the model is free, is encoded next, alone. (A timeout dropped it before too.) The
    `unime_queue_depth` gauge stops counting request 2's item at once (it counted it until it was dropped)."""
    import asyncio
    import json

    from prometheus_client import generate_latest

    from unime.serve.app import create_app
    from unime.serve.engine import Encoded, Engine

    release, started = threading.Event(), threading.Event()
    encoded: list[list[str]] = []
    depths: list[float] = []

    def encode(items):
        encoded.append([it.text for it in items])
        started.set()
        release.wait(30)
        return [Encoded(np.ones(world["emb"].hidden_size, dtype=np.float32), 1) for _ in items]

    engine = Engine(world["emb"], MODEL)
    monkeypatch.setattr(engine, "encode", encode)
    from unime.serve.config import Limits

    timeout = 1.0 if ends == "timeout" else 60.0  # request 1 and 2 time out; request 3 is encoded at once
    app = create_app(engine, ServeConfig(model=world["model"], no_auth=True, max_wait_ms=1.0,
                                         limits=Limits(request_timeout_s=timeout)))

    async def call(text, gone: asyncio.Event):
        body = json.dumps({"model": MODEL, "input": text}).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        await app(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    async def main():
        loop = asyncio.get_running_loop()
        async with app.router.lifespan_context(app):
            stays, leaves = asyncio.Event(), asyncio.Event()
            first = asyncio.ensure_future(call("first", stays))
            await loop.run_in_executor(None, started.wait, 30)
            second = asyncio.ensure_future(call("second", leaves))
            while app.state.batcher.depth() < 1:
                await asyncio.sleep(0.01)
            if ends == "disconnect":
                leaves.set()
            await asyncio.wait({second}, timeout=10)  # on the old code a disconnected request waits for its encoding
            # request 2's item, still queued behind request 1's, is no longer waiting: the gauge does not count it
            depths.append(_metric(generate_latest(app.state.metrics.registry).decode(), "unime_queue_depth"))
            release.set()
            third = asyncio.ensure_future(call("third", stays))
            return await asyncio.gather(first, second, third)

    try:
        statuses = asyncio.run(main())
    finally:
        release.set()
        engine.close()
    assert encoded == [["first"], ["third"]]
    assert depths == [0.0]
    assert statuses == ([200, 499, 200] if ends == "disconnect" else [503, 503, 200])


def test_token_batches_cut_by_shape_and_padded_tokens():
    from unime.serve.engine import token_batches

    text = (False, 0)
    # by length: 10, 11, 12, 30 pad to 4 x 30 = 120 tokens; the 2000-token text would make 5 x 2000 > 8192
    assert token_batches([10, 2000, 12, 11, 30], [text] * 5, 8192) == [[0, 3, 2, 4], [1]]
    assert token_batches([100] * 5, [text] * 5, 250) == [[0, 1], [2, 3], [4]]  # 2 x 100 fit, 3 x 100 do not
    assert token_batches([500, 3], [text] * 2, 100) == [[1], [0]]  # longer than the budget: alone
    assert token_batches([5, 5, 5], [(False, 1), text, (False, 1)], 8192) == [[1], [0, 2]]  # a new shape: a new call
    assert token_batches([0, 0], [(False, 1)] * 2, 1) == [[0], [1]]  # an image without text counts 1


def test_a_long_text_does_not_pad_the_short_ones_of_its_batch(world, monkeypatch):
    """QA: long and short items shared one padded model call. The engine runs a dynamic batch in calls of at most
    `max_batch_tokens` padded tokens, by length; each item's embedding and token count are those it gets alone."""
    from unime.serve.engine import Engine

    emb = world["emb"]
    texts = ["a red square", "\N{ROCKET}" * 300, "green", "a blue circle"]  # the rockets: 1,200 tokens
    calls = []
    real = emb.encode

    def encode(items, **kw):
        calls.append([it.text for it in items])
        return real(items, **kw)

    monkeypatch.setattr(emb, "encode", encode)
    engine = Engine(emb, MODEL, max_batch_tokens=1000)
    try:
        got = engine.encode([Item(text=t) for t in texts])
    finally:
        engine.close()
    monkeypatch.setattr(emb, "encode", real)
    assert calls == [["green", "a red square", "a blue circle"], [texts[1]]]
    for t, g in zip(texts, got):
        alone, n = emb.encode([t], return_token_counts=True)
        np.testing.assert_allclose(g.vector, alone[0], atol=1e-5)
        assert g.tokens == n[0]


def test_a_nan_embedding_is_a_clear_error_naming_the_input(world, monkeypatch):
    """A model that returns NaN for a query: /v1/search answered a bare "internal server error" 500 (FAISS's check of
    the query vector raised, the reason only in the log), /v1/embeddings the same (its JSON could not hold NaN). Now
    a 500 whose JSON body names the input and says the model returned NaN / inf; the other inputs still work."""
    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex
    from unime.serve.app import create_app
    from unime.serve.engine import Encoded, Engine

    engine = Engine(world["emb"], MODEL, world["rr"], RERANKER, CorpusIndex(world["root"] / "idx"))
    real = engine.encode

    def encode(items):  # the stub model: NaN for the item "poison", the real vectors for the others
        return [Encoded(np.full(engine.dim, np.nan, dtype=np.float32), e.tokens) if it.text == "poison" else e
                for it, e in zip(items, real(items))]

    monkeypatch.setattr(engine, "encode", encode)
    try:
        with TestClient(create_app(engine, ServeConfig(model=world["model"], no_auth=True))) as c:
            search = c.post("/v1/search", json={"query": "poison", "top_k": 2})
            embed = c.post("/v1/embeddings", json={"model": MODEL, "input": ["fine", "poison"]})
            good = c.post("/v1/search", json={"query": "a red square", "top_k": 2})
    finally:
        engine.close()
    assert search.status_code == 500, search.text
    err = search.json()["error"]
    assert err["param"] == "query" and err["type"] == "server_error" and err["code"] == "non_finite_embedding"
    assert err["message"] == "query: the embedding model returned NaN or inf for this input (a model fault)"
    assert embed.status_code == 500 and embed.json()["error"]["param"] == "input[1]", embed.text
    assert good.status_code == 200 and len(good.json()["data"]) == 2, good.text


@pytest.mark.parametrize("mode", ["pairwise", "listwise"])
def test_a_reranked_search_over_an_indexed_image_gone_bad_names_the_item(world, tmp_path, caplog, mode):
    """QA: a reranked /v1/search whose hits include an indexed image that was since deleted or damaged under the
    index's data root (the reranker reads it from there) was a bare 500 'internal server error', the traceback in
    the log. Now the 500 names the indexed item, its image and what to do; the log has one line, no traceback, and
    the other requests are served."""
    import logging

    from fastapi.testclient import TestClient

    from unime.index.store import CorpusIndex, build_corpus_index
    from unime.models.reranker import Reranker
    from unime.serve.app import create_app
    from unime.serve.engine import Engine

    build_corpus_index(write_corpus(tmp_path), tmp_path / "idx", embedder=world["emb"], model=world["model"],
                       cache_dir=tmp_path / "cache", model_settings=world["idx"].manifest["model_settings"])
    (tmp_path / "img" / "red.png").write_bytes(b"not an image")
    rr = Reranker.from_pretrained(world["model"], device="cpu", data_root=str(tmp_path))
    engine = Engine(world["emb"], MODEL, reranker=rr, reranker_name=RERANKER, index=CorpusIndex(tmp_path / "idx"))
    app = create_app(engine, ServeConfig(model=world["model"], no_auth=True, index_check_s=0))
    caplog.set_level(logging.INFO, logger="unime.serve")
    with TestClient(app) as c:
        r = c.post("/v1/search", json={"query": "a red square", "top_k": 8, "rerank": True, "rerank_mode": mode})
        assert r.status_code == 500, r.text
        message = r.json()["error"]["message"]
        assert message.startswith("rerank: the indexed item 'img-red' cannot be read by the reranker (corrupt or "
                                  "unreadable image img/red.png"), message
        assert message.endswith("; its image is missing or damaged under the reranker's data root (the index's, or "
                                "--rerank-data-root): rebuild the index (`unime index build`) or point "
                                "--rerank-data-root at the folder of the indexed images"), message
        assert r.json()["error"]["type"] == "server_error"
        ok = c.post("/v1/search", json={"query": "a red square", "top_k": 8})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 8
    assert not any(r.exc_info for r in caplog.records)
    assert sum("the indexed item 'img-red' cannot be read" in r.getMessage() for r in caplog.records) == 1


def test_a_rerank_data_root_that_is_no_folder_is_refused_before_the_models_load(world, tmp_path, monkeypatch):
    """QA: `unime serve --reranker R --index IDX --rerank-data-root nowhere` started, then failed every reranked search
    of an image item (image file not found, looked in 'nowhere'). It is refused at startup now, naming the option."""
    from unime.errors import OptionError
    from unime.models import embedder
    from unime.serve.engine import Engine

    monkeypatch.setattr(embedder.Embedder, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(OptionError, match=r"^rerank_data_root '.*nowhere': no such folder \(the folder of the "
                                          r"indexed images the reranker reads\)$"):
        Engine.load(ServeConfig(model=world["model"], reranker=world["model"], index=str(world["root"] / "idx"),
                                rerank_data_root=str(tmp_path / "nowhere"), no_auth=True))
