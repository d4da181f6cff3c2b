"""The demo world's video tasks, in MMEB-V2's video meta-tasks and VLM2Vec's V2 row format
(`unime.data.mmeb_v2`): retrieval (text → clip, one pool of all eval clips), classification (clip → its
first motion), QA (clip + question → answer) and moment retrieval (clip + "find the part where …" → one half
of that clip, among its other half and halves of other clips).

Eval rows are built from the eval clips, training records (`train/video_records.jsonl`) from the train
clips with the same instructions, so the two never share a clip. Every item is registered with its
ground-truth metadata, so `World.relevance` answers for video items too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from unime.data import vocab
from unime.data.items import Record
from unime.data.mmeb_v2 import v2_row_from_dict
from unime.data.synth.build import WorldBuilder
from unime.data.synth.clips import MOTIONS, Clip, VideoSizes, description, event_phrase, part_phrase, sample_clip

VIDEO_TOKEN = "<|vision_start|><|video_pad|><|vision_end|>"
CLIP_PROMPT = "Understand the content of the provided video."
SEGMENT_PROMPT = "Understand the content of the provided video clip."
INSTR = {
    "ret": "Find a video that contains the following visual content: {caption}",
    "cls": "Represent the given video for classification: how does the object move first?",
    "qa": "Represent the given video with the following question: {question}",
    "moment": "Find the part of the video where {part}.",
}
QUESTIONS = {  # kind → (question, answer values)
    "end_colour": ("What colour is the object at the end of the video?", tuple(vocab.COLOURS)),
    "shape": ("What shape is shown in the video?", vocab.SHAPES),
    "then": ("What does the object do after its first move?",
             tuple(f"moves {m}" for m in MOTIONS) + tuple(f"turns {c}" for c in vocab.COLOURS)),
}


@dataclass(frozen=True)
class VideoTask:
    name: str
    meta_task: str        # MMEB-V2 video meta-task: classification | vqa | retrieval | moment_retrieval
    eval_type: str        # global (one pool of all rows' candidates) | local (each row its own)


VIDEO_TASKS = (VideoTask("clip_cls", "classification", "local"), VideoTask("clip_qa", "vqa", "local"),
               VideoTask("clip_ret", "retrieval", "global"), VideoTask("clip_moment", "moment_retrieval", "local"))


def make_clips(b: WorldBuilder, sizes: VideoSizes) -> list[Clip]:
    """Train and eval clips, every signature once in the whole world (IND colour x shape combinations)."""
    out: list[Clip] = []
    seen: set = set()
    for split, n in (("train", sizes.train_clips), ("eval", sizes.eval_clips)):
        rng = b.rng(f"video:clips:{split}")
        made = tries = 0
        while made < n and tries < 50 * n + 100:
            tries += 1
            clip = sample_clip(rng, f"{split}{made:05d}", split, b.ind_combos)
            if clip.signature in seen:
                continue
            seen.add(clip.signature)
            out.append(clip)
            made += 1
    return out


def _clip_visual(clip: Clip) -> dict:
    return {"paths": [clip.path]}


def _row(task: str, i: int, query_text: str, query_visual, cands: list[tuple[str, str, dict | None]],
         label: str) -> dict:
    return {"id": f"{task}-{i:04d}", "query_text": [query_text], "query_image": [query_visual],
            "cand_text": [t for _, t, _ in cands], "cand_image": [v for _, _, v in cands],
            "dataset_infos": {"cand_names": [n for n, _, _ in cands], "label_name": label}}


def _options(rng: random.Random, answer: str, values, n: int) -> list[str]:
    others = [v for v in values if v != answer]
    rng.shuffle(others)
    opts = [answer] + others[:max(1, n - 1)]
    rng.shuffle(opts)
    return opts


def task_rows(task: str, clips: list[Clip], pool: list[Clip], rng: random.Random, n_candidates: int
              ) -> tuple[list[dict], list[dict]]:
    """(V2 rows, the need of each row's query) of one task over `clips`; `pool` = the clips of the same
    split, where moment retrieval draws its distractor halves."""
    rows, needs = [], []
    for i, clip in enumerate(clips):
        if task == "clip_ret":
            cand = (clip.id, f"{VIDEO_TOKEN}{CLIP_PROMPT}", _clip_visual(clip))
            rows.append(_row(task, i, INSTR["ret"].format(caption=description(clip)), None, [cand], clip.id))
            needs.append({"type": "clip", "spec": clip.spec()})
        elif task == "clip_cls":
            opts = _options(rng, f"moves {clip.first}", [f"moves {m}" for m in MOTIONS], n_candidates)
            rows.append(_row(task, i, f"{VIDEO_TOKEN}{INSTR['cls']}", _clip_visual(clip),
                             [(o, o, None) for o in opts], f"moves {clip.first}"))
            needs.append({"type": "answer", "value": f"moves {clip.first}"})
        elif task == "clip_qa":
            kind = rng.choice(sorted(QUESTIONS))
            question, values = QUESTIONS[kind]
            answer = {"end_colour": clip.end_colour, "shape": clip.shape, "then": event_phrase(clip.then)}[kind]
            opts = _options(rng, answer, values, n_candidates)
            rows.append(_row(task, i, f"{VIDEO_TOKEN}{INSTR['qa'].format(question=question)}", _clip_visual(clip),
                             [(o, o, None) for o in opts], answer))
            needs.append({"type": "answer", "value": answer})
        elif task == "clip_moment":
            part = rng.randrange(2)
            others = [c for c in pool if c.id != clip.id]
            rng.shuffle(others)
            halves = [(clip, 0), (clip, 1)] + [(c, rng.randrange(2)) for c in others[:max(0, n_candidates - 2)]]
            rng.shuffle(halves)
            cands = [(f"{c.id}_p{k}", f"{VIDEO_TOKEN}{SEGMENT_PROMPT}", {"paths": [c.segment_path(k)]})
                     for c, k in halves]
            rows.append(_row(task, i, f"{VIDEO_TOKEN}{INSTR['moment'].format(part=part_phrase(clip, part))}",
                             _clip_visual(clip), cands, f"{clip.id}_p{part}"))
            needs.append({"type": "moment", "clip": clip.id, "part": part})
        else:
            raise ValueError(f"unknown video task {task!r}")
    return rows, needs


def _candidate_meta(name: str, clips_by_id: dict[str, Clip]) -> dict:
    if name in clips_by_id:
        return {"kind": "clip", "clip": name}
    base, _, part = name.rpartition("_p")
    if base in clips_by_id and part in ("0", "1"):
        return {"kind": "segment", "clip": base, "part": int(part)}
    return {"kind": "answer", "value": name}


def build_video(b: WorldBuilder, sizes: VideoSizes, n_candidates: int) -> dict:
    """Clips, eval rows per task, training records; every item registered in `b` with its metadata."""
    clips = make_clips(b, sizes)
    by_id = {c.id: c for c in clips}
    split = {s: [c for c in clips if c.split == s] for s in ("train", "eval")}
    rows: dict[str, list[dict]] = {}
    records: list[Record] = []
    for task in VIDEO_TASKS:
        for s in ("train", "eval"):
            made, needs = task_rows(task.name, split[s], split[s], b.rng(f"video:{s}:{task.name}"), n_candidates)
            for raw, need in zip(made, needs):
                row = v2_row_from_dict(raw, source=f"video task {task.name}", record=raw["id"])
                b.register(row.query, {"kind": "query", "task": task.name, "need": need})
                for c in row.candidates:
                    b.register(c.item, _candidate_meta(c.name, by_id))
                if s == "train":
                    positive = next(c.item for c in row.candidates if c.name == row.labels[0])
                    records.append(Record(row.query, positive, dataset=task.name, id=raw["id"]))
            if s == "eval":
                rows[task.name] = made
    return {"clips": clips, "rows": rows, "records": records}


def video_task_list() -> list[dict]:
    """The entries of eval_tasks_video.yaml (format mmeb_v2, modality video)."""
    return [{"name": t.name, "format": "mmeb_v2", "path": f"eval/video/{t.name}.jsonl", "modality": "video",
             "meta_task": t.meta_task, "eval_type": t.eval_type, "split": "IND"} for t in VIDEO_TASKS]
