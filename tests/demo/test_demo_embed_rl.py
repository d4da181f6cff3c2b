"""The demo's Embed-RL group: the T-CoT match judge records follow the world's ground truth, the record
subset is round-robin over tasks, and the quick group runs end to end, reports numbers and resumes."""

from __future__ import annotations

import csv
import re

import pytest

from unime.data.items import Item, Record


@pytest.fixture(scope="module")
def tiny_world(tiny_world_dir):
    from unime.data.synth import World

    return World.load(tiny_world_dir(0))


def test_tcot_match_judge_records_follow_ground_truth(tiny_world):
    from unime.demo.embed_rl import tcot_match_judge_records
    from unime.errors import DataError
    from unime.reasoning.reasoner import TCoTRow
    from unime.embed_rl.tcot_embedder import tcot_judge_item

    records = tiny_world.records
    rows = [TCoTRow(r.id, side, r.query if side == "query" else r.positive, f"<think>{side} of {r.id}</think>")
            for r in records for side in ("query", "target")]
    out = tcot_match_judge_records(tiny_world, records, rows, negatives_per_query=3, seed=0)
    assert len(out) == len(records)
    # judge item key → (original item, record id whose T-CoT was appended)
    shown = {tcot_judge_item(r.positive, f"<think>target of {r.id}</think>").key: r.positive for r in records}
    n_negatives = 0
    for rec, src in zip(out, records):
        assert rec.id == f"{src.id}-tcot-match" and rec.dataset == src.dataset
        assert rec.query.text.endswith(f"<think>query of {src.id}</think>") and rec.query.images == src.query.images
        assert rec.positive.key == tcot_judge_item(src.positive, f"<think>target of {src.id}</think>").key
        assert len(rec.negatives) <= 3
        for neg in rec.negatives:
            orig = shown[neg.key]  # a positive of the same task, with its own T-CoT
            assert orig.key != src.positive.key
            assert tiny_world.relevance(src.query, orig) < 1.0
            assert any(r.dataset == src.dataset and r.positive.key == orig.key for r in records)
            n_negatives += 1
    assert n_negatives > 2 * len(records)
    # same seed → same records
    again = tcot_match_judge_records(tiny_world, records, rows, negatives_per_query=3, seed=0)
    assert [[n.key for n in r.negatives] for r in out] == [[n.key for n in r.negatives] for r in again]
    with pytest.raises(DataError, match=re.escape(f"record {records[1].id}") + ".*field 'target'"):
        tcot_match_judge_records(tiny_world, records, [r for r in rows if not (r.record_id == records[1].id
                                                                                and r.side == "target")],
                                 source="t.jsonl")


def test_tcot_match_judge_records_refuse_a_tcot_of_another_item(tiny_world):
    """The demo joins T-CoTs to records as `reason split` / `materialize` do (`joined_tcot`): before, its own join
    took the row of (record id, side) whatever item it was written for, and a judge record showed one record's item
    with another item's T-CoT."""
    from unime.demo.embed_rl import tcot_match_judge_records
    from unime.errors import DataError
    from unime.reasoning.reasoner import TCoTRow

    records = tiny_world.records
    rows = [TCoTRow(r.id, side, r.query if side == "query" else r.positive, f"<think>{side} of {r.id}</think>")
            for r in records for side in ("query", "target")]
    other = next(r for r in records if r.positive.key != records[1].positive.key)
    rows[3] = TCoTRow(records[1].id, "target", other.positive, "<think>another item</think>")
    with pytest.raises(DataError) as e:
        tcot_match_judge_records(tiny_world, records, rows, source="r.jsonl", tcot_source="t.jsonl")
    assert (e.value.source, e.value.record, e.value.field) == ("r.jsonl", records[1].id, "positive")
    assert f"the T-CoT {records[1].id}/target of t.jsonl was written for another item" in str(e.value)


def test_subset_per_task_is_round_robin():
    from unime.demo.embed_rl import subset_per_task

    def rec(task, i):
        return Record(query=Item(text=f"{task}{i}"), positive=Item(text=f"p{task}{i}"), dataset=task, id=f"{task}{i}")

    recs = [rec("a", 0), rec("a", 1), rec("a", 2), rec("b", 0), rec("c", 0), rec("c", 1)]
    assert [r.id for r in subset_per_task(recs, 4)] == ["a0", "b0", "c0", "a1"]
    assert [r.id for r in subset_per_task(recs, 5)] == ["a0", "b0", "c0", "a1", "c1"]
    assert [r.id for r in subset_per_task(recs, 0)] == [r.id for r in recs]
    assert [r.id for r in subset_per_task(recs, 99)] == [r.id for r in recs]


@pytest.mark.slow
def test_quick_embed_rl_group_end_to_end_and_resumes(tmp_path):
    from unime.demo.embed_rl import EVAL_ROWS, run_embed_rl
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings
    from unime.demo.report import write_report

    s = DemoSettings.preset("quick")
    out = tmp_path / "demo"
    demo = Demo(out, s, progress=lambda m: None, embed_rl=True)
    # the prerequisites the group uses from the UniME-V2 stages: the world, the judge and embedder backbones
    demo.run_command("data synth", {"--out": demo.world, "--size": s.world_size}, [])
    for name, seed in (("judge-base", 1), ("embedder-base", 3)):  # the reasoner starts from the embedder base
        demo.run_command("models build-tiny", {"--family": s.family, "--out": demo.p("models", name), "--seed": seed,
                                               "--hidden": 64, "--layers": 2, "--vision-depth": 1}, [])
    run_embed_rl(demo)
    names = [r.name for r in demo.results]
    assert names[0] == "er-models" and names[-1] == "er-eval" and len(names) == 10
    assert not any(r.skipped for r in demo.results)
    assert all(r.commands for r in demo.results)

    text = write_report(demo).read_text()
    section = text[text.index("## Embed-RL"):text.index("## Training curves")]
    for title in EVAL_ROWS.values():
        row = next(line for line in section.splitlines() if line.startswith("| " + title))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 7 and all(re.fullmatch(r"\d+\.\d", c) for c in cells), row
    with open(out / "er" / "reasoner_grpo" / "reward_log.csv") as fh:
        steps = list(csv.DictReader(fh))
    assert len(steps) == s.er_grpo_steps
    first = next(line for line in section.splitlines() if line.startswith("| 1 | "))
    assert first == "| 1 | " + " | ".join(f"{float(steps[0][k]):.3f}"
                                          for k in ("format", "outcome", "process", "total", "acc")) + " |"
    assert "![GRPO reward curves](er/reasoner_grpo/reward_curves.png)" in section
    assert "<img" in (out / "report.html").read_text()

    # a second run skips every stage
    again = Demo(out, s, progress=lambda m: None, embed_rl=True)
    run_embed_rl(again)
    assert [r.name for r in again.results] == names and all(r.skipped for r in again.results)
