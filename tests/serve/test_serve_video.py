"""`unime serve` with inline videos (`{"video": "data:video/mp4;base64,..."}`): the embedding `unime embed` gives the
same clip file under the same `--video-*` options, and every bad payload a 4xx naming the input's field."""

from __future__ import annotations

import base64
import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.data.helpers import av, write_clip
from unime.data.video import VideoSampling
from unime.serve.config import Limits, ServeConfig

MODEL = "tiny-embedder"


def video_uri(data: bytes, fmt: str = "mp4") -> str:
    return f"data:video/{fmt};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_video")
    clip = write_clip(root / "clip.mp4", n=20, fps=10)
    mkv = write_clip(root / "clip.mkv", n=40, fps=10)  # Matroska: its header holds up when its end is cut
    empty = root / "empty.avi"  # a video stream without a frame (AVI: its header says 0 frames)
    c = av.open(str(empty), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    return {"root": root, "clip": clip, "mkv": mkv, "empty": empty}


@contextmanager
def served(model: str, limits: Limits | None = None, **options):
    """A TestClient of the real app in process, its engine loaded by `Engine.load` from a `ServeConfig` of
    `options` (no auth), as `unime serve` loads it."""
    from fastapi.testclient import TestClient

    from unime.serve.app import create_app
    from unime.serve.engine import Engine

    config = ServeConfig(model=model, model_name=MODEL, no_auth=True, device="cpu", limits=limits or Limits(),
                         **options)
    engine = Engine.load(config)
    try:
        with TestClient(create_app(engine, config)) as c:
            c.engine = engine
            yield c
    finally:
        engine.close()


def _embed_file(model: str, root: Path, rows: list[dict], out: str, **options) -> np.ndarray:
    from unime.models.embed_file import EmbedConfig, encode_items_file

    items = root / f"{out}.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path, *_ = encode_items_file(EmbedConfig(model=model, items=str(items), out=str(root / f"{out}.npy"),
                                             device="cpu", **options), overwrite=True)
    return np.load(path)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_an_inline_video_is_embedded_as_unime_embed_embeds_the_same_clip_file(clips, tiny_model_dir):
    """The served embedding of an inline clip (alone, and with a text) equals `unime embed`'s of the clip file under
    the same --video-frames; another sampling gives another embedding (the option reaches the service)."""
    model = tiny_model_dir("qwen2_vl")
    data = clips["clip"].read_bytes()
    rows = [{"video": "clip.mp4"}, {"text": "a red clip", "video": "clip.mp4"}]
    want4 = _embed_file(model, clips["root"], rows, "four", video_frames=4)
    want8 = _embed_file(model, clips["root"], rows[:1], "eight")
    assert _cos(want4[0], want8[0]) < 0.9999  # the sampling shows in the vectors
    with served(model, video_frames=4) as c:
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": [{"video": video_uri(data)},
                                                                     {"text": "a red clip", "video": video_uri(data)}]})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, want4, atol=1e-5)
    assert [round(_cos(g, w), 5) for g, w in zip(got, want4)] == [1.0, 1.0]
    with served(model) as c:  # no option: the default 8 frames, `unime embed`'s default
        got = c.post("/v1/embeddings", json={"model": MODEL, "input": {"video": video_uri(data)}}).json()["data"]
    np.testing.assert_allclose(np.array(got[0]["embedding"], dtype=np.float32), want8[0], atol=1e-5)


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    with served(tiny_model_dir("qwen2_vl"), Limits(max_video_bytes=200_000)) as c:
        yield c


def _bad(clips, name: str):
    clip = clips["clip"].read_bytes()
    return {
        "not base64": "data:video/mp4;base64,@@@",
        "not a video": video_uri(b"hello, this is no video at all" * 4),
        "truncated": video_uri(clip[:len(clip) // 2]),
        "truncated past its header": video_uri(clips["mkv"].read_bytes()[:int(clips["mkv"].stat().st_size * 0.6)],
                                               "x-matroska"),
        "zero frames": video_uri(clips["empty"].read_bytes(), "x-msvideo"),
        "empty": "data:video/mp4;base64,",
        "a path": "clip.mp4",
        "a url": "https://example.com/clip.mp4",
        "an image uri": "data:image/png;base64,aGVsbG8=",
    }[name]


BAD = [("not base64", "invalid base64"), ("not a video", "not a video"), ("truncated", "corrupt or unreadable video"),
       ("truncated past its header", "truncated video"),
       ("zero frames", "its video stream has no frames"), ("empty", "empty video"), ("a path", "never reads files"),
       ("a url", "fetches URLs"), ("an image uri", "data:video/mp4")]


@pytest.mark.parametrize("name,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_inline_video_is_a_400_naming_its_field_and_the_server_keeps_serving(client, clips, name, message):
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": ["fine", {"video": _bad(clips, name)}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input[1].video" and "input[1].video" in err["message"], err
    assert message in err["message"], err
    assert "Traceback" not in r.text
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": "still serving"}).status_code == 200


def test_a_video_over_the_duration_limit_is_a_400_naming_its_field(client, clips):
    """The file loader's duration limit holds for an inline clip (the 2 s clip, under a limit of 1 s)."""
    loader = client.engine.embedder.image_loader
    kept = loader.video_sampling
    loader.video_sampling = dataclasses.replace(kept or VideoSampling(), max_duration_s=1.0)
    try:
        r = client.post("/v1/embeddings", json={"model": MODEL, "input": {"video": video_uri(
            clips["clip"].read_bytes())}})
    finally:
        loader.video_sampling = kept
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input[0].video" and "lasts 2 s, over the limit 1 s" in err["message"], err


def test_a_video_over_max_video_bytes_is_refused_before_it_is_decoded(client, clips, monkeypatch):
    """The size is checked on the encoded payload: neither base64 nor the video decoder runs (a 413)."""
    import unime.data.video as video
    import unime.serve.inputs as inputs

    def never(*a, **k):
        raise AssertionError("decoded a video over the size limit")

    monkeypatch.setattr(video, "decode_video", never)
    monkeypatch.setattr(video, "load_video", never)
    monkeypatch.setattr(inputs, "base64", SimpleNamespace(b64decode=never))
    big = video_uri(bytes(200_001))
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": [{"video": big}]})
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["param"] == "input[0].video" and "video is over 200000 bytes" in err["message"], err


def test_max_video_bytes_is_range_checked():
    from unime.errors import OptionError

    with pytest.raises(OptionError, match="max_video_bytes"):
        Limits(max_video_bytes=0)


def test_the_video_options_of_the_command_line_sample_the_served_videos_and_an_index_other_than_them_is_refused(
        clips, tiny_model_dir, tmp_path):
    """`unime serve --video-frames 4` samples as `unime embed --video-frames 4`; over an index of 4 frames the
    option may be left out (the index's is taken: /v1/search finds the clip with its own inline copy) or given
    alike, and another one is refused naming both samplings, the default one given explicitly (--video-frames 8)
    too."""
    from unime.cli import build_parser
    from unime.cli.serve import config_from_args
    from unime.index.store import IndexError_, build_corpus_index
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings
    from unime.serve.engine import Engine

    model = tiny_model_dir("qwen2_vl")
    config = config_from_args(build_parser().parse_args(["serve", "--model", model, "--no-auth", "--video-frames",
                                                         "4", "--max-video-bytes", "1000"]))
    assert (config.video_frames, config.limits.max_video_bytes) == (4, 1000)
    root = clips["root"]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "clip", "video": "clip.mp4"}, {"id": "a", "text": "a blue square"}, {"id": "b", "text": "green"}]))
    emb = Embedder.from_pretrained(model, device="cpu", dtype="auto", data_root=str(root),
                                   video_sampling=VideoSampling(num_frames=4))
    build_corpus_index(root / "corpus.jsonl", tmp_path / "idx", embedder=emb, model=model, cache_dir=tmp_path / "c",
                       model_settings=embedding_settings(emb, "auto"))
    for given in ({}, {"video_frames": 4}):
        with served(model, index=str(tmp_path / "idx"), dtype="auto", **given) as c:
            assert c.engine.embedder.image_loader.video_sampling == VideoSampling(num_frames=4)
            r = c.post("/v1/search", json={"query": {"video": video_uri(clips["clip"].read_bytes())}, "top_k": 1})
            assert r.status_code == 200, r.text
            hit, = r.json()["data"]
            assert hit["id"] == "clip" and hit["score"] == pytest.approx(1.0, abs=1e-4), hit
    with pytest.raises(IndexError_, match="video_sampling"):
        Engine.load(ServeConfig(model=model, index=str(tmp_path / "idx"), dtype="auto", no_auth=True, video_frames=6))
    # given at its default (8 frames), an option is given all the same: the default sampling, not the index's 4
    # frames (it was taken as unset and the index's sampling served silently)
    given = config_from_args(build_parser().parse_args(["serve", "--model", model, "--no-auth", "--dtype", "auto",
                                                        "--index", str(tmp_path / "idx"), "--video-frames", "8"]))
    assert given.video_frames == 8
    with pytest.raises(IndexError_, match="video_sampling"):
        Engine.load(given)


def test_a_request_decoding_its_video_does_not_hold_the_other_requests(client, clips, monkeypatch):
    """The decoding of a request's inputs runs off the event loop: while a request's video is being decoded (held
    here on an event), /health and a text embedding are answered; released, the request gets its embedding. (They
    waited for the decoding, which held the event loop: a 64 MiB clip held every request.)"""
    import threading

    import unime.data.video as video

    entered, release, held = threading.Event(), threading.Event(), threading.Event()
    decode = video.decode_video

    def blocking(*a, **k):
        held.set()
        entered.set()
        release.wait(10)
        held.clear()
        return decode(*a, **k)

    monkeypatch.setattr(video, "decode_video", blocking)
    data = write_clip(clips["root"] / "held.mp4", n=12, fps=10, shift=7).read_bytes()  # not in the frame cache
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(r=client.post("/v1/embeddings", json={
        "model": MODEL, "input": {"video": video_uri(data)}})))
    worker.start()
    try:
        assert entered.wait(30), "the video was never decoded"
        health = client.get("/health")
        text = client.post("/v1/embeddings", json={"model": MODEL, "input": "a text meanwhile"})
        still_held = held.is_set()
    finally:
        release.set()
        worker.join(60)
    assert health.status_code == 200 and text.status_code == 200, (health.text, text.text)
    assert still_held, "/health and the text were answered only once the video's decoding was over"
    assert answer["r"].status_code == 200, answer["r"].text
    assert len(answer["r"].json()["data"][0]["embedding"]) == client.engine.dim


def test_a_video_is_decoded_once_per_request_whatever_the_models_that_read_it(client, clips, monkeypatch):
    """An inline clip is decoded once: checked by `decode_video_uri` for each model that reads it (the embedder's,
    a reranker's loader of the same sampling) and then read by the model from the frame cache. A model of another
    sampling takes other frames, decoded for it."""
    import unime.data.video as video
    from unime.serve.inputs import InlineOnlyLoader, decode_video_uri

    calls = []
    decode = video.decode_video

    def counting(*a, **k):
        calls.append(k.get("name"))
        return decode(*a, **k)

    monkeypatch.setattr(video, "decode_video", counting)
    clip = write_clip(clips["root"] / "once.mp4", n=12, fps=10, shift=3).read_bytes()  # not in the frame cache
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": [{"video": video_uri(clip)}]})
    assert r.status_code == 200, r.text
    assert len(calls) == 1, calls  # checked at the request, the embedder's load a cache hit
    emb = client.engine.embedder.image_loader
    same = InlineOnlyLoader(max_aspect_ratio=emb.max_aspect_ratio, video=emb.video_sampling)  # a reranker's
    other = write_clip(clips["root"] / "twice.mp4", n=12, fps=10, shift=5).read_bytes()
    calls.clear()
    assert decode_video_uri(video_uri(other), Limits(), "query.video", [emb, same]) == other
    assert len(calls) == 1, calls
    four = InlineOnlyLoader(max_aspect_ratio=emb.max_aspect_ratio, video=VideoSampling(num_frames=4))
    decode_video_uri(video_uri(other), Limits(), "query.video", [emb, four])
    assert len(calls) == 2, calls  # the 4 frames, decoded for the loader that samples them


def test_a_data_uri_of_the_other_media_type_is_named_as_such_not_as_a_file_or_url(client, tmp_path):
    """An animated GIF sent as the browser reads it (data:image/gif) in `video`, or a clip's data:video URI in
    `image`, was told "videos must be inline data URIs ...; the server never reads files or fetches URLs": it is
    an inline data URI. The message names the media type the field takes, and how to send an animation as a video
    (data:video/gif, which is served)."""
    from tests.data.helpers import animated_gif

    gif = base64.b64encode(animated_gif(tmp_path / "anim.gif").read_bytes()).decode()
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": [{"video": "data:image/gif;base64," + gif}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input[0].video", err
    assert "never reads files" not in err["message"] and "data:image/gif" in err["message"], err
    assert "data:video/gif;base64," in err["message"], err
    ok = client.post("/v1/embeddings", json={"model": MODEL, "input": [{"video": "data:video/gif;base64," + gif}]})
    assert ok.status_code == 200, ok.text  # what the message says to send is served
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": [{"image": video_uri(b"\0" * 64)}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input[0].image", err
    assert "never reads files" not in err["message"] and "data:video/mp4" in err["message"], err
    assert "'video'" in err["message"], err
