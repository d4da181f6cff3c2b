"""Every trainer loads its models on the device its process's Hugging Face arguments give it (cuda:LOCAL_RANK under
torchrun / accelerate launch), not on --device's plain "cuda" (GPU 0 in every process). No GPU here: the launcher's
decision is faked — torch sees 4 CUDA devices and the arguments put this process on cuda:3 —, and the loads are
recorded, not run."""

from __future__ import annotations

import importlib
import types

import pytest
import torch

from tests.train.helpers import write_world


class _Loaded(Exception):
    pass


@pytest.fixture(autouse=True)
def model_folder(tmp_path):
    """The model folders the trainers here are given ("m"; "e", GRPO's embedder): never loaded (the loading is
    recorded and stopped, or a bad option is refused first), but they exist and hold a config.json, as a missing
    local folder, or one that holds no model, is refused before either."""
    for name in ("m", "e"):  # "e": GRPO's embedder, likewise
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}", encoding="utf-8")


@pytest.fixture
def process_three_of_four(monkeypatch):
    """4 CUDA devices; the trainer arguments of this process say cuda:3 (what transformers gives LOCAL_RANK=3)."""
    import transformers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(transformers.TrainingArguments, "device", property(lambda self: torch.device("cuda", 3)))
    # what transformers sets up beside the device (`_setup_devices`, not run): read by TRL's arguments
    monkeypatch.setattr(transformers.TrainingArguments, "distributed_state", None, raising=False)


def _record_loads(monkeypatch, stop_after: int = 1) -> list:
    """`load_model`'s device per call; the `stop_after`-th call stops the run."""
    from unime.models import loading

    for name in ("unime.models.embedder", "unime.models.judge", "unime.models.reranker"):
        importlib.import_module(name)  # they bind `load_model` as they are imported: to the real one, first
    seen = []

    def load_model(path, *, device=None, **kwargs):
        seen.append(device)
        if len(seen) == stop_after:
            raise _Loaded
        return types.SimpleNamespace(model=None, processor=None, adapter=None, device=device, dtype=torch.float32)

    monkeypatch.setattr(loading, "load_model", load_model)
    return seen


def test_the_reranker_trainer_loads_on_its_process_device(process_three_of_four, monkeypatch, tmp_path):
    """`train reranker` and `train judge` (one trainer)."""
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    seen = _record_loads(monkeypatch)
    cfg = RerankerTrainConfig(model=str(tmp_path / "m"), records=[write_world(tmp_path / "data")],
                              out=str(tmp_path / "out"), dtype="fp32")
    with pytest.raises(_Loaded):
        train_reranker(cfg)
    assert seen == ["cuda:3"]


def test_the_reasoner_sft_loads_on_its_process_device(process_three_of_four, monkeypatch, tmp_path):
    from tests.embed_rl.helpers import TCOT
    from unime.data.items import Item
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    seen = _record_loads(monkeypatch)
    with pytest.raises(_Loaded):
        train_reasoner_sft(ReasonerSFTConfig(model=str(tmp_path / "m"), data=str(tmp_path / "t.jsonl"),
                                             out=str(tmp_path / "o"), dtype="fp32"))
    assert seen == ["cuda:3"]


def test_grpo_loads_the_policy_and_its_frozen_reward_models_on_its_process_device(process_three_of_four,
                                                                                  monkeypatch, tmp_path):
    """The reward embedder and the process judge are never handed to the Trainer, which would move them: they
    must be loaded where this process computes."""
    from unime.data.io import write_records
    from unime.data.items import Item, Record
    from unime.embed_rl import grpo
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer
    from unime.reasoning import embed_inputs

    write_records([Record(query=Item(text=f"q{i}"), positive=Item(text=f"p{i}"), id=f"r{i}") for i in range(4)],
                  tmp_path / "records.jsonl")
    seen = _record_loads(monkeypatch, stop_after=0)
    monkeypatch.setattr(grpo, "lora_model", lambda model, cfg: model)
    frozen = types.SimpleNamespace(model=torch.nn.Linear(1, 1))

    def embedder(path, *, device=None, **kwargs):
        seen.append(("embedder", device))
        return frozen

    def judge(path, *, device=None, **kwargs):
        seen.append(("judge", device))
        raise _Loaded

    monkeypatch.setattr(Embedder, "from_pretrained", embedder)
    monkeypatch.setattr(JudgeScorer, "from_pretrained", judge)
    monkeypatch.setattr(embed_inputs, "ReasonedEmbedder", lambda e: types.SimpleNamespace(embedder=e))
    cfg = grpo.GRPOStageConfig(model=str(tmp_path / "m"), embedder=str(tmp_path / "e"),
                               records=str(tmp_path / "records.jsonl"), out=str(tmp_path / "grpo"),
                               weights=(0.1, 0.8, 0.1), process_pick="score", dtype="fp32")
    with pytest.raises(_Loaded):
        grpo.train_reasoner_grpo(cfg)
    assert seen == ["cuda:3", ("embedder", "cuda:3"), ("judge", "cuda:3")]


def test_train_reasoner_refuses_a_device_index_as_the_other_trainers_do(monkeypatch, tmp_path, capsys):
    """`--device cuda:1`: a Trainer run cannot be sent there (`trainer_device`); the line names CUDA_VISIBLE_DEVICES,
    before any model is loaded."""
    from tests.embed_rl.helpers import TCOT
    from unime.cli import main
    from unime.data.items import Item
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    seen = _record_loads(monkeypatch)
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    assert main(["train", "reasoner", "--stage", "sft", "--model", str(tmp_path / "m"), "--tcots",
                 str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"), "--device", "cuda:1"]) == 2
    assert seen == []
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "unime: error: --device cuda:1: a training run uses the device its process is given (cuda:0, one per process "
        "under torchrun); choose the GPU with CUDA_VISIBLE_DEVICES=1 and --device cuda")


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_train_reasoner_refuses_a_bad_device_before_it_claims_its_output_folder(monkeypatch, tmp_path, capsys, stage):
    """QA: `--device bogus` was refused after the run had claimed --out (its marker, lock and train_inputs.json
    left behind). Now it is refused first, as a full fine-tuning of an adapter is: --out is not created."""
    from tests.embed_rl.helpers import TCOT
    from unime.cli import main
    from unime.data.io import write_records
    from unime.data.items import Item, Record
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    seen = _record_loads(monkeypatch)
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    write_records([Record(query=Item(text=f"q{i}"), positive=Item(text=f"p{i}"), id=f"r{i}") for i in range(4)],
                  tmp_path / "records.jsonl")
    inputs = (["--tcots", str(tmp_path / "t.jsonl")] if stage == "sft" else
              ["--records", str(tmp_path / "records.jsonl"), "--embedder", str(tmp_path / "e")])
    assert main(["train", "reasoner", "--stage", stage, "--model", str(tmp_path / "m"), *inputs,
                 "--out", str(tmp_path / "o"), "--device", "bogus"]) == 2
    assert seen == [] and not (tmp_path / "o").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "unime: error: --device 'bogus' is not a torch device (cpu, cuda, cuda:N, mps)")


@pytest.mark.parametrize("trainer", ["embedder", "reranker", "judge"])
def test_the_other_trainers_refuse_a_bad_device_before_they_claim_their_output_folder(monkeypatch, tmp_path, capsys,
                                                                                      trainer):
    """As the reasoner's: `--device bogus` was refused after the run had claimed --out."""
    from unime.cli import main

    seen = _record_loads(monkeypatch)
    records = write_world(tmp_path / "data")
    assert main(["train", trainer, "--model", str(tmp_path / "m"), "--records", str(records),
                 "--out", str(tmp_path / "o"), "--device", "bogus"]) == 2
    assert seen == [] and not (tmp_path / "o").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "unime: error: --device 'bogus' is not a torch device (cpu, cuda, cuda:N, mps)")
