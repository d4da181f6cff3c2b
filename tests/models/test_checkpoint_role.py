"""A folder a unime trainer wrote for one role, loaded for another: a reranker's or a judge's (`unime train reranker`
/ `train judge`: its unime_reranker.json) as an `Embedder` (the commands taking an embedder's --model load it the
same way), and an embedder's (`unime train embedder`: its model card) as a `Reranker` or a `JudgeScorer`, loaded
silently (QA): a usage error naming the folder, what it is and what loads it, before any weights load."""

from __future__ import annotations

import json

import pytest

from unime.errors import UsageError


def _reranker_folder(root, role: str):
    """A run folder of `unime train reranker|judge`: unime_reranker.json in it and in its merged/ (no weights:
    a refusal comes before any loading)."""
    for folder in (root, root / "merged"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "unime_reranker.json").write_text(json.dumps({"role": role, "num_candidates": 3}))
    (root / "merged" / "config.json").write_text("{}")
    return root


def _embedder_folder(root):
    """A folder of `unime train embedder` (its merged/): the model card that trainer writes."""
    from unime.models.export import ModelCard

    root.mkdir(parents=True)
    card = ModelCard(title="Universal multimodal embedder", base_model="base", summary="s", usage="u",
                     pipeline_tag="feature-extraction", tags=["embedding", "multimodal", "infonce"])
    (root / "README.md").write_text(card.render())
    (root / "config.json").write_text("{}")
    return root


_AS_RERANKER = ("is a reranker (its unime_reranker.json: `unime train reranker` wrote it), not an embedder: load it "
                "with unime.models.reranker.Reranker (on the command line, as --rerank)")
_AS_JUDGE = ("is a judge (its unime_reranker.json: `unime train judge` wrote it), not an embedder: load it with "
             "unime.models.judge.JudgeScorer (on the command line, as --judge)")


@pytest.mark.parametrize("role,said", [("reranker", _AS_RERANKER), ("judge", _AS_JUDGE)])
@pytest.mark.parametrize("sub", ["", "merged"])
def test_an_embedder_is_not_loaded_from_a_reranker_or_judge_folder(tmp_path, role, said, sub):
    from unime.models.embedder import Embedder

    folder = _reranker_folder(tmp_path / "rr", role) / sub if sub else _reranker_folder(tmp_path / "rr", role)
    with pytest.raises(UsageError) as e:
        Embedder.from_pretrained(folder, device="cpu")
    assert str(e.value) == f"'{folder}' {said}"


def test_an_embedder_adapter_path_of_a_reranker_is_refused(tmp_path, tiny_model_dir):
    from unime.models.embedder import Embedder

    folder = _reranker_folder(tmp_path / "rr", "reranker") / "merged"
    with pytest.raises(UsageError) as e:
        Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", adapter_path=str(folder))
    assert str(e.value) == f"'{folder}' {_AS_RERANKER}"


def test_a_reranker_is_not_loaded_from_an_embedder_folder(tmp_path):
    from unime.models.reranker import Reranker

    folder = _embedder_folder(tmp_path / "emb" / "merged")
    with pytest.raises(UsageError) as e:
        Reranker.from_pretrained(folder, device="cpu")
    assert str(e.value) == (f"'{folder}' is an embedder (its README.md: `unime train embedder` wrote it), not a "
                            "reranker: load it with unime.Embedder (on the command line, as --model or --embedder)")


def test_a_plain_checkpoint_and_the_own_role_load(tmp_path, tiny_model_dir):
    """Neither refusal takes a checkpoint without a unime trainer's mark, nor a folder of its own role (the tiny
    model with the role's mark copied in), nor a judge's as a reranker."""
    import shutil

    from unime.models.embedder import Embedder
    from unime.models.reranker import Reranker

    emb = tmp_path / "emb"
    shutil.copytree(tiny_model_dir("qwen2_vl"), emb)
    (emb / "README.md").write_text(_embedder_folder(tmp_path / "card").joinpath("README.md").read_text())
    assert Embedder.from_pretrained(emb, device="cpu").name == str(emb)
    for role in ("reranker", "judge"):  # a judge's folder is a reranker's pairwise scorer
        rr = tmp_path / role
        shutil.copytree(tiny_model_dir("qwen2_vl"), rr)
        (rr / "unime_reranker.json").write_text(json.dumps({"role": role, "num_candidates": 3}))
        assert Reranker.from_pretrained(rr, device="cpu").num_candidates == 3


def test_unime_embed_refuses_a_judge_folder_as_its_model(tmp_path, capsys):
    from unime.cli import main

    folder = _reranker_folder(tmp_path / "judge", "judge")
    (tmp_path / "items.jsonl").write_text('{"text": "a"}\n')
    out = tmp_path / "v.npy"
    assert main(["embed", "--model", str(folder), "--items", str(tmp_path / "items.jsonl"), "--out", str(out),
                 "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"unime: error: '{folder}' {_AS_JUDGE}"
    assert not out.exists()


@pytest.mark.parametrize("load_weights", [True, False])
@pytest.mark.parametrize("sub", ["", "merged"])
def test_a_judge_is_not_loaded_from_an_embedder_folder(tmp_path, load_weights, sub):
    """`JudgeScorer.from_pretrained` of an embedder's folder (or of its run folder, whose merged/ it would take)
    scored with a model never trained to answer Yes/No (QA): refused like `Reranker`'s, before any loading."""
    from unime.models.judge import JudgeScorer

    merged = _embedder_folder(tmp_path / "emb" / "merged")
    folder = merged.parent if not sub else merged
    with pytest.raises(UsageError) as e:
        JudgeScorer.from_pretrained(folder, device="cpu", load_weights=load_weights)
    assert str(e.value) == (f"'{merged}' is an embedder (its README.md: `unime train embedder` "
                            "wrote it), not a judge: load it with unime.Embedder (on the command line, as --model or "
                            "--embedder)")


def test_a_judge_loads_from_a_judge_or_reranker_folder(tmp_path, tiny_model_dir):
    """The judge's own folder and a reranker's (a reranker is a pairwise judge) are not refused."""
    import shutil

    from unime.models.judge import JudgeScorer

    for role in ("judge", "reranker"):
        folder = tmp_path / role
        shutil.copytree(tiny_model_dir("qwen2_vl"), folder)
        (folder / "unime_reranker.json").write_text(json.dumps({"role": role, "num_candidates": 3}))
        assert JudgeScorer.from_pretrained(folder, device="cpu", load_weights=False).name == str(folder)


def test_a_prompts_only_judge_checks_its_device(tiny_model_dir):
    """`load_weights=False` loads no weights, but the device it keeps is the one its prompts' tensors go to: a
    device this machine lacks is refused as the weights' loader refuses it, not kept."""
    from unime.models.judge import JudgeScorer

    with pytest.raises(UsageError) as e:
        JudgeScorer.from_pretrained(tiny_model_dir("qwen2_vl"), device="nope", load_weights=False)
    assert str(e.value) == "device='nope' is not a torch device (cpu, cuda, cuda:N, mps)"
    assert JudgeScorer.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", load_weights=False).device == "cpu"
