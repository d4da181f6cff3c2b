"""The demo's optional Embed-RL stage group (`unime demo --embed-rl`, SPEC §1 / issue #8).

Runs after the UniME-V2 stages, on the same world and tiny-model family, each stage one or more `unime`
commands (resumable, timed and listed in the report like every demo stage):

 er-models      `unime reason add-emb`: the `<emb>` embedder backbone, the pretrained base of the `models`
                stage with the `<emb>` token added (the reasoner starts from that base itself)
 er-teacher     a subset of the world's training records + `unime reason teacher` (annotation T-CoTs)
 er-judge-data  T-CoT match judge records (`tcot_match_judge_records`, labels from the world's ground truth)
 er-judge       `unime train judge` on them, from the demo's judge backbone
 er-split       `unime reason split` (lowest-P(Yes) fraction → RL, the rest → contrastive)
 er-materialize `unime reason materialize` (reasoned records: item + T-CoT + evidence crops; and the
                records of the embedder without T-CoT: item + the summary prompt, `--no-tcots`)
 er-embedders   `unime train embedder --pooling emb` without and with T-CoT (same recipe)
 er-sft         `unime train reasoner --stage sft` (cold start on the teacher's T-CoTs)
 er-grpo        `unime train reasoner --stage grpo` (format + outcome + process rewards)
 er-eval        `unime reason eval`: the T-CoT embedder with no / SFT / GRPO / teacher T-CoTs, and the
                embedder trained without T-CoT (no T-CoT at eval)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from unime.data.items import Record

if TYPE_CHECKING:  # pragma: no cover
    from unime.data.synth import World
    from unime.demo.run import DemoRun

# eval folder name under er/eval → what it is (the report's rows, in order)
EVAL_ROWS = {
    "plain_none": "`<emb>` embedder trained without T-CoT (no T-CoT at eval)",
    "tcot_none": "T-CoT embedder, no T-CoT at eval",
    "tcot_sft": "T-CoT embedder + SFT reasoner T-CoTs",
    "tcot_grpo": "T-CoT embedder + GRPO reasoner T-CoTs",
    "tcot_teacher": "T-CoT embedder + teacher T-CoTs (UPPER BOUND: the oracle reads the annotations)",
}


def tcot_match_judge_records(world: "World", records: Sequence[Record], tcot_rows, *, negatives_per_query: int = 3,
                             seed: int = 0, source: str | None = None,
                             tcot_source: str | None = None) -> list[Record]:
    """Training records for the T-CoT match judge (the judge `unime reason split` and the GRPO process
    reward use), every item shown with its T-CoT appended (`tcot_judge_item`, what the split judge sees).

    Labels come from the demo world's scene annotations, never from a model: for each record,
    - `Yes`: (query + its T-CoT, labelled positive + its T-CoT);
    - `No`: up to `negatives_per_query` positives of other records of the same task (with their T-CoTs)
      whose ground-truth relevance to the query is < 1.0 (so a partial caption that truly satisfies the
      query is never labelled No), drawn at random.
    The T-CoTs are joined to the records as `reason split` joins them (`joined_tcot`): a record without a T-CoT for
    either side, or a T-CoT written for another item, is a `DataError` naming the records file `source`, the record,
    the side and the T-CoT file `tcot_source`."""
    from unime.reasoning.reasoner import tcot_index
    from unime.embed_rl.tcot_embedder import joined_tcot, tcot_judge_item

    index = tcot_index(tcot_rows, source=tcot_source)

    def tcot(rec: Record, i: int, side: str) -> str:
        return joined_tcot(index, rec, i, side, source=source, tcot_source=tcot_source)

    rng = np.random.default_rng(seed)
    by_task: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_task.setdefault(rec.dataset or "", []).append(i)
    out: list[Record] = []
    for i, rec in enumerate(records):
        others = [j for j in by_task[rec.dataset or ""] if records[j].positive.key != rec.positive.key]
        rel = world.relevances(rec.query, [records[j].positive for j in others]) if others else []
        pool = [j for j, r in zip(others, rel) if r < 1.0]
        picked = rng.permutation(len(pool))[:negatives_per_query]
        negatives = [tcot_judge_item(records[pool[k]].positive, tcot(records[pool[k]], pool[k], "target"))
                     for k in picked]
        out.append(Record(query=tcot_judge_item(rec.query, tcot(rec, i, "query")),
                          positive=tcot_judge_item(rec.positive, tcot(rec, i, "target")),
                          negatives=negatives, dataset=rec.dataset, id=f"{rec.id or i}-tcot-match"))
    return out


def subset_per_task(records: Sequence[Record], n: int) -> list[Record]:
    """The first `n` records overall, taken round-robin over tasks in file order (every task kept);
    `n <= 0` keeps all."""
    if n <= 0 or n >= len(records):
        return list(records)
    by_task: dict[str, list[Record]] = {}
    for rec in records:
        by_task.setdefault(rec.dataset or "", []).append(rec)
    queues = list(by_task.values())
    out: list[Record] = []
    depth = 0
    while len(out) < n:
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return out


def embed_rl_paths(demo: "DemoRun") -> dict[str, Path]:
    er = demo.p("er")
    return {"er": er, "records": er / "records.jsonl", "tcots": er / "tcots_teacher.jsonl",
            "judge_records": er / "judge_records.jsonl", "judge": er / "judge", "split": er / "split",
            "reasoned": er / "reasoned_contrastive.parquet", "plain_records": er / "plain_records.parquet",
            "emb_base": demo.p("models", "emb-embedder-base"),
            # the reasoner starts from the pretrained base, as Embed-RL's starts from a pretrained MLLM
            "reasoner_base": demo.p("models", "embedder-base"), "plain": er / "embedders" / "plain",
            "tcot": er / "embedders" / "tcot", "sft": er / "reasoner_sft", "grpo": er / "reasoner_grpo",
            "eval": er / "eval"}


def run_embed_rl(demo: "DemoRun") -> None:
    """Add the Embed-RL stages to `demo` (needs its `world` and `models` stages done)."""
    from unime.demo.video_rows import video_options

    s, dev, world = demo.s, {"--device": demo.device}, demo.world
    P = embed_rl_paths(demo)
    tasks = world / "eval_tasks.yaml"
    # the clips' sampling of the demo's mining: the teacher numbers key frames among the frames the readers take
    video = video_options(demo)

    # the <emb> embedders start from the pretrained base, as Embed-RL's from a pretrained MLLM: the base with the
    # <emb> token added (its embedding row new)
    demo.stage("er-models", [P["emb_base"]], lambda c: demo.run_command("reason add-emb", {
        "--model": P["reasoner_base"], "--out": P["emb_base"], **dev}, c))

    def teacher(c):
        from unime.data.io import read_records, write_records

        recs = subset_per_task(read_records(world / "train" / "records.jsonl"), s.er_records)
        P["er"].mkdir(parents=True, exist_ok=True)
        write_records(recs, P["records"])
        c.append(f"# python: unime.demo.embed_rl.subset_per_task(train records, {s.er_records}) -> "
                 f"{len(recs)} records in {P['records']}")
        demo.run_command("reason teacher", {"--world": world, "--records": P["records"], "--out": P["tcots"],
                                            **video}, c)
    demo.stage("er-teacher", [P["records"], P["tcots"]], teacher, writes=[P["records"]])

    def judge_data(c):
        from unime.data.io import read_records, write_records
        from unime.data.synth import World
        from unime.reasoning.reasoner import read_tcot_rows

        recs = tcot_match_judge_records(World.load(world), read_records(P["records"]), read_tcot_rows(P["tcots"]),
                                        negatives_per_query=s.er_judge_negatives, source=str(P["records"]),
                                        tcot_source=str(P["tcots"]))
        write_records(recs, P["judge_records"])
        c.append("# python: unime.demo.embed_rl.tcot_match_judge_records(world, records, T-CoTs) -> "
                 f"{len(recs)} records")
    demo.stage("er-judge-data", [P["judge_records"]], judge_data, writes=[P["judge_records"]])

    demo.stage("er-judge", [P["judge"] / "merged"], lambda c: demo.run_command("train judge", {
        "--model": demo.p("models", "judge-base"), "--records": P["judge_records"], "--data-root": world,
        "--out": P["judge"], "--judge-negatives": s.er_judge_negatives, "--steps": s.er_judge_steps,
        "--batch-size": s.judge_batch, "--lr": s.judge_lr, "--lora-r": 32, "--lora-alpha": 64,
        "--lora-targets": "all-linear", "--lora-vision": True, "--train-module": "lm_head", "--seed": 0,
        "--overwrite": True, **dev}, c))

    demo.stage("er-split", [P["split"] / "split.json"], lambda c: demo.run_command("reason split", {
        "--records": P["records"], "--tcots": P["tcots"], "--judge": P["judge"] / "merged", "--data-root": world,
        "--out-dir": P["split"], "--rl-fraction": s.er_rl_fraction, **video, **dev}, c))

    def materialize(c):
        # the T-CoT embedder's records (the contrastive split with teacher T-CoTs), and the records of the embedder
        # without T-CoT: the same items with the summary prompt, the input `reason eval --tcots none` embeds
        for out, how in ((P["reasoned"], {"--records": P["split"] / "contrastive.jsonl", "--tcots": P["tcots"]}),
                         (P["plain_records"], {"--records": P["records"], "--no-tcots": True})):
            if not out.exists():
                demo.run_command("reason materialize", {**how, "--data-root": world, "--out": out, **video}, c)
    demo.stage("er-materialize", [P["reasoned"], P["plain_records"]], materialize)

    def embedders(c):
        for key, recs in (("plain", P["plain_records"]), ("tcot", P["reasoned"])):
            if demo.embedder_trained(P[key]):
                continue
            demo.run_command("train embedder", {
                "--model": P["emb_base"], "--records": recs, "--data-root": world, "--out": P[key],
                "--loss": "infonce", "--symmetric": True, "--tau": s.er_tau, "--hard-negatives": 0,
                "--pooling": "emb", "--full": True, "--steps": s.er_embed_steps, "--batch-size": s.er_embed_batch,
                "--lr": s.er_embed_lr, "--seed": 0, "--save-steps": max(s.er_embed_steps // 2, 1), **dev}, c)
    demo.stage("er-embedders", [P["plain"] / "merged", P["tcot"] / "merged"], embedders)

    demo.stage("er-sft", [P["sft"] / "sft_summary.json"], lambda c: demo.run_command("train reasoner", {
        "--stage": "sft", "--model": P["reasoner_base"], "--tcots": P["tcots"], "--data-root": world,
        "--out": P["sft"], "--lora-r": 0, "--lr": s.er_sft_lr, "--epochs": s.er_sft_epochs,
        "--batch-size": s.er_sft_batch, "--seed": 0, "--logging-steps": 5, **video, **dev}, c))

    demo.stage("er-grpo", [P["grpo"] / "grpo_summary.json"], lambda c: demo.run_command("train reasoner", {
        "--stage": "grpo", "--model": P["sft"] / "merged", "--embedder": P["tcot"] / "merged",
        # the process reward's pick by the T-CoT match judge, a Yes/No judge: it scores each candidate
        "--process-judge": P["judge"] / "merged", "--process-pick": "score", "--records": P["split"] / "rl.jsonl",
        "--data-root": world,
        "--out": P["grpo"], "--max-steps": s.er_grpo_steps, "--num-generations": s.er_generations,
        "--pairs-per-batch": 2, "--grpo-epochs": s.er_grpo_epochs, "--lr": s.er_grpo_lr,
        "--max-completion-length": s.er_max_new_tokens, "--seed": 0, **video, **dev}, c))

    runs = {"plain_none": (P["plain"], {"--tcots": "none"}),
            "tcot_none": (P["tcot"], {"--tcots": "none"}),
            "tcot_sft": (P["tcot"], {"--tcots": "reasoner", "--reasoner": P["sft"] / "merged"}),
            "tcot_grpo": (P["tcot"], {"--tcots": "reasoner", "--reasoner": P["grpo"] / "merged"}),
            "tcot_teacher": (P["tcot"], {"--tcots": "teacher", "--world": world})}

    def evaluate(c):
        for name, (emb, how) in runs.items():
            dest = P["eval"] / name
            if (dest / "summary.json").exists():
                continue
            demo.run_command("reason eval", {"--embedder": emb / "merged", "--tasks": tasks, "--out": dest, **how,
                                             "--batch-size": 32, "--max-new-tokens": s.er_max_new_tokens, **video,
                                             **dev}, c)
    demo.stage("er-eval", [P["eval"] / name / "summary.json" for name in runs], evaluate)
