"""QA: `train embedder --tau 0` ended in a traceback from the loss ("temperature must be > 0", exit 1), and a
negative --weight-decay / --max-grad-norm was accepted (torch's optimizers refuse the one once the model is loaded,
transformers reads the other as "no clipping"). Each such option declares its range: the command line refuses it as
a usage error naming the option (exit 2) before anything is written, and from Python the config refuses it naming
the field."""

from __future__ import annotations

import contextlib

import pytest

from tests.train.helpers import trainer_argv
from unime.errors import OptionError

CLI = [("embedder", "--tau", "0", "must be > 0, got 0.0"),
       ("embedder", "--tau", "-1", "must be > 0, got -1.0"),
       ("embedder", "--label-tau", "0", "must be > 0, got 0.0"),
       ("embedder", "--kl-eps", "-0.1", "must be >= 0, got -0.1"),
       ("embedder", "--weight-decay", "-1", "must be >= 0, got -1.0"),
       ("embedder", "--max-grad-norm", "-1", "must be >= 0, got -1.0"),
       ("reranker", "--weight-decay", "-1", "must be >= 0, got -1.0")]


@pytest.mark.parametrize("trainer, flag, value, problem", CLI, ids=[f"{c[0]}{c[1]}={c[2]}" for c in CLI])
def test_out_of_range_is_a_usage_error_naming_the_option(trainer, flag, value, problem, tmp_path, tiny_model_dir,
                                                         capsys):
    from unime.cli import main

    out = tmp_path / "out"
    assert main([*trainer_argv(trainer, tmp_path, tiny_model_dir), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"unime: error: train {trainer}: {flag} {problem}"
    assert "Traceback" not in err
    assert not out.exists()


def _refusal(cls, **values) -> str:
    with pytest.raises(OptionError) as caught:
        cls(**values)
    return str(caught.value)


def test_from_python_the_field_is_named():
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.reasoning.reasoner import GenerateConfig
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.reranker_trainer import RerankerTrainConfig

    embedder = dict(model="m", out="o")
    assert _refusal(EmbedderTrainingConfig, **embedder, tau=0) == "tau must be > 0, got 0"
    assert _refusal(EmbedderTrainingConfig, **embedder, label_tau=-0.5) == "label_tau must be > 0, got -0.5"
    assert _refusal(EmbedderTrainingConfig, **embedder, kl_eps=-1e-9) == "kl_eps must be >= 0, got -1e-09"
    assert _refusal(EmbedderTrainingConfig, **embedder, weight_decay=-1) == "weight_decay must be >= 0, got -1"
    assert _refusal(EmbedderTrainingConfig, **embedder, max_grad_norm=-1) == "max_grad_norm must be >= 0, got -1"
    assert _refusal(RerankerTrainConfig, model="m", records=["r"], out="o", weight_decay=-0.1) == \
        "weight_decay must be >= 0, got -0.1"
    assert _refusal(GRPOStageConfig, model="m", records="r", embedder="e", out="o", neg_temperature=0) == \
        "neg_temperature must be > 0, got 0"
    assert _refusal(GenerateConfig, model="m", records="r", out="o", temperature=0.0) == \
        "temperature must be > 0, got 0.0"
    # the bounds themselves are allowed: no decay, no clipping, exact log
    cfg = EmbedderTrainingConfig(**embedder, weight_decay=0, max_grad_norm=0, kl_eps=0, tau=1e-6, label_tau=2)
    assert (cfg.weight_decay, cfg.max_grad_norm, cfg.kl_eps) == (0, 0, 0)


def test_the_embedder_s_own_option_checks_name_the_fields_from_python_and_the_flags_on_the_command_line():
    """QA: from Python, `EmbedderTrainingConfig(steps=1, epochs=1).validate()` said "give --steps or --epochs", and
    validate's dtype check "--dtype must be one of": the fields there, the flags on the command line."""
    from unime.cli.failures import describe
    from unime.train.embedder_config import EmbedderTrainingConfig

    config = EmbedderTrainingConfig(model="m", records="r.jsonl", out="o", steps=1, epochs=1.0)
    with pytest.raises(OptionError) as caught:
        config.validate()
    assert str(caught.value) == "give steps or epochs, not both"
    assert describe(caught.value, "train embedder") == "train embedder: give --steps or --epochs, not both"
    config = EmbedderTrainingConfig(model="m", records="r.jsonl", out="o", loss="infonce", in_batch=False,
                                    hard_negatives=0)
    with pytest.raises(OptionError) as caught:
        config.validate()
    assert str(caught.value) == "infonce without in-batch negatives needs hard_negatives >= 1"
    assert describe(caught.value) == "infonce without in-batch negatives needs --hard-negatives >= 1"
    config = EmbedderTrainingConfig(model="m", records="r.jsonl", out="o")
    object.__setattr__(config, "dtype", "bogus")  # past the type check that refuses it as the field is set
    with pytest.raises(OptionError) as caught:
        config.validate()
    said = "%s must be one of auto, fp32, float32, bf16, bfloat16, got 'bogus'"
    assert (str(caught.value), describe(caught.value)) == (said % "dtype", said % "--dtype")


def test_the_hint_for_plain_pairs_is_true_from_python_too():
    """QA: the hint said "--loss auto (the default)"; from Python the default is loss="symmetric_kl". Then it said,
    from Python, "loss auto (the command line's default, loss auto)": one wording per surface now, keywords from
    Python, flags with the command line's default in a command of `unime`."""
    from unime.cli.failures import describe
    from unime.data.items import Item, Record
    from unime.errors import DataError
    from unime.options import command_line_wording
    from unime.train.batching import check_records
    from unime.train.embedder_config import EmbedderTrainingConfig

    pair = Record(query=Item(text="q"), positive=Item(text="p"), id="r1")
    with pytest.raises(DataError) as caught:
        check_records([pair], num_negatives=8, needs_scores=False, source="r.jsonl", config=EmbedderTrainingConfig)
    assert str(caught.value) == (
        "r.jsonl, record r1, field 'negatives': 0 hard negatives, but training uses k=8 per query (plain pairs train "
        "with in-batch negatives: loss='auto', or infonce without hard negatives (loss='infonce', hard_negatives=0))")
    with command_line_wording(), pytest.raises(DataError) as caught:
        check_records([pair], num_negatives=8, needs_scores=False, source="r.jsonl", config=EmbedderTrainingConfig)
    assert describe(caught.value, "train embedder") == (
        "r.jsonl, record r1, field 'negatives': 0 hard negatives, but training uses k=8 per query (plain pairs train "
        "with in-batch negatives: --loss auto (the default) or infonce without hard negatives (--loss infonce "
        "--hard-negatives 0))")


def test_the_hints_of_records_training_cannot_use_name_fields_from_python_flags_on_the_command_line(tmp_path):
    """From Python, `train_embedder` on records with too few negatives or no judge scores said "lower
    --hard-negatives" and "train with --loss infonce"; it names the fields given (hard_negatives, loss), the
    command line keeps its flags; so does the skip report's example, logged during the run (a command of `unime`:
    flags; from Python: fields). A record given in memory is named by its index in the list, with its id."""
    from unime.cli.failures import describe
    from unime.data.items import Item, Record
    from unime.data.skips import SkipReport
    from unime.errors import DataError
    from unime.options import command_line_wording
    from unime.train.batching import check_records
    from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder

    one = Record(query=Item(text="q"), positive=Item(text="p"), negatives=[Item(text="n")], id="r1")
    config = EmbedderTrainingConfig(model="unused", out=str(tmp_path / "out"), hard_negatives=2, loss="infonce",
                                    device="cpu")
    with pytest.raises(DataError) as caught:
        train_embedder(config, records=[one])
    said = "<in-memory records>, record records[0] (id r1), field 'negatives': 1 hard negatives, but training uses " \
           "k=2 per query (lower %s or re-mine)"
    assert str(caught.value) == said % "hard_negatives"
    assert describe(caught.value, "train embedder") == said % "--hard-negatives"
    with pytest.raises(DataError) as caught:
        train_embedder(EmbedderTrainingConfig(model="unused", out=str(tmp_path / "out"), hard_negatives=1, loss="js",
                                              device="cpu"), records=[one])
    said = "<in-memory records>, record records[0] (id r1), field 'positive_score': no judge score for the " \
           "positive: the js loss needs judge scores (train with %s infonce, or judge the records first)"
    assert str(caught.value) == said % "loss"
    assert describe(caught.value, "train embedder") == said % "--loss"
    assert not (tmp_path / "out").exists()
    two = [one, Record(query=Item(text="q"), positive=Item(text="p"), negatives=[Item(text="a")] * 2)]
    for surface, name in [(contextlib.nullcontext(), "hard_negatives"), (command_line_wording(), "--hard-negatives")]:
        skips = SkipReport()
        with surface:
            kept = check_records(two, num_negatives=2, needs_scores=False, source="r.jsonl", on_error="skip",
                                 skips=skips, config=EmbedderTrainingConfig)
        assert len(kept) == 1 and [e.message for e in skips.examples] == [
            f"r.jsonl, record r1, field 'negatives': 1 hard negatives, but training uses k=2 per query (lower {name} "
            "or re-mine)"]
