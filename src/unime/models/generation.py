"""Batched generation from user turns, for every generative model of the package (the reranker's listwise
picks, the reasoner's T-CoTs).

`generate_texts` renders each turn with the family adapter, left-pads a batch (so every row's next token
sits at the last position) and calls `model.generate`. With `stop`, a row stops as soon as its decoded
new text satisfies `stop` (a `StoppingCriteria` per row; the batch ends when every row has stopped) and
its text is cut at the first token where it did: what a row returns does not depend on the other rows
of its batch. Greedy decoding of a left-padded batch equals one-by-one decoding up to float rounding.

Seeded sampling (`seed`): each `generate` call draws from the global torch generator seeded from (seed, the index of
its batch's first turn, `first_index` + its position), the global state restored afterwards. A turn's completion is
then a function of the seed, its batch (the turns batched with it, its place there) and nothing else: the same batches
give the same completions, in one call or in several (a job cut in chunks that are whole batches, resumed).

Decoding (`decoding_kwargs`): every call states the settings it means — greedy, or sampling at the given temperature,
top-p and top-k, no repetition penalty, one beam. A checkpoint's `generation_config.json` carries chat defaults
(Qwen2-VL-Instruct: do_sample, top_k 1, top_p 0.001, temperature 0.01, repetition_penalty 1.05; Qwen3-VL-Instruct:
top_k 20, top_p 0.8, temperature 0.7) that transformers applies to every setting a call leaves unset: they made
greedy decoding penalise repeats and sampling greedy (top_k 1). What is stated here is never taken from there.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Sequence

from unime.models.adapters import FamilyAdapter, Segment

# top-k of sampling unless given: transformers' default, the one unime's sampling has always drawn with (0: off)
SAMPLE_TOP_K = 50


def decoding_kwargs(*, do_sample: bool, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = SAMPLE_TOP_K) -> dict[str, Any]:
    """The `generate` settings of a greedy (`do_sample` False) or sampled decoding, every one a checkpoint's
    generation_config could otherwise supply stated (the module doc): one beam, no repetition penalty, no n-gram ban,
    no typical-p / min-p filter; sampling at `temperature`, `top_p`, `top_k` (0: every token); greedy with the
    sampling knobs unset (they do nothing there)."""
    fixed: dict[str, Any] = dict(do_sample=do_sample, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                                 typical_p=1.0, min_p=None)
    if do_sample:
        return {**fixed, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    return {**fixed, "temperature": None, "top_p": None, "top_k": None}


def ignored_checkpoint_decoding(generation_config) -> dict[str, Any]:
    """The settings of a checkpoint's generation_config (`model.generation_config`) that would change a decoding
    had `decoding_kwargs` not stated them (before it did, they did: Qwen2-VL-Instruct's repetition_penalty penalised
    greedy repeats), by name; {} for a checkpoint with none (unime's tiny models). A resumable job's key records them,
    so that its chunks decoded under them are not taken for chunks decoded without."""
    stated = decoding_kwargs(do_sample=True)
    neutral = {**stated, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": SAMPLE_TOP_K}
    out = {}
    for name in stated:
        value = getattr(generation_config, name, None)
        if value is not None and value != neutral[name]:
            out[name] = value
    return out


def generate_texts(model, adapter: FamilyAdapter, segments_list: Sequence[Sequence[Segment]], *, device,
                   max_new_tokens: int, batch_size: int, assistant_prefix: str = "", num_samples: int = 1,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = SAMPLE_TOP_K,
                   stop: Callable[[str], bool] | None = None, show_progress: bool = False,
                   return_token_counts: bool = False, seed: int | None = None, first_index: int = 0):
    """`num_samples` completions (decoded, special tokens removed) of each user turn, `batch_size` turns
    per `generate` call, in the order given. The turn ends with the assistant's header and then
    `assistant_prefix` (the answer's fixed start, if any). With `return_token_counts`: (those lists, the tokens
    of each turn's prompt the model read, `FamilyAdapter.input_token_counts`). Decoding: `decoding_kwargs` (the
    checkpoint's generation_config sets none of it). With `do_sample` and `seed`: seeded per batch (see the module
    doc; `first_index`, the index of the first turn in the whole job); greedy ignores both."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = adapter.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_return_sequences=num_samples, pad_token_id=pad,
                                      **decoding_kwargs(do_sample=do_sample, temperature=temperature, top_p=top_p,
                                                        top_k=top_k))
    batches = range(0, len(segments_list), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    out: list[list[str]] = []
    counts: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in batches:
                segs = [list(x) for x in segments_list[s:s + batch_size]]
                texts = [adapter.render_user_turn(x, assistant_prefix=assistant_prefix) for x in segs]
                inputs = adapter.processor_inputs(texts, segs, padding_side="left").to(device)
                start = inputs["input_ids"].shape[1]
                counts += adapter.input_token_counts(inputs)
                extra = {"stopping_criteria": _stopping_criteria(stop, tok, start)} if stop is not None else {}
                with _seeded(seed if do_sample else None, first_index + s, inputs["input_ids"].device):
                    new = model.generate(**inputs, **gen_kwargs, **extra)[:, start:]
                decoded = ([_until_stop(row, tok, stop) for row in new.tolist()] if stop is not None
                           else tok.batch_decode(new, skip_special_tokens=True))
                out += [decoded[i * num_samples:(i + 1) * num_samples] for i in range(len(segs))]
    finally:
        model.train(was_training)
    return (out, counts) if return_token_counts else out


def batch_seed(seed: int, first_index: int) -> int:
    """The torch seed of the batch whose first turn is number `first_index` of a job seeded `seed` (both >= 0): a
    mix of the two (numpy's `SeedSequence`), so that nearby seeds and batches draw unrelated streams."""
    import numpy as np

    return int(np.random.SeedSequence([seed, first_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextmanager
def _seeded(seed: int | None, first_index: int, device):
    """The global torch generators seeded with `batch_seed` inside (the CPU's, and `device`'s when it is an
    accelerator), their states restored on leaving; nothing when `seed` is None."""
    if seed is None:
        yield
        return
    import torch

    on = [device] if device.type != "cpu" else []  # the accelerator's generator, besides the CPU's
    with torch.random.fork_rng(devices=on, device_type=device.type if on else None):
        torch.manual_seed(batch_seed(seed, first_index))
        yield


def _stopping_criteria(stop: Callable[[str], bool], tok, start: int):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class TextDone(StoppingCriteria):
        """Per row: True once the decoded new tokens satisfy `stop`."""

        def __call__(self, input_ids, scores, **kwargs):
            texts = tok.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([bool(stop(t)) for t in texts], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([TextDone()])


def _until_stop(ids: list[int], tok, stop: Callable[[str], bool]) -> str:
    """The decoded text of the shortest prefix of `ids` that satisfies `stop` (all of it if none does)."""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n], skip_special_tokens=True)
        if stop(text):
            return text
    return tok.decode(ids, skip_special_tokens=True)
