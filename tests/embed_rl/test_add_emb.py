"""`unime reason add-emb` (`prepare_emb_checkpoint`, `add_emb_token`): the copy keeps the checkpoint's embedding rows
(a matrix padded past the vocabulary is never shrunk), gives `<emb>` the mean of the other tokens' rows, and keeps
the checkpoint's dtype unless another is asked for."""

from __future__ import annotations

import json

import pytest
import torch

from unime.embed_rl.tcot_embedder import AddEmbConfig, prepare_emb_checkpoint
from unime.models.prompts import EMB_TOKEN

PADDING = 8  # rows past the tokenizer's tokens, as Qwen pads 151669 tokens to 151936 rows
PAD_VALUE = 5.0  # what the source's padding rows hold (arbitrary in a real checkpoint)


def _source(tiny_model_dir, folder, *, dtype=torch.float32, padding=0):
    """The tiny Qwen2-VL (untied output head) saved in `dtype`, its matrices `padding` rows longer than its
    tokenizer, those rows set to PAD_VALUE. Returns (folder, input rows, output rows) of the saved weights."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = tiny_model_dir("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    processor = AutoProcessor.from_pretrained(base)
    n = len(processor.tokenizer)
    if padding:
        model.resize_token_embeddings(n + padding, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[n:] = PAD_VALUE
            model.get_output_embeddings().weight[n:] = PAD_VALUE
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return (str(folder), model.get_input_embeddings().weight.detach().clone(),
            model.get_output_embeddings().weight.detach().clone())


def _copy(path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    return model, AutoTokenizer.from_pretrained(path)


def _mean_row(rows, n):
    """The mean of the first `n` rows (the tokenizer's tokens), computed in float64, in the rows' dtype."""
    return rows[:n].to(torch.float64).mean(0).to(rows.dtype)


def test_a_padded_matrix_keeps_its_rows_and_emb_takes_the_first_padding_row_set_to_the_mean(tiny_model_dir,
                                                                                           tmp_path):
    src, inputs, outputs = _source(tiny_model_dir, tmp_path / "src", padding=PADDING)
    n = inputs.shape[0] - PADDING
    model, tok = _copy(prepare_emb_checkpoint(AddEmbConfig(model=src, out=str(tmp_path / "emb"))))
    emb = tok.convert_tokens_to_ids(EMB_TOKEN)
    assert (len(tok), emb) == (n + 1, n)
    for got, before in ((model.get_input_embeddings().weight, inputs), (model.get_output_embeddings().weight,
                                                                         outputs)):
        assert got.shape == before.shape  # 8 rows past the tokenizer before: 8 rows past it after, never shrunk
        assert torch.equal(got[:n], before[:n])  # the tokens' rows unchanged
        assert torch.allclose(got[emb], _mean_row(before, n), rtol=0, atol=1e-6)  # not the padding row's 5.0
        assert torch.all(got[n + 1:] == PAD_VALUE)  # the other padding rows as they were
    config = json.loads((tmp_path / "emb" / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == n + PADDING


def test_a_matrix_the_tokenizer_fills_grows_by_the_emb_row_set_to_the_mean(tiny_model_dir, tmp_path):
    src, inputs, outputs = _source(tiny_model_dir, tmp_path / "src")
    n = inputs.shape[0]
    model, tok = _copy(prepare_emb_checkpoint(AddEmbConfig(model=src, out=str(tmp_path / "emb"))))
    assert tok.convert_tokens_to_ids(EMB_TOKEN) == n
    for got, before in ((model.get_input_embeddings().weight, inputs), (model.get_output_embeddings().weight,
                                                                         outputs)):
        assert got.shape[0] == n + 1 and torch.equal(got[:n], before)
        assert torch.allclose(got[n], _mean_row(before, n), rtol=0, atol=1e-6)


@pytest.mark.parametrize("asked, written", [("auto", torch.bfloat16), ("fp32", torch.float32)])
def test_the_copy_keeps_the_checkpoints_dtype_unless_another_is_asked(tiny_model_dir, tmp_path, asked, written):
    src, inputs, _ = _source(tiny_model_dir, tmp_path / "src", dtype=torch.bfloat16, padding=PADDING)
    out = prepare_emb_checkpoint(AddEmbConfig(model=src, out=str(tmp_path / "emb"), dtype=asked))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16" if written == torch.bfloat16 else "F32"}
    assert json.loads((out / "config.json").read_text())["dtype"] == str(written).removeprefix("torch.")
    model, tok = _copy(out)
    n = inputs.shape[0] - PADDING
    got = model.get_input_embeddings().weight
    assert got.dtype == written and torch.equal(got[:n], inputs[:n].to(written))


@pytest.mark.parametrize("value", ["fp8", "checkpoint"])
def test_a_dtype_add_emb_has_no_weights_for_is_one_usage_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys,
                                                                                  value):
    """`--dtype fp8` ended in a traceback (`ValueError: unknown dtype 'fp8'`) after the model loaded, and
    `--dtype checkpoint`, the loader's internal sentinel, was taken (the checkpoint's own dtype, as auto). Both are
    now refused by the option's choices, one usage line before anything is read or written."""
    from unime.cli import main

    out = tmp_path / "emb"
    with pytest.raises(SystemExit) as stop:
        main(["reason", "add-emb", "--model", tiny_model_dir("qwen2_vl"), "--out", str(out), "--dtype", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert (f"argument --dtype: invalid choice: '{value}' (choose from 'auto', 'fp32', 'float32', 'bf16', "
            "'bfloat16', 'fp16', 'float16')") in err
    assert "Traceback" not in err and not out.exists()


def test_the_string_checkpoint_is_not_the_loaders_checkpoint_dtype(tiny_model_dir):
    """`load_model(dtype="checkpoint")` loaded the checkpoint's own dtype: any command's `--dtype checkpoint`
    reached that internal meaning. The sentinel is an object now; the string is an unknown dtype."""
    from unime.models.loading import CHECKPOINT_DTYPE, load_model

    assert not isinstance(CHECKPOINT_DTYPE, str)
    with pytest.raises(ValueError, match="unknown dtype 'checkpoint'"):
        load_model(tiny_model_dir("qwen2_vl"), device="cpu", dtype="checkpoint")
