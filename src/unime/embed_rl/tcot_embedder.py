"""The embedder with T-CoT (Embed-RL, SPEC §2.1): data preparation around the existing embedder trainer,
the T-CoT-match split, and evaluation with reasoning.

Nothing here trains by itself. The contrastive stage is `unime train embedder` (the embedder trainer,
`--loss infonce --symmetric --tau 0.02 --pooling emb`, in-batch negatives) run on *reasoned records*:
records whose query and positive are `reasoned_item`s — the item, its T-CoT and the evidence images
as one plain `Item` — so the trainer needs no T-CoT-specific code and sees exactly the input the RL
reward and the evaluation see.

- `prepare_emb_checkpoint`: add `<emb>` to a checkpoint (tokenizer + resized embeddings) and save it.
- `split_by_tcot_match`: the paper's filtering — a Yes/No judge (`JudgeScorer`) decides whether a
  pair's query and positive T-CoTs match (P(Yes) >= threshold): matching pairs go to contrastive
  training, the rest to RL. Counts are returned (the paper reports ~80 / 20).
- `reasoned_records`: records + T-CoT rows → reasoned records (missing T-CoTs are an error naming the
  record).
- `ReasoningEncoder` / `evaluate_with_reasoning`: the eval harness (`unime.eval.runners.run_tasks` and its
  report) with items encoded *with* T-CoTs written by a reasoner (or with none, the baseline). Only MMEB-format,
  MMEB-V2 (the image tasks, and the video tasks: clip_cls, clip_qa, clip_ret, clip_moment) and qrels tasks (JSONL
  rows or BEIR folders) are evaluated this way: they say which items are queries, and the reasoner's prompt depends
  on the side; retrieval / compositional tasks use an item on both sides.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unime.data.items import Item, Record
from unime.data.video import VideoOptions, VideoSampling
from unime.errors import DataError, OptionError, UsageError
from unime.eval.runners import eval_on_error_option
from unime.models.image_budget import ImageBudget, ImageOptions
from unime.models.loading import DeviceOptions, dtype_option
from unime.options import RangeChecked, option
from unime.reasoning.tcot import TCOT_LENGTH_HELP, TCOT_MAX_NEW_TOKENS

log = logging.getLogger(__name__)


# -- checkpoints ---------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ReasonOptions(DeviceOptions):
    """The options the `unime reason` commands that load a model share."""

    dtype: str = dtype_option()


@dataclass(kw_only=True)
class AddEmbConfig(ReasonOptions, RangeChecked):
    """Options of `unime reason add-emb` (`unime.options`)."""

    model: str = option(help="checkpoint to copy (HF folder, or a PEFT adapter folder: merged first)")
    out: str = option(help="output folder (an ordinary HF folder)")
    device: str | None = option("cpu", "cpu or cuda")
    dtype: str = dtype_option(auto="the checkpoint's own", before="dtype of the copy: ")
    attn_implementation: str | None = option(None, cli=False)  # a copy of the weights runs no attention


def prepare_emb_checkpoint(cfg: AddEmbConfig) -> Path:
    """`unime reason add-emb`: copy a checkpoint (HF folder, or a PEFT adapter folder: merged first) with the
    `<emb>` token added and given an embedding row (`add_emb_token`: the matrix grows only when the tokenizer
    outgrows it), as an ordinary HF folder in the checkpoint's own dtype (`cfg.dtype` auto) or the one named.
    An adapter is merged as a trainer's export merges it (`unime.models.export.merge_in_dtype`: in fp32, then
    rounded to the copy's dtype), and the copy gets the export's unime_merge.json (dtype, size, the share of the
    LoRA update the rounding lost; logged, a warning above `UPDATE_LOSS_WARNING`)."""
    src, out = cfg.model, cfg.out
    from unime.models.embedder import add_emb_token
    from unime.models.export import (MERGE_FILE, checkpoint_config, checkpoint_dtype, merge_in_dtype, merged_summary,
                                     model_folder, save_processor)
    from unime.models.loading import CHECKPOINT_DTYPE, load_model
    from unime.models.run_state import is_peft

    loaded = load_model(src, device=cfg.device, dtype=CHECKPOINT_DTYPE if cfg.dtype == "auto" else cfg.dtype)
    model, lost, summary = loaded.model, None, None
    adapter = is_peft(model)
    if adapter:
        model, lost = merge_in_dtype(model, loaded.dtype)
    add_emb_token(model, loaded.processor)
    if adapter:  # the table of the copy as written, `<emb>`'s row included
        summary = merged_summary(model, loaded.dtype, checkpoint_dtype(checkpoint_config(loaded.base_path)), lost,
                                 folder=str(out), base_choice="--dtype auto",
                                 advice="Write the copy in fp32 instead (--dtype fp32)")
    with model_folder(out) as tmp:
        model.save_pretrained(tmp)
        save_processor(loaded.processor, tmp)
        if summary is not None:
            (tmp / MERGE_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return Path(out)


# -- data ----------------------------------------------------------------------------------------------

def _item_summary(item: Item) -> str:
    """An item as an error names it: its text (cut at 60 characters) and its image / video references."""
    text = item.text if len(item.text) <= 60 else item.text[:57] + "..."
    refs = [(name, [r if isinstance(r, str) else "<inline>" for r in getattr(item, name)])
            for name in ("images", "video")]
    return repr(text) + "".join(f", {name} {r}" for name, r in refs if r)


def joined_tcot(index: dict, rec: Record, i: int, side: str, *, source: str | None,
                tcot_source: str | None = None) -> str:
    """The T-CoT of record `rec` (the `i`-th of the records file `source`; keyed by its id, else `i`) for `side`
    ("query" / "target"), from `index` (`unime.reasoning.reasoner.tcot_index` of the rows of the T-CoT file
    `tcot_source`): the one join of records and T-CoTs (`reason split`, `reason materialize`, the demo's judge records).
    The row must have been written for the record's own item (the T-CoT file records it): a row of another item (a
    T-CoT file of other records, or records reordered or filtered) is refused, naming the record, the T-CoT file's
    line and both items, never joined to the wrong item."""
    from unime.reasoning.reasoner import tcot_row_label

    rid = rec.id or str(i)
    in_file = f" in {tcot_source}" if tcot_source else ""
    row = index.get((rid, side))
    if row is None:
        raise DataError(f"no T-CoT for the {side} side{in_file}", source=source, record=rid, field=side)
    field_name, item = ("query", rec.query) if side == "query" else ("positive", rec.positive)
    if row.item.key != item.key:
        of_file = f" of {tcot_source}" if tcot_source else ""
        raise DataError(f"the T-CoT {tcot_row_label(row)}{of_file} was written for another item "
                        f"({_item_summary(row.item)}) than the record's ({_item_summary(item)}): the T-CoT file "
                        "belongs to other records, or the records were reordered or filtered (a record without an id "
                        "is keyed by its position)", source=source, record=rid, field=field_name)
    return row.tcot


def reasoned_records(records: Sequence[Record], tcot_rows, loader, *, source: str | None = None,
                     left_out: list[str] | None = None, tcot_source: str | None = None) -> list[Record]:
    """Records whose query / positive are `reasoned_item`s (negatives dropped: the T-CoT contrastive stage
    uses in-batch negatives). `tcot_rows=None`: no reasoning, each item with the summary prompt only — the
    input the same embedder sees without T-CoTs (`unime reason eval --tcots none`). `left_out`, when given, gets one
    line per piece of evidence left out (a box too small or too elongated to crop, boxes on an item without an
    image), naming the record and field. `source` / `tcot_source`: the records and T-CoT files, which a failed join
    names (`joined_tcot`)."""
    from unime.reasoning.embed_inputs import reasoned_item
    from unime.reasoning.reasoner import tcot_index

    index = tcot_index(tcot_rows, source=tcot_source) if tcot_rows is not None else None

    def tcot(rec, i, side):
        return None if index is None else joined_tcot(index, rec, i, side, source=source, tcot_source=tcot_source)

    from unime.data.io import origin_of

    out = []
    for i, rec in enumerate(records):
        rid = rec.id or str(i)
        where = origin_of(rec) or rid  # the record's line when it was read from a file
        items = []
        for side, item in (("query", rec.query), ("positive", rec.positive)):
            dropped: list[str] = []
            items.append(reasoned_item(item, tcot(rec, i, "target" if side == "positive" else side), loader,
                                       on_invalid="raise", record=where, source=source, field=side,
                                       left_out=dropped))
            if left_out is not None:
                left_out.extend(f"record {where}, {side}: {d}" for d in dropped)
        out.append(Record(query=items[0], positive=items[1], dataset=rec.dataset, id=rid))
    return out


@dataclass
class TCoTSplit:
    contrastive: list[Record]  # query and positive T-CoTs judged matching
    rl: list[Record]  # the rest
    scores: list[float]  # P(Yes) per input record
    threshold: float
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        n = len(self.contrastive) + len(self.rl)
        return {"pairs": n, "contrastive": len(self.contrastive), "rl": len(self.rl),
                "contrastive_fraction": round(len(self.contrastive) / n, 4) if n else 0.0,
                "threshold": self.threshold, "per_dataset": self.per_dataset}


def tcot_judge_item(item: Item, tcot: str) -> Item:
    """What the match judge sees for one side: the item (images and text) followed by its T-CoT."""
    text = f"{item.text}\n{tcot}" if item.text else tcot
    return Item(text=text, images=item.images, video=item.video)


MATCH_THRESHOLD = 0.5  # the paper's: a pair the judge says matches (P(Yes) >= 0.5) feeds contrastive training


def split_by_tcot_match(records: Sequence[Record], tcot_rows, judge, *, threshold: float | None = None,
                        rl_fraction: float | None = None, source: str | None = None,
                        tcot_source: str | None = None) -> TCoTSplit:
    """The paper's filtering: `judge.score_pairs([(query + its T-CoT, positive + its T-CoT)])` gives P(Yes);
    pairs with P(Yes) >= threshold (None: the paper's `MATCH_THRESHOLD`) feed contrastive training, the rest RL.

    `rl_fraction` (an option beyond the paper, for a judge whose P(Yes) is not calibrated to 0.5): send the
    `round(rl_fraction * n)` lowest-scoring pairs to RL instead (ties broken by record order); the
    reported threshold is then the lowest score kept for contrastive training. Not together with `threshold`."""
    from unime.reasoning.reasoner import tcot_index

    if threshold is not None and rl_fraction is not None:
        raise ValueError(f"threshold {threshold} and rl_fraction {rl_fraction} are two ways to split: give one")
    if threshold is None:
        threshold = MATCH_THRESHOLD
    index = tcot_index(tcot_rows, source=tcot_source)
    pairs = []
    for i, rec in enumerate(records):
        pairs.append((tcot_judge_item(rec.query, joined_tcot(index, rec, i, "query", source=source,
                                                             tcot_source=tcot_source)),
                      tcot_judge_item(rec.positive, joined_tcot(index, rec, i, "target", source=source,
                                                                tcot_source=tcot_source))))
    scores = [float(s) for s in judge.score_pairs(pairs)] if pairs else []
    if rl_fraction is not None:
        if not 0.0 <= rl_fraction <= 1.0:
            raise ValueError(f"rl_fraction must be in [0, 1], got {rl_fraction}")
        k = int(round(rl_fraction * len(scores)))
        order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
        to_rl = set(order[:k])
        keep = [i not in to_rl for i in range(len(scores))]
        threshold = min((scores[i] for i in order[k:]), default=float("inf"))
    else:
        keep = [s >= threshold for s in scores]
        if scores and len(set(keep)) == 1:  # the empty file fails a command later (`train embedder`, GRPO)
            bound = f"lowest {min(scores):.4g}" if keep[0] else f"highest {max(scores):.4g}"
            log.warning("every pair's P(Yes) is on one side of the threshold %s (%s): %s is empty; --rl-fraction F "
                        "sends the lowest-scoring share F of the pairs to RL instead (for a judge whose P(Yes) is not "
                        "calibrated to %s)", threshold, bound, "rl.jsonl" if keep[0] else "contrastive.jsonl",
                        threshold)
    split = TCoTSplit(contrastive=[], rl=[], scores=scores, threshold=threshold)
    for i, (rec, kept) in enumerate(zip(records, keep)):
        # a record without an id keeps its T-CoTs' key (its position in `records`) in the split's files
        (split.contrastive if kept else split.rl).append(rec if rec.id else dataclasses.replace(rec, id=str(i)))
        d = split.per_dataset.setdefault(rec.dataset or "", {"contrastive": 0, "rl": 0})
        d["contrastive" if kept else "rl"] += 1
    return split


# -- the options of the run whose outputs a folder holds (`reason split`, `reason eval`) -----------------------
# They write their outputs at the end of the run, all at once: the options are recorded just before them
# (`OUT/reason_run.json`, with the working directory their relative paths start from), and a re-run with other options
# is refused before any work, naming them by their flags (as `unime mine` and the trainers refuse one), unless
# --overwrite (then the outputs are replaced). A folder of an earlier unime, without the record, is taken as it is.
RUN_OPTIONS_FILE = "reason_run.json"


def _recorded_options(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out_dir) / RUN_OPTIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("options") if isinstance(data, dict) and isinstance(data.get("options"), dict) else None


def refuse_other_options(cfg, *, overwrite: bool) -> None:
    """`ChangedOptions` when `cfg.out_dir` holds the outputs of a run with other options (outside `out_dir`, the
    machine's options, `unime.models.run_state.MACHINE_OPTIONS`, and those the outputs do not depend on,
    `ReasonEvalConfig.inert_options`), unless `overwrite`. Reads only: asked before the work, so that a refused run
    writes nothing."""
    from unime.errors import refuse_changed_options
    from unime.models.run_state import changed_config_options

    before = _recorded_options(cfg.out_dir)
    if before is None:
        return
    now = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    inert = cfg.inert_options() if hasattr(cfg, "inert_options") else ()  # options its outputs do not depend on
    keys = changed_config_options(before, now, ("out_dir", *inert), cfg)
    if keys and not overwrite:
        raise refuse_changed_options(cfg.out_dir, before, now, keys, cfg, out_field="out_dir",  # split: --out-dir
                                     resumes=False)  # nothing to continue: the same options run it again
    if keys:
        log.warning("%s: options changed (%s); --overwrite: replacing the outputs", cfg.out_dir, ", ".join(keys))


def record_options(cfg) -> None:
    """Record the run's options in `cfg.out_dir` (atomic), before the outputs they produced are written."""
    from unime.data.atomic import atomic_open
    from unime.errors import with_working_dir

    os.makedirs(cfg.out_dir, exist_ok=True)
    with atomic_open(Path(cfg.out_dir) / RUN_OPTIONS_FILE) as fh:
        json.dump({"options": with_working_dir(dataclasses.asdict(cfg))}, fh, indent=1, sort_keys=True, default=str)
        fh.write("\n")


# -- evaluation with reasoning ---------------------------------------------------------------------------

@dataclass(kw_only=True)
class SplitConfig(ReasonOptions, ImageOptions, VideoOptions):
    """Options of `unime reason split` (`unime.options`)."""

    records: str = option(help="records (unime JSONL / Parquet / UniME-V2 JSON)")
    tcots: str = option(help="T-CoT JSONL (teacher or generate)")
    judge: str = option(help="Yes/No judge checkpoint (JudgeScorer)")
    data_root: str | None = option(None, "folder image paths are relative to (default: the records' folder)")
    threshold: float | None = option(None, f"match if P(Yes) >= threshold (default {MATCH_THRESHOLD})",
                                     none_means=MATCH_THRESHOLD, exclusive="split_rule", at_least=0, at_most=1)
    rl_fraction: float | None = option(None, "instead of --threshold: the given fraction of lowest-P(Yes) pairs "
                                       "goes to RL (for a judge whose scores are not calibrated around 0.5; the "
                                       "paper reports ~0.2)", exclusive="split_rule", at_least=0, at_most=1)
    out_dir: str = option(help="writes contrastive.jsonl, rl.jsonl, split.json")

    def check(self) -> None:
        """OptionError for both ways to split given (the CLI names them by their flags), before anything is read
        (an option out of its range, NaN or inf too, is refused as the config is made: `unime.options.RangeChecked`)."""
        if self.threshold is not None and self.rl_fraction is not None:  # one from a --config file, say
            raise OptionError(self, "{threshold} and {rl_fraction} are two ways to split: give one")


def split_records_file(cfg: SplitConfig, *, overwrite: bool = False) -> dict:
    """`unime reason split`: `split_by_tcot_match` of the records file with the judge checkpoint; writes
    OUT_DIR/contrastive.jsonl, rl.jsonl and split.json, and records the records' data root and the run's options
    beside them (`unime.data.roots.record_data_root`, `record_options`). A folder holding a split with other options
    is refused unless `overwrite` (`refuse_other_options`). Returns the split's counts."""
    from unime.data.atomic import atomic_open
    from unime.data.io import check_images, origin_of, read_records, with_origin, write_records
    from unime.data.roots import record_data_root, resolve_data_root
    from unime.models.judge import JudgeScorer
    from unime.models.loading import checkpoint_image_loader
    from unime.reasoning.reasoner import check_tcot_rows, read_tcot_rows, refuse_other_sampling

    cfg.check()
    refuse_other_options(cfg, overwrite=overwrite)
    records, out_dir = cfg.records, cfg.out_dir
    recs = read_records(records)  # the records file first, the T-CoTs second (as materialize reads them)
    # the T-CoTs checked as `reason materialize` and the SFT check them: a pair the judge scores is trainable
    tcot_rows = read_tcot_rows(cfg.tcots)
    check_tcot_rows(tcot_rows, source=cfg.tcots)
    data_root = resolve_data_root(records, cfg.data_root)
    sampling = VideoSampling.from_fields(cfg)
    # the judge opens the query and positive images: a bad one is named by this file's line before it loads
    loader = checkpoint_image_loader(cfg.judge, ImageBudget.from_args(cfg), data_root, video=sampling)
    check_images([with_origin(dataclasses.replace(r, negatives=[]), origin_of(r)) for r in recs], loader,
                 source=records)
    from unime.models.loading import loading_as

    with loading_as("--judge"):
        scorer = JudgeScorer.from_pretrained(cfg.judge, device=cfg.device, dtype=cfg.dtype, data_root=data_root,
                                             image_budget=ImageBudget.from_args(cfg), video_sampling=sampling,
                                             attn_implementation=cfg.attn_implementation)
    for row in tcot_rows:  # the judge reads the key frames of a T-CoT beside the frames of this sampling
        refuse_other_sampling(row, loader, source=cfg.tcots)
    split = split_by_tcot_match(recs, tcot_rows, scorer, threshold=cfg.threshold,
                                rl_fraction=cfg.rl_fraction, source=records, tcot_source=cfg.tcots)
    record_options(cfg)
    # the former run's outputs first (a run stopped while writing left its rl.jsonl beside this contrastive.jsonl,
    # QA); split.json, the summary, last
    for name in ("split.json", "rl.jsonl", "contrastive.jsonl"):
        Path(out_dir, name).unlink(missing_ok=True)
    write_records(split.contrastive, os.path.join(out_dir, "contrastive.jsonl"))
    write_records(split.rl, os.path.join(out_dir, "rl.jsonl"))
    record_data_root(out_dir, data_root, written=["contrastive.jsonl", "rl.jsonl"],
                     companions=["split.json", RUN_OPTIONS_FILE])
    with atomic_open(os.path.join(out_dir, "split.json")) as fh:
        json.dump({**split.counts, "scores": split.scores}, fh, indent=1)
    return split.counts


@dataclass(kw_only=True)
class MaterializeConfig(VideoOptions):
    """Options of `unime reason materialize` (`unime.options`)."""

    records: str = option(help="records (unime JSONL / Parquet / UniME-V2 JSON)")
    tcots: str | None = option(None, "T-CoT JSONL (teacher or generate)", exclusive="tcots", exclusive_required=True)
    no_tcots: bool = option(False, "no reasoning: each item with the summary prompt only, the input `unime reason "
                            "eval --tcots none` embeds (the training records of the embedder without T-CoT)",
                            exclusive="tcots")
    data_root: str | None = option(None, "folder image paths are relative to (default: the records' folder)")
    out: str = option(help="output records (.parquet: evidence crops are stored inline)")


def materialize_records_file(cfg: MaterializeConfig, left_out: list[str] | None = None) -> int:
    """`unime reason materialize`: `reasoned_records` of the records file written to `cfg.out`, the records' data
    root recorded beside it (`unime.data.roots.record_data_root`); returns their number. The T-CoT file is checked
    after the records are read, before any image (`unime.reasoning.reasoner.check_tcot_rows`: a T-CoT that does not
    parse, or a box inverted or wholly outside the image, is refused naming its line, record id and side). Evidence
    left out by the crop rules (a box too small or too elongated to crop) is counted: logged, and one line each into
    `left_out` when given. A records file without records writes an empty file with a WARNING naming both inputs (a
    split that sent every pair to RL)."""
    from unime.data.images import ImageLoader
    from unime.data.io import read_records, write_records
    from unime.data.roots import record_data_root, resolve_data_root
    from unime.reasoning.reasoner import check_tcot_rows, read_tcot_rows, refuse_other_sampling

    if (cfg.tcots is None) == (not cfg.no_tcots):
        raise UsageError("give --tcots FILE or --no-tcots", command="reason materialize")
    recs = read_records(cfg.records)
    tcot_rows = None if cfg.no_tcots else read_tcot_rows(cfg.tcots)
    if tcot_rows is not None:
        check_tcot_rows(tcot_rows, source=cfg.tcots)
    data_root = resolve_data_root(cfg.records, cfg.data_root)
    loader = ImageLoader(data_root, video=VideoSampling.from_fields(cfg))  # the frames the key frames number
    for row in tcot_rows or ():  # key frames numbered under another sampling would cut other frames
        refuse_other_sampling(row, loader, source=cfg.tcots)
    dropped: list[str] = []
    out_recs = reasoned_records(recs, tcot_rows, loader, source=cfg.records, left_out=dropped, tcot_source=cfg.tcots)
    n = write_records(out_recs, cfg.out)
    # the items keep their image paths (only the evidence crops are inline): the trainer needs the root
    record_data_root(Path(os.path.abspath(cfg.out)).parent, data_root, written=[cfg.out])
    if not out_recs:  # a record without its T-CoTs is refused: nothing joined only when there was nothing to join
        tcots = "--no-tcots" if tcot_rows is None else f"{len(tcot_rows)} T-CoT rows in {cfg.tcots}"
        log.warning("%s holds no records (%s): %s is written with 0 records, nothing for `unime train embedder` to "
                    "train on; a `reason split` that sent every pair to RL leaves its contrastive.jsonl empty "
                    "(its --rl-fraction F sends the lowest-scoring share F to RL, the rest to contrastive)",
                    cfg.records, tcots, cfg.out)
    if dropped:
        from unime.reasoning.evidence import left_out_line

        log.warning("%s: %s", cfg.records, left_out_line(dropped))
    if left_out is not None:
        left_out.extend(dropped)
    return n


class ReasoningEncoder:
    """`encode(items)` for the eval harness: a T-CoT per item from `tcot_fn(items, sides)` (None = no
    reasoning), then `ReasonedEmbedder.encode`. `query_keys` (Item.key) says which items are queries.
    `image_loader` is shared by the embedder and the reasoner so the harness can point both at a task's
    data root."""

    def __init__(self, embedder, tcot_fn: Callable[[list[Item], list[str]], list[str | None]] | None,
                 query_keys: set[str], *, log_tcots: list | None = None):
        self.embedder = embedder  # ReasonedEmbedder
        self.tcot_fn = tcot_fn
        self.query_keys = query_keys
        self.log_tcots = log_tcots

    @property
    def image_loader(self):
        return self.embedder.embedder.image_loader

    def encode(self, items: Sequence[Item], *, batch_size: int | None = None, show_progress: bool = False):
        items = list(items)
        sides = ["query" if it.key in self.query_keys else "target" for it in items]
        tcots = self.tcot_fn(items, sides) if self.tcot_fn is not None else [None] * len(items)
        if self.log_tcots is not None:
            self.log_tcots.extend({"item": it.text[:200], "side": sd, "tcot": t}
                                  for it, sd, t in zip(items, sides, tcots))
        return self.embedder.encode(items, tcots, batch_size=batch_size, show_progress=show_progress)


def reasoner_tcot_fn(reasoner, *, max_new_tokens: int | None = None, show_progress: bool = False):
    """One greedy T-CoT per item (what `reason eval` records as its `generation`)."""
    def fn(items, sides):
        return [o[0] for o in reasoner.generate(items, sides, num_samples=1, do_sample=False,
                                                max_new_tokens=max_new_tokens, show_progress=show_progress)]
    return fn


def reasoner_eval_generation(reasoner, *, max_new_tokens: int | None, batch_size: int) -> dict[str, Any]:
    """How `reasoner_tcot_fn` decodes, as `reason eval` records it in summary.json's `meta.generation`: one greedy
    T-CoT per item with every setting of the decoding stated (`decoding_kwargs`: no repetition penalty, ...), and the
    reasoner checkpoint's generation_config settings it ignores (its chat defaults, `ignored_checkpoint_decoding`)
    when there are any, as `reason generate` records them in its chunks' key."""
    from unime.models.generation import decoding_kwargs, ignored_checkpoint_decoding

    out = {"max_new_tokens": max_new_tokens, **decoding_kwargs(do_sample=False), "num_samples": 1,
           "batch_size": batch_size}
    ignored = ignored_checkpoint_decoding(reasoner.model.generation_config)
    if ignored:
        out["ignored_checkpoint_decoding"] = ignored
    return out


def teacher_tcot_fn(teacher):
    """Oracle T-CoTs from the demo world's annotation teacher — reads ground truth: an upper bound only."""
    def fn(items, sides):
        return [teacher.tcot(it, sd) for it, sd in zip(items, sides)]
    return fn


@dataclass(kw_only=True)
class ReasonEvalConfig(ReasonOptions, ImageOptions, VideoOptions):
    """Options of `unime reason eval` (`unime.options`)."""

    embedder_path: str = option(help="the <emb> embedder checkpoint", dest="embedder")
    tasks: str = option(help="task config (e.g. WORLD/eval_tasks.yaml)")
    out_dir: str = option(help="output folder (the eval report and tcots.jsonl)", dest="out")
    tcots: str = option("reasoner", "reasoner (generated), none (baseline: no reasoning), teacher (demo-world oracle "
                        "that reads the answers; reference only)", choices=["reasoner", "none", "teacher"])
    reasoner_path: str | None = option(None, "reasoner checkpoint, for --tcots reasoner", dest="reasoner")
    world_root: str | None = option(None, "the world, for --tcots teacher", dest="world")
    only: str | None = option(None, "comma-separated task names")
    on_error: str = eval_on_error_option()  # `unime eval`'s: the same policy and report
    batch_size: int = option(16, "items per batch (embedder and reasoner)", at_least=1)
    max_new_tokens: int = option(TCOT_MAX_NEW_TOKENS, TCOT_LENGTH_HELP, at_least=1)

    def task_names(self) -> list[str] | None:
        return [t.strip() for t in self.only.split(",")] if self.only else None

    def inert_options(self) -> tuple[str, ...]:
        """The options this run's outputs do not depend on (`refuse_other_options` leaves them out of the
        comparison): --max-new-tokens bounds the reasoner's T-CoTs (read, and recorded in the report, only under
        --tcots reasoner), --world is the teacher's (read only under --tcots teacher)."""
        return (*(() if self.tcots == "reasoner" else ("max_new_tokens",)),
                *(() if self.tcots == "teacher" else ("world_root",)))

    def check(self) -> None:
        """OptionError for options that do not fit together or out of their range, NaN or inf included (the CLI
        names them by their flags), before anything loads (out of range: as the config is made, `RangeChecked`)."""
        if self.tcots not in ("reasoner", "none", "teacher"):
            raise OptionError(self, "{tcots} must be 'reasoner', 'none' or 'teacher', got {got!r}", got=self.tcots)
        if self.tcots == "reasoner" and not self.reasoner_path:
            raise OptionError(self, "{tcots} reasoner needs {reasoner_path} (the reasoner checkpoint that writes the "
                              "T-CoTs)")
        if self.tcots == "teacher" and not self.world_root:
            raise OptionError(self, "{tcots} teacher needs {world_root} (the demo world the annotation teacher reads)")


# the task formats whose data say which items are queries (`MMEBData` / `QrelsData.query`; qrels JSONL rows and BEIR
# folders are read by `unime.eval.tasks.read_qrels_task`, as `unime eval` reads them): the reasoner's prompt depends
# on the side
REASONING_FORMATS = ("mmeb", "mmeb_v2", "qrels")


def reasoning_task_suite(cfg: ReasonEvalConfig):
    """The MMEB-format, MMEB-V2 and qrels tasks (`REASONING_FORMATS`) of `cfg.tasks` (and `--only`), loaded as
    `unime eval` loads them, and the names of the others; an OptionError naming the formats `reason eval` supports
    when there is none."""
    from unime.eval.tasks import load_task_config

    suite = load_task_config(cfg.tasks, only=cfg.task_names())
    skipped = [t.name for t in suite.tasks if t.format not in REASONING_FORMATS]
    formats = sorted({t.format for t in suite.tasks})
    suite.tasks = [t for t in suite.tasks if t.format in REASONING_FORMATS]
    if not suite.tasks:
        raise OptionError(cfg, "{tasks} {path}: no task of format mmeb, mmeb_v2 or qrels, the formats `reason eval` "
                          "evaluates (these tasks: {formats}; retrieval / compositional tasks are not supported: "
                          "their items are on both sides)", path=cfg.tasks, formats=", ".join(formats))
    return suite, skipped


def reasoning_query_keys(data) -> set[str]:
    """The keys (`Item.key`) of the query items of the loaded tasks (`load_suite_data`), which `ReasoningEncoder`
    embeds as queries and every other item as a target; a DataError naming the task, and the file, record and field
    when the reader recorded them, for a candidate that is also a query (of any task): each item is embedded once,
    with one side's T-CoT."""
    query_task: dict[str, str] = {}  # an item's key -> the first task asking with it
    for spec, d in data:
        for q in d.query:
            query_task.setdefault(d.table.items[int(q)].key, spec.name)
    for spec, d in data:
        for cands in d.candidates:
            for c in cands:
                item = d.table.items[int(c)]
                if item.key in query_task:
                    source, record, fname = d.table.origins[int(c)] or (str(spec.path), None, None)
                    other = query_task[item.key]
                    of, separately = ("", "") if other == spec.name else (
                        f" of task {other!r}", "; evaluate the two tasks in separate runs, each with its --out "
                        f"(--only {spec.name}, --only {other})")
                    raise DataError(f"task {spec.name!r}: a candidate is also a query{of} ({_item_words(item)}); "
                                    "`reason eval` embeds each item once, as a query or a target, with that side's "
                                    f"T-CoT{separately}", source=source, record=record, field=fname)
    return set(query_task)


def _item_words(item) -> str:
    """An item as a message names it: its text (60 characters), else its video or first image ("video
    'clips/a.mp4'"; QA: a video candidate was named by its empty text, '')."""
    if item.text:
        return repr(item.text[:60])
    for kind, refs in (("video", item.video), ("image", item.images)):
        if refs:
            return f"{kind} '{refs[0]}'" if isinstance(refs[0], str) else f"an inline {kind}"
    return "an empty item"


def evaluate_with_reasoning(cfg: ReasonEvalConfig, *, show_progress: bool = True, overwrite: bool = False) -> dict:
    """Evaluate an `<emb>` embedder on the MMEB-format, MMEB-V2 and qrels tasks of a task config (videos sampled by the
    `--video-*` options, as `unime eval` samples them), items embedded with T-CoTs
    from `tcots` = "reasoner" (generated by `reasoner_path`, greedy), "none" (no reasoning: the baseline) or
    "teacher" (the demo world's annotation teacher — an oracle that reads the answers, for reference only).
    A bad data row stops the run before the models load, or under `on_error="skip"` is left out, counted and
    reported (with the tasks left without rows) as `unime eval` does (`unime.eval.runners.skipped_data_meta`).
    Writes the harness's report (summary.json, results.md, per_task.png; the reasoner's generation settings in its
    `meta.generation`) plus tcots.jsonl, and the run's options (`record_options`); a folder holding an evaluation with
    other options is refused unless `overwrite` (`refuse_other_options`). Returns the summary."""
    import time

    from unime.data.atomic import atomic_open
    from unime.eval import report
    from unime.eval.runners import EvalOptions, load_suite_data, run_tasks, skipped_data_meta
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import RunEncoder
    from unime.models.loading import checkpoint_image_loader
    from unime.reasoning.embed_inputs import ReasonedEmbedder

    embedder_path, out_dir, tcots, reasoner_path = cfg.embedder_path, cfg.out_dir, cfg.tcots, cfg.reasoner_path
    device, dtype, batch_size = cfg.device, cfg.dtype, cfg.batch_size
    cfg.check()
    refuse_other_options(cfg, overwrite=overwrite)
    t0 = time.perf_counter()
    suite, skipped = reasoning_task_suite(cfg)
    sampling = VideoSampling.from_fields(cfg)
    budget = ImageBudget.from_args(cfg)  # explicit resolution options, over each checkpoint's recorded setting
    # the embedder's and the reasoner's: the same frames of each clip, images within both processors' limits
    loader = checkpoint_image_loader([embedder_path, *([reasoner_path] if tcots == "reasoner" else [])], budget,
                                     video=sampling)
    # bad data fails here (or, under --on-error skip, is left out and counted), before the models load
    data = load_suite_data(suite, on_error=cfg.on_error, image_loader=loader)
    query_keys = reasoning_query_keys(data)
    from unime.models.loading import loading_as

    with loading_as("--embedder"):
        emb = Embedder.from_pretrained(embedder_path, device=device, dtype=dtype, pooling="emb",
                                       batch_size=batch_size, image_budget=budget, video_sampling=sampling,
                                       attn_implementation=cfg.attn_implementation)
    emb.image_loader = loader
    remb = ReasonedEmbedder(emb)
    fn, generation = None, None
    if tcots == "reasoner":
        from unime.reasoning.reasoner import Reasoner

        with loading_as("--reasoner"):
            reasoner = Reasoner.from_pretrained(reasoner_path, device=device, dtype=dtype, batch_size=batch_size,
                                                image_budget=budget, attn_implementation=cfg.attn_implementation)
        reasoner.image_loader = loader
        fn = reasoner_tcot_fn(reasoner, max_new_tokens=cfg.max_new_tokens, show_progress=show_progress)
        generation = reasoner_eval_generation(reasoner, max_new_tokens=cfg.max_new_tokens, batch_size=batch_size)
    elif tcots == "teacher":
        from unime.reasoning.teacher import AnnotationTeacher

        fn = teacher_tcot_fn(AnnotationTeacher(cfg.world_root, video_sampling=sampling))
    written: list = []
    encoder = RunEncoder(ReasoningEncoder(remb, fn, query_keys, log_tcots=written), f"tcot-{tcots}", cache_dir=None,
                         batch_size=batch_size, show_progress=show_progress)
    run = run_tasks(data, encoder, opts=EvalOptions(), show_progress=show_progress)
    if remb.left_out:  # the evidence of the T-CoTs the crop rules left out, counted as `reason materialize` does
        from unime.reasoning.evidence import left_out_line

        log.warning("%s: %s", cfg.tasks, left_out_line(remb.left_out))
    run.timing["wall_seconds"] = round(time.perf_counter() - t0, 3)
    meta = {"model": f"{embedder_path} + T-CoT ({tcots}{': ' + str(reasoner_path) if reasoner_path else ''})",
            "embedder": str(embedder_path), "tcots": tcots, "reasoner": reasoner_path,
            "tasks_config": str(suite.source), **skipped_data_meta(suite, data, cfg.on_error),
            "skipped_tasks_other_formats": skipped, "device": emb.device,
            "video_sampling": dataclasses.asdict(sampling) if sampling is not None else None,
            "image_budget": emb.image_budget.to_dict(), "visual_tokens_encoded": emb.visual_tokens,
            "generation": generation,  # how the reasoner wrote the T-CoTs (`reasoner_eval_generation`)
            "evidence_left_out": {"total": len(remb.left_out), "examples": remb.left_out[:3]}}
    record_options(cfg)
    # summary.json, the finished run's summary, last: a run stopped while it writes leaves none beside T-CoTs of
    # another run (the former run's is removed first: a re-run writes every output again)
    (Path(out_dir) / "summary.json").unlink(missing_ok=True)
    with atomic_open(Path(out_dir) / "tcots.jsonl") as fh:
        for row in written:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    format_rate = None
    if written and tcots == "reasoner":
        from unime.models.export import write_json_atomic
        from unime.reasoning.tcot import format_ok

        format_rate = float(np.mean([format_ok(r["tcot"] or "") for r in written]))
        write_json_atomic(Path(out_dir) / "tcot_format.json", {"format_rate": format_rate, "n": len(written)})
    summary = report.write_run(out_dir, run, meta=meta)
    if format_rate is not None:
        summary["tcot_format_rate"] = format_rate
    return summary
