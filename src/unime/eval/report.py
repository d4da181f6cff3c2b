"""Evaluation reports: one JSON per task, ``summary.json``, ``results.md``, PNG plots, and the side-by-side
comparison of several result folders.

Layout of a result folder::

    summary.json        {"meta", "tasks": {task: {metric: value}}, "aggregates": {"mmeb": {...}},
                         "task_info", "encoding", "timing"[, "reranked": {"tasks", "aggregates", ...}]}
    tasks/<task>.json   metrics, counts, per-query details (and the reranked metrics)
    results.md          tables (the MMEB one laid out like the paper's: meta-tasks, IND, OOD, Overall)
    per_task.png        headline metric per task (embedder, and embedder + reranker)
    comparison.md/.png  only when other result folders were given to compare with

Metric values in JSON are fractions in [0, 1]; tables and plots show them x100 (one decimal).
MMEB aggregates are plain means over *datasets* (each MMEB-format task is one dataset): per meta-task,
over the IND datasets, over the OOD datasets, and over all of them (Overall), as in the paper.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.data.atomic import atomic_open, atomic_path
from unime.errors import DataError
from unime.eval.tasks import MMEB_META_TASKS

MMEB_METRIC = "precision@1"
META_TASK_TITLES = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval",
                    "grounding": "Grounding"}
EMBEDDER_ROW, RERANKED_ROW = "embedder", "embedder + reranker"


def headline_metrics(fmt: str, metrics: dict[str, float]) -> list[str]:
    """The metric(s) a plot shows for a task of this format."""
    if fmt == "mmeb":
        return [MMEB_METRIC]
    if fmt == "retrieval":
        return [m for m in ("text_to_image/recall@1", "image_to_text/recall@1") if m in metrics]
    if fmt == "compositional":
        return ["accuracy"]
    if fmt == "qrels":
        ndcg = [m for m in metrics if m.startswith("ndcg@")]
        return ndcg[:1]
    if fmt == "mmeb_v2":
        return list(metrics)[:1]  # the task's headline metric comes first
    return []


# -- aggregates ------------------------------------------------------------------------------------------

def mmeb_aggregates(tasks: dict[str, dict[str, float]], info: dict[str, dict]) -> dict[str, Any]:
    """Means of Precision@1 over MMEB-format datasets: per meta-task, IND, OOD, overall (+ counts)."""
    names = [n for n in tasks if info[n]["format"] == "mmeb" and MMEB_METRIC in tasks[n]]
    if not names:
        return {}
    groups: dict[str, list[str]] = {}
    for n in names:
        if info[n].get("meta_task"):
            groups.setdefault(info[n]["meta_task"], []).append(n)
    for split in ("IND", "OOD"):
        members = [n for n in names if info[n].get("split") == split]
        if members:
            groups[split] = members
    groups["overall"] = names
    scores = {g: float(np.mean([tasks[n][MMEB_METRIC] for n in members])) for g, members in groups.items()}
    return {"scores": scores, "datasets": {g: len(m) for g, m in groups.items()}}


def _mmeb_columns(aggs: Sequence[dict]) -> list[str]:
    extra = sorted({g for a in aggs for g in a.get("scores", {})} - set(MMEB_META_TASKS) - {"IND", "OOD", "overall"})
    return list(MMEB_META_TASKS) + extra + ["IND", "OOD", "overall"]


# -- formatting ------------------------------------------------------------------------------------------

def pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:.1f}"


def _md_table(header: list[str], rows: list[list[str]], *, text_columns: int = 1) -> list[str]:
    """Markdown table; the first `text_columns` columns left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _column_title(group: str, count: int | None) -> str:
    title = META_TASK_TITLES.get(group, "Overall" if group == "overall" else group)
    return f"{title} ({count})" if count else title


def mmeb_table(rows: list[tuple[str, dict]]) -> list[str]:
    """The paper's MMEB table: one row per (label, aggregates)."""
    aggs = [a for _, a in rows if a]
    if not aggs:
        return []
    cols = _mmeb_columns(aggs)
    counts = {c: max((a["datasets"].get(c, 0) for a in aggs), default=0) for c in cols}
    header = ["Model"] + [_column_title(c, counts[c]) for c in cols]
    body = [[label] + [pct(a.get("scores", {}).get(c)) for c in cols] for label, a in rows]
    return _md_table(header, body)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name) or "task"


# -- writing one run -------------------------------------------------------------------------------------

def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def build_summary(run, meta: dict) -> dict:
    from unime.eval.mmeb_v2 import headline_metric, v2_aggregates

    info = {r.name: {"format": r.spec.format, "meta_task": r.spec.meta_task, "split": r.spec.split}
            for r in run.results}
    for r in run.results:
        if r.spec.modality is not None:
            info[r.name].update(modality=r.spec.modality, headline=headline_metric(r.spec))
    tasks = {r.name: r.metrics for r in run.results}
    aggregates: dict[str, Any] = {"mmeb": mmeb_aggregates(tasks, info)}
    if any("modality" in i for i in info.values()):
        aggregates["mmeb_v2"] = v2_aggregates(tasks, info)
    summary: dict[str, Any] = {"meta": meta, "tasks": tasks, "aggregates": aggregates,
                               "task_info": info, "task_counts": {r.name: r.counts for r in run.results},
                               "encoding": run.encoding, "timing": run.timing}
    if getattr(run, "attempts", None):  # the metrics, encoding counters and timings cover the whole run
        summary["run"] = {"attempts": run.attempts}
    if run.rerank is not None:
        rtasks = {r.name: r.reranked for r in run.results if r.reranked is not None}
        raggs: dict[str, Any] = {"mmeb": mmeb_aggregates(rtasks, info)}
        if "mmeb_v2" in aggregates:
            raggs["mmeb_v2"] = v2_aggregates(rtasks, info)
        summary["reranked"] = {**run.rerank, "tasks": rtasks,
                               "aggregates": raggs,
                               "stats": {r.name: r.rerank_stats for r in run.results}}
    return summary


def write_run(out_dir: str | os.PathLike, run, *, meta: dict, compare: Sequence[str] = ()) -> dict:
    """Write every output of one run into `out_dir`; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in run.results:
        write_json(out / "tasks" / f"{_safe_name(r.name)}.json", r.to_dict())
        if getattr(r, "run", None) is not None:
            write_trec_run(out / "runs" / f"{_safe_name(r.name)}.trec", r.run)
    summary = build_summary(run, meta)
    write_json(out / "summary.json", summary)
    with atomic_open(out / "results.md") as fh:
        fh.write("\n".join(results_markdown(summary)) + "\n")
    plot_per_task(summary, out / "per_task.png")
    if compare:
        compare_runs([out, *compare], out)
    return summary


def write_trec_run(path: Path, run: Sequence[tuple[str, Sequence[tuple[str, float]]]], tag: str = "unime") -> None:
    """A TREC run file: per query, its ranked candidates as ``query_id Q0 doc_id rank score tag`` (rank from 1); the
    whitespace in an id (a row without one is named by its line, "line 3") becomes ``_``, as the format splits on it."""
    def one_word(text: str) -> str:
        return "_".join(str(text).split()) or "_"

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        for qid, ranked in run:
            for rank, (doc, score) in enumerate(ranked, 1):
                fh.write(f"{one_word(qid)} Q0 {one_word(doc)} {rank} {score:.6f} {tag}\n")


def _variants(summary: dict) -> list[tuple[str, dict, dict]]:
    """(row label, task metrics, aggregates) for the embedder and, if present, the reranked run."""
    rows = [(EMBEDDER_ROW, summary["tasks"], summary["aggregates"].get("mmeb", {}))]
    if "reranked" in summary:
        rr = summary["reranked"]
        rows.append((reranked_label(rr), rr["tasks"], rr["aggregates"].get("mmeb", {})))
    return rows


def reranked_label(reranked: dict) -> str:
    """The name of the reranked run (a summary's ``reranked``), e.g. ``embedder + reranker (top1, top-5)``."""
    return f"{RERANKED_ROW} ({reranked.get('mode')}, top-{reranked.get('topk')})"


def skip_lines(summary: dict) -> list[str]:
    """The report's lines (markdown) on what `--on-error skip` left out of a run: rows, candidates and tasks, each
    task with why; none when nothing was."""
    meta, lines = summary.get("meta", {}), []
    skipped = {n: int(c.get("skipped_rows", 0)) for n, c in (summary.get("task_counts") or {}).items()
               if int(c.get("skipped_rows", 0) or 0)}
    skipped.update({n: int(k) for n, k in (meta.get("skipped_task_rows") or {}).items()})  # the tasks left out
    if meta.get("skipped_rows") or skipped:  # under --on-error skip: every figure below leaves these rows out
        lines.append(f"- **skipped rows** (`--on-error skip`): {int(meta.get('skipped_rows') or sum(skipped.values()))}"
                     + (" (" + ", ".join(f"{n} {k}" for n, k in sorted(skipped.items())) + ")" if skipped else "")
                     + "; the metrics leave them out")
    if meta.get("dropped_candidates"):
        lines.append(f"- **dropped candidates** (`--on-error skip`): {int(meta['dropped_candidates'])} bad candidates "
                     "left out of their rows (each row kept a relevant candidate and another one), or of a global "
                     "task's pool (each counted once)")
    if meta.get("skipped_tasks"):  # each with why (a run recorded before the reasons were: the names alone)
        why = meta.get("skipped_task_reasons") or {}
        lines.append("- **skipped tasks** (`--on-error skip`): "
                     + "; ".join(f"{n} ({why[n]})" if n in why else n for n in meta["skipped_tasks"]))
    return lines


def results_markdown(summary: dict, *, title: str | None = None) -> list[str]:
    meta, info = summary.get("meta", {}), summary["task_info"]
    variants = _variants(summary)
    lines = [f"# {title or 'Evaluation: ' + str(meta.get('model', ''))}", ""]
    for key in ("model", "model_id", "tasks_config", "reranker", "ties"):
        if meta.get(key) is not None:
            lines.append(f"- {key}: `{meta[key]}`")
    lines += skip_lines(summary)
    lines.append("")
    by_format: dict[str, list[str]] = {}
    for name, i in info.items():
        by_format.setdefault(i["format"], []).append(name)

    if by_format.get("mmeb"):
        lines += ["## MMEB protocol (Precision@1, %)", "",
                  "Averages over datasets; each query ranked against its own candidates.", ""]
        lines += mmeb_table([(label, aggs) for label, _, aggs in variants]) + [""]
        header = (["Dataset", "Meta-task", "Split", "Candidates", "Chance P@1"] + [label for label, _, _ in variants]
                  + ["R@5", "R@10", "Chance R@5"])
        order = {m: k for k, m in enumerate(MMEB_META_TASKS)}
        names = sorted(by_format["mmeb"], key=lambda n: (order.get(info[n]["meta_task"] or "", 99),
                                                         info[n]["meta_task"] or "", by_format["mmeb"].index(n)))
        first = variants[0][1] if variants else {}
        counts = summary.get("task_counts", {})

        def cands(n: str) -> str:
            c = counts.get(n, {})
            lo, hi = c.get("candidates_per_query_min"), c.get("candidates_per_query_max")
            return "–" if lo is None else str(lo) if lo == hi else f"{lo}–{hi}"

        rows = [[n, info[n]["meta_task"] or "–", info[n]["split"] or "–", cands(n),
                 pct(first.get(n, {}).get("chance@1"))]
                + [pct(t.get(n, {}).get(MMEB_METRIC)) for _, t, _ in variants]
                + [pct(first.get(n, {}).get(m)) for m in ("recall@5", "recall@10", "chance@5")] for n in names]
        lines += _md_table(header, rows, text_columns=4) + [""]
        lines += ["R@K: the positive within the top K of the embedder's ranking (a reranker of the top K cannot "
                  "do better than R@K). Chance: a random ranking.", ""]
        repeated = {n: counts.get(n, {}).get("repeated_positive_rows", 0) for n in names}
        if any(repeated.values()):
            lines += ["**Warning**: rows listing their positive again among the negatives (they cannot score "
                      f"under {meta.get('ties', 'pessimistic')} ties): "
                      + ", ".join(f"{n} {v}" for n, v in repeated.items() if v), ""]

    v2 = [(EMBEDDER_ROW, summary["aggregates"].get("mmeb_v2"))]
    if "reranked" in summary:
        v2.append((variants[-1][0], summary["reranked"]["aggregates"].get("mmeb_v2")))
    if any(a for _, a in v2):
        from unime.eval.mmeb_v2 import v2_table

        lines += ["## MMEB-V2 (Hit@1 for image and video, NDCG@5 for visual documents, %)", "",
                  "Averages over datasets, laid out like the MMEB-V2 leaderboard.", ""]
        lines += v2_table(v2) + [""]
    if by_format.get("mmeb_v2"):
        header = ["Dataset", "Modality", "Meta-task", "Metric"] + [label for label, _, _ in variants]
        rows = [[n, info[n].get("modality") or "–", info[n]["meta_task"] or "–", info[n].get("headline") or "–"]
                + [pct(t.get(n, {}).get(info[n].get("headline") or "hit@1")) for _, t, _ in variants]
                for n in by_format["mmeb_v2"]]
        lines += _md_table(header, rows, text_columns=4) + [""]

    if by_format.get("retrieval"):
        lines += ["## Image–text retrieval (Recall@K, %)", "",
                  "T→I: each caption retrieves its image. I→T: hit if any of the image's captions is in the top K.",
                  ""]
        ks = sorted({int(m.split("@")[1]) for n in by_format["retrieval"] for m in summary["tasks"][n]
                     if m.startswith("text_to_image/")})
        header = ["Task", "Model"] + [f"T→I R@{k}" for k in ks] + [f"I→T R@{k}" for k in ks]
        rows = []
        for n in by_format["retrieval"]:
            for label, t, _ in variants:
                if n in t:
                    rows.append([n, label] + [pct(t[n].get(f"text_to_image/recall@{k}")) for k in ks]
                                + [pct(t[n].get(f"image_to_text/recall@{k}")) for k in ks])
        lines += _md_table(header, rows, text_columns=2) + [""]

    if by_format.get("compositional"):
        lines += ["## Compositional (accuracy of preferring the positive caption, %)", ""]
        cats = sorted({m.split("/", 1)[1] for n in by_format["compositional"] for m in summary["tasks"][n]
                       if m.startswith("accuracy/")})
        header = ["Task", "Model", "Accuracy"] + cats
        rows = []
        for n in by_format["compositional"]:
            for label, t, _ in variants:
                if n in t:
                    rows.append([n, label, pct(t[n].get("accuracy"))] + [pct(t[n].get(f"accuracy/{c}")) for c in cats])
        lines += _md_table(header, rows, text_columns=2) + [""]

    if by_format.get("qrels"):
        lines += ["## Graded relevance (NDCG linear gain, Recall, MRR, MAP, %)", ""]
        metric_names = []
        for n in by_format["qrels"]:
            for m in summary["tasks"][n]:
                if m not in metric_names:
                    metric_names.append(m)
        header = ["Task", "Model"] + [m.upper() if m in ("mrr", "map") else m for m in metric_names]
        rows = []
        for n in by_format["qrels"]:
            for label, t, _ in variants:
                if n in t:
                    rows.append([n, label] + [pct(t[n].get(m)) for m in metric_names])
        lines += _md_table(header, rows, text_columns=2) + [""]

    enc = summary.get("encoding") or {}
    if enc:
        lines += ["## Encoding", "",
                  f"- item references in the task data (seen): {enc.get('items_seen')}",
                  f"- distinct items: {enc.get('distinct_items')}"]
        attempts, last = (summary.get("run") or {}).get("attempts") or 1, enc.get("last_attempt")
        if attempts > 1 and isinstance(last, dict):  # a resumed run: the whole run's counts and the last attempt's
            lines += [f"- taken from the embedding cache: {enc.get('from_cache')} (cached before the run began)",
                      f"- encoded by the model in this run: {enc.get('encoded')}, over {attempts} attempts",
                      f"- the last attempt: {last.get('encoded')} encoded, {last.get('from_cache')} taken from the "
                      "embedding cache (the interrupted attempts' work among them)"]
        else:
            lines += [f"- taken from the embedding cache: {enc.get('from_cache')}",
                      f"- encoded by the model in this run: {enc.get('encoded')}"]
        if enc.get("encode_seconds") is not None:
            lines.append(f"- encoding time: {enc['encode_seconds']:.1f} s")
        lines.append("")
    timing = summary.get("timing") or {}
    if timing.get("wall_seconds") is not None:
        lines += [f"Wall time: {timing['wall_seconds']:.1f} s", ""]
    if "reranked" in summary:
        lines += [reranker_line(summary["reranked"].get("stats") or {}), ""]
    return lines


def reranker_line(stats: dict[str, Any]) -> str:
    """One line on the reranked evaluation from its per-task stats: the queries, the listwise picks that parsed,
    and the two fallbacks — an unparsable or out-of-range answer falls back to the reranker's pairwise scores
    (`Reranker.pick`), a reranker that returns no pick at all to the embedder's order (`rerank()`)."""
    def total(key: str, part: str | None = None) -> int:
        return sum(int(((s or {}).get(part) or {}).get(key, 0) if part else (s or {}).get(key, 0))
                   for s in stats.values())

    queries, to_embedder = total("queries"), total("fallbacks")
    picks, parsed, to_pairwise = total("picks", "reranker"), total("parsed", "reranker"), total("fallbacks", "reranker")
    line = f"Reranker: {queries} reranked queries"
    if picks:
        line += (f"; {parsed} of {picks} listwise answers named a candidate, {to_pairwise} fell back to the "
                 f"reranker's pairwise scores (unparsable or out of range)")
    line += f"; {to_embedder} kept the embedder's order (no pick)."
    if picks and to_pairwise == picks:
        line += " WARNING: no listwise answer could be read: every pick is the pairwise scores' argmax."
    return line


# -- plots -----------------------------------------------------------------------------------------------

def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _bars(labels: list[str], series: list[tuple[str, list[float | None]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = len(labels), max(len(series), 1)
    height = 0.8 / m
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * n * m + 1.2)))
    y = np.arange(n)
    for j, (name, values) in enumerate(series):
        vals = [np.nan if v is None else 100.0 * v for v in values]
        pos = y - 0.4 + height * (j + 0.5)
        bars = ax.barh(pos, vals, height=height, label=name)
        for b, v in zip(bars, vals):
            if not np.isnan(v):
                ax.text(v + 0.5, b.get_y() + b.get_height() / 2, f"{v:.1f}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("score (%)")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _headline_rows(summary: dict) -> list[tuple[str, str]]:
    rows = []
    for name, i in summary["task_info"].items():
        for m in headline_metrics(i["format"], summary["tasks"].get(name, {})):
            rows.append((name, m))
    return rows


def plot_per_task(summary: dict, path: str | os.PathLike) -> None:
    rows = _headline_rows(summary)
    if not rows:
        return
    labels = [f"{n} · {m}" for n, m in rows]
    series = [(label, [t.get(n, {}).get(m) for n, m in rows]) for label, t, _ in _variants(summary)]
    _bars(labels, series, "Per-task scores", Path(path))


# -- comparing runs --------------------------------------------------------------------------------------

def load_summary(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise DataError("not a result folder (no summary.json)", source=str(run_dir))
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e}", source=str(path)) from None
    for key in ("tasks", "task_info", "aggregates"):
        if key not in summary:
            raise DataError("missing key", source=str(path), field=key)
    return summary


def _run_labels(dirs: Sequence[Path]) -> list[str]:
    names = [d.resolve().name or str(d) for d in dirs]
    return [n if names.count(n) == 1 else f"{n} [{i + 1}]" for i, n in enumerate(names)]


def compare_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict:
    """Side-by-side comparison of result folders: ``comparison.md``, ``comparison.json``, ``comparison.png``."""
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 1:
        raise ValueError("nothing to compare")
    summaries = [load_summary(d) for d in dirs]
    labels = _run_labels(dirs)
    columns: list[tuple[str, dict, dict]] = []  # (label, tasks, mmeb aggregates)
    info: dict[str, dict] = {}
    for label, s in zip(labels, summaries):
        for variant, tasks, aggs in _variants(s):
            columns.append((label if variant == EMBEDDER_ROW else f"{label} + reranker", tasks, aggs))
        for n, i in s["task_info"].items():
            info.setdefault(n, i)
    rows = [(n, m) for n, i in info.items()
            for m in headline_metrics(i["format"], next((t[n] for _, t, _ in columns if n in t), {}))]
    lines = ["# Comparison", "", "Runs: " + ", ".join(f"`{lab}` ({d})" for lab, d in zip(labels, dirs)), ""]
    mm = mmeb_table([(label, aggs) for label, _, aggs in columns if aggs])
    if mm:
        lines += ["## MMEB protocol (Precision@1, %)", ""] + mm + [""]
    lines += ["## Per task (%)", ""]
    lines += _md_table(["Task", "Metric"] + [c[0] for c in columns],
                       [[n, m] + [pct(t.get(n, {}).get(m)) for _, t, _ in columns] for n, m in rows],
                       text_columns=2) + [""]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "comparison.md") as fh:
        fh.write("\n".join(lines) + "\n")
    comparison = {"runs": [{"label": lab, "dir": str(d)} for lab, d in zip(labels, dirs)],
                  "columns": [c[0] for c in columns],
                  "tasks": {f"{n} · {m}": {c[0]: c[1].get(n, {}).get(m) for c in columns} for n, m in rows},
                  "mmeb": {c[0]: c[2] for c in columns if c[2]}}
    write_json(out / "comparison.json", comparison)
    if rows:
        _bars([f"{n} · {m}" for n, m in rows], [(c[0], [c[1].get(n, {}).get(m) for n, m in rows]) for c in columns],
              "Comparison", out / "comparison.png")
    return comparison
