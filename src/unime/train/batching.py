"""Records → training batches for the embedder: validation, the dataset, the collator, and a
homogeneous batch sampler.

A batch of B records becomes the items [q_1..q_B, c_1,0..c_1,k, ..., c_B,0..c_B,k] (each query's group
is its positive followed by its first k hard negatives). Its distinct items are encoded in chunks: in
`padding_order`, cut at every change of padding shape (text only, n images, video) and every `chunk_size`
items with GradCache, else every `FORWARD_ROWS`; each chunk is turned into model inputs here, in the
data-loader (worker) processes, through the same `Embedder.build_inputs` path that inference uses.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch.utils.data import Dataset, Sampler

from unime.data.io import named_where_read, record_label
from unime.data.items import Item, Record
from unime.data.skips import ErrorPolicy, SkipReport, data_error
from unime.errors import DataError, OptionError
from unime.models.adapters import Segment, item_segments
from unime.models.embedder import padding_order, padding_shape
from unime.options import as_given, on_the_command_line


def check_records(records: Sequence[Record], *, num_negatives: int, needs_scores: bool,
                  source: str | None = None, loss_name: str = "", on_error: str = "raise",
                  skips: SkipReport | None = None, config=None) -> list[Record]:
    """The records that can feed the loss (k negatives; judge scores if the loss needs them). A bad
    record raises `DataError` naming it and the field, or — with `on_error="skip"` — is left out and
    counted in `skips` under the reason "training". `config`: the trainer's config (or its class), whose options
    the hints name as the user gives them (`hard_negatives` from Python, `--hard-negatives` on the command line);
    without one, likewise by where they are shown (`unime.options.as_given`). A record is named as its reader named
    it (`record_label`: its line in the file, with its id; given in memory, `records[i]`)."""
    policy = ErrorPolicy(on_error, skips, source or "training records")
    names = {} if config is not None else {"loss": as_given("--loss", "loss"),
                                           "hard_negatives": as_given("--hard-negatives", "hard_negatives")}
    good = []
    for i, rec in enumerate(records):
        label = record_label(rec, i)
        try:
            rec.validate(source=source)
            if len(rec.negatives) < num_negatives:
                # worded for where it is shown: auto is the command line's default, not Python's (loss="symmetric_kl",
                # hard_negatives=8), whose keywords take values as keyword arguments do
                hint = ("lower {hard_negatives} or re-mine" if rec.negatives else
                        "plain pairs train with in-batch negatives: {loss} auto (the default) or infonce without hard "
                        "negatives ({loss} infonce {hard_negatives} 0)" if on_the_command_line() else
                        "plain pairs train with in-batch negatives: {loss}='auto', or infonce without hard negatives "
                        "({loss}='infonce', {hard_negatives}=0)")
                raise data_error("training", f"{len(rec.negatives)} hard negatives, but training uses "
                                 f"k={num_negatives} per query ({hint})",
                                 source=source, record=label, field="negatives", config=config, **names)
            if needs_scores:
                why = ("the {_loss_name} loss needs judge scores (train with {loss} infonce, or judge the "
                       "records first)")
                if rec.positive_score is None:
                    raise data_error("training", f"no judge score for the positive: {why}", source=source,
                                     record=label, field="positive_score", config=config, _loss_name=loss_name,
                                     **names)
                if num_negatives and (rec.negative_scores is None or len(rec.negative_scores) < num_negatives):
                    raise data_error("training", f"no judge scores for the hard negatives: {why}", source=source,
                                     record=label, field="negative_scores", config=config, _loss_name=loss_name,
                                     **names)
            good.append(rec)
        except DataError as err:
            policy.handle(err)
    policy.finish()
    if not good:
        raise DataError("no usable training records", source=source)
    return good


def item_id(item: Item) -> int:
    """A stable signed int64 identity of an item's content: equal for the same text and the same image
    / frame references (`Item.key`; image paths are compared as given, relative to the one data root of
    a run), in any process — the first 8 bytes of blake2b, not Python's salted `hash`."""
    digest = hashlib.blake2b(item.key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class RecordDataset(Dataset):
    """Indexable records (the collator turns them into model inputs)."""

    def __init__(self, records: Sequence[Record]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Record]:
        return index, self.records[index]


# Items per forward pass without GradCache: enough rows to keep an accelerator busy, few enough that the rows
# of a forward (consecutive in padding order) have similar lengths. On the demo's mined batches (262 distinct
# items, one torch thread) the forward and backward took 0.80x the time of one forward per padding shape.
FORWARD_ROWS = 64


def _pixels(segments: Sequence[Segment]) -> int:
    """Pixels of the loaded images and video frames among an item's segments."""
    frames = [f for seg in segments if seg.kind == "video" for f in seg.value]  # a Video iterates its frames
    return sum(int(f.width) * int(f.height) for f in frames + [s.value for s in segments if s.kind == "image"])


class EmbedderCollator:
    """Turns a list of `(index, Record)` into the trainer's batch:

        {"chunks": [model inputs of ≤ chunk_size (else FORWARD_ROWS) items of one padding shape, ...],
         "num_queries": B, "group_size": 1 + k,
         "item_index": (B + B·(1 + k),) the encoded row (chunks concatenated) of each item in batch order,
         "scores": (B, 1 + k) float tensor of judge scores (only if `with_scores`),
         "candidate_ids": (B, 1 + k) int64 identity of each candidate (`item_id`: equal iff same content),
         "record_indices": (B,) positions of the records in the dataset (diagnostics)}

    The batch's items are the B queries, then each record's positive and first k negatives. With `dedup`
    (the trainer's default) an item whose content (`Item.key`) already stands earlier in the batch is not
    encoded again: the chunks hold each distinct item once and the loss reads `reps[item_index]`. Mined
    negatives repeat across a batch (label texts, popular candidates: about a quarter of the items of the
    demo's mined batches), so this saves that share of the forward and backward passes; the loss and its
    gradients are the same up to float summation order (a duplicate's gradient arrives through the one
    encoding), except that a duplicate shares its encoding's dropout mask.

    The items are encoded in `padding_order`, chunks of one padding shape: a batch mixing short text items
    with image or video items would otherwise pad every row to its longest item (on the demo's mined batches
    the single padded forward held 1.6 tokens per real token). The order changes which rows share a forward,
    not the loss or its gradients (up to float summation order).

    `input_builder` is an `Embedder` used only for input assembly (`build_inputs`); it must produce CPU
    tensors (device "cpu"), the trainer moves them.
    """

    def __init__(self, input_builder, *, num_negatives: int, with_scores: bool, chunk_size: int | None = None,
                 source: str | None = None, dedup: bool = True):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.builder = input_builder
        self.num_negatives = num_negatives
        self.with_scores = with_scores
        self.chunk_size = chunk_size
        self.source = source
        self.dedup = dedup

    def item_segments(self, item: Item, *, record, field: str) -> list[Segment]:
        """Like `Embedder.segments`, with errors naming the source file, record and field."""
        load = self.builder.image_loader.load
        images = [load(r, source=self.source, record=record, field=f"{field}.images[{i}]")
                  for i, r in enumerate(item.images)]
        frames = self.builder.image_loader.load_video(item.video, source=self.source, record=record,
                                                      field=f"{field}.video") if item.video else []
        segs = item_segments(item.text, images, frames, record=record, field=f"{field}.text")
        if self.builder.instruction_suffix:
            segs.append(Segment("text", self.builder.instruction_suffix))
        return segs

    def __call__(self, batch: Sequence[tuple[int, Record]]) -> dict:
        k = self.num_negatives
        # (item, record label, field) in batch order: the queries, then each record's group
        places: list[tuple[Item, str | int, str]] = []
        groups: list[list[Item]] = []
        scores = []
        for index, rec in batch:
            places.append((rec.query, record_label(rec, index), "query"))
            groups.append([rec.positive] + list(rec.negatives[:k]))
            if self.with_scores:
                scores.append([float(rec.positive_score)] + [float(s) for s in (rec.negative_scores or [])[:k]])
        for (index, rec), group in zip(batch, groups):
            label = record_label(rec, index)  # the line it was read from, and its id
            places += [(item, label, "positive" if j == 0 else f"negatives[{j - 1}]") for j, item in enumerate(group)]
        rows: dict[str, int] = {}  # content key -> row among the encoded items
        item_index: list[int] = []
        items: list[Item] = []
        segments: list[list[Segment]] = []
        for item, label, field_name in places:
            key = item.key if self.dedup else str(len(items))
            if key not in rows:
                rows[key] = len(items)
                items.append(item)
                segments.append(self.item_segments(item, record=label, field=field_name))
            item_index.append(rows[key])
        # encoded in padding order: a chunk per padding shape, cut every `chunk_size` (else FORWARD_ROWS) items
        order = padding_order(items, [_pixels(segs) for segs in segments])
        moved_to = {old: new for new, old in enumerate(order)}
        item_index = [moved_to[r] for r in item_index]
        items, segments = [items[i] for i in order], [segments[i] for i in order]
        shapes = [padding_shape(it) for it in items]
        starts = [i for i in range(len(items)) if i == 0 or shapes[i] != shapes[i - 1]] + [len(items)]
        size = self.chunk_size or FORWARD_ROWS
        try:
            chunks = [self.builder.build_inputs(items[s:min(s + size, end)], segments=segments[s:min(s + size, end)])
                      for start, end in zip(starts, starts[1:]) for s in range(start, end, size)]
        except DataError as e:  # an item the item format refuses (`Embedder.render`): named by its record and field
            err = named_where_read(e, [p[0] for p in places], [(self.source, p[1], p[2]) for p in places])
            if err is e:
                raise
            raise err from e
        out = {"chunks": chunks, "num_queries": len(batch), "group_size": 1 + k,
               "candidate_ids": torch.tensor([[item_id(item) for item in group] for group in groups],
                                             dtype=torch.long).reshape(len(batch), 1 + k),
               "record_indices": torch.tensor([index for index, _ in batch], dtype=torch.long)}
        out["item_index"] = torch.tensor(item_index, dtype=torch.long)
        if self.with_scores:
            out["scores"] = torch.tensor(scores, dtype=torch.float32)
        return out


class HomogeneousBatchSampler(Sampler[list[int]]):
    """Batches whose records all come from one dataset (`Record.dataset`).

    Each epoch: shuffle each dataset's records, cut them into batches of `batch_size` (a dataset's
    remainder smaller than `batch_size` is dropped that epoch — the shuffle differs per epoch, so
    different records are dropped), then shuffle the order of all batches. Deterministic in
    (seed, epoch). Under data parallelism the batches are dealt round-robin to the processes (by
    accelerate), so every per-device batch is homogeneous.
    """

    def __init__(self, datasets: Sequence[str], batch_size: int, *, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.drop_last = True  # read by accelerate's BatchSamplerShard
        self.seed = seed
        self.epoch = 0
        self.groups: dict[str, list[int]] = {}
        for i, name in enumerate(datasets):
            self.groups.setdefault(name, []).append(i)
        if len(self) == 0:  # named by the trainer's options (`OptionError`: `--batch-size` on the command line)
            from unime.train.embedder_config import EmbedderTrainingConfig

            sizes = ", ".join(f"{n or '<unnamed>'}: {len(ix)}" for n, ix in self.groups.items())
            raise OptionError(EmbedderTrainingConfig, "{homogeneous_batches} with {batch_size} {size} leaves no full "
                              "batch (records per dataset: {sizes}): lower {batch_size} or drop {homogeneous_batches}",
                              size=batch_size, sizes=sizes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return sum(len(ix) // self.batch_size for ix in self.groups.values())

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches: list[list[int]] = []
        for name in sorted(self.groups):
            ix = self.groups[name]
            order = [ix[j] for j in torch.randperm(len(ix), generator=g).tolist()]
            full = len(order) // self.batch_size * self.batch_size
            batches.extend(order[s:s + self.batch_size] for s in range(0, full, self.batch_size))
        for j in torch.randperm(len(batches), generator=g).tolist():
            yield batches[j]
