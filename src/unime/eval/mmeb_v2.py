"""MMEB-V2 (VLM2Vec-V2, 78 tasks): the V2 task format's reader and runner, and the leaderboard's aggregates.

Task format ``mmeb_v2`` (rows: `unime.data.mmeb_v2`). Options:
- ``eval_type``: ``local`` (default; each query ranks its own row's candidates — video QA, moment
  retrieval, SSv2) or ``global`` (every query ranks one pool: all rows' candidates deduplicated by
  ``cand_names``, plus the rows of ``corpus`` if given — video classification / retrieval, visual documents);
- ``corpus``: a file or folder of corpus rows (``cand_text``, ``cand_image``, ``dataset_infos.cand_names``),
  relative to the config's root;
- ``metric``: the task's headline metric, ``hit@1`` (image and video tasks) or ``ndcg@5`` (visual documents,
  NDCG with linear gain over the rows' ``rel_scores``, 1 for a label without a score); default by
  ``modality``: ``visdoc`` → ``ndcg@5``, otherwise ``hit@1``;
- ``ks``: cut-offs of the extra NDCG / recall columns (default [1, 5, 10]).

Aggregates (the MMEB-V2 leaderboard's layout): per modality (Image, Video, VisDoc) the mean of the headline
metric over each meta-task's datasets and over all of the modality's datasets, and Overall = the mean over
every dataset. Image datasets are the 36 MMEB-V1 ones (format ``mmeb``, Precision@1 = Hit@1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unime.data.mmeb_v2 import V2Row, v2_row_from_dict
from unime.data.skips import ErrorPolicy, data_error
from unime.eval import metrics as M
from unime.eval.tasks import ItemTable, QrelsData, TaskSpec, _data_files, _no_rows, _parsed_rows

EVAL_TYPES = ("local", "global")
V2_METRICS = ("hit@1", "ndcg@5")
MODALITIES = ("image", "video", "visdoc")
# the leaderboard's column groups, in its order
META_TASKS = {
    "image": ("classification", "vqa", "retrieval", "grounding"),
    "video": ("classification", "vqa", "retrieval", "moment_retrieval"),
    "visdoc": ("vidore_v1", "vidore_v2", "visrag", "visdoc_ood"),
}
META_TITLES = {"classification": "CLS", "vqa": "QA", "retrieval": "RET", "grounding": "GD",
               "moment_retrieval": "MRET", "vidore_v1": "ViDoRe-V1", "vidore_v2": "ViDoRe-V2", "visrag": "VisRAG",
               "visdoc_ood": "VisDoc-OOD"}
MODALITY_TITLES = {"image": "Image", "video": "Video", "visdoc": "VisDoc"}


def headline_metric(spec: TaskSpec) -> str:
    if spec.format == "mmeb":
        return "precision@1"
    return spec.option("metric") or ("ndcg@5" if spec.modality == "visdoc" else "hit@1")


# -- reading ---------------------------------------------------------------------------------------------

def read_mmeb_v2_task(spec: TaskSpec, policy: ErrorPolicy) -> QrelsData:
    """V2 rows → per query: candidate item indices and their relevance grades."""
    table = ItemTable()
    eval_type = spec.option("eval_type", "local")
    rows: list[tuple[str, str, V2Row]] = []
    for f in _data_files(spec.path, task=spec.name):
        for label, row in _parsed_rows(f, v2_row_from_dict, policy, task=spec.name):
            rows.append((str(f), label, row))
    if not rows:
        raise _no_rows(spec)
    queries, cands, grades, ids = [], [], [], []

    def grades_for(row: V2Row, names: list[str], where: tuple[str, str]) -> np.ndarray | None:
        pos = {n: j for j, n in enumerate(names)}
        g = np.zeros(len(names), dtype=np.float64)
        for lab in row.labels:
            if lab not in pos:
                policy.handle(data_error("schema", f"label {lab!r} is not among the "
                                         f"{'pool' if eval_type == 'global' else 'row'}'s candidates",
                                         source=where[0], record=where[1], field="dataset_infos.label_name"))
                return None
            g[pos[lab]] = row.rel_scores.get(lab, 1.0)
        for name, s in row.rel_scores.items():  # graded candidates that are not labels (ViDoRe qrels)
            if name in pos and name not in row.labels:
                g[pos[name]] = s
        return g

    if eval_type == "global":
        pool_names: list[str] = []
        pool_items: list[int] = []
        seen: dict[str, int] = {}

        def add_pool(row: V2Row, where: tuple[str, str]) -> None:
            for c in row.candidates:
                idx = table.add(c.item)
                if c.name in seen:
                    if pool_items[seen[c.name]] != idx:
                        policy.handle(data_error("schema", f"candidate name {c.name!r} names two different items",
                                                 source=where[0], record=where[1], field="dataset_infos.cand_names"))
                    continue
                seen[c.name] = len(pool_names)
                pool_names.append(c.name)
                pool_items.append(idx)

        corpus = spec.option("corpus")
        if corpus:
            from pathlib import Path

            for f in _data_files(Path(corpus), task=spec.name):
                for label, row in _parsed_rows(f, lambda o, **kw: v2_row_from_dict(o, corpus=True, **kw), policy,
                                               task=spec.name):
                    add_pool(row, (str(f), label))
        for source, label, row in rows:
            add_pool(row, (source, label))
        pool = np.asarray(pool_items, dtype=np.int64)
        for source, label, row in rows:
            g = grades_for(row, pool_names, (source, label))
            if g is None:
                continue
            queries.append(table.add(row.query))
            cands.append(pool)
            grades.append(g)
            ids.append(row.id or label)
        shared = True
    else:
        for source, label, row in rows:
            g = grades_for(row, [c.name for c in row.candidates], (source, label))
            if g is None:
                continue
            queries.append(table.add(row.query))
            cands.append(np.asarray([table.add(c.item) for c in row.candidates], dtype=np.int64))
            grades.append(g)
            ids.append(row.id or label)
        shared = False
    if not queries:
        raise _no_rows(spec)
    return QrelsData(table=table, query=np.asarray(queries, dtype=np.int64), candidates=cands, grades=grades,
                     ids=ids, shared_corpus=shared)


# -- scoring ---------------------------------------------------------------------------------------------

def run_mmeb_v2(spec: TaskSpec, data: QrelsData, vecs, opts, rr=None):
    """Hit@1 and NDCG@k (linear gain) / recall@k per query, averaged over the queries with a relevant
    candidate; the headline metric (``metric``) is listed first."""
    from unime.eval.runners import TaskResult, score_graded_queries

    ks = spec.option("ks", [1, 5, 10])

    def per_query(g: np.ndarray) -> dict[str, float]:
        m = {"hit@1": M.hit_at_k(g, 1)}
        m.update({f"ndcg@{k}": M.ndcg_at_k(g, k) for k in sorted(set(ks) | {5})})
        m.update({f"recall@{k}": M.recall_at_k(g, k) for k in ks})
        return m

    head = headline_metric(spec)
    plain, reranked, details, skipped = score_graded_queries(spec, data, vecs, opts, rr, per_query)

    def mean(rows: list[dict]) -> dict[str, float]:
        keys = [head] + [k for k in rows[0] if k != head]
        return {k: float(np.mean([r[k] for r in rows])) for k in keys}

    counts = {"queries": len(plain), "queries_without_relevant": skipped, "distinct_items": len(data.table),
              "candidates_per_query": int(np.mean([len(c) for c in data.candidates]))}
    result = TaskResult(spec, mean(plain), counts, per_query=details)
    if rr is not None:
        result.reranked = mean(reranked)
    return result


# -- aggregates ------------------------------------------------------------------------------------------

def v2_aggregates(tasks: dict[str, dict[str, float]], info: dict[str, dict]) -> dict[str, Any]:
    """The leaderboard's layout: per modality its meta-task means and its mean; Overall over all datasets.
    Only tasks with a ``modality`` count; each value comes with the number of datasets behind it."""
    names = [n for n in tasks if info[n].get("modality") in MODALITIES and info[n].get("headline") in tasks[n]]
    if not names:
        return {}
    out: dict[str, Any] = {"metric_by_modality": {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg@5"},
                           "modalities": {}}
    everything = []
    for mod in MODALITIES:
        mine = [n for n in names if info[n]["modality"] == mod]
        if not mine:
            continue
        vals = {n: tasks[n][info[n]["headline"]] for n in mine}
        groups: dict[str, list[float]] = {}
        for n in mine:
            groups.setdefault(info[n].get("meta_task") or "other", []).append(vals[n])
        order = list(META_TASKS[mod]) + sorted(set(groups) - set(META_TASKS[mod]))
        out["modalities"][mod] = {
            "score": float(np.mean(list(vals.values()))), "datasets": len(mine),
            "meta_tasks": {g: {"score": float(np.mean(groups[g])), "datasets": len(groups[g])}
                           for g in order if g in groups}}
        everything.extend(vals.values())
    out["overall"] = {"score": float(np.mean(everything)), "datasets": len(everything)}
    return out


def v2_table(rows: list[tuple[str, dict]]) -> list[str]:
    """Markdown: one row per (label, aggregates); columns Overall, then per modality its mean and meta-tasks."""
    aggs = [a for _, a in rows if a]
    if not aggs:
        return []
    cols: list[tuple[str, str | None]] = []
    for mod in MODALITIES:
        present = [a["modalities"][mod] for a in aggs if mod in a["modalities"]]
        if not present:
            continue
        cols.append((mod, None))
        seen = []
        for p in present:
            seen += [g for g in p["meta_tasks"] if g not in seen]
        cols += [(mod, g) for g in seen]
    first = aggs[0]

    def title(mod: str, g: str | None) -> str:
        m = first["modalities"].get(mod, {})
        if g is None:
            return f"{MODALITY_TITLES[mod]} ({m.get('datasets', '?')})"
        n = m.get("meta_tasks", {}).get(g, {}).get("datasets", "?")
        return f"{MODALITY_TITLES[mod]} {META_TITLES.get(g, g)} ({n})"

    header = ["", f"Overall ({first['overall']['datasets']})"] + [title(m, g) for m, g in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, a in rows:
        if not a:
            continue
        cells = [label, f"{100 * a['overall']['score']:.1f}"]
        for mod, g in cols:
            m = a["modalities"].get(mod)
            v = None if m is None else (m["score"] if g is None else m["meta_tasks"].get(g, {}).get("score"))
            cells.append("—" if v is None else f"{100 * v:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
