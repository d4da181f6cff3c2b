"""The demo's report: the paper's tables (Table 4 ablation, Table 3 reranker) in their layout, the
judge audit, mining counts, training curves and per-stage timings — report.md and report.html.

Every number is read from the stage outputs (eval summary.json and per-query results, mining stats/audit
JSON, training curves); what is computed here is the uncertainty (`unime.eval.significance`): the mean ±
95 % t-interval over seeds, and a paired bootstrap over eval queries of each row against the baseline.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unime.demo.run import START_ROW, unime_names
from unime.demo.stage_logs import LOGS_DIR

if TYPE_CHECKING:  # pragma: no cover
    from unime.demo.run import DemoRun, StageResult

ROW_TITLES = {
    START_ROW: "Pretrained base, not trained on this world (the embedders' start)",
    "baseline": "InfoNCE, in-batch only (no HN, no soft labels)",
    "hn": "+ judge-mined hard negatives (InfoNCE)",
    "soft": "+ hard negatives + soft labels (symmetric KL) = UniME-V2",
    "hn_oracle": "+ hard negatives, ground truth as judge (diagnostic)",
    "soft_oracle": "+ hard negatives + soft labels, ground truth as judge (diagnostic)",
    "reference": "Learnability reference (CNN+GRU dual encoder, same wall budget)",
}
MMEB_COLUMNS = [("classification", "Class."), ("vqa", "VQA"), ("retrieval", "Ret."), ("grounding", "Ground."),
                ("IND", "IND"), ("OOD", "OOD"), ("overall", "Overall")]
EXTRA_COLUMNS = [("scene_captions", "text_to_image/recall@1", "T→I R@1"),
                 ("scene_captions", "image_to_text/recall@1", "I→T R@1")]
COMPOSITIONAL = ("replace", "swap", "add")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(values: list[float]) -> str:
    """Mean ×100, ± the half-width of its 95 % t-interval over seeds when there are several."""
    from unime.eval.significance import t_interval

    if not values:
        return "–"
    mean, half = t_interval(100 * np.asarray(values, dtype=float))
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {half:.1f}"


def listwise_positions(summaries: list[dict]) -> tuple[dict[int, int], int]:
    """How many parsed listwise answers picked each position of the embedder's top k (1-based), and how many
    listwise generations there were in all (parsed or not), summed over the eval summaries' MMEB tasks
    (`reranked.stats.<task>.reranker`)."""
    counts: dict[int, int] = {}
    picks = 0
    for summ in summaries:
        for stats in summ.get("reranked", {}).get("stats", {}).values():
            rr = stats.get("reranker") or {}
            picks += int(rr.get("picks", 0))
            for k, n in rr.get("picked_positions", {}).items():
                counts[int(k)] = counts.get(int(k), 0) + int(n)
    return counts, picks


def _listwise_positions_sentence(summaries: list[dict], topk: int) -> list[str]:
    counts, picks = listwise_positions(summaries)
    parsed = sum(counts.values())
    if not picks:
        return []
    text = (f"Listwise answers (all seeds and tasks): {parsed} of {picks} generations name a candidate "
            f"(the rest fall back to the pairwise scores)")
    if parsed:
        shares = ", ".join(f"({k}) {100 * counts.get(k, 0) / parsed:.0f} %" for k in range(1, topk + 1))
        text += (f"; by position in the embedder's top {topk}: {shares}. An answer of (1) keeps the embedder's "
                 f"top 1; the positive sat at a uniformly random position in training, so a reranker that answers "
                 f"one number for every query has learnt the answer format, not the ranking")
    return [text + ".", ""]


def row_values(summary: dict, *, reranked: bool = False) -> dict[str, float]:
    """The table columns of one eval summary (fractions)."""
    src = summary.get("reranked", {}) if reranked else summary
    agg = src.get("aggregates", {}).get("mmeb", {}).get("scores", {})
    tasks = src.get("tasks", {})
    out = {key: agg[key] for key, _ in MMEB_COLUMNS if key in agg}
    for task, metric, title in EXTRA_COLUMNS:
        if metric in tasks.get(task, {}):
            out[title] = tasks[task][metric]
    comp = [tasks[t]["accuracy"] for t in COMPOSITIONAL if "accuracy" in tasks.get(t, {})]
    for t in COMPOSITIONAL:
        if "accuracy" in tasks.get(t, {}):
            out[f"comp/{t}"] = tasks[t]["accuracy"]
    if comp:
        out["Comp."] = float(np.mean(comp))
    return out


def _table(rows: list[tuple[str, list[dict[str, float]]]], columns: list[tuple[str, str]],
           extra: tuple[list[str], dict[str, list[str]]] | None = None) -> list[str]:
    """`extra`: (column titles, {row title: cells}) appended to the right (rows without cells get –)."""
    heads, cells_by_row = extra or ([], {})
    lines = ["| Model | " + " | ".join([t for _, t in columns] + heads) + " |",
             "|---|" + "---:|" * (len(columns) + len(heads))]
    for title, per_seed in rows:
        cells = [_fmt([r[k] for r in per_seed if k in r]) for k, _ in columns]
        cells += cells_by_row.get(title, ["–"] * len(heads))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def _run_dir(out: Path, row: str, seed: int) -> Path:
    return out / "eval" / f"{row}_s{seed}"


def significance_cells(out: Path, rows: list[str], seeds: list[int], *, baseline: str = "baseline",
                       n_resamples: int = 10_000) -> dict[str, dict]:
    """Per row: the paired bootstrap over eval queries (per-query hits averaged over the row's seeds) of its
    MMEB overall P@1 against the baseline's (`unime.eval.significance.paired_bootstrap`)."""
    from unime.eval.significance import mean_over_seeds, paired_bootstrap, per_query_hits

    def hits(row: str):
        dirs = [_run_dir(out, row, seed) for seed in seeds]
        runs = [per_query_hits(d) for d in dirs if (d / "summary.json").is_file()]
        return mean_over_seeds(runs) if runs else None

    base = hits(baseline)
    out_rows: dict[str, dict] = {}
    if base is None:
        return out_rows
    for row in rows:
        if row == baseline or (h := hits(row)) is None:
            continue
        try:
            out_rows[row] = paired_bootstrap(h, base, n_resamples=n_resamples)
        except ValueError:  # no query in common
            continue
    return out_rows


def write_report(demo: "DemoRun") -> Path:
    out = demo.out
    s = demo.s
    seeds = list(s.seeds)
    md: list[str] = ["# unime demo report", ""]
    md += [f"Family `{s.family}`; world preset `{s.world_size}`; seeds {seeds}; device `{demo.device}`.",
           "All models are tiny and trained on the generated world, in minutes on a CPU: the table shows what these "
           "runs gave, not the paper's numbers. Means over seeds ± the half-width of the 95 % t-interval over seeds "
           f"({len(seeds)} seed(s); no interval with one).", ""]
    md += _backbones_section(demo)
    gate = _load(out / "judge_gate.json")
    if gate and gate.get("weak"):
        quick = type(s).preset("quick")  # `DemoSettings`: the quick preset never stops on the check
        why = ("the quick preset continues by design: its smoke judge of a few steps cannot pass"
               if not quick.stop_on_weak_judge and s.world_size == quick.world_size else "`--allow-weak-judge`")
        md += [f"**The judge check failed and the run continued ({why}):** " + "; ".join(gate["reasons"])
               + ". The hard-negative and soft-label rows below were trained on these scores.", ""]

    columns = MMEB_COLUMNS + [(t, t) for _, _, t in EXTRA_COLUMNS] + [("Comp.", "Comp.")]
    rows, rerank_rows, reranked_summaries = [], [], []
    row_names = [*dict.fromkeys(row for row, _, _ in demo.evaluated_models()), "reference"]
    for row in row_names:
        title, per_seed = ROW_TITLES[row], []
        for seed in seeds:
            summ = _load(out / "eval" / f"{row}_s{seed}" / "summary.json")
            if summ is None:
                continue
            per_seed.append(row_values(summ))
            if row == "soft" and "reranked" in summ:
                rerank_rows.append((row_values(summ), row_values(summ, reranked=True)))
                reranked_summaries.append(summ)
        rows.append((title, per_seed))
    md += ["## Ablation (layout of the paper's Table 4)", "",
           "MMEB-style Precision@1 per meta-task, IND / OOD / overall (means over datasets), scene-caption "
           "retrieval Recall@1 both directions, and compositional accuracy (mean of replace / swap / add), all ×100.",
           ""]
    sig = significance_cells(out, row_names, seeds)
    sig_cells = {ROW_TITLES[r]: [_interval(b), "yes" if b["significant"] else "no"] for r, b in sig.items()}
    md += _table(rows, [(k, t) for k, t in columns],
                 extra=(["Δ Overall vs baseline [95 % CI]", "Significant at 95 %"], sig_cells))
    md += ["", "Δ Overall: the row's MMEB overall P@1 minus the baseline's, ×100, with a paired bootstrap over the "
           "eval queries (each query's hit averaged over the seeds; queries resampled within each dataset, "
           "10,000 replicates, percentile interval); significant = the interval excludes 0.",
           "", "Paper (Qwen2-VL-2B, MMEB overall): 60.1 → 61.6 → 63.6 for the InfoNCE, hard-negative and "
           "UniME-V2 rows.",
           "", "The soft-label loss (symmetric KL, as released) compares each query only with its own positive and "
           f"{s.hard_negatives} mined negatives, with no in-batch negatives, unlike the InfoNCE rows; the paper trains "
           f"it at a global batch of 512–1,024 for 2,000 steps, this run at {s.embed_batch} for {s.embed_steps} "
           "steps (docs/SOFT_LABELS.md measures what the missing in-batch negatives cost at a small budget, and "
           "`unime train embedder --in-batch` adds them).", ""]
    md += _reference_sentence(demo, rows, sig.get("reference"))
    if demo.oracle_judge:
        md += ["The two diagnostic rows repeat mining and training with the world's ground-truth relevance in place "
               "of the judge's scores (`unime mine --backend oracle`, same retriever, same filter and sampling): "
               "the difference to the judge's rows is what the judge costs; the difference to the first row is what "
               "the recipe gives with a perfect judge.", ""]

    if rerank_rows:
        md += ["## Reranker (layout of the paper's Table 3)", "",
               f"The UniME-V2 embedder's top-{s.rerank_topk} reranked by the UniME-V2 reranker "
               "(listwise pick moved to rank 1, the rest in the embedder's order).", ""]
        comp_cols = [(k, t) for k, t in MMEB_COLUMNS] + [(f"comp/{t}", t) for t in COMPOSITIONAL]
        md += _table([("UniME-V2 embedder", [a for a, _ in rerank_rows]),
                      ("UniME-V2 embedder + reranker", [b for _, b in rerank_rows])], comp_cols)
        md.append("")
        md += _listwise_positions_sentence(reranked_summaries, s.rerank_topk)

    from unime.demo.video_rows import video_section

    md += video_section(demo, ROW_TITLES, _fmt)
    md += _mining_section(out / "mined", judge_trained=s.judge_steps > 0)
    md += _embed_rl_section(demo)
    md += _curves_section(demo)
    md += ["## Timings and commands", "", "| Stage | Seconds | |", "|---|---:|---|"]
    total = 0.0
    for r in demo.results:
        total += r.seconds
        md.append(f"| {r.name} | {r.seconds:.0f} | {'; '.join(stage_notes(r))} |")
    md += [f"| **total** | **{total:.0f}** | |", "",
           f"Each stage's log: `{LOGS_DIR}/STAGE.log` in this folder (its commands' INFO lines, warnings and errors; "
           "each attempt of a resumed stage appended below a line naming its start).", "",
           "Commands, in order (each stage is a `unime` command):", "", "```"]
    for r in demo.results:
        md += r.commands
    md += ["```", ""]
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md), encoding="utf-8")
    tmp.replace(path)
    _write_html(out, md)
    return path


def stage_notes(r: "StageResult") -> list[str]:
    """The notes of a stage in the report's stage table: skipped, started on a busy machine, computed (in part) by
    another unime than this run's (`unime.demo.run.unime_code`)."""
    notes = (["skipped (done before)"] if r.skipped else []) + (
        [f"started beside other work ({r.busy_cores:.1f} cores busy): not the demo's time"]
        if r.busy_cores is not None else [])
    if r.other_unime:
        notes.append(f"computed by {unime_names(r.other_unime)}, not this unime" if r.skipped else
                     f"partly computed by {unime_names(r.other_unime)} (an earlier run)")
    return notes


def _captioning(c: dict | None) -> str:
    """The base's captioning stage, when its recipe had one."""
    if not c:
        return ""
    return (f"captioning, {c.get('steps')} steps of {c.get('batch_size')} on {c.get('captions')} scene captions "
            f"(loss {_num(c.get('first_loss'))} → {_num(c.get('last_loss'))}), then ")


def _backbones_section(demo: "DemoRun") -> list[str]:
    """Where the embedder and the judge start: the pretrained base and the pretrained judge (their recipes,
    corpus, training figures, and whether this run reused them from the per-machine cache)."""
    base = _load(demo.p("models", "pretrained.json"))
    if not base:
        return []
    r, t = base.get("recipe", {}), base.get("training", {})
    md = ["## Backbones", "",
          f"- Embedder start: the pretrained base `{Path(base.get('path', '')).name}` "
          f"({'reused from the cache' if base.get('reused') else 'pretrained in this run'}): {r.get('family')} tiny, "
          f"hidden {r.get('hidden')}, {r.get('layers')} layers, vision {r.get('vision_hidden')} × depth "
          f"{r.get('vision_depth')}, init std {r.get('init_std')}; {_captioning(base.get('captioning'))}"
          f"contrastive pretraining, {t.get('steps')} steps of "
          f"{r.get('batch_size')} on {base.get('corpus', {}).get('records')} records of a corpus world (seed "
          f"{r.get('corpus_seed')}; {base.get('corpus', {}).get('dropped_excluded_scenes')} records showing this "
          f"world's eval scenes dropped): loss {_num(t.get('initial_loss'))} → {_num(t.get('final_loss'))}, "
          f"in-batch accuracy {_num(t.get('final_in_batch_accuracy'))}, {_num(base.get('seconds'))} s."]
    judge = _load(demo.p("models", "pretrained_judge.json"))
    if judge:
        j, h = judge.get("judge_recipe", {}), judge.get("heldout") or {}
        md.append(f"- Judge start: the pretrained judge `{Path(judge.get('path', '')).name}` "
                  f"({'reused from the cache' if judge.get('reused') else 'pretrained in this run'}): the base trained "
                  f"as a Yes/No judge, {j.get('steps')} steps of {j.get('batch_size')} records "
                  f"({judge.get('records', {}).get('records')} labelled records of the same corpus, group weight "
                  f"{j.get('group_weight')}); held-out (corpus queries): AUC {_num(h.get('auc'))}, within-query AUC "
                  f"{_num(h.get('within_query_auc'))}; {_num(judge.get('seconds'))} s.")
        levels = judge.get("training", {}).get("loss_levels") or {}
        if "loss" in levels.get("final", {}):
            md[-1] += (f" Its training loss over the last 10 % of steps {_num(levels['final']['loss'])} against the "
                       f"base-rate level {_num(levels['base_rate']['total'])} (a judge predicting only the Yes share "
                       f"{_num(levels['base_rate']['yes_share'])} of its pairs).")
    else:
        md.append("- Judge start: the embedder's pretrained base.")
    s = demo.s
    md.append("- Judge on this world: " + (f"fine-tuned {s.judge_steps} steps of {s.judge_batch} records (full "
                                            f"fine-tuning, group weight {s.judge_group_weight})."
                                            if s.judge_steps > 0 else "zero-shot (no training on this world)."))
    ev = demo.p("judge", "model", "judge_eval.jsonl")
    if s.judge_steps > 0 and ev.is_file():
        lines = [json.loads(x) for x in ev.read_text(encoding="utf-8").splitlines() if x.strip()]
        if lines:
            first, last = lines[0], lines[-1]
            md[-1] += (f" Its held-out queries of this world: within-query AUC {_num(first.get('within_query_auc'))} "
                       f"(step {first['step']}) → {_num(last.get('within_query_auc'))} (step {last['step']}).")
    return md + [""]


def _reference_sentence(demo: "DemoRun", rows: list[tuple[str, list[dict[str, float]]]],
                        boot: dict | None) -> list[str]:
    """Where the VLM baseline stands against the learnability reference trained for the same wall budget."""
    by_title = dict(rows)
    base, ref = by_title.get(ROW_TITLES["baseline"], []), by_title.get(ROW_TITLES["reference"], [])
    base_o = [r["overall"] for r in base if "overall" in r]
    ref_o = [r["overall"] for r in ref if "overall" in r]
    if not base_o or not ref_o:
        return []
    runtimes = [m["train_runtime"] for seed in demo.s.seeds
                if (m := _load(demo.p("embedders", f"baseline_s{seed}", "metrics.json"))) and "train_runtime" in m]
    spent = f"{np.mean(runtimes):.0f} s per seed" if runtimes else "not recorded"
    gap = 100 * (np.mean(base_o) - np.mean(ref_o))
    verdict = ("" if boot is None else
               f" The reference minus the baseline, {_interval(boot)} (paired bootstrap over eval queries), is "
               + ("significant at 95 %." if boot["significant"] else "not significant at 95 %."))
    where = "level with" if abs(gap) < 0.05 else f"{abs(gap):.1f} points {'above' if gap > 0 else 'below'}"
    return [f"Learnability reference: a small CNN + GRU dual encoder trained from scratch with in-batch InfoNCE for "
            f"{demo.s.reference_seconds:g} s of wall time per seed (the baseline embedder's training took {spent}) "
            f"reaches overall P@1 {_fmt(ref_o)}; the VLM baseline ({_fmt(base_o)}) is {where} "
            f"what this world's training records teach a simple model in that budget.{verdict}", ""]


def _interval(boot: dict) -> str:
    """`+d [low, high]` ×100 (no "-0.0")."""
    def f(x: float) -> str:
        return f"{round(100 * x, 1) + 0.0:+.1f}"
    return f"{f(boot['diff'])} [{f(boot['low'])}, {f(boot['high'])}]"


def _mining_section(mined: Path, *, judge_trained: bool) -> list[str]:
    stats, audit = _load(mined / "stats.json"), _load(mined / "audit.json")
    if stats is None:
        return []
    md = ["## Mining and the judge audit", ""]
    sampling = stats.get("sampling", {})
    counts = sampling.get("counts", {})
    fn = sum(sampling.get("false_negatives", {}).values())
    cands = sum(sampling.get("candidates", {}).values())
    md.append(f"{stats.get('mined', '?')} of {stats.get('records', '?')} queries mined; candidates judged: {cands}, "
              f"filtered as false negatives: {fn} ({100 * fn / max(cands, 1):.1f} %); sampling outcomes: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".")
    md.append("")
    n_queries = max(sum(counts.values()), 1)
    if counts.get("fallback", 0) / n_queries > 0.1:
        md += [f"**Warning:** {100 * counts['fallback'] / n_queries:.0f} % of the queries had no candidate left after "
               "the false-negative filter and fell back to random candidates scored 1.0 (the paper's policy, meant "
               "for < 1 % of queries). For those queries the soft labels put almost all their mass on the random "
               "negatives (score 1.0 vs the positive's judge score), so the soft-label loss pushes the embedder "
               "*away* from the positive: the judge does not separate positives from candidates well enough "
               "(see its AUC below).", ""]
    if sampling.get("sampling_table"):
        md += ["```", sampling["sampling_table"], "```", ""]
    if audit:
        at = audit.get("at_beta", {})
        md += ["Judge against the world's ground truth (candidates with relevance 1.0 are the true false negatives):",
               "",
               f"- ROC-AUC of the judge score, false vs true negatives: **{_num(audit.get('auc_judge_score'))}** "
               f"(embedder similarity: {_num(audit.get('auc_similarity'))}; judge margin to the positive: "
               f"{_num(audit.get('auc_judge_margin'))})",
               f"- at β = {at.get('beta')}: flagged {at.get('flagged')}, of which true false negatives "
               f"{at.get('true_positives')} (precision {_num(at.get('precision'))}, recall {_num(at.get('recall'))})",
               f"- mean judge score: false negatives {_num(audit.get('mean_judge_score', {}).get('false_negatives'))}, "
               f"true negatives {_num(audit.get('mean_judge_score', {}).get('true_negatives'))}"]
        wq = audit.get("within_query") or {}
        if wq.get("by_dataset"):
            per = ", ".join(f"{ds} {_num(v['judge']['auc'])}" for ds, v in wq["by_dataset"].items())
            md.append(f"- within-query ROC-AUC of the judge (a query's positive and true false negatives against its "
                      f"true negatives): mean over datasets **{_num(wq.get('mean_over_datasets'))}**, min "
                      f"{_num(wq.get('min_over_datasets'))} ({per})")
            ll = wq.get("log_loss") or {}
            if ll.get("log_loss") is not None:
                md.append(f"- the judge's log loss on the same pairs: {_num(ll['log_loss'])} nats against its "
                          f"base-rate level {_num(ll['base_rate_log_loss'])} (the loss of the constant score at the "
                          f"relevant share {_num(ll['base_rate'])}: a judge that learned only the Yes/No prior sits at "
                          "it; per dataset in mined/report.md). Log loss also counts calibration: a judge that ranks "
                          f"well (the AUC above) but learned another Yes share than this world's lies above the level")
        ms = audit.get("media_swap") or {}
        if ms.get("by_dataset"):
            per = ", ".join(f"{ds} {_num(v['auc_own_media'])} → {_num(v['auc_swapped_media'])}"
                            for ds, v in sorted(ms["by_dataset"].items()))
            md.append(f"- media-swap control (up to {ms['per_dataset_queries']} image or clip queries per dataset "
                      f"re-scored with another query's media, text unchanged): within-query ROC-AUC "
                      f"**{_num(ms.get('mean_auc_own_media'))} → {_num(ms.get('mean_auc_swapped_media'))}** "
                      f"({per}); what survives a wrong picture is read from the candidates' text alone")
        md.append("")
    gate = _load(mined.parent / "judge_gate.json")
    if gate:
        md += [f"Judge check after mining: median over {gate['queries']} queries of the within-query spread of the "
               f"judge's scores {gate['median_spread']:.4f} (β = {gate['beta']:g}), fallback "
               f"{100 * gate['fallback_share']:.1f} % (limit {100 * gate['max_fallback_share']:.0f} %): "
               + ("**failed**" if gate["weak"] else "passed") + "."]
        if gate.get("weak_datasets_line"):  # a few datasets past the limits (the overall check passed or not)
            md.append("Per dataset: " + gate["weak_datasets_line"] + ".")
        md.append("")
    jstats = _load(mined.parent / "judge" / "records_stats.json")
    if jstats and judge_trained:  # the records this world's judge was trained on (none when it judges zero-shot)
        md += [f"Judge training records: {jstats.get('records')} from {jstats.get('queries')} queries; negatives from "
               f"the global pool mining retrieves from ({jstats.get('pool')} items): same-task hard "
               f"{jstats.get('task_hard', 0)}, pool hard {jstats.get('global_hard', 0)}, pool random "
               f"{jstats.get('global_random', 0)}; {jstats.get('other_task', 0)} of {jstats.get('negatives', 0)} from "
               f"other tasks; extra Yes (true false negatives) {jstats.get('extra_yes', 0)}.", ""]
    for png in sorted((mined / "plots").glob("*.png")) if (mined / "plots").is_dir() else []:
        md += [f"![{png.stem}]({png.relative_to(mined.parent).as_posix()})", ""]
    return md


def _embed_rl_section(demo: "DemoRun") -> list[str]:
    """Embed-RL (`--embed-rl`): `unime reason eval` rows and the GRPO reward components per step."""
    import csv

    from unime.demo.embed_rl import EVAL_ROWS, embed_rl_paths

    P = embed_rl_paths(demo)
    rows = [(title, [row_values(summ)]) for name, title in EVAL_ROWS.items()
            if (summ := _load(P["eval"] / name / "summary.json")) is not None]
    reward_csv = P["grpo"] / "reward_log.csv"
    if not rows and not reward_csv.is_file():
        return []
    md = ["## Embed-RL", "",
          "Backbones: the reasoner and the `<emb>` embedders start from the pretrained base (`models/embedder-base`, "
          "the `models` stage), the embedders with the `<emb>` token added (`models/emb-embedder-base`, `unime reason "
          "add-emb`).", ""]
    split = _load(P["split"] / "split.json")
    if split:
        md += [f"T-CoT match split of {split['pairs']} training pairs (teacher T-CoTs, the T-CoT match judge): "
               f"{split['contrastive']} contrastive, {split['rl']} to RL.", ""]
    if rows:
        md += ["`unime reason eval` (MMEB-style Precision@1 ×100; one run each). Every embedder here is the `<emb>` "
               "embedder; the T-CoT embedder was trained on the contrastive split with teacher T-CoTs, the other with "
               "the same recipe on the training records without T-CoTs (the input it is evaluated with). The last row "
               "is an **upper bound, not a result**: its T-CoTs come from the annotation teacher, which reads the "
               "scene annotations (the answers).", ""]
        cols = [("overall", "Overall"), ("IND", "IND"), ("OOD", "OOD")] + \
            [(k, t) for k, t in MMEB_COLUMNS if k not in ("overall", "IND", "OOD")]
        md += _table(rows, cols)
        rates = [(n, _load(P["eval"] / n / "tcot_format.json")) for n in ("tcot_sft", "tcot_grpo")]
        rates = [f"{n.removeprefix('tcot_').upper()} {100 * r['format_rate']:.0f} % of {r['n']}" for n, r in rates if r]
        if rates:
            md += ["", "Reasoner T-CoTs in the T-CoT format at eval: " + ", ".join(rates) + "."]
        md.append("")
    if reward_csv.is_file():
        with open(reward_csv, encoding="utf-8") as fh:
            steps = [{k: float(v) for k, v in r.items() if v not in (None, "")} for r in csv.DictReader(fh)]
        if steps:
            keys = [k for k in ("format", "outcome", "process", "total", "acc") if k in steps[0]]
            md += [f"GRPO reward components, mean over the step's completions ({len(steps)} steps; total = the "
                   "weighted sum; acc = the outcome reward's retrieval accuracy):", "",
                   "| Step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
            shown = steps if len(steps) <= 10 else steps[:3] + [None] + steps[-3:]
            for r in shown:
                md.append("| … |" + " |" * len(keys) if r is None else
                          f"| {int(r['step'])} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
            k = max(1, len(steps) // 3)
            md += ["", f"First {k} vs last {k} step(s): " + "; ".join(
                f"{key} {np.mean([r[key] for r in steps[:k]]):.3f} → {np.mean([r[key] for r in steps[-k:]]):.3f}"
                for key in keys) + ".", ""]
        png = P["grpo"] / "reward_curves.png"
        if png.is_file():
            md += [f"![GRPO reward curves]({png.relative_to(demo.out).as_posix()})", ""]
    return md


def _curves_section(demo: "DemoRun") -> list[str]:
    md = ["## Training curves", ""]
    candidates = [("judge", demo.p("judge", "model")), ("reranker", demo.p("reranker"))]
    for row, outs in demo.embedder_runs().items():
        candidates += [(f"embedder {row} (seed {seed})", o) for seed, o in zip(demo.s.seeds, outs)][:1]
    for title, folder in candidates:
        png = folder / "curves.png"
        csv = folder / "curves.csv"
        if png.is_file():
            md += [f"**{title}**", "", f"![{title}]({png.relative_to(demo.out).as_posix()})", ""]
        if csv.is_file():
            from unime.models.curves import read_curves_csv

            losses = [r["loss"] for r in read_curves_csv(csv) if "loss" in r]
            if losses:
                md += [f"{title}: loss {losses[0]:.3f} → {losses[-1]:.3f} over {len(losses)} logged points", ""]
    return md


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _write_html(out: Path, md: list[str]) -> None:
    """A self-contained HTML page (images inlined) for people who would rather look than read markdown."""
    body = []
    in_code, in_table = False, False
    for line in md:
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c).replace('**', '')}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            src = line[line.rindex("](") + 2:-1]
            data = base64.b64encode((out / src).read_bytes()).decode()
            body.append(f'<img src="data:image/png;base64,{data}" style="max-width:720px">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    page = ("<!doctype html><meta charset='utf-8'><title>unime demo report</title><style>body{font-family:sans-serif;"
            "max-width:1000px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}pre{background:#f4f4f4;padding:8px;overflow-x:auto}</style>"
            + "\n".join(body))
    (out / "report.html").write_text(page, encoding="utf-8")
