"""Batched generation (`unime.models.generation.generate_texts`): a left-padded batch gives each prompt what
generating it alone gives, and a stop rule cuts each row at the first token where its text satisfies it,
checked against `model.generate` called directly, one prompt at a time."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import FAMILIES
from unime.models.adapters import Segment


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tiny_model_dir):
    from unime.models.loading import load_model

    return load_model(tiny_model_dir(request.param), device="cpu")


def _prompts():
    red, blue = Image.new("RGB", (56, 56), (200, 0, 0)), Image.new("RGB", (84, 56), (0, 0, 200))
    return [[Segment("text", "a red square")],
            [Segment("image", red), Segment("text", "what colour is this picture, and what shape is in it?")],
            [Segment("text", "(1) "), Segment("image", blue), Segment("text", " (2) "), Segment("image", red)],
            [Segment("text", "one")],
            [Segment("image", blue)]]


def _alone(loaded, segs, max_new_tokens):
    """Greedy new token ids of one prompt, by `model.generate` on its own (no padding)."""
    import torch

    text = loaded.adapter.render_user_turn(segs)
    inputs = loaded.adapter.processor_inputs([text], [segs])
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=loaded.adapter.tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_a_batch_gives_what_each_prompt_gives_alone(loaded):
    from unime.models.generation import generate_texts

    tok = loaded.adapter.tokenizer
    prompts = _prompts()
    expected = [tok.decode(_alone(loaded, p, 6), skip_special_tokens=True) for p in prompts]
    for batch_size in (1, 2, 5):
        got = generate_texts(loaded.model, loaded.adapter, prompts, device="cpu", max_new_tokens=6,
                             batch_size=batch_size)
        assert [g[0] for g in got] == expected, batch_size


def test_the_stop_rule_cuts_each_row_at_its_first_satisfying_token(loaded):
    from unime.models.generation import generate_texts

    tok = loaded.adapter.tokenizer
    prompts = _prompts()
    stop = lambda text: len(text) >= 4  # noqa: E731  (any model's output reaches it)
    expected = []
    for p in prompts:
        ids = _alone(loaded, p, 10)
        texts = [tok.decode(ids[:n], skip_special_tokens=True) for n in range(1, len(ids) + 1)]
        expected.append(next((t for t in texts if stop(t)), texts[-1]))
    got = generate_texts(loaded.model, loaded.adapter, prompts, device="cpu", max_new_tokens=10, batch_size=5,
                         stop=stop)
    assert [g[0] for g in got] == expected
    assert any(len(t) < len(tok.decode(_alone(loaded, p, 10), skip_special_tokens=True))
               for t, p in zip(expected, prompts))  # the rule did cut something


def test_the_model_is_left_in_its_training_mode(loaded):
    from unime.models.generation import generate_texts

    loaded.model.train()
    generate_texts(loaded.model, loaded.adapter, _prompts()[:1], device="cpu", max_new_tokens=2, batch_size=1)
    assert loaded.model.training
    loaded.model.eval()
    with pytest.raises(ValueError, match="batch_size"):
        generate_texts(loaded.model, loaded.adapter, _prompts()[:1], device="cpu", max_new_tokens=2, batch_size=0)


def test_a_rows_text_is_cut_at_its_first_satisfying_token_whatever_follows(loaded):
    """The cut that keeps a row's text independent of what `generate` appended after it stopped (pads, or a
    tokenizer's non-special filler): the shortest token prefix whose text satisfies the rule."""
    from unime.models.generation import _until_stop
    from unime.models.rerank_prompts import listwise_answer_done

    tok = loaded.adapter.tokenizer
    for text, expected in [("Ans: (3) and more", "Ans: (3)"), ("Ans: (12)x", "Ans: (12)"), ("no answer", "no answer")]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        got = _until_stop(ids, tok, listwise_answer_done)
        assert got.replace(" ", "") == expected.replace(" ", ""), (text, got)  # tokenizers may space words


def test_seeded_sampling_draws_each_batch_from_its_own_seed_and_leaves_the_global_generator_alone(loaded):
    """`seed`: each batch is sampled by `model.generate` from the global generator seeded with `batch_seed(seed,
    index of its first prompt)` (checked against `model.generate` called directly on the batch), so that a job cut in
    calls of whole batches (`first_index`) samples what one call samples; the caller's generator state is kept."""
    import torch

    from unime.models.generation import batch_seed, generate_texts

    tok = loaded.adapter.tokenizer
    prompts = _prompts()[:4]
    expected = []
    for s in (0, 2):
        segs = prompts[s:s + 2]
        texts = [loaded.adapter.render_user_turn(x) for x in segs]
        inputs = loaded.adapter.processor_inputs(texts, segs, padding_side="left")
        torch.manual_seed(batch_seed(7, s))
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=5, do_sample=True, temperature=1.0, top_p=1.0,
                                        pad_token_id=tok.pad_token_id)
        expected += [[t] for t in tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]

    def sample(part, **kw):
        return generate_texts(loaded.model, loaded.adapter, part, device="cpu", max_new_tokens=5, batch_size=2,
                              do_sample=True, **kw)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert sample(prompts, seed=7) == expected
    assert torch.equal(torch.get_rng_state(), state)
    assert sample(prompts[:2], seed=7) + sample(prompts[2:], seed=7, first_index=2) == expected
    assert sample(prompts, seed=8) != expected
    greedy = generate_texts(loaded.model, loaded.adapter, prompts, device="cpu", max_new_tokens=5, batch_size=2)
    assert generate_texts(loaded.model, loaded.adapter, prompts, device="cpu", max_new_tokens=5, batch_size=2,
                          seed=7, first_index=3) == greedy  # greedy ignores the seed


@pytest.mark.parametrize("shape", ["qwen2_vl_instruct", "qwen3_vl_instruct"])
def test_a_checkpoints_chat_generation_config_changes_neither_greedy_nor_sampled_decoding(tiny_model_dir, tmp_path,
                                                                                         shape):
    """A released Instruct checkpoint's generation_config.json carries chat sampling defaults (Qwen2-VL: top_k 1,
    repetition_penalty 1.05; Qwen3-VL: top_k 20, top_p 0.8, temperature 0.7) that transformers applies to whatever a
    `generate` call leaves unset: greedy decoding penalised repeats and `--sample` drew greedily (top_k 1). The same
    weights with and without them decode alike: greedy as `model.generate` on the folder without them, one prompt at
    a time; seeded sampling as `model.generate` on it with top_k 50 (transformers' default), top_p 1, temperature
    1."""
    import torch

    from tests.models.helpers import with_chat_generation_config
    from unime.models.generation import batch_seed, generate_texts
    from unime.models.loading import load_model

    plain = load_model(tiny_model_dir("qwen2_vl"), device="cpu")
    chat = load_model(with_chat_generation_config(tiny_model_dir("qwen2_vl"), tmp_path / "chat", shape), device="cpu")
    assert chat.model.generation_config.do_sample and chat.model.generation_config.top_k != 50
    tok = plain.adapter.tokenizer
    prompts = _prompts()[:3]
    greedy = [[tok.decode(_alone(plain, p, 24), skip_special_tokens=True)] for p in prompts]
    assert generate_texts(chat.model, chat.adapter, prompts, device="cpu", max_new_tokens=24, batch_size=3) == greedy

    texts = [plain.adapter.render_user_turn(x) for x in prompts]
    inputs = plain.adapter.processor_inputs(texts, prompts, padding_side="left")
    torch.manual_seed(batch_seed(5, 0))
    with torch.inference_mode():
        out = plain.model.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0, top_k=50,
                                   num_return_sequences=4, pad_token_id=tok.pad_token_id)
    drawn = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    expected = [drawn[i * 4:(i + 1) * 4] for i in range(len(prompts))]
    assert all(len(set(e)) > 1 for e in expected)  # sampling: the 4 draws of a prompt differ
    assert generate_texts(chat.model, chat.adapter, prompts, device="cpu", max_new_tokens=12, batch_size=3,
                          num_samples=4, do_sample=True, seed=5) == expected


def test_judge_picks_and_listwise_answers_ignore_a_checkpoints_chat_generation_config(tiny_model_dir, tmp_path):
    """The greedy answers of a process judge (`Reasoner.pick_raw`, GRPO's process reward) and of a listwise reranker
    (`Reranker.generate_answers`) are the same with and without Qwen2-VL-Instruct's generation_config in the folder
    (its repetition_penalty 1.05 broke the tiny model's repeats: the third query's answer here)."""
    from tests.models.helpers import with_chat_generation_config
    from unime.models.reranker import Reranker
    from unime.reasoning.reasoner import Reasoner

    plain = tiny_model_dir("qwen2_vl")
    chat = with_chat_generation_config(plain, tmp_path / "chat")
    queries = ["a red circle", "two blue squares on the left", "a green triangle above a yellow star", "one"]
    candidates = [["a red circle", "a blue square", "a green star"], ["blue squares", "red", "left left left"],
                  ["green triangle", "yellow star", "a circle", "x"], ["one", "two"]]

    def answers(path):
        reranker = Reranker.from_pretrained(path, device="cpu")
        reranker.max_new_tokens = 24
        return (Reasoner.from_pretrained(path, device="cpu").pick_raw(queries, candidates, max_new_tokens=24),
                reranker.generate_answers(queries, candidates))

    assert answers(chat) == answers(plain)
