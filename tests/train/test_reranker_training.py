"""Reranker / judge training (SPEC 1.6): examples, the answer-only mask token by token, the loss,
a tiny training run whose loss decreases, save → load → score, and the judge output folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FAMILIES
from tests.train.helpers import write_world
from unime.data.items import Item, Record
from unime.errors import DataError

IGNORE = -100


def _adapter(path):
    from transformers import AutoConfig, AutoProcessor

    from unime.models.adapters import adapter_for

    return adapter_for(AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path))


# -- examples ---------------------------------------------------------------------------------------
def _rec(n_neg=3, scores=None):
    return Record(query=Item("q"), positive=Item("pos"), negatives=[Item(f"n{i}") for i in range(n_neg)],
                  negative_scores=scores, id="x")


def test_hardest_negative_is_the_highest_scored_first_on_ties_else_the_first():
    from unime.train.reranker_trainer import hardest_negative_index

    assert hardest_negative_index(_rec(4, [0.2, 0.9, 0.9, 0.1])) == 1
    assert hardest_negative_index(_rec(3, [0.5, 0.1, 0.7])) == 2
    assert hardest_negative_index(_rec(3)) == 0
    with pytest.raises(DataError, match="negatives"):
        hardest_negative_index(_rec(0))


@pytest.mark.parametrize("losses", [("pair",), ("list",)])
def test_a_record_without_negatives_is_named_by_its_line_and_file(losses):
    """Before, the pairwise and listwise examples named such a record by its id alone ("record x"), with no file and
    no line (and a record without an id by nothing at all); now as every message names it (`record_label`)."""
    from unime.data.io import with_origin
    from unime.train.reranker_trainer import reranker_examples

    rec = with_origin(_rec(0), "line 3 (id x)")
    with pytest.raises(DataError) as e:
        reranker_examples(rec, 2, losses=losses, source="r.jsonl")
    assert (e.value.source, e.value.record, e.value.field) == ("r.jsonl", "line 3 (id x)", "negatives")
    assert str(e.value) == "r.jsonl, record line 3 (id x), field 'negatives': the record has no negatives"
    no_id = Record(query=Item("q"), positive=Item("pos"))
    with pytest.raises(DataError) as e:
        reranker_examples(no_id, 2, losses=losses)
    assert e.value.record == "records[2]"


def test_reranker_examples_pairwise_and_listwise():
    from unime.train.reranker_trainer import listwise_position, reranker_examples

    rec = _rec(3, [0.1, 0.8, 0.3])
    exs = reranker_examples(rec, 7, num_negatives=4, seed=3)
    assert [(e.kind, [c.text for c in e.candidates], e.answer) for e in exs[:2]] == [
        ("pair", ["pos"], "Yes"), ("pair", ["n1"], "No")]
    lst = exs[2]
    p = listwise_position(3, 7, 4)
    negs = ["n0", "n1", "n2", "n0"]  # 4 negatives from 3: cyclic
    assert [c.text for c in lst.candidates] == negs[:p] + ["pos"] + negs[p:]
    assert lst.kind == "list" and lst.answer == f"Ans: ({p + 1})" and lst.record == "x"
    only_list = reranker_examples(rec, 7, num_negatives=4, seed=3, losses=("list",))
    assert len(only_list) == 1 and only_list[0] == lst


def _mined_record(scores, positive_score, count=4):
    """A record as `unime mine` writes it: the negatives `sample_negatives` picks among candidates c0, c1, ..."""
    from unime.mining.sampling import sample_negatives

    res = sample_negatives([f"c{i}" for i in range(len(scores))], scores, positive_score, count=count,
                           rng=np.random.default_rng(0))
    return res.status, Record(query=Item("q"), positive=Item("pos"), negatives=[Item(c) for c in res.ids],
                              positive_score=positive_score, negative_scores=list(res.scores), id="m")


def test_a_record_mined_by_the_fallback_gives_the_reranker_no_example():
    """QA: a record none of whose candidates survived the false-negative filter (SPEC 1.4: random picks scored 1.0,
    candidates the judge took for likely positives) trained `No` on one of them (SPEC 1.6: c_h is the hardest
    *surviving* negative), and ranked them below the positive."""
    from unime.train.reranker_trainer import reranker_examples

    status, rec = _mined_record([.97, .99, .98, .96, .995], .95)  # every candidate above alpha = 0.95 - 0.01
    assert status == "fallback" and rec.negative_scores == [1.0] * 4
    assert reranker_examples(rec, 0) == []
    assert reranker_examples(rec, 0, losses=("list",)) == []
    # one survivor (c3, 0.5): a mined record, trained on; its hardest negative is that survivor
    status, rec = _mined_record([.97, .99, .98, .5, .995], .95)
    assert status == "repeated"
    exs = reranker_examples(rec, 0)
    assert [(e.kind, [c.text for c in e.candidates], e.answer) for e in exs[:2]] == [
        ("pair", ["pos"], "Yes"), ("pair", ["c3"], "No")]
    # a record written by hand (no judge scores) is used as before: its first negative is the hardest
    hand = Record(query=Item("q"), positive=Item("pos"), negatives=[Item("c4"), Item("c1")], id="h")
    assert [(e.kind, [c.text for c in e.candidates], e.answer) for e in reranker_examples(hand, 0)[:2]] == [
        ("pair", ["pos"], "Yes"), ("pair", ["c4"], "No")]


def test_listwise_position_is_seeded_and_uniform():
    from unime.train.reranker_trainer import listwise_position

    a = [listwise_position(0, i, 4) for i in range(2000)]
    assert a == [listwise_position(0, i, 4) for i in range(2000)]
    assert a != [listwise_position(1, i, 4) for i in range(2000)]
    counts = np.bincount(a, minlength=5)
    assert counts.shape == (5,) and counts.min() > 330 and counts.max() < 470  # 400 expected each


def test_judge_examples_label_every_negative():
    from unime.train.reranker_trainer import judge_examples

    exs = judge_examples(_rec(3), 0)
    assert [(e.candidates[0].text, e.answer) for e in exs] == [("pos", "Yes"), ("n0", "No"), ("n1", "No"),
                                                                ("n2", "No")]
    assert len(judge_examples(_rec(3), 0, max_negatives=1)) == 2


# -- the mask, token by token -------------------------------------------------------------------------
@pytest.mark.parametrize("family,train_turn_end", [(f, False) for f in FAMILIES] + [("qwen2_vl", True)])
def test_answer_mask_token_by_token(tiny_model_dir, family, train_turn_end):
    from unime.train.reranker_trainer import PromptAnswerCollator, PromptExample

    path = tiny_model_dir(family)
    adapter = _adapter(path)
    collator = PromptAnswerCollator(adapter, train_turn_end=train_turn_end)
    red = Image.new("RGB", (56, 56), (220, 20, 20))
    exs = [PromptExample("pair", Item("a red square"), (Item("red", images=(red,)),), "Yes", "a"),
           PromptExample("list", Item("a red square"), (Item("blue"), Item("red", images=(red,)), Item("green")),
                         "Ans: (2)", "b")]
    batch = collator([[exs[0]], [exs[1]]])
    proc, tok = adapter.processor, adapter.tokenizer
    for kind, ex in zip(("pair", "list"), exs):
        enc = batch[kind]
        ids, mask, labels = enc["input_ids"][0], enc["attention_mask"][0], enc["labels"][0]
        # independent: the chat template renders the whole conversation; the prompt alone gives the
        # number of tokens that must be masked (system + user + assistant header)
        segs = collator.prompt_segments(ex)
        user = [{"role": "user", "content": adapter.content_parts(segs)}]
        images = [s.value for s in segs if s.kind == "image"] or None
        prompt_ids = proc(text=[proc.apply_chat_template(user, tokenize=False, add_generation_prompt=True)],
                          images=images, return_tensors="pt")["input_ids"][0].tolist()
        convo = proc.apply_chat_template(
            user + [{"role": "assistant", "content": [{"type": "text", "text": ex.answer}]}], tokenize=False)
        convo_ids = proc(text=[convo], images=images, return_tensors="pt")["input_ids"][0].tolist()
        real = ids[mask.bool()].tolist()
        n_prompt = len(prompt_ids)
        # the row is the conversation up to the answer's end (paper: answer tokens only), or up to and
        # including the end-of-turn token with train_turn_end (the template's trailing newline is not trained)
        assert real == convo_ids[:len(real)] and real[:n_prompt] == prompt_ids
        assert tok.decode(convo_ids[len(real):]).strip() == ("" if train_turn_end else "<|im_end|>")
        row_labels = labels[mask.bool()].tolist()
        for t, (tid, lab) in enumerate(zip(real, row_labels)):
            if t < n_prompt:
                assert lab == IGNORE, f"prompt token {t} {tok.decode([tid])!r} is not masked"
            else:
                assert lab == tid, f"answer token {t} {tok.decode([tid])!r} is masked"
        assert tok.decode(real[n_prompt:]) == ex.answer + ("<|im_end|>" if train_turn_end else "")
        assert tok.decode(real[:n_prompt]).endswith("<|im_start|>assistant\n")  # the header is masked
        # padding (left) is masked too
        assert (labels[~mask.bool()] == IGNORE).all()


def test_batch_is_left_padded_with_answers_at_the_end(tiny_model_dir):
    from unime.train.reranker_trainer import PromptAnswerCollator, PromptExample

    adapter = _adapter(tiny_model_dir("qwen2_vl"))
    collator = PromptAnswerCollator(adapter)
    exs = [PromptExample("pair", Item("a red square"), (Item("red"),), "Yes"),
           PromptExample("pair", Item("a much longer query about a large blue circle on the left"),
                         (Item("blue"),), "No")]
    enc = collator([exs])["pair"]
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][1, 0] == 1  # row 0 is shorter: padded left
    tok = adapter.tokenizer
    assert [tok.decode(r[r != IGNORE]) for r in enc["labels"]] == ["Yes", "No"]  # answer tokens only
    assert enc["labels"][:, -1].tolist() == [tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")]


def test_answer_token_loss_equals_full_logits_cross_entropy(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    from unime.train.reranker_trainer import PromptAnswerCollator, PromptExample, answer_token_loss

    path = tiny_model_dir("qwen2_vl")
    adapter = _adapter(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    red = Image.new("RGB", (56, 56), (220, 20, 20))
    exs = [PromptExample("list", Item("a red square"), (Item("blue"), Item("red", images=(red,))), "Ans: (2)"),
           PromptExample("list", Item("q", images=(red,)), (Item("a"), Item("b"), Item("c")), "Ans: (10)")]
    enc = PromptAnswerCollator(adapter)([exs])["list"]
    with torch.no_grad():
        ours = float(answer_token_loss(model, enc))
        inputs = {k: v for k, v in enc.items() if k != "labels"}
        logits = model(**inputs).logits.float()
    labels = enc["labels"]
    # independent: every position, shifted by one, averaged over the labelled tokens
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != IGNORE
    expected = float(-logp[keep].gather(-1, target[keep].unsqueeze(-1)).mean())
    tok = adapter.tokenizer
    n_answer = sum(len(tok.encode(a, add_special_tokens=False)) for a in ("Ans: (2)", "Ans: (10)"))
    assert int(keep.sum()) == n_answer
    assert math.isclose(ours, expected, rel_tol=1e-5)


def test_group_softmax_loss_against_hand_computation():
    from unime.train.reranker_trainer import group_softmax_loss

    margins = torch.tensor([2.0, 0.0, 1.0, -1.0, 3.0, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    positive = torch.tensor([True, False, False, True, False, True])  # group 2 has no negative: no term
    loss = group_softmax_loss(margins, groups, positive)
    g0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(1)))
    g1 = -math.log(math.exp(-1) / (math.exp(-1) + math.exp(3)))
    assert math.isclose(float(loss), (g0 + g1) / 2, rel_tol=1e-6)
    # two positives in one group: one term each, against the negatives only
    two = group_softmax_loss(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0, 0, 0]), torch.tensor([True, True, False]))
    t1, t2 = math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2))
    assert math.isclose(float(two), (t1 + t2) / 2, rel_tol=1e-6)
    none = group_softmax_loss(torch.tensor([1.0], requires_grad=True), torch.tensor([0]), torch.tensor([True]))
    assert float(none) == 0.0 and none.requires_grad


def test_answer_logits_are_the_generation_position_of_an_independent_forward(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    from unime.train.reranker_trainer import PromptAnswerCollator, PromptExample, answer_token_loss

    path = tiny_model_dir("qwen2_vl")
    adapter = _adapter(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    red = Image.new("RGB", (56, 56), (220, 20, 20))
    q = Item("a red square", images=(red,))
    exs = [[PromptExample("pair", q, (Item("red"),), "Yes", "r0"),
            PromptExample("pair", q, (Item("a blue thing"),), "No", "r0")],
           [PromptExample("pair", Item("blue"), (Item("x", images=(red,)),), "No", "r1")]]
    enc = PromptAnswerCollator(adapter, group_ids=True)(exs)["pair"]
    assert enc["group"].tolist() == [0, 0, 1]
    inputs = {k: v for k, v in enc.items() if k != "group"}
    with torch.no_grad():
        loss, first = answer_token_loss(model, inputs, with_answer_logits=True)
        full = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()
    # one-token answers at the last position: the generation position is the one before it
    torch.testing.assert_close(first, full[:, -2], rtol=1e-4, atol=1e-4)
    assert math.isclose(float(loss), float(answer_token_loss(model, inputs)), rel_tol=1e-6)


# -- training runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_reranker(tiny_model_dir, tmp_path_factory):
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    root = tmp_path_factory.mktemp("rr_world")
    records = write_world(root)
    out = root / "reranker"
    cfg = RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out), num_negatives=2,
                              learning_rate=1e-2, epochs=4, batch_size=2, logging_steps=1, seed=0,
                              train_modules=("lm_head",), device="cpu")
    result = train_reranker(cfg)
    return cfg, result, root


def test_tiny_training_loss_decreases_and_checkpoint_records_the_candidate_count(trained_reranker):
    cfg, result, root = trained_reranker
    losses = [h["loss"] for h in result.log_history]
    assert result.steps == 8 and len(losses) == 8  # 4 records / batch 2 x 4 epochs
    assert all("loss_pair" in h and "loss_list" in h for h in result.log_history)
    for h in result.log_history:  # L = L_pair + L_list
        assert math.isclose(h["loss"], h["loss_pair"] + h["loss_list"], rel_tol=1e-3)
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2])
    out = root / "reranker"
    meta = json.loads((out / "unime_reranker.json").read_text())
    assert meta["num_candidates"] == 3 and meta["role"] == "reranker" and meta["records"] == 4
    assert json.loads((out / "adapter" / "unime_reranker.json").read_text()) == meta
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "README.md").is_file()
    assert (out / "curves.png").is_file() and (out / "curves.csv").is_file() and (out / "README.md").is_file()
    assert (out / "checkpoints").is_dir() and not (out / "merged").exists()  # checkpoints kept (one convention)


def test_finished_output_is_not_retrained(trained_reranker):
    from unime.train.reranker_trainer import train_reranker

    cfg, result, root = trained_reranker
    before = (root / "reranker" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = train_reranker(cfg)
    assert again.steps == result.steps and again.num_candidates == 3
    assert (root / "reranker" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_save_load_score_matches_an_independent_forward(trained_reranker, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from unime.models.rerank_prompts import item_content, judge_prompt
    from unime.models.reranker import Reranker

    cfg, result, root = trained_reranker
    rr = Reranker.from_pretrained(root / "reranker", data_root=root, device="cpu")  # the run folder
    assert rr.num_candidates == 3 and rr.name == str(root / "reranker" / "adapter")
    query = Item("a red square")
    cands = [Item("red", images=("images/red.png",)), Item("blue", images=("images/blue.png",)), Item("green")]
    got = rr.score_pairs(query, cands)

    # independent: plain transformers + peft, one full forward per pair, 2-way softmax of Yes/No logits
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_vl"))
    model = PeftModel.from_pretrained(base, str(root / "reranker" / "adapter")).eval()
    proc = AutoProcessor.from_pretrained(root / "reranker" / "adapter")
    yes, no = proc.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    expected, untrained = [], []
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_vl")).eval()
    for c in cands:
        imgs = [Image.open(root / p).convert("RGB") for p in c.images]
        segs = judge_prompt(item_content(query.text), item_content(c.text, imgs))
        parts = [{"type": "image"} if s.kind == "image" else {"type": "text", "text": s.value} for s in segs]
        text = proc.apply_chat_template([{"role": "user", "content": parts}], tokenize=False,
                                        add_generation_prompt=True)
        inputs = proc(text=[text], images=imgs or None, return_tensors="pt")
        with torch.no_grad():
            for m, sink in ((model, expected), (plain, untrained)):
                lg = m(**inputs).logits[0, -1].float()
                sink.append(float(torch.sigmoid(lg[yes] - lg[no])))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(np.array(expected) - np.array(untrained)).max() > 1e-3  # the adapter was applied


@pytest.mark.parametrize("family", ["qwen3_vl"])
def test_unime_train_judge_writes_a_plain_merged_checkpoint(tiny_model_dir, tmp_path, family, capsys):
    from transformers import AutoModelForImageTextToText

    from unime.cli import main
    from unime.models.judge import JudgeScorer

    records = write_world(tmp_path, scores=False)
    out = tmp_path / "judge"
    assert main(["train", "judge", "--model", tiny_model_dir(family), "--records", records, "--out", str(out),
                 "--lr", "1e-2", "--steps", "3", "--batch-size", "4", "--logging-steps", "1", "--save-adapter",
                 "--device", "cpu"]) == 0
    merged = out / "merged"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(merged)
    meta = json.loads((out / "unime_reranker.json").read_text())
    assert meta["role"] == "judge" and meta["examples"] == 4 * (1 + 3) and meta["steps"] == 3
    assert meta["num_candidates"] is None and meta["losses"] == ["pair"]
    assert not (merged / "adapter_config.json").exists()  # a plain HF folder: no PEFT needed to load it
    model = AutoModelForImageTextToText.from_pretrained(merged)
    assert model.config.model_type == family
    assert json.loads((merged / "config.json").read_text()).get("use_cache") is not False  # generate uses its cache
    judge = JudgeScorer.from_pretrained(merged, data_root=tmp_path, device="cpu")
    q, cands = Item("a red square"), [Item("red", images=("images/red.png",)), Item("blue")]
    s = judge.score_candidates(q, cands)
    assert s.shape == (2,) and np.all((s > 0) & (s < 1))
    # the merged weights score like the adapter on its base
    with_adapter = JudgeScorer.from_pretrained(out / "adapter", data_root=tmp_path, device="cpu")
    np.testing.assert_allclose(s, with_adapter.score_candidates(q, cands), atol=1e-4)
    base = JudgeScorer.from_pretrained(tiny_model_dir(family), data_root=tmp_path, device="cpu")
    assert np.abs(s - base.score_candidates(q, cands)).max() > 1e-4  # training changed the judge


def test_train_judge_merged_dtype_sets_the_dtype_of_the_merged_weights(tiny_model_dir, tmp_path, caplog):
    """CPU training runs in fp32; `--merged-dtype bf16` writes merged/ in bf16 (half the size), and the export
    names the dtype and size."""
    from safetensors import safe_open

    from unime.cli import main

    records = write_world(tmp_path, scores=False)
    out = tmp_path / "judge"
    with caplog.at_level("INFO", logger="unime.models.export"):
        assert main(["train", "judge", "--model", tiny_model_dir("qwen2_vl"), "--records", records, "--out", str(out),
                     "--steps", "1", "--batch-size", "4", "--merged-dtype", "bf16", "--device", "cpu"]) == 0
    with safe_open(str(out / "merged" / "model.safetensors"), "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((out / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    assert f"merged/: bfloat16, {2 * n / 1e3:.3g} KB (the base checkpoint is float32)" in caplog.text


@pytest.mark.parametrize("role", ["reranker", "judge"])
def test_a_run_shorter_than_logging_steps_logs_its_first_and_last_step(tiny_model_dir, tmp_path, role):
    """QA: `--steps 4` with the default `--logging-steps 10` logged only step 4, and the CLI printed
    `loss X -> X` (the first and the last loss were that one row)."""
    from unime.models.curves import read_curves_csv
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path, scores=role == "reranker")
    cfg = RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(tmp_path / role),
                              role=role, losses=("pair",) if role == "judge" else ("pair", "list"), learning_rate=1e-2,
                              max_steps=4, batch_size=2, logging_steps=10, seed=0, device="cpu", holdout=0.0,
                              train_modules=("lm_head",))
    result = train_reranker(cfg)
    assert [h["step"] for h in result.log_history] == [1, 4]
    assert (result.first_loss, result.last_loss) == (result.log_history[0]["loss"], result.log_history[1]["loss"])
    assert [r["step"] for r in read_curves_csv(tmp_path / role / "curves.csv")] == [1, 4]


def test_judge_group_loss_batches_records_and_logs_both_parts(tiny_model_dir, tmp_path):
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path, scores=False)
    cfg = RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(tmp_path / "judge"),
                              role="judge", losses=("pair",), learning_rate=1e-2, max_steps=2, batch_size=2,
                              logging_steps=1, seed=0, device="cpu", holdout=0.0, group_weight=0.5)
    result = train_reranker(cfg)
    assert result.examples == 4 * (1 + 3) and result.steps == 2
    for h in result.log_history:  # L = L_pair + 0.5 L_group
        assert h["loss_group"] > 0
        assert math.isclose(h["loss"], h["loss_pair"] + 0.5 * h["loss_group"], rel_tol=1e-3)
    # the final losses read against their base-rate levels: 4 records of 1 Yes + 3 No pairs
    levels = result.loss_levels
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert levels["base_rate"]["yes_share"] == pytest.approx(0.25)
    assert levels["base_rate"]["pair"] == pytest.approx(h)
    assert levels["base_rate"]["group"] == pytest.approx(math.log(4))
    assert levels["base_rate"]["total"] == pytest.approx(h + 0.5 * math.log(4))
    assert levels["final"]["loss"] == pytest.approx(result.log_history[-1]["loss"])
    meta = json.loads((tmp_path / "judge" / "unime_reranker.json").read_text())
    assert meta["loss_levels"] == levels
    with pytest.raises(ValueError, match="judge option"):
        RerankerTrainConfig(model="m", records=["r"], out="o", group_weight=1.0).validate()


def test_judge_base_rate_levels_are_the_losses_of_a_prior_only_judge():
    from types import SimpleNamespace

    import torch.nn.functional as F

    from unime.train.judge_eval import final_losses, training_loss_levels
    from unime.train.reranker_trainer import group_softmax_loss

    def group(*answers):
        return [SimpleNamespace(answer=a) for a in answers]

    # the last two groups add no group term: no negatives, no positive
    groups = [group("Yes", "No", "No", "No"), group("Yes", "Yes", "No"), group("Yes"), group("No")]
    levels = training_loss_levels(groups, answer_tokens=2, group_weight=0.5)
    # hand-worked: Yes share 4/9; group terms ln 4 (one positive, 3 negatives), ln 2 twice (two positives, 1 negative)
    b = 4 / 9
    h = -(b * math.log(b) + (1 - b) * math.log(1 - b))
    assert levels["yes_share"] == pytest.approx(b) and levels["pair"] == pytest.approx(h / 2)
    assert levels["group"] == pytest.approx((math.log(4) + 2 * math.log(2)) / 3)
    assert levels["total"] == pytest.approx(h / 2 + 0.5 * levels["group"])
    # independently: the trainer's own losses for a judge whose logits carry only the prior
    answers = [ex.answer for g in groups for ex in g]
    target = torch.tensor([0 if a == "Yes" else 1 for a in answers])
    prior_logits = torch.log(torch.tensor([[b, 1 - b]] * len(answers)))
    eot = torch.zeros(len(answers), dtype=torch.long)  # an end-of-turn token predicted with certainty
    eot_logits = torch.tensor([[0.0, -1e9]] * len(answers))
    pair = F.cross_entropy(torch.cat([prior_logits, eot_logits]), torch.cat([target, eot]))
    assert float(pair) == pytest.approx(levels["pair"], rel=1e-6)
    ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    grouped = group_softmax_loss(torch.zeros(len(answers)), ids, target == 0)
    assert float(grouped) == pytest.approx(levels["group"], rel=1e-6)
    # no group term without a group weight; final losses: the mean over the last tenth of the logged rows
    assert training_loss_levels(groups)["group"] is None and training_loss_levels(groups)["total"] == pytest.approx(h)
    rows = [{"loss": float(i), "loss_pair": 2.0 * i} for i in range(20)]
    assert final_losses(rows) == {"loss": 18.5, "loss_pair": 37.0}
    # even odds on Yes / No: the trainer's pair loss of logits equal on the two answers, plus the same group term
    even_pair = F.cross_entropy(torch.cat([torch.zeros(len(answers), 2), eot_logits]), torch.cat([target, eot]))
    assert levels["even_odds"] == pytest.approx(float(even_pair) + 0.5 * levels["group"], rel=1e-6)


def test_a_judge_loss_above_even_odds_is_read_as_mass_off_the_two_answers():
    """QA: a 152k-token vocabulary after 4 steps printed 12.2 against a base-rate level of 0.64 with no word that the
    loss is over the whole vocabulary; at or below even odds on Yes / No nothing is added."""
    import math

    from unime.train.judge_eval import loss_level_note

    levels = {"pair": 0.6365, "total": 0.6365, "even_odds": math.log(2)}
    assert "whole vocabulary" in loss_level_note(12.2347, levels) and "0.6931" in loss_level_note(12.2347, levels)
    assert loss_level_note(0.69, levels) == "" and loss_level_note(0.3, levels) == ""


def test_reranker_records_need_negatives_or_a_skip_policy(tiny_model_dir, tmp_path):
    from unime.data.skips import SkipReport
    from unime.train.reranker_trainer import RerankerTrainConfig, build_examples

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "ok", "query": {"text": "q"}, "positive": {"text": "p"},
                                "negatives": [{"text": "n"}]}) + "\n"
                    + json.dumps({"id": "lonely", "query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    cfg = RerankerTrainConfig(model="unused", records=[str(path)], out=str(tmp_path / "o"))
    with pytest.raises(DataError, match=r"r\.jsonl, record line 2 \(id lonely\), field 'negatives'"):
        build_examples(cfg)
    cfg.on_error = "skip"
    skips = SkipReport()
    groups, n, _, _ = build_examples(cfg, skips=skips)
    assert n == 1 and len(groups) == 1 and skips.total == 1
    cfg.role, cfg.losses, cfg.on_error = "judge", ("pair",), "raise"
    groups, n, _, _ = build_examples(cfg)  # a judge can use a record without negatives (its Yes pair)
    assert n == 2 and [len(g) for g in groups] == [1, 1, 1]
    path.write_text(json.dumps({"id": "lonely", "query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    with pytest.raises(DataError, match="judge needs labelled negatives"):
        build_examples(cfg)


def _record_line(rid, negatives, scores=None, positive_score=None):
    rec = {"id": rid, "query": {"text": "q"}, "positive": {"text": "p"}, "negatives": [{"text": n} for n in negatives]}
    if scores is not None:
        rec.update(negative_scores=scores, positive_score=positive_score)
    return json.dumps(rec) + "\n"


def test_reranker_leaves_out_fallback_records_counts_them_and_refuses_when_all_are(tmp_path, caplog):
    from unime.train.reranker_trainer import RerankerTrainConfig, build_examples

    path = tmp_path / "r.jsonl"
    path.write_text(_record_line("mined", ["a", "b"], [0.2, 0.4], 0.9)
                    + _record_line("fb1", ["c", "d"], [1.0, 1.0], 0.95)      # the mining fallback's signature
                    + _record_line("hand", ["e"])                             # no scores: written by hand, kept
                    + _record_line("fb2", ["f"], [1.0], 0.7))
    cfg = RerankerTrainConfig(model="unused", records=[str(path)], out=str(tmp_path / "o"), num_negatives=2)
    with caplog.at_level("INFO", logger="unime.train.reranker_trainer"):
        ex = build_examples(cfg)
    assert (ex.records, ex.fallback, len(ex.groups)) == (2, 2, 2)
    assert [g[0].record for g in ex.groups] == ["line 1 (id mined)", "line 3 (id hand)"]  # as the reader names them
    assert [g[1].candidates[0].text for g in ex.groups] == ["b", "e"]  # the No pairs: the hardest survivors
    assert "reranker: 2 of 4 records (50.0 %) left out, records mined by the fallback" in caplog.text
    # a judge trains on labels, not on mined negatives: every record is used
    cfg.role, cfg.losses = "judge", ("pair",)
    assert build_examples(cfg).records == 4
    cfg.role, cfg.losses = "reranker", ("pair", "list")
    path.write_text(_record_line("fb1", ["c", "d"], [1.0, 1.0], 0.95) + _record_line("fb2", ["f"], [1.0], 0.7))
    with pytest.raises(DataError, match=r"all 2 records mined by the fallback.*nothing to train on"):
        build_examples(cfg)


def test_a_reranker_run_records_the_fallback_records_it_left_out(tiny_model_dir, tmp_path, capsys):
    from unime.cli import main

    records = Path(write_world(tmp_path))
    with records.open("a") as f:
        f.write(_record_line("fb", ["red", "blue"], [1.0, 1.0], 0.9))
    out = tmp_path / "rr"
    assert main(["train", "reranker", "--model", tiny_model_dir("qwen2_vl"), "--records", str(records), "--out",
                 str(out), "--negatives", "2", "--steps", "1", "--batch-size", "2", "--device", "cpu"]) == 0
    assert "left out 1 record(s) mined by the fallback (no surviving negative)" in capsys.readouterr().out
    meta = json.loads((out / "unime_reranker.json").read_text())
    assert (meta["records"], meta["fallback_records"], meta["examples"]) == (4, 1, 4 * 3)
    assert "| records left out (mined by the fallback) | 1 |" in (out / "README.md").read_text()


def test_a_reranker_s_records_are_named_by_their_line_in_the_file_or_their_index_in_memory(tmp_path):
    """QA: the reranker trainer named an id-less record "#0" (0-based, counted over every file, no line), and a
    record without negatives by nothing at all. It names a record read from a file by its real line (blank lines
    counted) and its file, one given in memory by its index in the list (`records[3]`)."""
    from unime.data.skips import SkipReport
    from unime.train.reranker_trainer import RerankerTrainConfig, build_examples, judge_examples, reranker_examples

    good = {"query": {"text": "q"}, "positive": {"text": "p"}, "negatives": [{"text": "n"}]}
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps(good) + "\n")
    # b.jsonl: line 1 blank, line 2 an id-less record without negatives, line 3 blank, line 4 a good one
    second.write_text("\n" + json.dumps({"query": {"text": "q"}, "positive": {"text": "p"}}) + "\n\n"
                      + json.dumps(good) + "\n")
    cfg = RerankerTrainConfig(model="unused", records=[str(first), str(second)], out=str(tmp_path / "o"),
                              on_error="skip")
    skips = SkipReport()
    groups, n, _, _ = build_examples(cfg, skips=skips)
    assert n == 2 and [e.message for e in skips.examples] == [
        f"{second}, record line 2, field 'negatives': a reranker record needs at least one negative"]
    assert [{(ex.source, ex.record) for ex in g} for g in groups] == [{(str(first), "line 1")},
                                                                      {(str(second), "line 4")}]
    rec = Record(query=Item(text="q"), positive=Item(text="p"), negatives=[Item(text="n")])
    assert {ex.record for ex in reranker_examples(rec, 3, num_negatives=1)} == {"records[3]"}
    assert {ex.record for ex in judge_examples(rec, 0)} == {"records[0]"}


def test_config_validation():
    from unime.train.reranker_trainer import RerankerTrainConfig

    base = dict(model="m", records=["r"], out="o")
    with pytest.raises(ValueError, match="role"):
        RerankerTrainConfig(**base, role="ranker").validate()
    with pytest.raises(ValueError, match="losses"):
        RerankerTrainConfig(**base, losses=("pairwise",)).validate()
    with pytest.raises(ValueError, match="judge"):
        RerankerTrainConfig(**base, role="judge").validate()
    # from Python the messages name the fields (the command line names its options: tests/cli/test_usage_errors.py)
    with pytest.raises(ValueError, match="num_negatives must be >= 1, got 0"):
        RerankerTrainConfig(**base, num_negatives=0).validate()
    with pytest.raises(ValueError, match=r"full fine-tuning \(full\) trains every module; train_modules lm_head is"):
        RerankerTrainConfig(**base, full=True, train_modules=("lm_head",)).validate()
    with pytest.raises(ValueError, match=r"max_steps must be >= 1 \(or -1, its default\), got 0"):  # 0: 1 step
        RerankerTrainConfig(**base, max_steps=0).validate()


def _crash_then_resume(T, monkeypatch, cfg, *, crash_in_step: int, checkpoint: int):
    """`train_reranker(cfg)` failing inside step `crash_in_step` (after `checkpoint-{checkpoint}` was saved; two
    losses, pair and list, per step), then the same call again: the resumed run's result."""
    real_loss, calls = T.answer_token_loss, {"n": 0}

    def failing_loss(model, inputs):
        calls["n"] += 1
        if calls["n"] == 2 * crash_in_step - 1:
            raise RuntimeError("simulated crash")
        return real_loss(model, inputs)

    monkeypatch.setattr(T, "answer_token_loss", failing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train_reranker(cfg)
    out = Path(cfg.out)
    assert not (out / "unime_reranker.json").exists()
    assert max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")) == checkpoint
    monkeypatch.setattr(T, "answer_token_loss", real_loss)
    return T.train_reranker(cfg)


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch, full):
    import unime.train.reranker_trainer as T

    records = write_world(tmp_path)

    def config(out):
        return T.RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out),
                                     num_negatives=2, learning_rate=1e-3 if full else 1e-2, max_steps=4, batch_size=2,
                                     logging_steps=1, save_steps=2, train_modules=() if full else ("lm_head",),
                                     lora_dropout=0.0, full=full, device="cpu")

    straight = T.train_reranker(config(tmp_path / "straight"))
    resumed = _crash_then_resume(T, monkeypatch, config(tmp_path / "resumed"), crash_in_step=3, checkpoint=2)
    assert resumed.steps == 4
    # the history restored from checkpoint-2 plus steps 3-4: the same losses as the uninterrupted run
    assert [h["step"] for h in resumed.log_history] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["loss"] for h in resumed.log_history],
                               [h["loss"] for h in straight.log_history], rtol=1e-4)


def test_a_run_resumed_from_a_save_step_that_was_not_a_logging_step_reports_the_uninterrupted_losses(
        tiny_model_dir, tmp_path, monkeypatch):
    """QA (kill -9 once checkpoint-4 existed, the same command again): the weights were bit-equal, the last
    loss was not. Each logged loss is the mean since the previous log; with `--save-steps 2` and the default
    `--logging-steps 10` the uninterrupted run's last window was steps 2-6, the resumed run's 5-6 (the Trainer
    starts a window at the checkpoint's step). Every save step now ends a window (logged at steps 1, 2, 4, 6)."""
    import dataclasses

    import unime.train.reranker_trainer as T
    from unime.models import run_state
    from unime.models.curves import read_curves_csv

    records = write_world(tmp_path)

    def config(out):
        return T.RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out),
                                     num_negatives=2, learning_rate=1e-2, max_steps=6, batch_size=2, save_steps=2,
                                     train_modules=("lm_head",), lora_dropout=0.0, seed=0, device="cpu")

    assert config(tmp_path).logging_steps == 10  # the default: no save step (2, 4, 6) is a logging step but 6
    straight = T.train_reranker(config(tmp_path / "straight"))
    resumed = _crash_then_resume(T, monkeypatch, config(tmp_path / "resumed"), crash_in_step=5, checkpoint=4)

    # the first step (logging_first_step), every save step and the last step end a window
    assert [h["step"] for h in straight.log_history] == [1, 2, 4, 6]
    assert [h["step"] for h in resumed.log_history] == [1, 2, 4, 6]
    for key in ("loss", "loss_pair", "loss_list", "grad_norm", "learning_rate", "epoch"):
        np.testing.assert_allclose([h[key] for h in resumed.log_history], [h[key] for h in straight.log_history],
                                   rtol=1e-5, err_msg=key)
    assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-5)
    assert resumed.first_loss == pytest.approx(straight.first_loss, rel=1e-5)
    # the windows cover every step once: the last loss is the mean of step 5's and step 6's losses, the
    # whole-run loss (steps x window) the Trainer's own mean over the six steps
    a = read_curves_csv(tmp_path / "straight" / "curves.csv")
    b = read_curves_csv(tmp_path / "resumed" / "curves.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 4, 6]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), k
    # the same bytes: the columns in one order (the restored history's keys come back sorted), the same values
    csv_text = (tmp_path / "straight" / "curves.csv").read_text()
    assert csv_text.splitlines()[0].startswith("step,epoch,loss,grad_norm,learning_rate,")
    assert (tmp_path / "resumed" / "curves.csv").read_text() == csv_text
    # independently: a run logging every step (logging_steps does not change training) has the per-step losses
    every = T.train_reranker(dataclasses.replace(config(tmp_path / "every"), logging_steps=1))
    per_step = {h["step"]: h["loss"] for h in every.log_history}
    assert straight.last_loss == pytest.approx((per_step[5] + per_step[6]) / 2, rel=1e-5)
    assert [h["loss"] for h in straight.log_history[:3]] == pytest.approx(
        [per_step[1], per_step[2], (per_step[3] + per_step[4]) / 2], rel=1e-5)
    assert run_state.whole_run_loss(resumed.log_history) == pytest.approx(sum(per_step.values()) / 6, rel=1e-5)
    meta = json.loads((tmp_path / "resumed" / "unime_reranker.json").read_text())
    assert meta["last_loss"] == pytest.approx(straight.last_loss, rel=1e-5)


# -- full fine-tuning ----------------------------------------------------------------------------------
def _spy_on_export(monkeypatch, on_model):
    """Call `on_model(model, processor)` with the trained in-memory model just before it is exported."""
    import unime.train.reranker_trainer as T

    real = T.export_reranker

    def spy(model, processor, out, **kwargs):
        on_model(model, processor)
        return real(model, processor, out, **kwargs)

    monkeypatch.setattr(T, "export_reranker", spy)


def test_full_fine_tuning_trains_every_parameter_and_exports_a_plain_checkpoint(tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from unime.data.images import ImageLoader
    from unime.models.adapters import adapter_for
    from unime.models.judge import JudgeScorer
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path, scores=False)  # every pair shows a candidate image: the vision tower trains
    q = Item("a red square")
    cands = [Item("red", images=("images/red.png",)), Item("blue", images=("images/blue.png",)), Item("green")]
    seen = {}

    def in_memory_scores(model, processor):
        seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["all"] = [n for n, _ in model.named_parameters()]
        judge = JudgeScorer(model, processor, adapter_for(model.config, processor), image_loader=ImageLoader(tmp_path))
        seen["scores"] = judge.score_candidates(q, cands)

    _spy_on_export(monkeypatch, in_memory_scores)
    out = tmp_path / "judge"
    cfg = RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out), role="judge",
                              losses=("pair",), full=True, learning_rate=1e-3, max_steps=2, batch_size=8,
                              logging_steps=1, device="cpu")
    result = train_reranker(cfg)
    assert result.steps == 2 and result.adapter is None and result.merged == out / "merged"
    assert seen["trainable"] == seen["all"]  # no PEFT wrapper, nothing frozen

    merged = out / "merged"
    assert not (merged / "adapter_config.json").exists() and not (out / "adapter").exists()
    base = load_file(str(Path(tiny_model_dir("qwen2_vl")) / "model.safetensors"))
    trained = load_file(str(merged / "model.safetensors"))
    assert trained.keys() == base.keys()
    unchanged = [k for k in base if torch.equal(base[k], trained[k])]
    assert unchanged == []  # decoder, embeddings, LM head and vision tower all moved
    assert any(".visual." in f".{k}" for k in trained)  # the vision tower is part of it

    assert AutoModelForImageTextToText.from_pretrained(merged).config.model_type == "qwen2_vl"
    loaded = JudgeScorer.from_pretrained(merged, data_root=tmp_path, device="cpu")
    np.testing.assert_allclose(loaded.score_candidates(q, cands), seen["scores"], atol=1e-6)
    meta = json.loads((out / "unime_reranker.json").read_text())
    assert meta["config"]["full"] is True and meta["steps"] == 2
    assert "| fine-tuning | full (every parameter) |" in (merged / "README.md").read_text()


def test_full_fine_tuning_of_a_reranker_writes_the_merged_folder_that_rerankers_load(tiny_model_dir, tmp_path,
                                                                                      capsys):
    from unime.cli import main
    from unime.models.reranker import Reranker

    records = write_world(tmp_path)
    out = tmp_path / "rr"
    assert main(["train", "reranker", "--model", tiny_model_dir("qwen2_vl"), "--records", records, "--out", str(out),
                 "--full", "--negatives", "2", "--lr", "1e-3", "--steps", "1", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "merged")
    assert not (out / "adapter").exists() and not (out / "merged" / "adapter_config.json").exists()
    rr = Reranker.from_pretrained(out, data_root=tmp_path, device="cpu")
    assert rr.name == str(out / "merged") and rr.num_candidates == 3


def test_a_hub_adapter_as_model_is_trained_on_as_an_adapter_folder_is(trained_reranker, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    """QA: a reranker adapter given as a hub id loaded through transformers as a plain model, and the run put a
    fresh LoRA on it. Now it is trained on as an adapter folder is: its tensors, trained, on its own base; the run
    records the hub id it started from. Offline, from a hub cache laid out as huggingface_hub lays it out."""
    from safetensors.torch import load_file

    from tests.models.helpers import in_a_hub_cache
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    cfg, _, root = trained_reranker
    in_a_hub_cache(root / "reranker" / "adapter", tmp_path / "hub", "someone/a-reranker", monkeypatch)
    out = tmp_path / "o"
    train_reranker(RerankerTrainConfig(model="someone/a-reranker", records=cfg.records, out=str(out), num_negatives=2,
                                       max_steps=1, batch_size=2, learning_rate=1e-2, device="cpu"))
    meta = json.loads((out / "unime_reranker.json").read_text())
    base = str(Path(tiny_model_dir("qwen2_vl")).resolve())
    assert (meta["base_model"], meta["started_from_adapter"]) == (base, "someone/a-reranker")
    start = load_file(str(root / "reranker" / "adapter" / "adapter_model.safetensors"))
    trained = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert start.keys() == trained.keys() and any(not torch.equal(start[k], trained[k]) for k in start)


def test_the_card_of_a_run_on_an_adapter_shows_the_adapters_own_lora_settings(trained_reranker, tiny_model_dir,
                                                                              tmp_path, monkeypatch):
    """QA: with an adapter as --model, the reranker's model card said only "LoRA, continuing the adapter X", not the
    settings the run trained with (the adapter's own, `model_to_train`). Now they are read from the adapter on the
    trained model (`LoraSettings.of_peft_model`): here a hub adapter (fake offline cache) made with r 2, alpha 6,
    which the run's options (r 16, alpha 32, dropout 0.05) are not."""
    from transformers import AutoModelForImageTextToText

    from tests.models.helpers import in_a_hub_cache
    from unime.models.lora import LoraSettings, apply_lora
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    cfg, _, _ = trained_reranker
    made = LoraSettings(r=2, alpha=6, dropout=0.0, targets=("q_proj", "v_proj"))
    model = apply_lora(AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_vl")), made)
    model.save_pretrained(tmp_path / "adapter")
    in_a_hub_cache(tmp_path / "adapter", tmp_path / "hub", "someone/a-reranker", monkeypatch)
    out = tmp_path / "o"
    train_reranker(RerankerTrainConfig(model="someone/a-reranker", records=cfg.records, out=str(out), num_negatives=2,
                                       max_steps=1, batch_size=2, device="cpu"))
    assert "| fine-tuning | LoRA r=2 alpha=6 dropout=0.0, continuing the adapter someone/a-reranker |" in \
        (out / "README.md").read_text()


def test_full_fine_tuning_refuses_an_adapter_folder(trained_reranker, tmp_path):
    from unime.errors import ModelError
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    cfg, _, root = trained_reranker
    again = RerankerTrainConfig(model=str(root / "reranker" / "adapter"), records=cfg.records, out=str(tmp_path / "o"),
                                full=True, max_steps=1, device="cpu")
    with pytest.raises(ModelError, match="merge it first"):
        train_reranker(again)


def test_a_run_folder_as_model_records_the_base_the_adapter_loads_on(trained_reranker, tiny_model_dir, tmp_path):
    """QA: `train reranker --model RUN` (an embedder's or reranker's output folder) named RUN as the base model in
    unime_reranker.json, the model card and the adapter's config — no model folder, so the adapter did not load; a
    run folder holding only an adapter was wrapped in a second LoRA. Now: a run folder's merged/ is the base; an
    adapter alone is trained on, on its own base, and recorded as the adapter the run started from."""
    import shutil

    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    cfg, _, root = trained_reranker
    base = str(Path(tiny_model_dir("qwen2_vl")).resolve())
    emb = tmp_path / "emb"  # an embedder's run folder: merged/ (what every loader loads) and adapter/
    shutil.copytree(root / "reranker" / "adapter", emb / "adapter")
    shutil.copytree(base, emb / "merged")
    cases = {"emb": (emb, str(emb / "merged"), None),
             "rr": (root / "reranker", base, str(root / "reranker" / "adapter"))}  # a LoRA reranker: adapter only
    for name, (model, expected_base, expected_adapter) in cases.items():
        out = tmp_path / f"from_{name}"
        train_reranker(RerankerTrainConfig(model=str(model), records=cfg.records, out=str(out), num_negatives=2,
                                           max_steps=1, batch_size=2, device="cpu"))
        meta = json.loads((out / "unime_reranker.json").read_text())
        assert meta["base_model"] == expected_base and meta["started_from_adapter"] == expected_adapter, name
        assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
            expected_base
        assert f"\nbase_model: {expected_base}\n" in (out / "README.md").read_text()
        with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:  # one adapter, not nested
            assert not [k for k in f.keys() if k.count("base_model.model.") > 1], name
            if expected_adapter:  # the adapter it started from, trained on: same tensors, new values
                with safe_open(str(Path(expected_adapter) / "adapter_model.safetensors"), "pt") as g:
                    assert set(f.keys()) == set(g.keys())
                    assert any(not torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())
        # plain transformers + peft load the adapter on the recorded base
        PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(expected_base), str(out / "adapter"))


@pytest.mark.parametrize("role,batch_size,unit", [("reranker", 8, "records"), ("judge", 32, "labelled pairs"),
                                                   ("reranker", 2, "records")])
def test_fewer_records_than_the_global_batch_are_warned_and_the_card_records_the_batch_that_ran(
        tiny_model_dir, tmp_path, caplog, role, batch_size, unit):
    """QA: 4 records with --batch-size 8 trained every step on the 4 without a word, and the card said batch size 8
    (the embedder's card was fixed the same way: `unime.train.global_batch`). The start warns, the card and
    unime_reranker.json record the batch that ran beside the configured one. The judge's items are its labelled
    pairs: 4 records x (1 positive + 3 negatives) = 16, none held out."""
    import logging

    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path)
    out = tmp_path / role
    with caplog.at_level(logging.WARNING, logger="unime"):
        train_reranker(RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(out),
                                           role=role, losses=("pair",), max_steps=1, batch_size=batch_size, seed=0,
                                           device="cpu", holdout=0.0, train_modules=("lm_head",)))
    items = 16 if role == "judge" else 4
    ran = min(items, batch_size)
    warning = (f"{records}: {items} {unit}, fewer than the global batch of {batch_size} {unit} (batch_size "
               f"{batch_size} x 1 process(es) x 1 accumulation): each optimizer step holds these {ran} ({ran} per "
               "device)")
    short = items < batch_size
    assert (warning in caplog.text) == short, caplog.text
    meta = json.loads((out / "unime_reranker.json").read_text())
    assert meta["batch"] == {"unit": unit, "per_device": ran, "processes": 1, "gradient_accumulation": 1,
                             "global": ran, **({"global_configured": batch_size} if short else {})}
    card = (out / "README.md").read_text()
    assert f"| batch size ({unit} per device) | {ran} |" in card
    assert f"| global batch ({unit} per step) | {ran} |" in card
    assert (f"| global batch configured | {batch_size} |" in card) == short
    assert meta["config"]["batch_size"] == batch_size  # the option as given


def test_gradient_checkpointing_recomputes_the_decoder_and_leaves_the_frozen_vision_tower_out(tiny_model_dir,
                                                                                             tmp_path, monkeypatch):
    """--gradient-checkpointing sends every decoder layer through transformers' checkpoint and trains the weights of
    the run without it; transformers' hook that makes the vision tower's patch embedding require grad (for reentrant
    checkpoints only) made the frozen tower part of every backward pass: its blocks were recomputed (their MLPs ran
    twice per forward). They run as often as without checkpointing now."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tests.train.helpers import count_checkpointed_layers, count_vision_mlp_runs
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path / "world")
    model = tiny_model_dir("qwen2_vl")
    runs = {}
    for on in (False, True):
        calls, vision_runs = count_checkpointed_layers(monkeypatch), count_vision_mlp_runs(monkeypatch)
        cfg = RerankerTrainConfig(model=model, records=[records], out=str(tmp_path / str(on)), num_negatives=2,
                                  learning_rate=1e-2, max_steps=2, batch_size=2, logging_steps=1, seed=0, device="cpu",
                                  gradient_checkpointing=on)
        result = train_reranker(cfg)
        monkeypatch.undo()
        runs[on] = (dict(calls), len(vision_runs),
                    load_file(Path(result.out) / "adapter" / "adapter_model.safetensors"))
    (off_calls, off_vision, off_weights), (on_calls, on_vision, on_weights) = runs[False], runs[True]
    layers = AutoConfig.from_pretrained(model).text_config.num_hidden_layers
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] % layers == 0 and on_calls["Qwen2VLDecoderLayer"] > 0
    assert on_vision == off_vision > 0
    for key in off_weights:
        torch.testing.assert_close(on_weights[key], off_weights[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("role,mode", [("reranker", "full"), ("reranker", "lora_vision"), ("judge", "full")])
def test_gradient_checkpointing_trains_the_same_weights_in_full_and_vision_lora_runs(tiny_model_dir, tmp_path,
                                                                                     monkeypatch, role, mode):
    """--gradient-checkpointing with --full (every parameter, the vision tower's too) and with --lora-vision (LoRA
    in the vision tower too), where the vision tower's blocks are checkpointed and back-propagated through (and so
    recomputed: their MLPs run more often): two SGD steps give the losses and weights of the run without it, and the
    vision tower's trained tensors moved."""
    from tests.train.helpers import (assert_same_weights_and_vision_trained, count_checkpointed_layers,
                                      count_vision_mlp_runs, trained_run)
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path / "world")
    model = tiny_model_dir("qwen2_vl")
    own = {"full": dict(full=True, learning_rate=1e-2),
           "lora_vision": dict(lora_vision=True, lora_targets=("q_proj", "v_proj", "qkv", "fc1"), lora_dropout=0.0,
                               learning_rate=0.5)}[mode]
    runs = {}
    for on in (False, True):
        cfg = RerankerTrainConfig(model=model, records=[records], out=str(tmp_path / str(on)), role=role,
                                  num_negatives=2, max_steps=2, batch_size=2, logging_steps=1, seed=0, device="cpu",
                                  trainer_arg=["optim=sgd", "max_grad_norm=0"], gradient_checkpointing=on,
                                  **({"holdout": 0.0, "losses": ("pair",)} if role == "judge" else {}), **own)
        calls, vision_runs = count_checkpointed_layers(monkeypatch), count_vision_mlp_runs(monkeypatch)
        result = train_reranker(cfg)
        monkeypatch.undo()
        runs[on] = trained_run(result.out, mode, calls, vision_runs)
    (off_calls, off_vision, off_weights, off_losses), (on_calls, on_vision, on_weights, on_losses) = \
        runs[False], runs[True]
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] > 0 and on_calls["Qwen2VLVisionBlock"] > 0
    assert on_vision > off_vision > 0
    assert on_losses == pytest.approx(off_losses, rel=1e-6, abs=1e-7) and len(on_losses) == 2
    assert_same_weights_and_vision_trained(on_weights, off_weights, model, mode)
