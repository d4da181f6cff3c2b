"""The embedding cache is keyed by the attention kernel the vectors are computed with (`--attn-implementation`):
eager and sdpa give other vectors (on the tiny qwen2_vl, CPU: up to 6e-8 apart in fp32, 3e-3 in bf16), so a run
under another kernel than the cached vectors' encodes them again, and one under the same kernel (transformers'
default being sdpa) reads them. The kernel stays out of an index's model identity (a machine option, as the
device): an index built under one kernel is searched under another."""

from __future__ import annotations

import json

from tests.eval.helpers import build_world
from unime.cli import main


def _encoding(run) -> dict:
    return json.loads((run / "summary.json").read_text())["encoding"]


def test_eval_reads_the_cache_under_the_same_kernel_and_encodes_again_under_another(tiny_model_dir, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    world = tmp_path / "world"
    build_world(world)
    argv = ["eval", "--model", model, "--tasks", str(world), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--batch-size", "8"]
    assert main(argv + ["--out", str(tmp_path / "default")]) == 0
    first = _encoding(tmp_path / "default")
    n = first["distinct_items"]
    assert n > 0 and first["encoded"] == n and first["from_cache"] == 0
    # sdpa is the kernel transformers picks by default: the same vectors (bit for bit), the same cache
    assert main(argv + ["--out", str(tmp_path / "sdpa"), "--attn-implementation", "sdpa"]) == 0
    assert _encoding(tmp_path / "sdpa")["encoded"] == 0 and _encoding(tmp_path / "sdpa")["from_cache"] == n
    # eager computes other vectors: none is read from the sdpa ones
    assert main(argv + ["--out", str(tmp_path / "eager"), "--attn-implementation", "eager"]) == 0
    assert _encoding(tmp_path / "eager")["encoded"] == n and _encoding(tmp_path / "eager")["from_cache"] == 0
    assert main(argv + ["--out", str(tmp_path / "eager2"), "--attn-implementation", "eager"]) == 0
    assert _encoding(tmp_path / "eager2")["encoded"] == 0 and _encoding(tmp_path / "eager2")["from_cache"] == n
    # two cache folders, each recording the kernel its vectors were computed with (sdpa: the key as before)
    recorded = sorted(json.loads(p.read_text())["settings"].get("attn_implementation", "-")
                      for p in (tmp_path / "cache").glob("*/model.json"))
    assert recorded == ["-", "eager"]


def test_the_kernel_is_in_the_cache_key_not_in_the_model_identity(tiny_model_dir, tmp_path):
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import cache_settings, embedding_settings

    path = tiny_model_dir("qwen2_vl")
    default, sdpa, eager = (Embedder.from_pretrained(path, device="cpu", attn_implementation=k)
                            for k in (None, "sdpa", "eager"))
    identity = embedding_settings(default)
    assert embedding_settings(sdpa) == embedding_settings(eager) == identity
    assert cache_settings(identity, default) == cache_settings(identity, sdpa) == identity  # the key as before
    assert cache_settings(identity, eager) == {**identity, "attn_implementation": "eager"}

    # an index built under sdpa is searched under eager (its model identity has no kernel); its build cached the
    # vectors under the sdpa key
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document number {i}"}) + "\n" for i in range(3)),
                     encoding="utf-8")
    cache = tmp_path / "cache"
    assert main(["index", "build", "--model", path, "--items", str(items), "--out", str(tmp_path / "idx"),
                 "--device", "cpu", "--cache-dir", str(cache)]) == 0
    assert [json.loads(p.read_text())["settings"] for p in cache.glob("*/model.json")] == [identity]
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", "document number 1", "--k", "1", "--json",
                 "--device", "cpu", "--attn-implementation", "eager"]) == 0
    # an index built under eager caches its vectors under the eager key, beside the sdpa ones
    assert main(["index", "build", "--model", path, "--items", str(items), "--out", str(tmp_path / "idx_eager"),
                 "--device", "cpu", "--cache-dir", str(cache), "--attn-implementation", "eager"]) == 0
    recorded = [json.loads(p.read_text())["settings"] for p in cache.glob("*/model.json")]
    assert sorted(recorded, key=len) == [identity, {**identity, "attn_implementation": "eager"}]
