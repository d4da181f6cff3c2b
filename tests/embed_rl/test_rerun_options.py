"""`reason split` and `reason eval` re-run on their own output folder: other options are refused, naming them (as
`unime mine` refuses them), unless --overwrite; the same options run again. QA: `reason split --threshold 0.6` then
`0.7`, and `reason eval --max-new-tokens 24` then 16, silently replaced the first run's outputs."""

from __future__ import annotations

import json

import pytest

from tests.embed_rl.helpers import embed_rl_commands, write_image_world
from unime.cli import main


@pytest.fixture(scope="module")
def image_world(tmp_path_factory):
    return write_image_world(tmp_path_factory.mktemp("rerun_options"))


# a greedy decoding's settings, every one stated (`unime.models.generation.decoding_kwargs`), as JSON reads them
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "typical_p": 1.0,
          "min_p": None, "temperature": None, "top_p": None, "top_k": None}


def _argv(image_world, tiny_model_dir, command: str, out, *extra: str) -> list[str]:
    return [a.replace("{out}", str(out)) for a in embed_rl_commands(image_world, tiny_model_dir)[command]] + list(extra)


def _outputs(out) -> dict:
    """The run's outputs, byte for byte (not the folder's ownership marker and lock, which each claim refreshes)."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".unime")}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("unime: error:")][0]


def test_reason_split_with_another_threshold_is_refused_unless_overwrite(image_world, tiny_model_dir, tmp_path,
                                                                         capsys):
    out = tmp_path / "split"
    assert main(_argv(image_world, tiny_model_dir, "reason split", out, "--threshold", "0.6")) == 0
    first = _outputs(out)
    capsys.readouterr()

    assert main(_argv(image_world, tiny_model_dir, "reason split", out, "--threshold", "0.7")) == 2
    # QA: it said "choose another --out", an option `reason split` does not have; and "re-run with the same options
    # to continue it", a split having nothing to continue (the same options run it again)
    assert _error(capsys) == (f"unime: error: {out} holds a run with other options (--threshold: 0.6 -> 0.7); re-run "
                              "with the same options, pass --overwrite to replace its outputs, or choose "
                              "another --out-dir")
    assert _outputs(out) == first  # nothing replaced
    assert json.loads(first["reason_run.json"])["options"]["threshold"] == 0.6
    # the same options: run again (the split is done again; its outputs are the same)
    assert main(_argv(image_world, tiny_model_dir, "reason split", out, "--threshold", "0.6")) == 0
    assert _outputs(out) == first
    assert main(_argv(image_world, tiny_model_dir, "reason split", out, "--threshold", "0.7", "--overwrite")) == 0
    assert json.loads((out / "reason_run.json").read_text())["options"]["threshold"] == 0.7
    split = json.loads((out / "split.json").read_text())
    scores = split["scores"]
    assert split["contrastive"] == sum(s >= 0.7 for s in scores)  # the new threshold's split


def test_reason_eval_with_other_max_new_tokens_is_refused_and_summary_records_generation(image_world, tiny_model_dir,
                                                                                        tmp_path, capsys):
    out = tmp_path / "eval"
    reasoner = ["--tcots", "reasoner", "--reasoner", tiny_model_dir("qwen2_vl"), "--batch-size", "4"]
    argv = [a for a in _argv(image_world, tiny_model_dir, "reason eval", out)]
    argv = argv[:argv.index("--tcots")] + argv[argv.index("--tcots") + 2:] + reasoner  # the reasoner's T-CoTs
    assert main(argv + ["--max-new-tokens", "3"]) == 0
    first = _outputs(out)
    capsys.readouterr()

    assert main(argv + ["--max-new-tokens", "2"]) == 2
    assert _error(capsys) == (f"unime: error: {out} holds a run with other options (--max-new-tokens: 3 -> 2); "
                              "re-run with the same options, pass --overwrite to replace its outputs, or choose "
                              "another --out")
    assert _outputs(out) == first
    assert json.loads(first["summary.json"])["meta"]["generation"] == {"max_new_tokens": 3, **GREEDY,
                                                                       "num_samples": 1, "batch_size": 4}
    assert main(argv + ["--max-new-tokens", "2", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["meta"]["generation"]["max_new_tokens"] == 2


def test_reason_eval_records_the_decoding_it_used_and_the_chat_settings_of_the_reasoner_it_ignored(
        image_world, tiny_model_dir, tmp_path):
    """`meta.generation` of `reason eval` said do_sample False only, though a Qwen2-VL-Instruct reasoner's
    generation_config carries chat defaults (repetition_penalty 1.05, ...) a decoding took before it stated its own.
    It records every setting of the greedy decoding used, and the checkpoint's settings it ignored (as `reason
    generate` records them in its chunks' key); none for a checkpoint without them."""
    from tests.models.helpers import with_chat_generation_config

    chat = with_chat_generation_config(tiny_model_dir("qwen2_vl"), tmp_path / "chat")
    argv = _argv(image_world, tiny_model_dir, "reason eval", tmp_path / "eval")
    argv = argv[:argv.index("--tcots")] + argv[argv.index("--tcots") + 2:]
    assert main(argv + ["--tcots", "reasoner", "--reasoner", chat, "--max-new-tokens", "2", "--batch-size", "4"]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["meta"]["generation"] == {
        "max_new_tokens": 2, **GREEDY, "num_samples": 1, "batch_size": 4,
        "ignored_checkpoint_decoding": {"do_sample": True, "top_k": 1, "top_p": 0.001, "temperature": 0.01,
                                        "repetition_penalty": 1.05}}


def test_reason_eval_without_tcots_runs_again_under_options_it_does_not_read(image_world, tiny_model_dir, tmp_path,
                                                                             capsys):
    """QA: `reason eval --tcots none` re-run with another --max-new-tokens was refused, though without a reasoner
    that option bounds nothing; so is --world, read only by --tcots teacher. An option the embedding reads still
    is refused."""
    out = tmp_path / "eval"
    argv = _argv(image_world, tiny_model_dir, "reason eval", out)
    assert argv[argv.index("--tcots") + 1] == "none"
    assert main(argv + ["--max-new-tokens", "3"]) == 0
    first = json.loads((out / "summary.json").read_text())
    capsys.readouterr()

    assert main(argv + ["--max-new-tokens", "2", "--world", str(tmp_path)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["meta"]["generation"] is None and again["tasks"] == first["tasks"]
    assert main(argv + ["--batch-size", "3"]) == 2
    assert "holds a run with other options (--batch-size: 16 -> 3)" in _error(capsys)


def test_a_split_stopped_while_writing_leaves_none_of_the_former_runs_files(image_world, tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    """QA (as `reason eval`'s): `reason split --overwrite` with another threshold, stopped after contrastive.jsonl,
    left the former run's rl.jsonl and split.json beside the new contrastive.jsonl: a later GRPO run read the former
    RL records as this split's. The former outputs are removed before the new ones are written, split.json last."""
    from unime.data import io

    out = tmp_path / "split"
    assert main(_argv(image_world, tiny_model_dir, "reason split", out, "--threshold", "0.6")) == 0
    assert {"contrastive.jsonl", "rl.jsonl", "split.json"} <= set(_outputs(out))
    real = io.write_records

    def stopped(records, path, *a, **k):
        if str(path).endswith("rl.jsonl") and not str(path).endswith("contrastive.jsonl"):
            raise KeyboardInterrupt  # stands for the kill
        return real(records, path, *a, **k)

    monkeypatch.setattr(io, "write_records", stopped)
    assert main(_argv(image_world, tiny_model_dir, "reason split", out, "--threshold", "0.7", "--overwrite")) != 0
    assert not (out / "rl.jsonl").exists() and not (out / "split.json").exists()
    assert (out / "contrastive.jsonl").exists()
