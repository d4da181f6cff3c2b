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


# -- a PEFT adapter folder as the checkpoint: merged as the trainers' export merges, its rounding reported --------

def _adapter(base: str, folder, scale: float) -> str:
    """A LoRA adapter (peft: r 4, alpha 8 on q_proj and v_proj, 2 layers: 4 modules) on the fp32 `base`, its B
    weights drawn at `scale` (peft starts them at zero), saved in `folder`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * scale)
    model.save_pretrained(folder)
    return str(folder)


def _update_lost(base: str, adapter: str, out, dtype) -> tuple[int, float]:
    """Independently of the export: the adapted modules and |(merged - W) - dW| / |dW| summed over them, W each
    module's base weight as the merge holds it (the saved fp32 weight in `dtype`), dW peft's own `get_delta_weight`
    in fp32, merged the weight the copy `out` holds."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForImageTextToText

    peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32),
                                           adapter)
    merged = dict(AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).named_parameters())
    n, err2, delta2 = 0, 0.0, 0.0
    with torch.no_grad():
        for name, layer in peft_model.get_base_model().named_modules():
            if isinstance(layer, LoraLayer):
                w = layer.get_base_layer().weight.to(dtype).to(torch.float64)
                delta = layer.get_delta_weight("default").to(torch.float64)
                err2 += float(((merged[name + ".weight"].to(torch.float64) - w) - delta).norm()) ** 2
                delta2 += float(delta.norm()) ** 2
                n += 1
    return n, (err2 / delta2) ** 0.5


def _saved_bytes(folder) -> tuple[set, int]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]
    return {t.dtype for t in tensors}, sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("asked, dtype, name", [("bf16", torch.bfloat16, "bfloat16"),
                                                ("fp32", torch.float32, "float32"),
                                                ("auto", torch.float32, "float32")])  # the tiny base is fp32
def test_an_adapter_is_merged_as_the_export_merges_and_the_update_its_rounding_lost_is_reported(
        tiny_model_dir, tmp_path, capsys, caplog, asked, dtype, name):
    """add-emb merged an adapter folder with peft's `merge_and_unload` in the copy's dtype and said nothing of what
    bf16's rounding took from the update (the trainers' export reports it: `merge_in_dtype`). Now it merges through
    `merge_in_dtype`: the copy gets unime_merge.json (dtype, size, update lost), the log line names the
    share, and above `UPDATE_LOSS_WARNING` the export's warning is logged. An update of about 1e-4 per entry on
    weights of about 0.02 loses a large share to bf16 and none in fp32."""
    from unime.cli import main
    from unime.models.export import MERGE_FILE, UPDATE_LOSS_WARNING

    base = tiny_model_dir("qwen2_vl")
    adapter = _adapter(base, tmp_path / "adapter", scale=2e-4)
    out = tmp_path / "emb"
    capsys.readouterr()
    with caplog.at_level("INFO", logger="unime"):
        assert main(["reason", "add-emb", "--model", adapter, "--out", str(out), "--dtype", asked]) == 0
    n, expected = _update_lost(base, adapter, out, dtype)
    assert n == 4
    summary = json.loads((out / MERGE_FILE).read_text())
    lost = summary["LoRA update lost to rounding"]
    assert summary["dtype"] == name and lost["modules"] == n
    dtypes, size = _saved_bytes(out)
    assert dtypes == {dtype} and summary["bytes"] == size
    if dtype == torch.float32:
        assert lost["overall"] == lost["max"] == 0.0 and expected < 1e-3  # fp32's own rounding of W + dW only
    else:
        assert expected > UPDATE_LOSS_WARNING and abs(lost["overall"] - expected) < 1e-4 * expected, (lost, expected)
    assert capsys.readouterr().out == f"{out}\n"  # the folder alone, as before (scripts read it)
    said = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and r.getMessage().startswith(str(out))]
    assert len(said) == 1 and name in said[0]
    assert f"rounding lost {100 * lost['overall']:.1f}% of the LoRA update" in said[0]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("unime")]
    if lost["overall"] > UPDATE_LOSS_WARNING:
        assert len(warned) == 1 and f"lost {100 * lost['overall']:.0f}% of the trained LoRA update" in warned[0]
        assert "--dtype fp32" in warned[0]
    else:
        assert warned == []


def test_a_plain_checkpoint_is_copied_as_before_without_a_merge_report(tiny_model_dir, tmp_path, capsys, caplog):
    """A model folder (no adapter) is copied as it always was: the folder printed alone, the model's and the
    processor's files as `save_pretrained` writes them (and the output marker and lock), no unime_merge.json,
    nothing logged of a merge."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from unime.cli import main

    base = tiny_model_dir("qwen2_vl")
    out = tmp_path / "emb"
    capsys.readouterr()
    with caplog.at_level("INFO", logger="unime"):
        assert main(["reason", "add-emb", "--model", base, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n"
    plain = tmp_path / "plain"
    AutoModelForImageTextToText.from_pretrained(base).save_pretrained(plain)
    AutoProcessor.from_pretrained(base).save_pretrained(plain)
    assert {p.name for p in out.iterdir()} == {p.name for p in plain.iterdir()} | {".unime-output.json",
                                                                                   ".unime.lock"}
    assert "rounding" not in caplog.text and "merged" not in caplog.text


def test_add_emb_says_what_it_set_instead_of_transformers_mean_resizing_warning(tiny_model_dir, tmp_path, caplog):
    """QA: add-emb showed transformers' "The new embeddings / lm_head weights will be initialized from a multivariate
    normal distribution ..." although unime then sets the `<emb>` row to the mean. That warning is left out (only
    that one), and unime's own log line says what was set."""
    import logging

    from transformers.utils import logging as hf_logging

    from unime.models.loading import load_model
    from unime.models.embedder import add_emb_token

    seen = []

    class Seen(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    hf_logger, handler = logging.getLogger("transformers.modeling_utils"), Seen()
    hf_logger.addHandler(handler)
    hf_logging.warning_once.cache_clear()  # said once per process: an earlier test's resize must not hide it
    loaded = load_model(tiny_model_dir("qwen2_vl"), device="cpu")
    try:
        with caplog.at_level(logging.INFO, logger="unime"):
            emb_id = add_emb_token(loaded.model, loaded.processor)
        hf_logger.warning("another transformers warning")  # passes: only the mean-resizing one is left out
    finally:
        hf_logger.removeHandler(handler)
    assert not any("multivariate normal" in m for m in seen) and "another transformers warning" in seen
    n = len(loaded.processor.tokenizer) - 1
    assert (f"<emb> added (token id {emb_id}, a new row): its row of the input embeddings and of the output head set "
            f"to the mean of the other {n} tokens' rows") in caplog.text
