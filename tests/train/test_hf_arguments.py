"""The Hugging Face trainer arguments of the four trainers (embedder, reranker/judge, reasoner SFT, GRPO) for
their default configurations and the branches that change them (bf16, full fine-tuning, gradient
checkpointing), pinned as `args.to_dict()` (`tests/train/hf_arguments_pinned.json`; the output paths, which
name this machine's folders, left out). Nothing trains: the reranker's arguments are caught as it builds them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.train.helpers import write_world

PINNED = Path(__file__).parent / "hf_arguments_pinned.json"
MACHINE_KEYS = {"output_dir", "logging_dir"}


def _plain(args) -> dict:
    d = {k: v for k, v in args.to_dict().items() if k not in MACHINE_KEYS}
    return json.loads(json.dumps(d, sort_keys=True, default=str))


class _Built(Exception):
    pass


def embedder_arguments(tmp_path, **overrides) -> dict:
    from unime.train.embedder_trainer import EmbedderTrainingConfig, _training_arguments

    cfg = EmbedderTrainingConfig(model="m", out=str(tmp_path / "out"), device="cpu", **overrides)
    return _plain(_training_arguments(cfg, tmp_path / "out" / "checkpoints"))


def reranker_arguments(tmp_path, model, monkeypatch, **overrides) -> dict:
    """`train_reranker` up to its trainer arguments (the records read, the model loaded), then stopped."""
    import transformers

    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    seen = []

    class Catching(transformers.TrainingArguments):
        def __post_init__(self):
            super().__post_init__()
            seen.append(self)
            raise _Built

    records = write_world(tmp_path / "data")
    cfg = RerankerTrainConfig(model=model, records=[records], out=str(tmp_path / "out"), device="cpu", **overrides)
    with monkeypatch.context() as m, pytest.raises(_Built):
        m.setattr(transformers, "TrainingArguments", Catching)
        train_reranker(cfg)
    return _plain(seen[0])


def sft_arguments(tmp_path, dtype) -> dict:
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, sft_config

    cfg = ReasonerSFTConfig(model="m", data="t.jsonl", out=str(tmp_path / "out"))
    return _plain(sft_config(cfg, str(tmp_path / "out" / "checkpoints"), use_cpu=True, dtype=dtype))


def grpo_arguments(tmp_path, *, bf16: bool) -> dict:
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config

    cfg = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "out"))
    return _plain(embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "out" / "checkpoints"), use_cpu=True,
                                       bf16=bf16, fp16=False))


def all_arguments(tmp_path, model, monkeypatch, log_level) -> dict:
    """Every case; `log_level(level)` sets the `unime` loggers' level (INFO shows the trainers' progress bars)."""
    log_level(logging.WARNING)
    cases = {
        "embedder": embedder_arguments(tmp_path / "e0"),
        "embedder bf16, steps": embedder_arguments(tmp_path / "e1", dtype="bf16", steps=7),
        "embedder full, epochs": embedder_arguments(tmp_path / "e2", full=True, epochs=2.0),
        "reranker": reranker_arguments(tmp_path / "r0", model, monkeypatch),
        "reranker bf16, gradient checkpointing": reranker_arguments(tmp_path / "r1", model, monkeypatch,
                                                                    dtype="bf16", gradient_checkpointing=True),
        "reranker full": reranker_arguments(tmp_path / "r2", model, monkeypatch, full=True),
        "reasoner sft": sft_arguments(tmp_path / "s0", torch.float32),
        "reasoner sft bf16": sft_arguments(tmp_path / "s1", torch.bfloat16),
        "grpo": grpo_arguments(tmp_path / "g0", bf16=False),
        "grpo bf16": grpo_arguments(tmp_path / "g1", bf16=True),
    }
    log_level(logging.INFO)
    cases["embedder, logging INFO"] = embedder_arguments(tmp_path / "e3")
    cases["reranker, logging INFO"] = reranker_arguments(tmp_path / "r3", model, monkeypatch)
    return cases


def test_each_trainers_arguments_are_as_pinned(tmp_path, tiny_model_dir, monkeypatch, caplog):
    pytest.importorskip("trl")
    got = all_arguments(tmp_path, tiny_model_dir("qwen2_vl"), monkeypatch,
                        lambda level: caplog.set_level(level, logger="unime"))
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    assert got.keys() == pinned.keys()
    for case in pinned:
        diff = {k: (pinned[case].get(k), got[case].get(k)) for k in pinned[case].keys() | got[case].keys()
                if pinned[case].get(k) != got[case].get(k)}
        assert not diff, f"{case}: (pinned, now) {diff}"
