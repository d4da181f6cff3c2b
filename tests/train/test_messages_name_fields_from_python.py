"""Messages name options as the user gives them (docs/CONTRACTS.md): the config's fields from Python, the flags in
a command of `unime` (`unime.options.command_line_wording`). QA: these named the flags from Python too."""

from __future__ import annotations

import logging

import pytest

from unime.options import command_line_wording


def test_the_short_batch_warning_names_the_batch_size_as_the_user_gives_it(caplog):
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.global_batch import warn_short_batch

    said = ("r.jsonl: 3 records, fewer than the global batch of 8 records (%s 4 x 2 process(es) x 1 accumulation): "
            "each optimizer step holds these 3 (2 per device)")
    with caplog.at_level(logging.WARNING, logger="unime"):
        warn_short_batch("r.jsonl", 3, batch_size=4, grad_accum=1, processes=2, config=EmbedderTrainingConfig)
        with command_line_wording():
            warn_short_batch("r.jsonl", 3, batch_size=4, grad_accum=1, processes=2, config=EmbedderTrainingConfig)
    assert [r.getMessage() for r in caplog.records] == [said % "batch_size", said % "--batch-size"]


def test_an_unknown_optimizer_is_named_as_the_user_gives_it():
    from unime.errors import UnimeError
    from unime.options import check_optimizer_name
    from unime.train.embedder_config import EmbedderTrainingConfig

    with pytest.raises(UnimeError, match=r"^optim 'bogus' is not one of transformers' optimizer names: .*adamw_torch"):
        check_optimizer_name("bogus", EmbedderTrainingConfig)
    with pytest.raises(UnimeError, match=r"^--optim 'bogus' is not one of transformers' optimizer names: "), \
            command_line_wording():
        check_optimizer_name("bogus", EmbedderTrainingConfig)
    check_optimizer_name("adamw_torch", EmbedderTrainingConfig)  # a name transformers has


def test_the_reasoners_warm_up_check_names_its_options_as_the_user_gives_them():
    from unime.embed_rl.stage_options import warmup_check

    check = warmup_check()
    assert (check.warmup_option, check.steps_option) == ("trainer_arg warmup_steps", "max_steps")
    with command_line_wording():
        check = warmup_check()
    assert (check.warmup_option, check.steps_option) == ("--trainer-arg warmup_steps", "--max-steps")
