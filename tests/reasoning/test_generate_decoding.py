"""`unime reason generate` decodes as its options say, never as a checkpoint's generation_config (the chat sampling
defaults of released Instruct checkpoints: `tests.models.helpers.CHAT_GENERATION_CONFIGS`)."""

from __future__ import annotations

import json

import pytest

from unime.cli import main
from unime.data.io import read_records, write_records


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tiny_world_dir, tmp_path_factory):
    """(argv of `reason generate` but --model / --out, the tiny model's folder, its copy with Qwen2-VL-Instruct's
    generation_config, a scratch folder)."""
    from tests.models.helpers import with_chat_generation_config

    tmp = tmp_path_factory.mktemp("decoding")
    world = tiny_world_dir(0)
    write_records(read_records(world / "train" / "records.jsonl")[:3], tmp / "r.jsonl")
    argv = ["reason", "generate", "--records", str(tmp / "r.jsonl"), "--data-root", str(world),
            "--max-new-tokens", "24", "--device", "cpu"]
    plain = tiny_model_dir("qwen2_vl")
    return argv, plain, with_chat_generation_config(plain, tmp / "chat"), tmp


def _tcots(argv, model, out, *extra) -> list[str]:
    assert main([*argv, "--model", model, "--out", str(out), *extra]) == 0
    return [json.loads(line)["tcot"] for line in out.read_text().splitlines()]


def test_greedy_and_sampled_tcots_of_a_checkpoint_ignore_its_chat_generation_config(folders):
    """QA: the checkpoint's repetition_penalty 1.05 changed greedy T-CoTs, and its top_k 1 made `--sample` greedy.
    The same weights with and without that generation_config write the same T-CoTs, greedy and sampled; the sampled
    ones are not the greedy ones."""
    argv, plain, chat, tmp = folders
    greedy = _tcots(argv, plain, tmp / "g_plain.jsonl")
    assert _tcots(argv, chat, tmp / "g_chat.jsonl") == greedy
    sampled = _tcots(argv, plain, tmp / "s_plain.jsonl", "--sample", "--seed", "3")
    assert sum(s != g for s, g in zip(sampled, greedy)) >= len(greedy) - 1
    assert _tcots(argv, chat, tmp / "s_chat.jsonl", "--sample", "--seed", "3") == sampled


def test_top_k_1_samples_the_greedy_tcots_and_top_p_and_top_k_key_sampled_runs_only(folders):
    """--top-k 1 keeps only the most probable token: the greedy T-CoTs. --top-p / --top-k are in the key of a sampled
    run's chunks when not their defaults, never in a greedy run's (whose key is the one it had before they existed);
    the checkpoint's chat settings the decoding ignores are recorded in the key of its runs (their chunks from before
    they were ignored are not resumed)."""
    from transformers import GenerationConfig

    from unime.models.generation import ignored_checkpoint_decoding
    from unime.reasoning.reasoner import GenerateConfig, generate_work_key

    argv, plain, chat, tmp = folders
    greedy = _tcots(argv, plain, tmp / "g.jsonl")
    assert _tcots(argv, plain, tmp / "k1.jsonl", "--sample", "--top-k", "1") == greedy

    def key(**kw):
        return generate_work_key(GenerateConfig(model=plain, records="r", out="o", **kw), [], None)

    assert not {"seed", "top_p", "top_k", "ignored_checkpoint_decoding"} & set(key())
    assert key() == key(top_k=1, top_p=0.5, seed=4)
    assert "seed" in key(sample=True) and not {"top_p", "top_k"} & set(key(sample=True))
    assert (key(sample=True, top_k=1)["top_k"], key(sample=True, top_p=0.5)["top_p"]) == (1, 0.5)
    assert ignored_checkpoint_decoding(GenerationConfig.from_pretrained(plain)) == {}
    assert ignored_checkpoint_decoding(GenerationConfig.from_pretrained(chat)) == {
        "do_sample": True, "top_k": 1, "top_p": 0.001, "temperature": 0.01, "repetition_penalty": 1.05}
    with_ignored = generate_work_key(GenerateConfig(model=plain, records="r", out="o"), [], None,
                                     ignored_decoding={"top_k": 1})
    assert with_ignored == {**key(), "ignored_checkpoint_decoding": {"top_k": 1}}


def test_a_hub_model_not_on_disk_is_said_to_key_reason_generates_record_not_an_embedding_cache(caplog):
    """QA: `reason generate --model <hub id>` logged "the embedding cache is keyed by its name only": it has no
    embedding cache. The warning of a model fingerprinted by its name names what the caller keys with it: reason
    generate's record of its finished chunks and run; the embedding cache only where it is one."""
    import logging

    from unime.models.embedding_cache import model_fingerprint
    from unime.reasoning.reasoner import GenerateConfig, generate_work_key

    hub_id = "someone/not-in-any-cache"
    with caplog.at_level(logging.WARNING, logger="unime.models.embedding_cache"):
        generate_work_key(GenerateConfig(model=hub_id, records="r", out="o"), [], None)
    assert [r.getMessage() for r in caplog.records] == [
        f"model {hub_id} is not a local folder; reason generate's record of its finished chunks and run is keyed by "
        "its name only"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unime.models.embedding_cache"):
        model_fingerprint(hub_id, keyed="the embedding cache")
    assert [r.getMessage() for r in caplog.records] == [
        f"model {hub_id} is not a local folder; the embedding cache is keyed by its name only"]


def test_reason_generate_says_once_that_a_model_not_on_disk_keys_its_record_by_its_name(tiny_model_dir, tmp_path,
                                                                                        monkeypatch, caplog):
    """QA: `reason generate --model <hub id>` logged `model_fingerprint`'s warning (the model keyed by its name only)
    twice: for the key of its finished run, before the model loads, and again for its chunks' key. Once now. (The
    tiny model is taken as not on disk: `_local_model_dir` answers None, as for a hub id.)"""
    import logging

    from unime.cli import main
    from unime.data.io import write_records
    from unime.data.items import Item, Record
    from unime.models import embedding_cache

    model = tiny_model_dir()
    monkeypatch.setattr(embedding_cache, "_local_model_dir", lambda path: None)
    write_records([Record(query=Item(text="a red square"), positive=Item(text="red"), id="a")], tmp_path / "r.jsonl")
    with caplog.at_level(logging.WARNING, logger="unime.models.embedding_cache"):
        assert main(["reason", "generate", "--model", model, "--records", str(tmp_path / "r.jsonl"), "--out",
                     str(tmp_path / "t.jsonl"), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "unime.models.embedding_cache"] == [
        f"model {model} is not a local folder; reason generate's record of its finished chunks and run is keyed by "
        "its name only"]
