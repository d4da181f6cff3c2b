"""`--attn-implementation`: every command that loads a model takes it, and it reaches each model it loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train.helpers import write_world
from unime.cli import main


@pytest.fixture
def loads(monkeypatch):
    """[(model path, the attn_implementation it was loaded with, or None)] of every model loaded while the test runs,
    and each loaded model's own `config._attn_implementation` (what transformers runs)."""
    import transformers

    seen: list[tuple[str, str | None, str]] = []
    original = transformers.AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, path, *args, **kwargs):
        model = original(cls, path, *args, **kwargs)
        seen.append((str(path), kwargs.get("attn_implementation"), model.config._attn_implementation))
        return model

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    return seen


def _items(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(x) + "\n" for x in [{"text": "a red square"}, {"text": "blue"}]))
    return items


def test_embed_loads_with_it_and_gives_the_default_embeddings(tiny_model_dir, tmp_path, loads):
    model, items = tiny_model_dir("qwen2_vl"), _items(tmp_path)
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "eager.npy"),
                 "--device", "cpu", "--attn-implementation", "eager"]) == 0
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "default.npy"),
                 "--device", "cpu"]) == 0
    assert loads == [(model, "eager", "eager"), (model, None, "sdpa")]
    np.testing.assert_allclose(np.load(tmp_path / "eager.npy"), np.load(tmp_path / "default.npy"), atol=1e-5)


def test_judge_loads_with_it(tiny_model_dir, tmp_path, loads):
    write_world(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pair = {"query": {"text": "a red square"}, "candidate": {"text": "red", "images": ["images/red.png"]}}
    pairs.write_text(json.dumps(pair) + "\n")
    assert main(["judge", "--pairs", str(pairs), "--judge", tiny_model_dir("qwen2_vl"), "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "scores.jsonl"), "--device", "cpu", "--attn-implementation", "eager"]) == 0
    assert [a for _, a, _ in loads] == ["eager"] and [r for _, _, r in loads] == ["eager"]


def test_a_trainer_loads_with_it_and_a_rerun_with_another_kernel_is_the_same_run(tiny_model_dir, tmp_path, loads,
                                                                                 capsys):
    records, out = write_world(tmp_path), tmp_path / "rr"
    args = ["train", "reranker", "--model", tiny_model_dir("qwen2_vl"), "--records", records, "--out", str(out),
            "--full", "--negatives", "2", "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--attn-implementation", "eager"]) == 0
    assert [(a, r) for _, a, r in loads] == [("eager", "eager")]
    # the exported model records no kernel: whoever loads it chooses one for their machine
    assert "attn" not in (out / "merged" / "config.json").read_text()
    capsys.readouterr()
    assert main([*args, "--attn-implementation", "sdpa"]) == 0  # finished: not refused as other options
    assert len(loads) == 1 and "Traceback" not in capsys.readouterr().err


def test_serve_loads_the_embedder_and_the_reranker_with_it(tiny_model_dir, loads):
    from unime.serve.config import ServeConfig
    from unime.serve.engine import Engine

    model = tiny_model_dir("qwen2_vl")
    engine = Engine.load(ServeConfig(model=model, reranker=model, device="cpu", attn_implementation="eager"))
    engine.executor.shutdown()
    assert [(a, r) for _, a, r in loads] == [("eager", "eager"), ("eager", "eager")]


def test_an_implementation_the_model_cannot_use_is_one_line_before_any_work(tiny_model_dir, tmp_path, capsys):
    model, items = tiny_model_dir("qwen2_vl"), _items(tmp_path)
    capsys.readouterr()
    for name, why in [("flash_attn_2", "transformers knows no such attention implementation"),
                      ("flash_attention_2", "FlashAttention needs a GPU, not --device cpu")]:
        assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "x.npy"),
                     "--device", "cpu", "--attn-implementation", name]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"unime: error: --attn-implementation {name} (model ")
        assert why in err[0]
    assert not (tmp_path / "x.npy").exists()


class _Loading(Exception):
    """A model's weights began to load: the run got past its option checks and its output folder's."""


def _run_argv(command: str, tmp_path, tiny_model_dir) -> list[str]:
    from tests.mining.helpers import write_dataset
    from tests.train.helpers import trainer_argv

    if command == "mine":
        model = tiny_model_dir("qwen2_vl")
        return ["mine", "--records", str(write_dataset(tmp_path / "data")), "--embedder", model, "--judge", model,
                "--device", "cpu"]
    return trainer_argv(command, tmp_path, tiny_model_dir)


@pytest.mark.parametrize("command, other_option", [("mine", ["--k", "8"]), ("reranker", ["--steps", "3"]),
                                                   ("reasoner grpo", ["--max-steps", "2"])])
def test_a_run_refused_for_its_attention_claims_no_output(command, other_option, tiny_model_dir, tmp_path, capsys,
                                                          monkeypatch):
    """Before, `mine`, `train reranker` and GRPO claimed --out and wrote their run's options (manifest.json,
    train_config.json) before the model's loading refused the attention implementation; the corrected run, with
    another option changed too, was then refused as another run's folder (`--k: 50 -> 8`)."""
    import transformers

    argv = _run_argv(command, tmp_path, tiny_model_dir)
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        capsys.readouterr()
        assert main([*argv, "--out", str(out), "--attn-implementation", "flash_attention_2"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unime: error:")]
        assert len(err) == 1 and "--attn-implementation flash_attention_2" in err[0], err
        assert "FlashAttention needs a GPU, not --device cpu" in err[0]
    assert not new.exists() and sorted(p.name for p in empty.iterdir()) == []

    def loading(cls, path, *args, **kwargs):
        raise _Loading(str(path))

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", classmethod(loading))
    for out in (new, empty):  # the corrected run, another option changed too: accepted, it goes on to load the model
        with pytest.raises(_Loading):
            main([*argv, "--out", str(out), *other_option])
