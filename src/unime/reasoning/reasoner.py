"""The Reasoner (SPEC §2.1): a generative MLLM that writes a T-CoT for a query or a candidate.

One place for everything a generative checkpoint is asked in Embed-RL:

- the modality-specific reasoning prompts (text / image / video items, query side / target side),
  built by `reasoning_prompt_segments` — the same segments feed `Reasoner.generate`, the cold-start
  SFT (`unime.embed_rl.reasoner_sft`) and the GRPO dataset (`unime.embed_rl.grpo`), so the policy is trained
  on exactly the prompt it is used with;
- batched generation (`Reasoner.generate`, `Reasoner.generate_from_segments`) through the family
  adapter, with no model-specific code;
- the listwise pick used by EG-RL's process reward (`Reasoner.pick`): the judge MLLM is shown the
  query's reasoning and candidate reasonings and answers with the number of the most relevant one.
  The prompt is UniME-V2's listwise reranker prompt (`prompts.LISTWISE_INSTRUCTION`), so a trained
  reranker checkpoint can serve as that judge.

Video items are shown to the reasoner as their frames, each labelled `Frame k:` (k from 1), so the
`key_frames` a T-CoT names are the 1-based numbers the model read in its prompt.
The prompt wording is ours (the paper's prompts are not published verbatim); it asks for the format
of SPEC §2.2 and concise reasoning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from unime.data.images import ImageLoader
from unime.data.items import Item
from unime.data.video import VideoOptions, VideoSampling
from unime.models.adapters import FamilyAdapter, Segment, item_segments
from unime.models.chunk_work import ChunkWork, checked_work, done_lines, work_digests
from unime.models.generation import SAMPLE_TOP_K, ignored_checkpoint_decoding
from unime.models.image_budget import ImageBudget, ImageOptions, adapter_image_loader
from unime.models.loading import DeviceOptions, dtype_option
from unime.options import option
from unime.reasoning.tcot import TCOT_LENGTH_HELP, TCOT_MAX_NEW_TOKENS

# T-CoTs per chunk of `unime reason generate`, the unit of resumption: each chunk's T-CoTs are kept in the work folder
# beside the output (`unime.models.chunk_work`) until it is written, so a killed run loses at most one chunk's
# generation and a re-run of the same command generates only the chunks not done
TCOTS_PER_CHUNK = 256

SIDES = ("query", "target")
MODALITIES = ("text", "image", "video")

TCOT_FORMAT_INSTRUCTION = (
    "Reply exactly in the format <thinking>{JSON}</thinking><rethink>one or two sentences</rethink>"
    "<answer>a few words</answer>."
)

# (modality, side) -> instruction placed after the item in the user turn
REASONING_INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("text", "query"): (
        'Find the words of the query that matter for retrieval and list them in the JSON as '
        '{"text_keywords": [...]}. Then say briefly what the query asks for.'),
    ("text", "target"): (
        'Find the words of the candidate that describe its content and list them in the JSON as '
        '{"text_keywords": [...]}. Then say briefly what the candidate shows.'),
    ("image", "query"): (
        'Mark the regions of the image that the query is about in the JSON as {"bbox_2d": [[x1, y1, x2, y2], ...]} '
        'with coordinates from 0 to 1000, never the whole image; if the query has text, add its important '
        'words as "text_keywords". Then say briefly what the query asks for.'),
    ("image", "target"): (
        'Mark the regions of the image that describe its content in the JSON as {"bbox_2d": [[x1, y1, x2, y2], ...]} '
        'with coordinates from 0 to 1000, never the whole image; if there is text, add its important words as '
        '"text_keywords". Then say briefly what the candidate shows.'),
    ("video", "query"): (
        'The video is given as numbered frames. List the frames that matter for the query in the JSON as '
        '{"key_frames": [...]} using the frame numbers (the first frame is 1). Then say briefly what the query '
        'asks for.'),
    ("video", "target"): (
        'The video is given as numbered frames. List the frames that best describe its content in the JSON as '
        '{"key_frames": [...]} using the frame numbers (the first frame is 1). Then say briefly what the video '
        'shows.'),
}


def item_modality(item: Item) -> str:
    """'video' if the item has frames, else 'image' if it has images, else 'text'."""
    if item.video:
        return "video"
    if item.images:
        return "image"
    return "text"


def reasoning_instruction(modality: str, side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return REASONING_INSTRUCTIONS[(modality, side)] + " " + TCOT_FORMAT_INSTRUCTION


def reasoning_prompt_segments(text: str, images: Sequence[Any], frames: Sequence[Any], side: str, *,
                              record: Any = None) -> list[Segment]:
    """The user turn asking for a T-CoT: the item (frames labelled `Frame k:`, images, text) then the
    modality- and side-specific instruction. `images` / `frames` are loaded PIL images."""
    modality = "video" if frames else "image" if images else "text"
    segs: list[Segment] = []
    for k, frame in enumerate(frames, 1):
        segs.append(Segment("text", f"Frame {k}:"))
        segs.append(Segment("image", frame))
    segs.extend(item_segments(text, list(images), None, record=record, field="text"))
    segs.append(Segment("text", ("Query: " if side == "query" else "Candidate: ") + "see above. "
                        + reasoning_instruction(modality, side)))
    return segs


def conversational_prompt(segments: Sequence[Segment]) -> tuple[list[dict], list[Any]]:
    """TRL's conversational form of a user turn: messages with `{"type": "image"}` placeholders, and the
    images in order (TRL fills the placeholders from the dataset's `images` column)."""
    content: list[dict] = []
    images: list[Any] = []
    for s in segments:
        if s.kind == "text":
            content.append({"type": "text", "text": s.value})
        elif s.kind == "image":
            content.append({"type": "image"})
            images.append(s.value)
        else:
            raise ValueError(f"conversational prompts carry text and images only, got a {s.kind!r} segment")
    return [{"role": "user", "content": content}], images


def pick_prompt_segments(query_reasoning: str, candidate_reasonings: Sequence[str]) -> list[Segment]:
    """The process-reward judge's prompt: UniME-V2's listwise prompt (`rerank_prompts.listwise_prompt`)
    over reasonings — the query's T-CoT, then the candidates' T-CoTs numbered (1)..(n)."""
    from unime.models.rerank_prompts import listwise_prompt

    return listwise_prompt([Segment("text", query_reasoning.strip())],
                           [[Segment("text", c.strip())] for c in candidate_reasonings])


class Reasoner:
    """A generative MLLM wrapped for T-CoT generation and listwise picks."""

    def __init__(self, model, processor, adapter: FamilyAdapter, *, image_loader: ImageLoader | None = None,
                 device: str = "cpu", max_new_tokens: int = TCOT_MAX_NEW_TOKENS, batch_size: int = 8,
                 name: str = ""):
        self.model, self.processor, self.adapter = model, processor, adapter
        self.image_loader = adapter_image_loader(adapter, image_loader)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | None = None, dtype=None,
                        adapter_path: str | None = None, data_root: str | None = None,
                        allow_outside_root: bool = False, image_budget=None, video_sampling=None,
                        attn_implementation: str | None = None, **kwargs) -> "Reasoner":
        """`image_budget` (`unime.models.image_budget.ImageBudget`): its set fields over the checkpoint's recorded
        budget; `video_sampling` (`unime.data.video.VideoSampling`): how video items are sampled (default: 8
        frames)."""
        from unime.models.loading import load_model

        loaded = load_model(path, device=device, dtype=dtype, adapter_path=adapter_path, image_budget=image_budget,
                            attn_implementation=attn_implementation)
        loader = loaded.image_budget.image_loader(data_root, allow_outside_root=allow_outside_root,
                                                  video=video_sampling)
        return cls(loaded.model, loaded.processor, loaded.adapter, image_loader=loader, device=loaded.device,
                   name=str(path), **kwargs)

    # -- prompts ------------------------------------------------------------------------------------
    def load_visuals(self, item: Item, *, record: Any = None) -> tuple[list, list]:
        load = self.image_loader.load
        images = [load(r, record=record, field=f"images[{i}]") for i, r in enumerate(item.images)]
        frames = self.image_loader.load_video(item.video, record=record, field="video") if item.video else []
        return images, frames

    def prompt_segments(self, item: Item, side: str, *, record: Any = None) -> list[Segment]:
        images, frames = self.load_visuals(item, record=record)
        return reasoning_prompt_segments(item.text, images, frames, side, record=record)

    # -- generation ---------------------------------------------------------------------------------
    def generate_from_segments(self, segments_list: Sequence[Sequence[Segment]], *, num_samples: int = 1,
                               do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                               top_k: int = SAMPLE_TOP_K, max_new_tokens: int | None = None,
                               show_progress: bool = False, stop: Callable[[str], bool] | None = None,
                               seed: int | None = None, first_index: int = 0) -> list[list[str]]:
        """Generate `num_samples` completions per user turn (batched, left padding: `generate_texts`; `stop`: its
        per-row stop rule; `seed`, `first_index`: its seeded sampling; the decoding as stated, never the checkpoint's
        generation_config). Returns, per turn, the decoded completions (special tokens removed)."""
        from unime.models.generation import generate_texts

        return generate_texts(self.model, self.adapter, segments_list, device=self.device,
                              max_new_tokens=max_new_tokens or self.max_new_tokens, batch_size=self.batch_size,
                              num_samples=num_samples, do_sample=do_sample, temperature=temperature, top_p=top_p,
                              top_k=top_k, show_progress=show_progress, stop=stop, seed=seed, first_index=first_index)

    def generate(self, items: Sequence[Item], sides: Sequence[str] | str, *, num_samples: int = 1,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = SAMPLE_TOP_K,
                 max_new_tokens: int | None = None, show_progress: bool = False, seed: int | None = None,
                 first_index: int = 0) -> list[list[str]]:
        """T-CoTs for items; `sides` is 'query' / 'target' (one for all, or one per item). With `do_sample`, `seed`
        seeds the draws batch by batch (`unime.models.generation`; `first_index`: the first item's index in the
        whole job, which batches are counted from)."""
        if isinstance(sides, str):
            sides = [sides] * len(items)
        if len(sides) != len(items):
            raise ValueError(f"{len(sides)} sides for {len(items)} items")
        segs = [self.prompt_segments(it, sd, record=i) for i, (it, sd) in enumerate(zip(items, sides))]
        return self.generate_from_segments(segs, num_samples=num_samples, do_sample=do_sample,
                                           temperature=temperature, top_p=top_p, top_k=top_k,
                                           max_new_tokens=max_new_tokens,
                                           show_progress=show_progress, seed=seed, first_index=first_index)

    # -- listwise pick (process reward) ---------------------------------------------------------------
    def pick_raw(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[str]], *,
                 max_new_tokens: int = 8) -> list[str]:
        """The judge's raw answers for listwise picks (greedy), one per query, each ending where its `Ans: (k)`
        is complete (`rewards.pick_answer_done`)."""
        from unime.reasoning.rewards import pick_answer_done

        segs = [pick_prompt_segments(q, c) for q, c in zip(queries, candidate_lists, strict=True)]
        return [o[0] for o in self.generate_from_segments(segs, max_new_tokens=max_new_tokens, stop=pick_answer_done)]

    def pick(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[str]], *,
             max_new_tokens: int = 8) -> list[int | None]:
        """0-based index of the candidate the judge picks for each query, None if its answer is unparsable or
        out of range (parsing: `unime.reasoning.rewards.parse_pick`)."""
        from unime.reasoning.rewards import parse_pick

        raw = self.pick_raw(queries, candidate_lists, max_new_tokens=max_new_tokens)
        return [parse_pick(r, len(c)) for r, c in zip(raw, candidate_lists)]


# -- T-CoT files ---------------------------------------------------------------------------------------
# One JSON object per line: {"record_id", "side": "query"|"target", "item": {text, images, video},
# "tcot": str, "source": str, "video_sampling": {...}}. Written by `unime reason teacher` / `unime reason
# generate`, read by the SFT, the T-CoT-match split and the T-CoT embedder. "video_sampling" (rows of a video item
# only; absent in older files): the sampling the T-CoT's key frames are numbered under (`VideoSampling.numbering`).

@dataclass
class TCoTRow:
    record_id: str
    side: str
    item: Item
    tcot: str
    source: str = ""
    video_sampling: dict | None = None  # `VideoSampling.numbering` the item's frames were shown with (video only)

    def to_dict(self) -> dict:
        d = {"record_id": self.record_id, "side": self.side, "item": self.item.to_dict(), "tcot": self.tcot,
             "source": self.source}
        if self.video_sampling is not None:
            d["video_sampling"] = self.video_sampling
        return d


def numbering_of(item: Item, sampling: VideoSampling | None) -> dict | None:
    """What a T-CoT row of `item` records as its `video_sampling`: the numbering of `sampling` (None: the default
    sampling) for a video item, None for the others (nothing of theirs is numbered)."""
    return (sampling or VideoSampling()).numbering() if item.video else None


def refuse_other_sampling(row: TCoTRow, loader: ImageLoader, *, source: str | None, video=None) -> None:
    """Raise `DataError` naming `source`, the row (its line, record id and side: `tcot_row_label`), the video and both
    samplings when the row's key frames were numbered among other frames of its video than `loader`'s sampling (the
    command's) takes: the same numbers would name other frames. Two samplings that take the same frames of this
    video (8 frames of an 8-frame clip, or 8 per second of it) pass, as do rows without video, without key frames or
    without a recorded sampling (a file written before it was recorded). The frames are those `load_video` samples
    (the clip is decoded, once per sampling: the frame cache keeps the command's own); `video`, the row's clip as
    `loader` sampled it (its `load_video`) when the caller has it, gives the command's frames without a second
    decode."""
    from unime.data.video import load_video, numbering_options
    from unime.errors import DataError
    from unime.reasoning.tcot import TCoTError, parse_tcot

    ours = loader.video_sampling or VideoSampling()
    if not row.item.video or row.video_sampling is None or row.video_sampling == ours.numbering():
        return
    try:
        if not parse_tcot(row.tcot).evidence.key_frames:
            return
    except TCoTError:  # nothing numbered to compare; the T-CoT's readers report it
        return
    where = tcot_row_label(row)  # its line, record id and side (QA: its line alone)
    refs = list(row.item.video)

    def frames(sampling):
        return list(load_video(loader, refs, sampling, source=source, record=where, field="item.video").frame_indices)

    theirs = frames(ours.with_numbering(row.video_sampling))
    mine = list(video.frame_indices) if video is not None else frames(ours)
    if theirs == mine:
        return
    named = repr(refs[0]) if len(refs) == 1 and isinstance(refs[0], str) else f"of {len(refs)} references"
    raise DataError(f"the T-CoT's key frames are numbered among the frames of {numbering_options(row.video_sampling)}"
                    f", this command samples {numbering_options(ours.numbering())}: of video {named} they take frames "
                    f"{theirs}, this command frames {mine}: give it the --video-* options the T-CoT file was written "
                    "with", source=source, record=where, field="video_sampling")


def write_tcot_rows(rows: Iterable[TCoTRow], path: str | os.PathLike) -> int:
    """Write T-CoT rows as JSONL, atomically. Returns the number written."""
    import json

    from unime.data.atomic import atomic_open

    n = 0
    with atomic_open(path) as fh:
        for r in rows:
            fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_tcot_rows(path: str | os.PathLike, *, on_error: str = "raise", skips=None) -> list[TCoTRow]:
    """Read a T-CoT JSONL file; a bad line raises `DataError` naming the file, line and field, or with
    `on_error="skip"` is counted in `skips` (`unime.data.skips.SkipReport`) and left out. Each row
    remembers its line (`unime.data.io.origin_of`) so later checks (its images) name it."""
    from unime.data.io import with_origin
    from unime.data.jsonl import iter_jsonl
    from unime.data.skips import ErrorPolicy, data_error
    from unime.data.validate import TCOT_KEYS_REQUIRED, parse_item, swapped_file_hint
    from unime.data.video import parse_numbering
    from unime.errors import DataError

    src = str(path)
    policy = ErrorPolicy(on_error, skips, src)
    rows: list[TCoTRow] = []
    for n, obj in iter_jsonl(path, on_malformed=policy.handle if on_error == "skip" else None):
        where = f"line {n}"
        try:
            if not isinstance(obj, dict):
                raise data_error("schema", "expected a JSON object", source=src, record=where)
            for key in ("record_id", "side", "item", "tcot"):
                if key not in obj:
                    hint = swapped_file_hint(obj.keys(), TCOT_KEYS_REQUIRED)  # a records file given as T-CoTs
                    raise data_error("schema", f"missing key {key!r}{hint}", source=src, record=where, field=key)
            if obj["side"] not in SIDES:
                raise data_error("schema", f"side must be one of {SIDES}, got {obj['side']!r}", source=src,
                                 record=where, field="side")
            if not isinstance(obj["tcot"], str):
                raise data_error("schema", "tcot must be a string", source=src, record=where, field="tcot")
            item = parse_item(obj["item"], source=src, record=where, field="item")
            numbering = obj.get("video_sampling")
            if numbering is not None:
                try:
                    numbering = parse_numbering(numbering)
                except ValueError as e:
                    raise data_error("schema", str(e), source=src, record=where, field="video_sampling") from None
        except DataError as e:
            policy.handle(e)
            continue
        row = TCoTRow(record_id=str(obj["record_id"]), side=obj["side"], item=item, tcot=obj["tcot"],
                      source=str(obj.get("source", "")), video_sampling=numbering)
        rows.append(with_origin(row, where))
    policy.finish()
    return rows


def tcot_row_label(row: TCoTRow) -> str:
    """How errors name a row of a T-CoT file: its line, record id and side ("line 5 (id a, side query)"), or
    "RECORD_ID/SIDE" for a row not read from a file."""
    from unime.data.io import origin_of

    line = origin_of(row)
    return f"{line} (id {row.record_id}, side {row.side})" if line else f"{row.record_id}/{row.side}"


def parse_tcot_row(row: TCoTRow, *, source: str | None):
    """The T-CoT of a row of the T-CoT file `source`, checked as every command reading the file checks it (`reason
    split`, `reason materialize`, the reasoner SFT): `parse_tcot`, then its boxes (`check_boxes`: none inverted or
    wholly outside the image). A `TCoTError` names the file, the row (`tcot_row_label`) and the field."""
    from unime.reasoning.tcot import check_boxes, parse_tcot

    where = tcot_row_label(row)
    tcot = parse_tcot(row.tcot, source=source, record=where)
    check_boxes(tcot.evidence, source=source, record=where)
    return tcot


def check_tcot_rows(rows: Iterable[TCoTRow], *, source: str | None) -> None:
    """`parse_tcot_row` of every row: the first bad T-CoT of the file stops the command before any work."""
    for row in rows:
        parse_tcot_row(row, source=source)


def tcot_index(rows: Iterable[TCoTRow], *, source: str | None = None) -> dict[tuple[str, str], TCoTRow]:
    """(record_id, side) → row; a duplicate key is an error naming the T-CoT file `source` and both rows
    (`tcot_row_label`: their lines)."""
    from unime.errors import DataError

    out: dict[tuple[str, str], TCoTRow] = {}
    for r in rows:
        key = (r.record_id, r.side)
        if key in out:
            raise DataError(f"two T-CoTs for record {r.record_id!r} side {r.side!r} (the other: "
                            f"{tcot_row_label(out[key])})", source=source, record=tcot_row_label(r), field="side")
        out[key] = r
    return out


@dataclass(kw_only=True)
class GenerateConfig(DeviceOptions, ImageOptions, VideoOptions):
    """Options of `unime reason generate` (`unime.options`)."""

    model: str = option(help="reasoner / teacher checkpoint (HF folder or hub id)")
    records: str = option(help="records (unime JSONL / Parquet / UniME-V2 JSON)")
    data_root: str | None = option(None, "folder image paths are relative to (default: the records' folder)")
    out: str = option(help="output T-CoT JSONL")
    sides: str = option("query,target", "which sides to write (comma-separated: query,target)")
    batch_size: int = option(8, "items per generation batch", at_least=1)
    max_new_tokens: int = option(TCOT_MAX_NEW_TOKENS, TCOT_LENGTH_HELP, at_least=1)
    sample: bool = option(False, "sample (default: greedy). Greedy or sampled, the decoding is these options', never "
                          "the checkpoint's generation_config (an Instruct checkpoint's chat defaults, e.g. "
                          "Qwen2-VL's top_k 1 and repetition_penalty 1.05, are not applied): to sample as the "
                          "checkpoint suggests, give its values to --temperature, --top-p and --top-k")
    temperature: float = option(1.0, "sampling temperature (with --sample; default 1.0, not the checkpoint's)",
                                above=0)  # transformers refuses a temperature <= 0 when it samples
    top_p: float = option(1.0, "nucleus sampling: the smallest set of tokens of probability >= P (with --sample; "
                          "default 1.0: all, not the checkpoint's)", metavar="P", above=0, at_most=1)
    top_k: int = option(SAMPLE_TOP_K, "sample among the K most probable tokens (with --sample; default "
                        "%(default)s, transformers' default; 0: all; not the checkpoint's)", metavar="K", at_least=0)
    seed: int = option(0, "seed of the sampling (default 0; with --sample, greedy ignores it): the same command and "
                       "seed write the same T-CoTs, resumed or not; another seed, others", at_least=0)
    dtype: str = dtype_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.side_list()  # refused as the config is made (QA: a ValueError traceback once the records were read)

    def side_list(self) -> list[str]:
        """The sides of `sides` (comma-separated, blanks ignored); an `OptionError` unless a non-empty subset of
        `SIDES`, each named once."""
        from unime.errors import OptionError

        sides = [s.strip() for s in str(self.sides).split(",") if s.strip()]
        if not sides or any(s not in SIDES for s in sides):
            raise OptionError(self, "{sides} must be a non-empty subset of {all}, got {got}", all=SIDES, got=sides)
        if len(set(sides)) != len(sides):
            raise OptionError(self, "{sides} must name each side once, got {got}", got=sides)
        return sides


def generate_tcots(cfg: GenerateConfig, *, overwrite: bool = False) -> tuple[int, int]:
    """`unime reason generate`: the checkpoint's T-CoTs for the chosen sides of every record, written to
    `cfg.out`, the records' data root recorded beside it (`unime.data.roots.record_data_root`: the rows keep
    the records' image paths). Returns (T-CoTs written, how many of them are in the T-CoT format).

    Before the model loads: a run that finished earlier with the same options and inputs (its work folder's record,
    `unime.models.chunk_work.finished_before`; the output unchanged since) does nothing and says so, unless
    `overwrite` (then it generates again); otherwise the images of the sides to write are opened, a bad one named
    by the records file's line, record id and field (`ImageChecker`, as `reason split` and `materialize` check).
    A re-run of a killed run opens only those of the T-CoTs left to generate: the jobs of its finished chunks
    (`unime.models.chunk_work.done_lines`, by their number) are only looked up, as `unime embed` does."""
    from tqdm.auto import tqdm

    from unime.data.io import ImageChecker, origin_of, read_records
    from unime.data.roots import record_data_root, resolve_data_root
    from unime.errors import DataError
    from unime.models.chunk_work import finished_before
    from unime.models.loading import checkpoint_image_loader
    from unime.reasoning.tcot import format_ok

    records = read_records(cfg.records)
    sides = cfg.side_list()
    data_root = resolve_data_root(cfg.records, cfg.data_root)
    sampling = VideoSampling.from_fields(cfg)
    jobs = [(rec.id or str(i), side, rec.query if side == "query" else rec.positive)
            for i, rec in enumerate(records) for side in sides]
    digests = work_digests(cfg.out)  # a re-run of a killed (or finished) run reads no image again for its key
    loader = checkpoint_image_loader(cfg.model, ImageBudget.from_args(cfg), data_root, video=sampling)
    model_key = generate_model_key(cfg)  # once: a model not on disk is said to be keyed by its name once (QA: twice)
    try:  # what the output depends on, known before the model loads (its generation settings: by its files)
        done_key = generate_work_key(cfg, jobs, loader, digests=digests, model_key=model_key)
    except (OSError, DataError):  # a missing image: the check below names it
        done_key = None
    if finished_before(cfg.out, "reason generate", done_key, overwrite=overwrite, again="generates again"):
        rows = read_tcot_rows(cfg.out)
        return len(rows), sum(format_ok(r.tcot) for r in rows)
    checker = ImageChecker(loader)
    done = done_lines(cfg.out)  # the jobs (by number) of the chunks a killed run finished: their images not opened

    def check(j: int, files_only: bool = False) -> None:
        rec, side = records[j // len(sides)], jobs[j][1]
        field = "query" if side == "query" else "positive"
        checker.check_item(field, getattr(rec, field), source=cfg.records, files_only=files_only,
                           record=origin_of(rec) or rec.id or j // len(sides))

    for j in range(len(jobs)):
        check(j, files_only=j in done)
    reasoner = Reasoner.from_pretrained(cfg.model, device=cfg.device, dtype=cfg.dtype, data_root=data_root,
                                        image_budget=ImageBudget.from_args(cfg), batch_size=cfg.batch_size,
                                        video_sampling=sampling,
                                        max_new_tokens=cfg.max_new_tokens, attn_implementation=cfg.attn_implementation)
    key = generate_work_key(cfg, jobs, reasoner.image_loader, digests=digests, model_key=model_key,
                            ignored_decoding=ignored_checkpoint_decoding(reasoner.model.generation_config))
    # a job of `done` generated after all (the inputs or options changed): its images opened now, before generating
    work, _ = checked_work(list(range(len(jobs))), lambda js: ChunkWork(
        cfg.out, "reason generate", key, rows=len(js), per_chunk=tcots_per_chunk(cfg), digests=digests, lines=js),
        line_of=lambda j: j, unchecked=done, check=check)
    work.open()
    todo = work.todo()
    left = sum(len(jobs[work.span(i)]) for i in todo)
    with tqdm(total=len(jobs), initial=len(jobs) - left, desc="generate", unit="T-CoT") as bar:
        for i in todo:
            part = jobs[work.span(i)]
            outs = reasoner.generate([j[2] for j in part], [j[1] for j in part], do_sample=cfg.sample,
                                     temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                     seed=cfg.seed if cfg.sample else None,
                                     first_index=work.span(i).start)
            work.save(i, np.array([o[0] for o in outs], dtype=str))  # fixed-width unicode: no pickle
            bar.update(len(part))
    sampling = reasoner.image_loader.video_sampling
    rows = [TCoTRow(rid, side, item, str(text), source=f"reasoner:{cfg.model}",
                    video_sampling=numbering_of(item, sampling))
            for (rid, side, item), text in zip(jobs, work.load_all())]
    n = write_tcot_rows(rows, cfg.out)
    # before the run is recorded as finished: a re-run of a finished run does nothing, and would never record it (QA)
    record_data_root(os.path.dirname(os.path.abspath(cfg.out)), data_root, written=[cfg.out])
    work.finish(done_key=done_key)  # the output written: its chunks go, the record of the finished run stays
    return n, sum(format_ok(r.tcot) for r in rows)


def tcots_per_chunk(cfg: GenerateConfig) -> int:
    """The chunk size of `generate_tcots`: `TCOTS_PER_CHUNK`, rounded up to whole batches when sampling, so that its
    batches (the unit of the seeded draws) are those of one uninterrupted pass over the jobs whatever the chunking."""
    if not cfg.sample:
        return TCOTS_PER_CHUNK
    return -(-TCOTS_PER_CHUNK // cfg.batch_size) * cfg.batch_size


def generate_work_key(cfg: GenerateConfig, jobs: list[tuple[str, str, Item]], loader: ImageLoader, *,
                      ignored_decoding: dict[str, Any] | None = None, digests=None,
                      model_key: str | None = None) -> dict[str, Any]:
    """What the T-CoTs of `jobs` depend on, the key of `generate_tcots`' finished chunks: the jobs (record id, side,
    item, in order) and the bytes of their images, the checkpoint by its content, and every other option but where
    the output goes (the batch size and the attention kernel too: a greedy decoding over other padding or another
    kernel may pick other tokens), the seed, --top-p and --top-k only when sampling (and then only when not their
    defaults: the key of a run from before they existed is unchanged). `ignored_decoding`: the checkpoint's
    generation_config settings the decoding does not take (`ignored_checkpoint_decoding`), recorded when there are
    any: chunks decoded under them before they were ignored are not resumed. The image paths are resolved by
    `loader`, the reasoner's, their bytes known from `digests` (the work folder's,
    `unime.models.chunk_work.work_digests`; default: each image read). `model_key`: the checkpoint's
    `generate_model_key`, when the caller has it (default: computed)."""
    import hashlib
    from dataclasses import asdict

    from unime.data.image_digests import ImageDigests, digest_items
    from unime.models.loading import canonical_dtype

    listed = hashlib.sha1()
    for rid, side, item in jobs:
        listed.update(f"{rid}\t{side}\t{item.key}\n".encode())
    options = {k: v for k, v in asdict(cfg).items() if k not in ("out", "records", "data_root", "model")}
    defaults = {"top_p": 1.0, "top_k": SAMPLE_TOP_K}
    for name in ("seed", "top_p", "top_k"):  # greedy ignores them: its key is the one it had before they existed
        if not cfg.sample or options[name] == defaults.get(name, object()):
            del options[name]
    if ignored_decoding:
        options["ignored_checkpoint_decoding"] = ignored_decoding
    return {**options, "dtype": canonical_dtype(cfg.dtype), "jobs": listed.hexdigest(),
            "images": digest_items((j[2] for j in jobs), loader, digests if digests is not None else ImageDigests()),
            "model": model_key if model_key is not None else generate_model_key(cfg)}


def generate_model_key(cfg: GenerateConfig) -> str:
    """The checkpoint's part of `generate_work_key`: its `model_fingerprint` (a model not on disk: by its name, with
    a warning, which `generate_tcots` logs once for its two keys)."""
    from unime.models.embedding_cache import model_fingerprint

    return model_fingerprint(cfg.model, keyed="reason generate's record of its finished chunks and run")
