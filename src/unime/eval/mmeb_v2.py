"""MMEB-V2 (VLM2Vec-V2, 78 tasks): the V2 task format's options and headline metric, and the leaderboard's
aggregates. The format's reader is `unime.eval.tasks.read_mmeb_v2_task`, its scorer
`unime.eval.runners.run_mmeb_v2` (beside the other formats' readers and scorers).

Task format ``mmeb_v2`` (rows: `unime.data.mmeb_v2`). Options:
- ``eval_type``: ``global`` (the default, as in VLM2Vec's eval.py: every query ranks one pool, all rows'
  candidates deduplicated by ``cand_names`` plus the rows of ``corpus`` if given — video classification /
  retrieval, visual documents) or ``local`` (each query ranks its own row's candidates — video QA, moment
  retrieval, SSv2; a row with a single candidate then scores a hit, so such rows are warned about);
- ``corpus``: a file or folder of corpus rows (``cand_text``, ``cand_image``, ``dataset_infos.cand_names``),
  relative to the config's root; global tasks only (refused with ``eval_type: local``);
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

EVAL_TYPES = ("local", "global")
DEFAULT_EVAL_TYPE = "global"  # VLM2Vec's eval.py default
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


def headline_metric(spec) -> str:
    """The headline metric of `spec` (a `unime.eval.tasks.TaskSpec`, not imported: that module reads this
    one's option defaults)."""
    if spec.format == "mmeb":
        return "precision@1"
    return spec.option("metric") or ("ndcg@5" if spec.modality == "visdoc" else "hit@1")


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
