"""EG-RL on TRL's GRPOTrainer: row layout, batch geometry, reward bookkeeping through TRL's real
completion order (checked against an independent recomputation), and a 2-step smoke run."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.embed_rl.helpers import COLOURS, write_colour_records
from unime.data.items import Item, Record
from unime.models.prompts import EMB_TOKEN
from unime.embed_rl.grpo import (EmbedRLReward, GRPOStageConfig, _grpo_data, _trainer_class, embed_rl_grpo_config,
                                 grpo_rows)


@pytest.fixture
def world(tmp_path):
    return tmp_path, write_colour_records(tmp_path, prompt_repeats=6)


def test_rows_interleave_whole_pairs_and_reshuffle_per_epoch(world):
    from unime.data.images import ImageLoader

    root, recs = world
    rows = grpo_rows(recs, ImageLoader(root), epochs=2, seed=3)
    assert len(rows) == 16
    assert [r["side"] for r in rows] == ["query", "positive"] * 8
    pairs = [r["pair_id"] for r in rows]
    assert all(pairs[2 * k] == pairs[2 * k + 1] for k in range(8))
    epoch1, epoch2 = pairs[0:8:2], pairs[8:16:2]
    assert sorted(epoch1) == sorted(epoch2) == ["r0", "r1", "r2", "r3"]
    assert epoch1 != epoch2  # seed 3 permutes the two epochs differently
    q = next(r for r in rows if r["pair_id"] == "r1" and r["side"] == "query")
    p = next(r for r in rows if r["pair_id"] == "r1" and r["side"] == "positive")
    assert q["images"] == [] and "a blue circle" in json.dumps(q["prompt"])
    assert len(p["images"]) == 1 and p["images"][0].getpixel((5, 5)) == COLOURS["blue"]
    assert json.loads(p["item"]) == {"text": "<|image_1|>" + " Represent the given image." * 6,
                                     "images": ["imgs/blue.png"]}


def _epoch_world(root, n_pairs: int, monkeypatch) -> str:
    """`n_pairs` text-only (query, positive) records in root/records.jsonl (no image: `_grpo_data`'s rows without a
    model's image limits, its image loader a plain one)."""
    from unime.data.images import ImageLoader
    from unime.data.io import write_records

    write_records([Record(query=Item(text=f"query {i}"), positive=Item(text=f"document {i}"), id=f"r{i}")
                   for i in range(n_pairs)], root / "records.jsonl")
    monkeypatch.setattr("unime.models.loading.checkpoint_image_loader",
                        lambda paths, budget, data_root=None, **kw: ImageLoader(data_root, **kw))
    return str(root / "records.jsonl")


def _trl_batches(cfg, rows, tmp_path) -> list[list[dict]]:
    """The rows of each step's generation, as TRL's own sampler (`GRPOTrainer._get_train_sampler`, unbound, on the
    run's config: shuffling off) hands them to one process: each row repeated num_generations times."""
    from types import SimpleNamespace

    gcfg = embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, fp16=False)
    trainer = SimpleNamespace(num_generations=cfg.num_generations, args=gcfg, num_iterations=gcfg.num_iterations,
                              shuffle_dataset=gcfg.shuffle_dataset, train_dataset=rows)
    order = list(_trainer_class()._get_train_sampler(trainer, rows))
    size = cfg.completions_per_step
    return [[rows[i] for i in order[k:k + size]] for k in range(0, len(order), size)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_pairs,epochs", [(3, 2), (5, 3)])
def test_every_step_holds_distinct_pairs_across_epoch_boundaries(tmp_path, monkeypatch, n_pairs, epochs, seed):
    """Review: the epochs' pairs were laid out one after another, and TRL's sampler takes fixed runs of
    2 x --pairs-per-batch rows, so with N pairs not a multiple of B a step held the end of one epoch and the start of
    the next: the same pair twice (3 pairs, B 2, 2 epochs: seeds 1, 3, 4 and 5 of these) stopped the run midway with
    the reward's "does not hold whole (query, positive) pairs". Each epoch now holds whole steps of B distinct pairs
    (the first B x (N // B) of its permutation; the N mod B left sit that epoch out): E x (N // B) steps, each
    pair at most once per epoch, every batch accepted by the reward's layout check."""
    cfg = GRPOStageConfig(model="m", embedder="e", records=_epoch_world(tmp_path, n_pairs, monkeypatch), out="o",
                          num_generations=2, pairs_per_batch=2, epochs=epochs, seed=seed)
    batches = _trl_batches(cfg, _grpo_data(cfg).rows, tmp_path)
    reward = EmbedRLReward(embedder=None, judge=None, group_size=2, weights=(0.05, 0.8, 0.0))
    for batch in batches:
        layout = reward.layout([r["pair_id"] for r in batch], [r["side"] for r in batch])
        assert layout.batch_pairs == 2
    per_epoch = n_pairs // 2
    assert len(batches) == epochs * per_epoch
    # by hand: epoch e's steps take the first 2 x (N // 2) pairs of the e-th seeded permutation, in order
    rng = np.random.default_rng(seed)
    want = [[f"r{i}" for i in rng.permutation(n_pairs).tolist()[:2 * per_epoch]] for _ in range(epochs)]
    got = [list(dict.fromkeys(r["pair_id"] for r in batch)) for batch in batches]
    assert [sum(got[e * per_epoch:(e + 1) * per_epoch], []) for e in range(epochs)] == want


@pytest.mark.parametrize("n_pairs,epochs,seed", [(4, 3, 1), (72, 5, 0), (3, 1, 1), (5, 1, 4)])
def test_rows_are_unchanged_when_the_pairs_fill_whole_steps_or_one_epoch(tmp_path, monkeypatch, n_pairs, epochs,
                                                                        seed):
    """N a multiple of --pairs-per-batch (the demo: 72 pairs, B 2, 5 epochs) or one epoch: the rows are the old ones,
    pair for pair (each epoch the whole seeded permutation, recomputed here as grpo_rows laid it out before), so such
    a run trains as before; one epoch's N mod B pairs at its end are still left to TRL's sampler, which drops them."""
    cfg = GRPOStageConfig(model="m", embedder="e", records=_epoch_world(tmp_path, n_pairs, monkeypatch), out="o",
                          num_generations=2, pairs_per_batch=2, epochs=epochs, seed=seed)
    rows = _grpo_data(cfg).rows
    rng = np.random.default_rng(seed)
    old = [f"r{i}" for _ in range(epochs) for i in rng.permutation(n_pairs).tolist()]
    assert [r["pair_id"] for r in rows] == [p for p in old for _ in range(2)]
    assert [r["side"] for r in rows] == ["query", "positive"] * len(old)
    assert len(_trl_batches(cfg, rows, tmp_path)) == epochs * n_pairs // 2


def test_rows_of_a_data_parallel_run_cut_each_epoch_to_whole_global_steps(tmp_path, monkeypatch):
    """Under WORLD_SIZE P processes a step takes B x P pairs (each process B consecutive ones): 5 pairs, B 2, 2
    processes, 2 epochs: the first epoch keeps the first 4 pairs of its permutation, the last all 5 (TRL drops the
    one left)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = GRPOStageConfig(model="m", embedder="e", records=_epoch_world(tmp_path, 5, monkeypatch), out="o",
                          num_generations=2, pairs_per_batch=2, epochs=2, seed=3)
    rng = np.random.default_rng(3)
    want = [f"r{i}" for i in rng.permutation(5).tolist()[:4]] + [f"r{i}" for i in rng.permutation(5).tolist()]
    assert [r["pair_id"] for r in _grpo_data(cfg).rows][::2] == want


def test_fewer_pairs_than_a_data_parallel_step_takes_are_refused(tmp_path, monkeypatch):
    """Under WORLD_SIZE P a step takes B x P pairs: 3 pairs with B 2 on 2 processes passed the "fewer than
    --pairs-per-batch" check (3 >= 2), and every epoch but the last was empty (3 // 4 = 0 steps), the last one
    dropped by TRL as a short step: a run of no step. Refused as one process refuses fewer pairs than B."""
    from unime.errors import DataError

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = GRPOStageConfig(model="m", embedder="e", records=_epoch_world(tmp_path, 3, monkeypatch), out="o",
                          num_generations=2, pairs_per_batch=2, epochs=2, seed=0)
    with pytest.raises(DataError) as e:
        _grpo_data(cfg)
    assert str(e.value).endswith("3 pairs, fewer than a step's 4 (--pairs-per-batch 2 x 2 processes)")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: 3 pairs are enough for steps of 2
    assert len(_grpo_data(cfg).rows) == 2 * (2 + 3)


def test_a_record_with_an_inline_image_is_refused_naming_it_and_the_records_grpo_takes(world):
    """QA: `train reasoner --stage grpo --records reasoned.parquet` (`reason materialize`'s output: items with
    their evidence crops inline) said "field 'images': items with inline images are not JSON-serialisable; write
    Parquet", naming neither the file nor the record, and advising a Parquet file it was given. The record is named,
    and what GRPO takes (records whose images are files, e.g. `reason split`'s rl.jsonl); under a skip policy it is
    counted and left out."""
    from PIL import Image

    from unime.data.images import ImageLoader
    from unime.data.skips import ErrorPolicy, SkipReport
    from unime.errors import DataError

    root, recs = world
    inline = Record(query=recs[1].query, positive=Item(text="<|image_1|>", images=(Image.new("RGB", (32, 32)),)),
                    id="r1")
    with pytest.raises(DataError) as e:
        grpo_rows([recs[0], inline], ImageLoader(root), source="reasoned.parquet")
    assert (e.value.source, e.value.record, e.value.field) == ("reasoned.parquet", "r1", "positive.images[0]")
    assert "an inline image" in str(e.value) and "rl.jsonl" in str(e.value)
    skips = SkipReport()
    rows = grpo_rows([recs[0], inline, recs[2]], ImageLoader(root), policy=ErrorPolicy("skip", skips, "grpo"))
    assert sorted(r["pair_id"] for r in rows[::2]) == ["r0", "r2"]
    assert skips.total == 1

def test_duplicate_record_ids_are_refused(world):
    from unime.data.images import ImageLoader
    from unime.errors import DataError

    root, recs = world
    recs = [recs[0], Record(query=recs[1].query, positive=recs[1].positive, id=recs[0].id)]
    with pytest.raises(DataError, match="share the id 'r0'"):
        grpo_rows(recs, ImageLoader(root))
    # named as every message names a record (`record_label`): read from a file, by their lines (before: "records 0
    # and 1", their 0-based positions, with the id as the record)
    import copy

    from unime.data.io import with_origin

    lines = [with_origin(copy.copy(recs[0]), "line 1 (id r0)"), with_origin(copy.copy(recs[1]), "line 4 (id r0)")]
    with pytest.raises(DataError) as e:
        grpo_rows(lines, ImageLoader(root), source="r.jsonl")
    assert (e.value.source, e.value.record, e.value.field) == ("r.jsonl", "line 4 (id r0)", "id")
    assert "records line 1 (id r0) and line 4 (id r0) share the id 'r0'" in str(e.value)


def test_geometry_keeps_pairs_whole(tmp_path):
    cfg = GRPOStageConfig(model="m", embedder="e", records="r", out="o", num_generations=4, pairs_per_batch=3)
    g = embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "unused"), use_cpu=True, bf16=False, fp16=False)
    assert g.per_device_train_batch_size == 24 and g.generation_batch_size == 24 and not g.shuffle_dataset
    assert (g.beta, g.learning_rate, g.temperature, g.use_vllm, g.bf16) == (0.01, 3e-6, 1.0, False, False)
    with pytest.raises(ValueError, match="pairs_per_batch must be >= 2, got 1"):
        GRPOStageConfig(model="m", embedder="e", records="r", out="o", pairs_per_batch=1).validate()


def test_micro_batch_splits_the_steps_one_generation_into_accumulated_forwards(tmp_path):
    """--micro-batch (new): TRL's forward and backward of the policy ran on all 2 x 5 pairs x 4 generations = 40
    completions of a step at once (per_device_train_batch_size 40: the embed-rl recipes' 8B reasoner, ~850 GiB of
    activations). With --micro-batch 4, TRL gets per_device_train_batch_size 4 and 40 / 4 = 10 accumulation steps, and
    steps_per_generation 10, so its generation batch (per_device x processes x steps_per_generation) is still the
    step's 40 completions, generated and rewarded together; a micro-batch that does not divide them is refused."""
    from unime.errors import OptionError

    def cfg(**kw):
        return GRPOStageConfig(model="m", embedder="e", records="r", out="o", num_generations=4, pairs_per_batch=5,
                               hard_negative_pairs=4, **kw)

    g = embed_rl_grpo_config(cfg(micro_batch=4), output_dir=str(tmp_path / "unused"), use_cpu=True, bf16=False,
                             fp16=False)
    assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.steps_per_generation,
            g.generation_batch_size, g.num_iterations) == (4, 10, 10, 40, 1)
    g = embed_rl_grpo_config(cfg(), output_dir=str(tmp_path / "unused"), use_cpu=True, bf16=False, fp16=False)
    assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.steps_per_generation) == (40, 1, 1)
    with pytest.raises(OptionError, match=r"micro_batch 3 does not divide a step's 40 completions \(2 x "
                       r"pairs_per_batch 5 x num_generations 4\): give a divisor of 40"):
        cfg(micro_batch=3).validate()
    cfg(micro_batch=8).validate()


def test_hard_negative_pairs_must_fit_in_the_batch():
    """QA: --hard-negative-pairs 4 (the Embed-RL recipe) with --pairs-per-batch 2 (the default) silently showed the
    process judge one negative pair: a batch of B pairs has B - 1. Refused before any work; B - 1 is accepted, and
    the defaults fit together."""
    from unime.errors import OptionError

    def cfg(**kw):
        return GRPOStageConfig(model="m", embedder="e", records="r", out="o", **kw)

    for pairs, hard in ((2, 4), (2, 2), (4, 4)):
        with pytest.raises(OptionError, match=rf"hard_negative_pairs {hard} needs more pairs per batch: a batch of "
                           rf"pairs_per_batch {pairs} pairs has {pairs - 1} negative pair\(s\)"):
            cfg(pairs_per_batch=pairs, hard_negative_pairs=hard).validate()
    cfg(pairs_per_batch=5, hard_negative_pairs=4).validate()
    cfg(pairs_per_batch=2, hard_negative_pairs=1).validate()
    cfg().validate()


class _RecordingJudge:
    """Stands in for the process judge: picks candidate (k mod #candidates) and records what it saw."""

    def __init__(self):
        self.calls = []

    def pick(self, queries, candidate_lists, max_new_tokens=8):
        picks = [k % len(c) for k, c in enumerate(candidate_lists)]
        self.calls.append((list(queries), [list(c) for c in candidate_lists], picks))
        return picks


class _RandomEmbedder:
    """Stands in for the frozen embedder: a seeded random vector per completion."""

    def encode(self, items, texts):
        return np.random.default_rng(len(texts)).normal(size=(len(texts), 8))


@pytest.mark.parametrize("pairs,hard", [(3, 2), (3, 1), (5, 4)])
def test_reward_records_the_negative_pairs_it_used(pairs, hard):
    """The summary's `negative_pairs`: a batch of B pairs gives the outcome reward B - 1 negative pairs, and the
    process judge is shown the own pair's n rollouts and one rollout of each of `hard` other pairs (counted in what it
    saw)."""
    n = 2
    judge = _RecordingJudge()
    reward = EmbedRLReward(_RandomEmbedder(), judge, group_size=n, hard_negative_pairs=hard)
    assert reward.negative_pairs() == {"outcome": [], "process": []}
    pair_id = [f"p{b}" for b in range(pairs) for _ in range(2 * n)]
    side = (["query"] * n + ["positive"] * n) * pairs
    reward(prompts=[""] * len(side), completions=[f"c{i}" for i in range(len(side))], pair_id=pair_id, side=side,
           item=[json.dumps({"text": f"x{p}"}) for p in pair_id])
    (queries, candidate_lists, _), = judge.calls
    assert {len(c) for c in candidate_lists} == {n + hard}
    assert reward.negative_pairs() == {"outcome": [pairs - 1], "process": [hard]}


@pytest.mark.parametrize("mask,expected", [(True, [1, 2]), (False, [2])])
def test_reward_pairs_sharing_a_positive_are_not_negatives(mask, expected):
    """3 pairs, the positives of p0 and p1 the same item (same text): with mask_duplicates (default) p0 and p1 have 1
    negative pair each (p2), p2 has 2; the outcome reward equals the one computed with those columns left out."""
    from unime.reasoning.rewards import RolloutLayout

    n = 2
    reward = EmbedRLReward(_RandomEmbedder(), None, group_size=n, weights=(0.05, 0.8, 0.0), mask_duplicates=mask)
    pair_id = [f"p{b}" for b in range(3) for _ in range(2 * n)]
    side = (["query"] * n + ["positive"] * n) * 3
    texts = {("p0", "positive"): "dog", ("p1", "positive"): "dog", ("p2", "positive"): "cat"}
    item = [json.dumps({"text": texts.get((p, s), f"query {p}")}) for p, s in zip(pair_id, side)]
    reward(prompts=[""] * len(side), completions=[f"c{i}" for i in range(len(side))], pair_id=pair_id, side=side,
           item=item)
    assert reward.negative_pairs()["outcome"] == expected
    # the process judge: p0's and p1's rollouts are not shown as each other's negatives (only p2's)
    judge = _RecordingJudge()
    reward = EmbedRLReward(_RandomEmbedder(), judge, group_size=n, hard_negative_pairs=2, mask_duplicates=mask)
    reward(prompts=[""] * len(side), completions=[f"c{i}" for i in range(len(side))], pair_id=pair_id, side=side,
           item=item)
    assert reward.negative_pairs()["process"] == expected
    (_, candidate_lists, _), = judge.calls
    pair_of = {f"c{i}": p for i, p in enumerate(pair_id)}
    negatives_of_p0 = {pair_of[c] for cl in candidate_lists[:n] for c in cl} - {"p0"}  # p0's query rollouts
    assert negatives_of_p0 == ({"p2"} if mask else {"p1", "p2"})
    lay = RolloutLayout(3, n)
    E = _RandomEmbedder().encode(None, [""] * len(side))
    want = lay.outcome_rewards(E, positive_keys=["dog", "dog", "cat"] if mask else None)
    np.testing.assert_allclose(reward.last["per_completion"]["outcome"], want.reward)
    if mask:
        assert not np.allclose(want.reward, lay.outcome_rewards(E).reward)


def test_split_pair_is_a_clear_error():
    reward = EmbedRLReward(embedder=None, judge=None, group_size=2, weights=(0.05, 0.8, 0.0))
    with pytest.raises(ValueError, match="does not hold whole .* pairs"):
        reward(prompts=[""] * 6, completions=["x"] * 6, pair_id=["a", "a", "a", "a", "b", "b"],
               side=["query", "query", "positive", "positive", "query", "query"], item=["{}"] * 6)


def _independent_outcome(E, pair_ids, sides, texts, neg_t=0.5, scale=0.5):
    """Outcome reward recomputed from scratch, keyed by (pair, side) — no layout object."""
    n = len(texts)
    out, margins = np.zeros(n), np.zeros(n)
    for i in range(n):
        other = "positive" if sides[i] == "query" else "query"
        cols = [j for j in range(n) if sides[j] == other]
        sims = np.array([float(E[i] @ E[j]) for j in cols])
        is_pos = np.array([pair_ids[j] == pair_ids[i] for j in cols])
        k = int(is_pos.sum())
        # rank by similarity, negatives first among ties
        order = sorted(range(len(cols)), key=lambda c: (-sims[c], is_pos[c]))
        acc = sum(is_pos[c] for c in order[:k]) / k
        neg = sims[~is_pos]
        w = np.exp(neg / neg_t - (neg / neg_t).max())
        w /= w.sum()
        margins[i] = sims[is_pos].mean() - (w * neg).sum()
        out[i] = scale * acc * margins[i]
    return out, margins


def test_reward_bookkeeping_through_trl_ordering(world, tiny_model_dir, tmp_path):
    """Two GRPO steps on TRL with the real reward; each batch's rewards recomputed independently from the
    completions TRL passed (pair and side read from the columns), one embedding per completion."""
    from datasets import Dataset

    from unime import Embedder
    from unime.data.images import ImageLoader
    from unime.models.loading import load_model
    from unime.reasoning.embed_inputs import ReasonedEmbedder
    from unime.reasoning.rewards import format_reward, process_judge_text

    root, recs = world
    emb = ReasonedEmbedder(Embedder.from_pretrained(tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), device="cpu",
                                                    data_root=str(root)))
    judge = _RecordingJudge()
    reward = EmbedRLReward(emb, judge, group_size=2, seed=1)
    seen = []
    original = reward.__call__

    class Spy:
        __name__ = "embed_rl"

        def __call__(self, **kw):
            out = original(**kw)
            seen.append((kw, out, reward.last))
            return out

    cfg = GRPOStageConfig(model="m", embedder="e", records="r", out="o", num_generations=2, pairs_per_batch=2,
                          max_steps=2, max_completion_length=12)
    gcfg = embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, fp16=False)
    policy = load_model(tiny_model_dir("qwen2_vl"), device="cpu", trainable=True)
    rows = grpo_rows(recs, ImageLoader(root), seed=0)
    trainer = _trainer_class()(model=policy.model, reward_funcs=[Spy()], args=gcfg,
                               train_dataset=Dataset.from_list(rows), processing_class=policy.processor)
    trainer.train()
    assert len(seen) == 2
    positions = []
    for step, (kw, total, last) in enumerate(seen):
        pair_ids, sides = kw["pair_id"], kw["side"]
        texts = [c[0]["content"] for c in kw["completions"]]
        # TRL repeats each prompt num_generations times; our rows keep both sides of a pair in the batch
        assert len(texts) == 8 and sorted(set(pair_ids)) == sorted(set(pair_ids[::2]))
        for pid in set(pair_ids):
            assert [s for p, s in zip(pair_ids, sides) if p == pid] == ["query", "query", "positive", "positive"]
        # every completion's prompt is its own item's prompt (text query / image positive)
        for p, pid, s in zip(kw["prompts"], pair_ids, sides):
            colour = list(COLOURS)[int(pid[1:])]
            prompt_text = " ".join(part.get("text") or "" for m in p for part in m["content"])
            assert (f"a {colour} circle" in prompt_text) == (s == "query")
            assert sum(part["type"] == "image" for m in p for part in m["content"]) == (s == "positive")
        items = [Item.from_dict(json.loads(x)) for x in kw["item"]]
        with __import__("torch").inference_mode():
            E = np.stack([emb.embed([it], [t])[0].numpy() for it, t in zip(items, texts)])
        out, margins = _independent_outcome(E, pair_ids, sides, texts)
        np.testing.assert_allclose(last["per_completion"]["outcome"], out, atol=1e-5)
        # process: the judge saw each completion's text and its candidates; reward = margin iff the picked
        # candidate is a completion of the same pair's other side
        queries, cands, picks = judge.calls[step]
        # each completion with its item's text (the release's "Instruction: ..." / "Text: ..."), candidates likewise
        assert queries == [process_judge_text(t, it.text, s) for t, it, s in zip(texts, items, sides)]
        shown = [process_judge_text(t, it.text, s, as_candidate=True) for t, it, s in zip(texts, items, sides)]
        proc = np.zeros(len(texts))
        for i, (cl, k) in enumerate(zip(cands, picks)):
            other = "positive" if sides[i] == "query" else "query"
            same = {shown[j] for j in range(len(texts)) if pair_ids[j] == pair_ids[i] and sides[j] == other}
            assert len(cl) == 3  # 2 same-pair rollouts + the most similar one of the one other pair (B = 2)
            positions.append(tuple(c in same for c in cl))
            proc[i] = margins[i] if cl[k] in same else 0.0
        np.testing.assert_allclose(last["per_completion"]["process"], proc, atol=1e-5)
        fmt = np.array(format_reward(texts))
        np.testing.assert_allclose(total, 0.05 * fmt + 0.8 * out + 0.2 * proc, atol=1e-5)
    # candidate order is shuffled: the same-pair rollouts are not always listed first
    assert len(positions) == 16 and len(set(positions)) > 1
    assert any(pos[:2] != (True, True) for pos in positions)


def test_grpo_smoke_two_steps_all_rewards(world, tiny_model_dir, tmp_path):
    """`train_reasoner_grpo` end to end: 2 steps, format + outcome + process (the judge is the tiny reasoner); the
    policy given as a run folder (an SFT stage's output), whose merged/ the card names as the base (QA: it named the
    run folder)."""
    import shutil

    from unime.embed_rl.grpo import train_reasoner_grpo

    root, _ = world
    out, sft = tmp_path / "grpo", tmp_path / "sft"
    shutil.copytree(tiny_model_dir("qwen2_vl"), sft / "merged")
    cfg = GRPOStageConfig(model=str(sft), embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                          records=str(root / "records.jsonl"), out=str(out), max_steps=2, max_completion_length=12,
                          device="cpu")
    summary = train_reasoner_grpo(cfg)
    assert summary["steps"] == 2
    # the default batch of 2 pairs: 1 negative pair for the outcome reward, 1 shown to the process judge
    assert summary["negative_pairs"] == {"outcome": [1], "process": [1]}
    with open(out / "reward_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(float(r["step"])) for r in rows] == [1, 2]
    for r in rows:
        for k in ("format", "outcome", "process", "total", "acc", "margin"):
            assert np.isfinite(float(r[k]))
        total = 0.05 * float(r["format"]) + 0.8 * float(r["outcome"]) + 0.2 * float(r["process"])
        assert abs(total - float(r["total"])) < 1e-6
    assert (out / "reward_curves.png").stat().st_size > 1000
    # TRL's own metrics were logged and merged/ is an ordinary HF folder
    with open(out / "curves.csv") as fh:  # the curves writer of every stage (`unime.models.curves`)
        hist = list(csv.DictReader(fh))
    assert len(hist) == 2 and "kl" in hist[0] and "embed_rl/outcome" in hist[0]
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(out / "merged")
    # its generation_config sets nothing of a decoding (no sampling settings a later generation would take)
    from transformers import GenerationConfig

    from unime.models.generation import ignored_checkpoint_decoding

    assert ignored_checkpoint_decoding(GenerationConfig.from_pretrained(out / "merged")) == {}
    # exported with the model's own padding side (QA: TRL's left padding was saved with it)
    from transformers import AutoTokenizer

    side = AutoTokenizer.from_pretrained(sft / "merged").padding_side
    assert AutoTokenizer.from_pretrained(out / "merged").padding_side == side == "right"
    base = str((sft / "merged").resolve())
    assert f"\nbase_model: {base}\n" in (out / "README.md").read_text()
    assert (summary["base_model"], summary["started_from_adapter"]) == (base, None)


def test_grpo_from_an_adapter_folder_trains_that_adapter(world, tiny_model_dir, tmp_path):
    """QA: `train reasoner --stage grpo --model SFT/adapter --lora-r 4` handed TRL the loaded PEFT model with a
    `peft_config`, which TRL refuses ('You passed a `PeftModel` instance together with a `peft_config`'). Now the
    adapter is trained on, as in the reasoner SFT (`unime.models.lora.model_to_train`): the exported adapter is the
    start adapter's tensors, trained, on the same base — without TRL's frozen reference copy beside it — and the run
    records where it started; full fine-tuning (--lora-r 0) of an adapter is refused."""
    from transformers import AutoModelForImageTextToText

    from unime.embed_rl.grpo import train_reasoner_grpo
    from unime.errors import ModelError
    from unime.models.lora import GENERATIVE_LORA, apply_lora
    from safetensors.torch import load_file

    root, _ = world
    base = str(Path(tiny_model_dir("qwen2_vl")).resolve())
    start = tmp_path / "start"  # an SFT stage's adapter/: a LoRA of rank 4 on the base
    torch.manual_seed(0)
    peft = apply_lora(AutoModelForImageTextToText.from_pretrained(base),
                      dataclasses.replace(GENERATIVE_LORA, r=4), task_type="CAUSAL_LM")
    peft.save_pretrained(str(start))
    cfg = GRPOStageConfig(model=str(start), embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                          records=str(root / "records.jsonl"), out=str(tmp_path / "grpo"), max_steps=1,
                          max_completion_length=8, weights=(0.05, 0.8, 0.0), lora_r=4, learning_rate=1e-2,
                          device="cpu")
    summary = train_reasoner_grpo(cfg)
    assert summary["steps"] == 1
    assert (summary["base_model"], summary["started_from_adapter"]) == (base, str(start))
    adapter = tmp_path / "grpo" / "adapter"
    a, b = load_file(str(start / "adapter_model.safetensors")), load_file(str(adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # one LoRA, trained
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    assert sorted(p.name for p in adapter.iterdir() if p.is_dir()) == []  # no "ref" adapter saved beside it
    with pytest.raises(ModelError, match="merge it first"):
        train_reasoner_grpo(dataclasses.replace(cfg, lora_r=0, out=str(tmp_path / "full")))


def test_grpo_prompt_tokens_equal_the_sft_and_generate_prompt(tiny_model_dir):
    """TRL tokenizes a conversational row with `prepare_multimodal_messages` + `apply_chat_template`; the
    reasoner (generate, SFT) renders the same segments through the family adapter: same token ids."""
    from trl.data_utils import prepare_multimodal_messages

    from unime.models.loading import load_model
    from unime.reasoning.reasoner import conversational_prompt, reasoning_prompt_segments

    loaded = load_model(tiny_model_dir("qwen2_vl"), device="cpu")
    img = Image.new("RGB", (80, 64), (9, 9, 200))
    for text, ims, side in (("a red circle", [], "query"), ("<|image_1|>\nWhat colour?", [img], "target")):
        segs = reasoning_prompt_segments(text, ims, [], side)
        ours = loaded.adapter.processor_inputs([loaded.adapter.render_user_turn(segs)], [segs])["input_ids"][0]
        messages, images = conversational_prompt(segs)
        trl = loaded.processor.apply_chat_template(conversation=[prepare_multimodal_messages(messages, images=images)],
                                                   add_generation_prompt=True, tokenize=True, return_dict=True)
        assert list(trl["input_ids"][0]) == ours.tolist()


@pytest.mark.parametrize("prepare", [False, True])
def test_policy_processor_aligns_image_token_types_with_left_padded_prompts(tiny_model_dir, prepare):
    """What TRL's forward does: prompt ids left-padded, vision inputs from a second processor call. The image
    token types must sit on the image tokens (they do not with the checkpoint's right padding)."""
    from trl.data_utils import prepare_multimodal_messages

    from unime.models.loading import load_model
    from unime.reasoning.reasoner import conversational_prompt, reasoning_prompt_segments
    from unime.embed_rl.grpo import prepare_policy_processor

    proc = load_model(tiny_model_dir("qwen2_vl"), device="cpu").processor
    if prepare:
        prepare_policy_processor(proc)
    img = Image.new("RGB", (64, 64), (200, 0, 0))
    prompts, images = [], []
    for text in ("<|image_1|>", "<|image_1|>" + " Represent the given image." * 12):
        msgs, ims = conversational_prompt(reasoning_prompt_segments(text, [img], [], "target"))
        prompts.append(prepare_multimodal_messages(msgs, images=ims))
        images.append(ims)
    ids = proc.apply_chat_template(conversation=prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = [list(x) for x in ids["input_ids"]]
    width = max(map(len, ids))
    left_padded = np.array([[proc.tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
    texts = [proc.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    types = proc(images=images, text=texts, padding=True, return_tensors="pt")["mm_token_type_ids"].numpy()
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    aligned = np.array_equal(types == 1, left_padded == image_id)
    assert aligned == prepare


def test_grpo_hands_trl_a_lora_on_the_language_model_only(world, tiny_model_dir, tmp_path, monkeypatch):
    """With `lora_r > 0` the stage hands TRL the Qwen2.5-VL policy with its LoRA on (`unime.models.lora`, as every
    trainer; no `peft_config`, which TRL refuses beside a PEFT model): the decoder's projections, no vision block."""
    from unime.embed_rl import grpo

    seen = {}

    class Stop(Exception):
        pass

    class CapturingTrainer:
        def __init__(self, *, model, **kwargs):
            assert kwargs.get("peft_config") is None
            seen["adapted"] = {n.split("base_model.model.", 1)[1].rsplit(".lora_A", 1)[0]
                               for n, _ in model.named_parameters() if ".lora_A" in n}
            raise Stop

    monkeypatch.setattr(grpo, "_trainer_class", lambda: CapturingTrainer)
    root, _ = world
    cfg = GRPOStageConfig(model=tiny_model_dir("qwen2_5_vl"), embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                          records=str(root / "records.jsonl"), out=str(tmp_path / "grpo"), weights=(0.05, 0.8, 0.0),
                          lora_r=4, device="cpu")
    with pytest.raises(Stop):
        grpo.train_reasoner_grpo(cfg)
    assert seen["adapted"] == {f"model.language_model.layers.{i}.{proj}" for i in (0, 1)
                               for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def test_grpo_skip_policy_counts_bad_records_and_trains_on_the_rest(world, tiny_model_dir, tmp_path, capsys):
    """`unime train reasoner --stage grpo --on-error skip` end to end: a malformed line and a record whose image
    is corrupt are counted under their reasons (console and summary) and training runs on the 4 good records;
    without skip the same file stops with the one contract line naming the file, line and field."""
    from unime.cli import main

    root, _ = world
    (root / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    bad = {"id": "bad", "query": {"text": "a grey circle"},
           "positive": {"text": "<|image_1|>", "images": ["imgs/bad.png"]}}
    lines = (root / "records.jsonl").read_text().splitlines()
    lines = lines[:2] + ["{not json"] + lines[2:] + [json.dumps(bad)]
    (root / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    common = ["train", "reasoner", "--stage", "grpo", "--model", tiny_model_dir("qwen2_vl"),
              "--embedder", tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), "--records", str(root / "mixed.jsonl"),
              "--max-steps", "1", "--max-completion-length", "8", "--device", "cpu"]
    capsys.readouterr()  # the fixtures' model-building progress bars
    assert main([*common, "--out", str(tmp_path / "strict")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unime")]
    assert len(err) == 1 and "mixed.jsonl, record line 3: malformed JSON" in err[0], err
    assert main([*common, "--out", str(tmp_path / "skip"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 record(s)" in out, out
    summary = json.loads((tmp_path / "skip" / "grpo_summary.json").read_text())
    assert summary["skipped_records"]["total"] == 2 and summary["steps"] == 1


class _StubScorer:
    """Stands in for a Yes/No judge (`JudgeScorer.score_pairs`): P(Yes) 0.9 when both sides name the same pair
    in their T-CoT ("pair rK"), else 0.2, or `fixed(query, candidate)` when given; records the pairs."""

    def __init__(self, fixed=None):
        self.pairs, self.fixed = [], fixed

    def score_pairs(self, pairs):
        self.pairs += list(pairs)
        tag = lambda it: it.text.rsplit("pair ", 1)[-1]
        return np.array([self.fixed(q, c) if self.fixed else (0.9 if tag(q) == tag(c) else 0.2) for q, c in pairs])


def test_scored_process_pick_shows_items_with_their_tcots_and_takes_the_highest():
    """`--process-pick score`: each completion shown as its item + T-CoT (`tcot_judge_item`, what the T-CoT match
    judge was trained on), the pick the candidate of highest P(Yes); r_proc = margin iff it is a same-pair rollout."""
    from unime.embed_rl.grpo import ScoredPick
    from unime.embed_rl.tcot_embedder import tcot_judge_item
    from unime.reasoning.rewards import RolloutLayout

    pair_ids = ["r0"] * 4 + ["r1"] * 4
    sides = ["query", "query", "positive", "positive"] * 2
    texts = [f"<thinking>{{}}</thinking> pair {p}" for p in pair_ids]
    items = [Item(text=f"q {p}") if s == "query" else Item(text=f"<|image_1|>\nP {p}", images=(f"{p}.png",))
             for p, s in zip(pair_ids, sides)]
    layout = RolloutLayout.from_completion_keys(pair_ids, sides, 2)
    S = np.eye(4)  # query rollouts x positive rollouts
    margin = np.arange(1.0, 9.0)
    scorer = _StubScorer()
    reward = EmbedRLReward(embedder=None, judge=ScoredPick(scorer), group_size=2, seed=0)
    proc, parsed, picked_pos = reward.process(texts, items, S, layout, margin)
    np.testing.assert_allclose(proc, margin)  # every pick a same-pair rollout
    assert (parsed, picked_pos) == (1.0, 1.0)
    shown = {(q.key, c.key) for q, c in scorer.pairs}
    assert len(scorer.pairs) == 8 * 3  # each completion against its pair's 2 rollouts + 1 of the other pair (B = 2)
    want = [tcot_judge_item(it, t) for it, t in zip(items, texts)]
    assert all(any(q.key == w.key for w in want) and any(c.key == w.key for w in want) for q, c in scorer.pairs)
    assert (want[0].key, want[2].key) in shown and want[0].text == "q r0\n" + texts[0]
    assert want[2].images == ("r0.png",)
    # a judge that prefers the other pair's rollouts: no process reward
    wrong = _StubScorer(fixed=lambda q, c: 0.2 if q.text.rsplit("pair ", 1)[-1] == c.text.rsplit("pair ", 1)[-1]
                        else 0.9)
    proc, parsed, picked_pos = EmbedRLReward(embedder=None, judge=ScoredPick(wrong), group_size=2,
                                             seed=0).process(texts, items, S, layout, margin)
    np.testing.assert_allclose(proc, 0.0)
    assert (parsed, picked_pos) == (1.0, 0.0)


def test_a_process_judge_whose_answers_never_parse_is_reported(caplog):
    from unime.reasoning.rewards import RolloutLayout

    class YesNo:  # a Yes/No judge asked for a number
        def pick(self, queries, candidate_lists, max_new_tokens=8):
            return [None] * len(queries)

    pair_ids, sides = ["r0"] * 4 + ["r1"] * 4, ["query", "query", "positive", "positive"] * 2
    layout = RolloutLayout.from_completion_keys(pair_ids, sides, 2)
    reward = EmbedRLReward(embedder=None, judge=YesNo(), group_size=2)
    with caplog.at_level("WARNING", logger="unime.embed_rl.grpo"):
        proc, parsed, _ = reward.process(["t"] * 8, [Item(text="x")] * 8, np.eye(4), layout, np.ones(8))
        reward.process(["t"] * 8, [Item(text="x")] * 8, np.eye(4), layout, np.ones(8))
    np.testing.assert_allclose(proc, 0.0)
    assert parsed == 0.0
    warnings = [r.getMessage() for r in caplog.records if "none of the process judge's" in r.getMessage()]
    assert len(warnings) == 1 and "--process-pick score" in warnings[0]  # once, not every step


def test_reward_log_resumed_keeps_step_and_completions_integers(tmp_path):
    """QA: a resumed GRPO run read every reward_log.csv value as a float and wrote step 1.0, completions 8.0."""
    from unime.embed_rl.grpo import REWARD_LOG_COLUMNS, RewardLog

    path = tmp_path / "reward_log.csv"
    means = dict(format=1.0, outcome=0.25, process=0.0, total=0.2, acc=0.5, margin=-0.125, judge_parsed=0.75,
                 judge_picked_positive=0.5)
    first = RewardLog(path)
    for step in (1, 2, 3):
        first.add({"step": step, "completions": 8, **means})
    resumed = RewardLog(path, resume=True)
    resumed.truncate(2)
    assert resumed.rows == [{"step": s, "completions": 8, **means} for s in (1, 2)]
    assert all(type(r["step"]) is int and type(r["completions"]) is int for r in resumed.rows)
    resumed.add({"step": 3, "completions": 8, **means})
    with open(path) as fh:
        lines = fh.read().splitlines()
    assert lines[0] == ",".join(REWARD_LOG_COLUMNS)
    assert [line.split(",")[:2] for line in lines[1:]] == [["1", "8"], ["2", "8"], ["3", "8"]]


@pytest.mark.parametrize("damage, where, said", [
    (lambda t: t[:t.rindex(",0.5,")], "record line 4, field 'judge_picked_positive'",
     "missing (the line is cut short)"),
    (lambda t: t[:t.rindex(",-0.125")], "record line 4, field 'margin'", "missing (the line is cut short)"),
    (lambda t: t.replace("\n2,8,", "\n2,eight,"), "record line 3, field 'completions'", "not a number: 'eight'"),
    (lambda t: t.replace("\n3,8,1.0", "\n3,8,1.0,9,9,9,9,9"), "record line 4", "more values than the header's"),
    (lambda t: "garbage\n" + t, "record line 1", "not the reward log's header (no column step, completions"),
    (lambda t: t.encode() + b"\xff\xfe\x00", None, "not a readable CSV ("),
])
def test_a_hand_damaged_reward_log_is_refused_on_resume_naming_its_line_not_a_traceback(tmp_path, damage, where,
                                                                                         said):
    """QA: a GRPO run's checkpoints/reward_log.csv cut short or holding garbage was a traceback (ValueError,
    KeyError: 'step') when the same command resumed the run. The trainer writes it whole after every step, so such a
    file was changed by hand, and the checkpoint does not hold it (TRL keeps only its means over processes): a
    DataError naming the file, the line and the column, and saying to restore or delete it."""
    from unime.embed_rl.grpo import RewardLog
    from unime.errors import DataError

    path = tmp_path / "reward_log.csv"
    log = RewardLog(path)
    for step in (1, 2, 3):
        log.add({"step": step, "completions": 8, "format": 1.0, "outcome": 0.25, "process": 0.0, "total": 0.2,
                 "acc": 0.5, "margin": -0.125, "judge_parsed": 0.75, "judge_picked_positive": 0.5})
    damaged = damage(path.read_text(encoding="utf-8"))
    (path.write_bytes if isinstance(damaged, bytes) else path.write_text)(damaged)
    with pytest.raises(DataError) as refused:
        RewardLog(path, resume=True)
    assert str(refused.value).startswith(f"{path}, {where}: {said}" if where else f"{path}: {said}")
    assert str(refused.value).endswith("this file is written whole after every step, so it was changed: restore it, "
                                       "or delete it to resume (the run's reward log then starts at the checkpoint's "
                                       "step)")


def test_python_api_reward_refuses_more_hard_negative_pairs_than_the_batch_has():
    """QA: `EmbedRLReward(hard_negative_pairs=4)` on batches of 2 pairs (1 negative pair) showed the process judge 1
    negative pair without a word, while the command line refuses it. The reward refuses the batch with the command
    line's message, before the embedder or the judge sees it; B - 1 is accepted, and the default fits 2 pairs."""
    from unime.errors import OptionError

    n = 2
    pair_id = [f"p{b}" for b in range(2) for _ in range(2 * n)]
    side = (["query"] * n + ["positive"] * n) * 2
    batch = dict(prompts=[""] * 8, completions=[f"c{i}" for i in range(8)], pair_id=pair_id, side=side,
                 item=[json.dumps({"text": f"x{p}"}) for p in pair_id])  # distinct pairs
    judge = _RecordingJudge()
    reward = EmbedRLReward(None, judge, group_size=n, hard_negative_pairs=4)
    with pytest.raises(OptionError, match=r"^hard_negative_pairs 4 needs more pairs per batch: a batch of "
                       r"pairs_per_batch 2 pairs has 1 negative pair\(s\); give pairs_per_batch >= 5 or "
                       r"hard_negative_pairs <= 1$"):
        reward(**batch)
    assert judge.calls == [] and reward.negative_pairs() == {"outcome": [], "process": []}
    for hard in (1, None):
        reward = EmbedRLReward(_RandomEmbedder(), judge, group_size=n,
                               **({} if hard is None else {"hard_negative_pairs": hard}))
        reward(**batch)
        assert reward.negative_pairs() == {"outcome": [1], "process": [1]}


def test_python_api_reward_given_the_pairs_per_batch_refuses_too_many_hard_negative_pairs_as_it_is_built():
    """QA: the reward checked `hard_negative_pairs` only when the first batch arrived, after the policy's first
    generation. Given `pairs_per_batch` (as the command line gives it), it refuses as it is built, with the same
    message; B - 1 is accepted."""
    from unime.errors import OptionError

    judge = _RecordingJudge()
    with pytest.raises(OptionError, match=r"^hard_negative_pairs 4 needs more pairs per batch: a batch of "
                       r"pairs_per_batch 3 pairs has 2 negative pair\(s\); give pairs_per_batch >= 5 or "
                       r"hard_negative_pairs <= 2$"):
        EmbedRLReward(None, judge, group_size=2, hard_negative_pairs=4, pairs_per_batch=3)
    with pytest.raises(OptionError, match=r"^hard_negative_pairs 1 needs more pairs per batch"):
        EmbedRLReward(None, judge, group_size=2, pairs_per_batch=1)  # the default 1
    assert EmbedRLReward(None, judge, group_size=2, hard_negative_pairs=2, pairs_per_batch=3).hard_negative_pairs == 2
    assert judge.calls == []


def test_grpo_gradient_checkpointing_recomputes_the_policys_decoder(world, tiny_model_dir, tmp_path, monkeypatch):
    """QA: GRPO had no way to ask for activation checkpointing (TRL's GRPOConfig default of on was always turned off,
    `--trainer-arg gradient_checkpointing=true` ignored). --gradient-checkpointing: every decoder layer of the policy
    goes through transformers' checkpoint in the loss's forward (none while generating: no backward there)."""
    from transformers import AutoConfig

    from tests.train.helpers import count_checkpointed_layers
    from unime.embed_rl.grpo import train_reasoner_grpo

    root, _ = world
    model = tiny_model_dir("qwen2_vl")
    calls = count_checkpointed_layers(monkeypatch)
    cfg = GRPOStageConfig(model=model, embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                          records=str(root / "records.jsonl"), out=str(tmp_path / "grpo"), max_steps=1,
                          max_completion_length=8, weights=(0.05, 0.8, 0.0), lora_r=4, device="cpu",
                          gradient_checkpointing=True)
    assert train_reasoner_grpo(cfg)["steps"] == 1
    layers = AutoConfig.from_pretrained(model).text_config.num_hidden_layers
    assert calls["Qwen2VLDecoderLayer"] % layers == 0
    assert calls["Qwen2VLDecoderLayer"] > 0


def test_grpo_gradient_checkpointing_trains_the_same_lora_and_leaves_the_frozen_vision_tower_out(
        world, tiny_model_dir, tmp_path, monkeypatch):
    """Effects, not names: a LoRA GRPO run with --gradient-checkpointing (its image rows through the policy) takes the
    steps of the run without it — the same completions and rewards, the same adapter weights after 2 SGD steps — and
    no backward pass goes through the frozen vision tower: none of its blocks' MLP outputs requires grad, and they run
    as often as without checkpointing. QA: the input-require-grad hooks (which only reentrant checkpoints need) were
    removed as training began, but TRL switches checkpointing off for each generation and on again after it, which
    put them back on the patch embedding: every loss forward from the first step on back-propagated into the tower.
    Without the option nothing is checkpointed."""
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    from tests.train.helpers import count_checkpointed_layers
    from unime.embed_rl.grpo import train_reasoner_grpo

    root, _ = world
    model = tiny_model_dir("qwen2_vl")
    runs = {}
    for on in (False, True):
        calls = count_checkpointed_layers(monkeypatch)
        vision: list[bool] = []  # per run of a vision block's MLP (the policy's, the embedder's): output needs grad
        mlp = modeling_qwen2_vl.VisionMlp

        def forward(self, *a, _f=mlp.forward, **k):
            out = _f(self, *a, **k)
            vision.append(out.requires_grad)
            return out

        monkeypatch.setattr(mlp, "forward", forward)
        cfg = GRPOStageConfig(model=model, embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                              records=str(root / "records.jsonl"), out=str(tmp_path / str(on)), max_steps=2,
                              max_completion_length=8, weights=(0.05, 0.8, 0.0), lora_r=4, learning_rate=0.5,
                              trainer_arg=["optim=sgd", "max_grad_norm=0"], device="cpu", gradient_checkpointing=on)
        assert train_reasoner_grpo(cfg)["steps"] == 2
        monkeypatch.undo()
        with open(tmp_path / str(on) / "reward_log.csv") as fh:
            rewards = list(csv.DictReader(fh))
        runs[on] = (dict(calls), vision, rewards,
                    load_file(tmp_path / str(on) / "adapter" / "adapter_model.safetensors"))
    (off_calls, off_vision, off_rewards, off_weights), (on_calls, on_vision, on_rewards, on_weights) = \
        runs[False], runs[True]
    layers = AutoConfig.from_pretrained(model).text_config.num_hidden_layers
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] > 0 and on_calls["Qwen2VLDecoderLayer"] % layers == 0
    assert len(on_vision) == len(off_vision) > 0 and not any(on_vision) and not any(off_vision)
    assert on_rewards == off_rewards and len(on_rewards) == 2
    assert on_weights.keys() == off_weights.keys()
    for key in off_weights:
        torch.testing.assert_close(on_weights[key], off_weights[key], rtol=1e-5, atol=1e-6)
    assert all(off_weights[k].abs().max() > 0 for k in off_weights if "lora_B" in k)  # the steps moved them


def test_grpo_gradient_checkpointing_keeps_every_n_layers_through_its_generations(world, tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """QA: `--trainer-arg activation_checkpointing_kwargs={every_n_layers: 2}` was lost in GRPO: TRL switches
    checkpointing off for each generation and on again after it without the setting, so every loss forward
    checkpointed every layer. Now each loss forward runs with the checkpointing the trainer set up: of the tiny
    model's 1 vision block and 2 decoder layers, every 2nd (the vision block, the 2nd decoder layer) — half the
    decoder layer checkpoints of a run without the setting, the same vision block checkpoints."""
    from transformers import AutoConfig

    from tests.train.helpers import count_checkpointed_layers
    from unime.embed_rl.grpo import train_reasoner_grpo

    root, _ = world
    model = tiny_model_dir("qwen2_vl")
    config = AutoConfig.from_pretrained(model)
    assert (config.vision_config.depth, config.text_config.num_hidden_layers) == (1, 2)
    runs = {}
    for every in (1, 2):
        calls = count_checkpointed_layers(monkeypatch)
        cfg = GRPOStageConfig(model=model, embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                              records=str(root / "records.jsonl"), out=str(tmp_path / str(every)), max_steps=2,
                              max_completion_length=8, weights=(0.05, 0.8, 0.0), lora_r=4, device="cpu",
                              gradient_checkpointing=True,
                              trainer_arg=[f"activation_checkpointing_kwargs={{every_n_layers: {every}}}"])
        assert train_reasoner_grpo(cfg)["steps"] == 2
        monkeypatch.undo()
        runs[every] = dict(calls)
    assert runs[1]["Qwen2VLDecoderLayer"] == 2 * runs[2]["Qwen2VLDecoderLayer"] > 0
    assert runs[1]["Qwen2VLVisionBlock"] == runs[2]["Qwen2VLVisionBlock"] > 0

def test_grpo_micro_batch_rewards_whole_generations_and_runs_the_loss_in_micro_batches(world, tiny_model_dir,
                                                                                        tmp_path, monkeypatch):
    """`train reasoner --stage grpo --micro-batch 2` through TRL: each of the 2 optimizer steps generates and rewards
    its 2 pairs x 2 sides x 4 generations = 16 completions at once (whole pairs, the reward's layout), and TRL's
    policy loss runs on them 2 at a time, 8 forwards a step, all on-policy (no old log-probabilities computed)."""
    import unime.embed_rl.grpo as grpo

    seen: list[tuple[int, bool]] = []
    trainer_class = grpo._trainer_class()

    class Spy(trainer_class):
        def _compute_loss(self, model, inputs):
            seen.append((inputs["completion_ids"].shape[0], inputs.get("old_per_token_logps") is None))
            return super()._compute_loss(model, inputs)

    monkeypatch.setattr(grpo, "_trainer_class", lambda: Spy)
    root, _ = world
    cfg = GRPOStageConfig(model=tiny_model_dir("qwen2_vl"), embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                          records=str(root / "records.jsonl"), out=str(tmp_path / "grpo"), max_steps=2,
                          max_completion_length=8, device="cpu", weights=(0.05, 0.8, 0.0), micro_batch=2)
    summary = grpo.train_reasoner_grpo(cfg)
    assert summary["steps"] == 2
    assert [r["completions"] for r in summary["reward_steps"]] == [16, 16]
    assert seen == [(2, True)] * 16


@pytest.mark.parametrize("mode", ["full", "lora_vision"])
def test_grpo_gradient_checkpointing_trains_the_same_weights_in_full_and_vision_lora_runs(world, tiny_model_dir,
                                                                                          tmp_path, monkeypatch, mode):
    """--gradient-checkpointing with full fine-tuning (--lora-r 0, GRPO's default: the vision tower trained too) and
    with --lora-vision (LoRA in the vision tower too), where the policy's vision blocks are checkpointed and
    back-propagated through: 2 SGD steps on image rows give the completions, rewards and weights of the run without
    it, and the vision tower's trained tensors moved."""
    from safetensors.torch import load_file

    from tests.train.helpers import (assert_same_weights_and_vision_trained, count_checkpointed_layers,
                                      count_vision_mlp_runs)
    from unime.embed_rl.grpo import train_reasoner_grpo

    root, _ = world
    model = tiny_model_dir("qwen2_vl")
    own = {"full": dict(lora_r=0, learning_rate=0.05),
           "lora_vision": dict(lora_r=4, lora_vision=True, lora_targets=("q_proj", "v_proj", "qkv", "fc1"),
                               lora_dropout=0.0, learning_rate=0.5)}[mode]
    runs = {}
    for on in (False, True):
        out = tmp_path / str(on)
        cfg = GRPOStageConfig(model=model, embedder=tiny_model_dir("qwen2_vl", (EMB_TOKEN,)),
                              records=str(root / "records.jsonl"), out=str(out), max_steps=2, max_completion_length=8,
                              weights=(0.05, 0.8, 0.0), trainer_arg=["optim=sgd", "max_grad_norm=0"], device="cpu",
                              gradient_checkpointing=on, **own)
        calls, vision_runs = count_checkpointed_layers(monkeypatch), count_vision_mlp_runs(monkeypatch)
        assert train_reasoner_grpo(cfg)["steps"] == 2
        monkeypatch.undo()
        with open(out / "reward_log.csv") as fh:
            rewards = list(csv.DictReader(fh))
        weights = out / "merged" / "model.safetensors" if mode == "full" else \
            out / "adapter" / "adapter_model.safetensors"
        runs[on] = (dict(calls), len(vision_runs), rewards, load_file(weights))
    (off_calls, off_vision, off_rewards, off_weights), (on_calls, on_vision, on_rewards, on_weights) = \
        runs[False], runs[True]
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] > 0 and on_calls["Qwen2VLVisionBlock"] > 0
    assert on_vision > off_vision > 0
    assert on_rewards == off_rewards and len(on_rewards) == 2
    assert_same_weights_and_vision_trained(on_weights, off_weights, model, mode)


def test_grpo_rollouts_of_a_policy_with_a_chat_generation_config_sample_the_full_distribution(world, tiny_model_dir,
                                                                                             tmp_path):
    """A released Instruct policy's generation_config carries chat defaults (Qwen2-VL-Instruct: top_k 1,
    repetition_penalty 1.05): had TRL's rollouts taken them, the n rollouts of a prompt would all be its greedy one,
    every advantage 0 and nothing learnt. They do not (TRL 1.16 states top_k 0, top_p, temperature and
    repetition_penalty 1.0 in its GenerationConfig, which transformers 5 completes from the checkpoint's only where
    unset): the rollouts of a prompt differ, and the decoding TRL's generate runs is the GRPOConfig's."""
    from datasets import Dataset

    from tests.models.helpers import with_chat_generation_config
    from unime.data.images import ImageLoader
    from unime.models.loading import load_model

    root, recs = world
    seen = []

    def rollouts(completions, **kw):
        seen.append([c[0]["content"] for c in completions])
        return [0.0] * len(completions)

    rollouts.__name__ = "rollouts"
    cfg = GRPOStageConfig(model="m", embedder="e", records="r", out="o", num_generations=4, pairs_per_batch=2,
                          max_steps=1, max_completion_length=12)
    gcfg = embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, fp16=False)
    policy = load_model(with_chat_generation_config(tiny_model_dir("qwen2_vl"), tmp_path / "chat"), device="cpu",
                        trainable=True)
    assert (policy.model.generation_config.top_k, policy.model.generation_config.repetition_penalty) == (1, 1.05)
    trainer = _trainer_class()(model=policy.model, reward_funcs=[rollouts], args=gcfg,
                               train_dataset=Dataset.from_list(grpo_rows(recs, ImageLoader(root), seed=0)),
                               processing_class=policy.processor)
    used, _ = policy.model._prepare_generation_config(trainer.generation_config)
    assert (used.do_sample, used.top_k, used.top_p, used.temperature, used.repetition_penalty) == (True, 0, 1.0, 1.0,
                                                                                                 1.0)
    trainer.train()
    assert len(seen) == 1 and len(seen[0]) == 16  # 2 pairs x 2 sides x 4 rollouts, each prompt's 4 in a row
    groups = [seen[0][i:i + 4] for i in range(0, 16, 4)]
    assert all(len(set(g)) > 1 for g in groups), groups


def test_reward_counts_the_evidence_the_crop_rules_left_out(tiny_model_dir, tmp_path):
    """QA: the GRPO reward dropped evidence it could not crop (a box too small, boxes on a text item) without a word,
    where `reason materialize` and the SFT count it. Each step's count is now in the reward log (its
    `evidence_left_out` column), with examples naming the item. Hand count: 2 pairs, 2 rollouts per side; the queries
    show a 224 px image, the positives are text. Query rollouts: a 4 px box and a 134 px one (1 left out), two 4 px
    boxes (2), a T-CoT without boxes (0), plain text (0); positive rollouts: boxes on the text (1), plain text (0, 0,
    0). Total 4."""
    from unime import Embedder
    from unime.embed_rl.grpo import RewardLog
    from unime.reasoning.embed_inputs import ReasonedEmbedder
    from unime.reasoning.tcot import render_tcot

    Image.new("RGB", (224, 224), (200, 30, 30)).save(tmp_path / "red.png")
    emb = ReasonedEmbedder(Embedder.from_pretrained(tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), device="cpu",
                                                    data_root=str(tmp_path)))
    log = RewardLog(tmp_path / "reward_log.csv")
    reward = EmbedRLReward(emb, None, group_size=2, weights=(0.05, 0.8, 0.0), reward_log=log)
    small, ok = [0, 0, 20, 20], [0, 0, 600, 600]  # 0-1000 coordinates: 4 px and 134 px of 224
    query_rollouts = [render_tcot({"bbox_2d": [small, ok]}, "a red thing", "red"),
                      render_tcot({"bbox_2d": [small, small]}, "a red thing", "red"),
                      render_tcot({"text_keywords": ["red"]}, "a red thing", "red"), "red"]
    positive_rollouts = [render_tcot({"bbox_2d": [ok]}, "red", "red"), "red", "red", "red"]
    pair_id = ["p0", "p0", "p0", "p0", "p1", "p1", "p1", "p1"]
    side = ["query", "query", "positive", "positive"] * 2
    texts = [query_rollouts[0], query_rollouts[1], positive_rollouts[0], positive_rollouts[1],
             query_rollouts[2], query_rollouts[3], positive_rollouts[2], positive_rollouts[3]]
    items = [json.dumps({"text": "<|image_1|>\nwhat is red?", "images": ["red.png"]}) if s == "query" else
             json.dumps({"text": f"a red square {p}"}) for p, s in zip(pair_id, side)]
    reward(prompts=[""] * 8, completions=texts, pair_id=pair_id, side=side, item=items)
    assert log.rows[-1]["evidence_left_out"] == 4
    assert len(reward.left_out_examples) == 3
    assert reward.left_out_examples[0] == "'<|image_1|>\\nwhat is red?': bbox_2d[0] too small or too elongated to " \
                                          "crop (4x4 px)"
    assert "'a red square p0': 1 box(es) but no image" in emb.left_out
    assert RewardLog(tmp_path / "reward_log.csv", resume=True).rows[-1]["evidence_left_out"] == 4  # in the CSV


def test_python_api_reward_refuses_weights_that_reward_nothing_or_the_opposite():
    """QA: weights (0, 0, 0) gave every completion a reward of 0 (GRPO then learns nothing), a negative one trained
    against its reward; the command line and the Python API refuse both with the same message, naming the field."""
    from unime.errors import OptionError

    with pytest.raises(OptionError, match=r"^weights must not all be 0 \(every completion's reward would be 0: GRPO "
                                          r"learns nothing\), got \(0\.0, 0\.0, 0\.0\)$"):
        EmbedRLReward(None, None, group_size=2, weights=(0.0, 0.0, 0.0))
    with pytest.raises(OptionError, match=r"^weights must be >= 0 each \(a negative weight rewards the opposite\), "
                                          r"got \(0\.05, -0\.8, 0\.0\)$"):
        EmbedRLReward(None, None, group_size=2, weights=(0.05, -0.8, 0.0))
    # one weight alone is a reward (the outcome reward alone)
    assert EmbedRLReward(None, None, group_size=2, weights=(0.0, 1.0, 0.0)).weights == (0.0, 1.0, 0.0)


def test_completion_log_holds_every_completion_with_rewards_that_recompute_the_total(tmp_path):
    """QA: nothing a run wrote held its completions (`--trainer-arg log_completions` is unime's), so no step's rewards
    could be checked by hand. completions.jsonl holds each with its pair, side, rollout and rewards: the format reward
    is SPEC's regex on the text, the total 0.05 format + 0.8 outcome + 0.2 process, the outcome 0.5 acc margin, the
    process 0 or the margin."""
    import re

    from unime.embed_rl.grpo import CompletionLog

    n, pairs = 2, 3
    path = tmp_path / "completions.jsonl"
    reward = EmbedRLReward(_RandomEmbedder(), _RecordingJudge(), group_size=n, completion_log=CompletionLog(path))
    pair_id = [f"p{b}" for b in range(pairs) for _ in range(2 * n)]
    side = (["query"] * n + ["positive"] * n) * pairs
    texts = [f"<thinking>{{}}</thinking><rethink>r{i}.</rethink><answer>a</answer>" if i % 3 else f"plain {i}"
             for i in range(len(side))]
    total = reward(prompts=[""] * len(side), completions=texts, pair_id=pair_id, side=side,
                   item=[json.dumps({"text": f"x{p}"}) for p in pair_id])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["pair_id"], r["side"], r["rollout"], r["completion"]) for r in rows] == \
        [(1, p, s, i % n, t) for i, (p, s, t) in enumerate(zip(pair_id, side, texts))]
    pattern = re.compile(r"<thinking>.*</thinking>.*<rethink>.*</rethink>.*<answer>.*</answer>", re.DOTALL)
    assert [r["format"] for r in rows] == [1.0 if pattern.search(t) else 0.0 for t in texts]
    assert [r["format"] for r in rows].count(1.0) == 8  # the texts i % 3 != 0
    for r, t in zip(rows, total):
        assert r["total"] == pytest.approx(t) == pytest.approx(0.05 * r["format"] + 0.8 * r["outcome"] +
                                                               0.2 * r["process"])
        assert r["outcome"] == pytest.approx(0.5 * r["acc"] * r["margin"])
        assert r["process"] in (0.0, r["margin"])
    assert any(r["process"] != 0.0 for r in rows)
    # resumed from the checkpoint of step 1: the lines of step 2 and a line cut by a kill are dropped
    with open(path, "a") as fh:
        fh.write(json.dumps({**rows[0], "step": 2}) + "\n" + '{"step": 2, "pair_id": "p')
    CompletionLog(path, resume_from_step=1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    CompletionLog(path)  # a run started over: an empty file
    assert path.read_text() == ""
