"""The learnability reference: a small, independent dual encoder trained from scratch on a world's
training records, evaluated by the same runner as every VLM row.

It answers "how much of this world is learnable from its training records at this budget?" without
any of the VLM machinery (no processor, no chat template, no LM backbone), so a VLM row far below it
points at the backbone or the recipe, not at the data.

Model (`ReferenceEncoder`):
- text tower: lower-cased word tokens (``[a-z0-9]+``; image placeholders such as ``<|image_1|>`` are
  dropped) over a vocabulary built from the training records (unknown words share one id) →
  embeddings → one bidirectional GRU layer → masked mean → linear;
- image tower: four conv layers (5x5/2, then 3x3 with 2x2 max pooling) → 4x4 adaptive average pool
  (keeps coarse position) → flatten → linear. Several images: the mean of their vectors. A video (a file,
  decoded and sampled like every other stage does, `unime.data.video`, or a frame list): its frames' vectors in
  time order through a GRU, whose last state is the video's vector (order matters: "moves left" is not
  "moves right"); an item's images and video are averaged as one vector each;
- an item with both image and text: the text conditions the last conv feature map (FiLM: per-channel
  scale and shift), and ``image + text + MLP([image; text])`` is its vector;
- symmetric in-batch InfoNCE with a learned temperature (CLIP's logit scale, clamped at 100); in-batch
  copies of the same positive (same item key: e.g. the answer "red" of several records) and of the same
  query are masked out of each other's denominators, not counted as negatives.

Training (`train_reference`): AdamW, batch 64, shuffled mixed-task batches, seeded; at one thread the
weights are bit-identical for a seed (`weights_hash`). It stops at a wall-clock budget or a step count,
whichever comes first, and logs the in-batch training P@1 (the query's nearest in-batch positive is its
own, or an identical copy), so under- and over-fitting show next to the eval numbers.

Evaluation (`evaluate_reference`): the trained model is an encoder with the interface
`unime.models.embedding_cache.RunEncoder` expects (``encode(items, batch_size=, show_progress=)`` and an
``image_loader`` that the runner points at each task's data root); `unime.eval.runners.run_tasks` scores
it and `unime.eval.report.write_run` writes ``summary.json`` etc. in the layout of ``unime eval``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unime.data.images import ImageLoader
from unime.data.io import read_records
from unime.data.items import Item, Record
from unime.data.roots import resolve_data_root
from unime.errors import DataError
from unime.eval.reference_config import ReferenceConfig, ReferenceRunOptions

log = logging.getLogger(__name__)

REFERENCE_MODEL_NAME = "learnability reference (CNN + GRU dual encoder, InfoNCE, from scratch)"
PAD, UNK = "<pad>", "<unk>"
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<image>|<\|image\|>")
_WORD = re.compile(r"[a-z0-9]+")


# -- text --------------------------------------------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; image placeholders and punctuation are dropped."""
    return _WORD.findall(_PLACEHOLDER.sub(" ", text).lower())


@dataclass
class Vocabulary:
    words: list[str]  # index = id; 0 = PAD, 1 = UNK

    @classmethod
    def build(cls, texts: Sequence[str]) -> "Vocabulary":
        counts = Counter(w for t in texts for w in tokenize(t))
        return cls([PAD, UNK] + sorted(counts, key=lambda w: (-counts[w], w)))

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in tokenize(text)]


def record_texts(records: Sequence[Record]) -> list[str]:
    return [it.text for r in records for it in (r.query, r.positive, *r.negatives)]


# -- model -------------------------------------------------------------------------------------------------

class DualEncoderNet(nn.Module):
    def __init__(self, vocab_size: int, cfg: ReferenceConfig):
        super().__init__()
        c1, c2, c3, c4 = cfg.channels
        self.conv = nn.ModuleList([nn.Conv2d(3, c1, 5, stride=2, padding=2), nn.Conv2d(c1, c2, 3, padding=1),
                                   nn.Conv2d(c2, c3, 3, padding=1), nn.Conv2d(c3, c4, 3, padding=1)])
        self.image_proj = nn.Linear(c4 * 16, cfg.dim)
        self.word_emb = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)
        self.gru = nn.GRU(cfg.word_dim, cfg.word_dim, batch_first=True, bidirectional=True)
        self.text_proj = nn.Linear(2 * cfg.word_dim, cfg.dim)
        self.film = nn.Linear(2 * cfg.word_dim, 2 * c4)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.fuse = nn.Sequential(nn.Linear(2 * cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, cfg.dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        # built last, so the image and text towers start from the same weights as without it
        self.temporal = nn.GRU(cfg.dim, cfg.dim, batch_first=True)

    def text_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(n, L) padded ids, (n,) lengths >= 1 → (n, 2 * word_dim) masked mean of GRU states."""
        packed = nn.utils.rnn.pack_padded_sequence(self.word_emb(ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).float()
        return (out * mask[..., None]).sum(1) / lengths[:, None].float()

    def image_features(self, pixels: torch.Tensor, film: torch.Tensor | None) -> torch.Tensor:
        """(m, 3, S, S) → (m, dim); `film` (m, 2 * c4) conditions the last feature map."""
        h = F.relu(self.conv[0](pixels))
        for conv in self.conv[1:]:
            h = F.relu(conv(F.max_pool2d(h, 2)))
        if film is not None:
            gamma, beta = film.chunk(2, dim=1)
            h = h * (1 + gamma[..., None, None]) + beta[..., None, None]
        return self.image_proj(F.adaptive_avg_pool2d(h, 4).flatten(1))


@dataclass
class Batch:
    """Tensors of n items: texts (for the items that have words) and images (flattened over items)."""
    n: int
    text_rows: torch.Tensor  # item index of each text row
    ids: torch.Tensor
    lengths: torch.Tensor
    image_item: torch.Tensor  # item index of each image row
    pixels: torch.Tensor      # the images' rows, then every video's frames in order
    video_item: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # item of each video
    video_len: tuple[int, ...] = ()  # frames of each video (its rows follow the image rows, video by video)


class ReferenceEncoder:
    """The trained (or training) dual encoder + its vocabulary and image loader.

    ``encode(items)`` → L2-normalised float32 (n, dim), the interface of `RunEncoder`'s embedder; image
    paths resolve against ``image_loader.root`` (the runner points it at each task's data root)."""

    def __init__(self, vocab: Vocabulary, cfg: ReferenceConfig, *, data_root: str | os.PathLike | None = None):
        self.vocab, self.cfg = vocab, cfg
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            self.net = DualEncoderNet(len(vocab), cfg)
        self.image_loader = ImageLoader(data_root)
        self._pixels: dict[tuple[str, Any], torch.Tensor] = {}

    # -- inputs
    def _tensor(self, img) -> torch.Tensor:
        s = self.cfg.image_size
        arr = np.asarray(img.convert("RGB").resize((s, s), resample=2), dtype=np.uint8)  # bilinear
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def pixels(self, ref, *, source=None, record=None, field=None) -> torch.Tensor:
        """One image as a (3, S, S) float tensor in [-1, 1] (memoised per data root and reference)."""
        key = (str(self.image_loader.root), ref if isinstance(ref, (str, bytes)) else id(ref))
        t = self._pixels.get(key)
        if t is None:
            t = self._tensor(self.image_loader.load(ref, source=source, record=record, field=field))
            if isinstance(ref, (str, bytes)):
                self._pixels[key] = t
        return t

    def frames(self, refs: Sequence[Any], *, source=None, record=None, field=None) -> torch.Tensor:
        """A video's sampled frames as (T, 3, S, S) (memoised per data root and references)."""
        from unime.data.video import VideoSampling, load_video

        hashable = all(isinstance(r, (str, bytes)) for r in refs)
        key = (str(self.image_loader.root), "video", tuple(refs) if hashable else id(refs))
        t = self._pixels.get(key)
        if t is None:
            video = load_video(self.image_loader, refs, VideoSampling(num_frames=self.cfg.video_frames),
                               source=source, record=record, field=field)
            t = torch.stack([self._tensor(f) for f in video.frames])
            if hashable:
                self._pixels[key] = t
        return t

    def batch(self, items: Sequence[Item], *, where: Sequence[tuple] | None = None) -> Batch:
        """`where[i]` = (source, record, field) of item i, for error messages."""
        text_rows, seqs, img_item, pix, video_item, clips = [], [], [], [], [], []
        for i, it in enumerate(items):
            ids = self.vocab.ids(it.text)
            if ids:
                text_rows.append(i)
                seqs.append(ids)
            src, rec, fld = where[i] if where is not None else (None, None, None)
            for j, ref in enumerate(it.images):
                pix.append(self.pixels(ref, source=src, record=rec, field=f"{fld + '.' if fld else ''}images[{j}]"))
                img_item.append(i)
            if it.video:
                clips.append(self.frames(it.video, source=src, record=rec, field=f"{fld + '.' if fld else ''}video"))
                video_item.append(i)
            if not ids and not it.images and not it.video:
                raise DataError("item has neither words nor images", source=src, record=rec, field=fld)
        width = max((len(s) for s in seqs), default=1)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
        s = self.cfg.image_size
        rows = pix + [f for clip in clips for f in clip]
        return Batch(len(items), torch.tensor(text_rows, dtype=torch.long), ids,
                     torch.tensor([len(q) for q in seqs], dtype=torch.long),
                     torch.tensor(img_item, dtype=torch.long),
                     torch.stack(rows) if rows else torch.zeros((0, 3, s, s)),
                     torch.tensor(video_item, dtype=torch.long), tuple(len(c) for c in clips))

    # -- forward
    def embed_batch(self, b: Batch) -> torch.Tensor:
        """(n, dim) unnormalised vectors (with grad when enabled)."""
        net, d = self.net, self.cfg.dim
        txt_feat = torch.zeros((b.n, 2 * self.cfg.word_dim))
        has_text = torch.zeros(b.n, dtype=torch.bool)
        if len(b.text_rows):
            txt_feat = txt_feat.index_copy(0, b.text_rows, net.text_features(b.ids, b.lengths))
            has_text[b.text_rows] = True
        txt = net.text_proj(txt_feat)
        has_image = torch.zeros(b.n, dtype=torch.bool)
        img = torch.zeros((b.n, d))
        if len(b.image_item) and not len(b.video_item):
            per_image = net.image_features(b.pixels, net.film(txt_feat[b.image_item]))
            counts = torch.zeros(b.n).index_add_(0, b.image_item, torch.ones(len(b.image_item)))
            img = torch.zeros((b.n, d)).index_add(0, b.image_item, per_image) / counts.clamp(min=1)[:, None]
            has_image[b.image_item] = True
        elif len(b.video_item):
            frame_item = torch.repeat_interleave(b.video_item, torch.tensor(b.video_len))
            per_row = net.image_features(b.pixels, net.film(txt_feat[torch.cat([b.image_item, frame_item])]))
            per_image, per_frame = per_row[:len(b.image_item)], per_row[len(b.image_item):]
            counts = torch.zeros(b.n).index_add_(0, b.image_item, torch.ones(len(b.image_item)))
            images = torch.zeros((b.n, d)).index_add(0, b.image_item, per_image) / counts.clamp(min=1)[:, None]
            seqs = nn.utils.rnn.pad_sequence(list(per_frame.split(list(b.video_len))), batch_first=True)
            packed = nn.utils.rnn.pack_padded_sequence(seqs, torch.tensor(b.video_len), batch_first=True,
                                                       enforce_sorted=False)
            _, last = net.temporal(packed)  # (1, videos, dim): each video's state after its last frame
            videos = torch.zeros((b.n, d)).index_copy(0, b.video_item, last[0])
            has_video = torch.zeros(b.n).index_fill_(0, b.video_item, 1.0)
            parts = ((counts > 0).float() + has_video).clamp(min=1)
            img = (images * (counts > 0).float()[:, None] + videos) / parts[:, None]
            has_image[b.image_item] = True
            has_image[b.video_item] = True
        both = (has_text & has_image)[:, None].float()
        fused = net.fuse(torch.cat([img, txt], dim=1))
        return img * has_image[:, None].float() + txt * has_text[:, None].float() + both * fused

    @torch.no_grad()
    def encode(self, items: Sequence[Item], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        out = []
        with threads(self.cfg.threads):
            self.net.eval()
            for s in range(0, len(items), batch_size):
                v = self.embed_batch(self.batch(items[s:s + batch_size]))
                out.append(F.normalize(v, dim=-1).numpy())
        if not out:
            return np.zeros((0, self.cfg.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def weights_hash(self) -> str:
        h = hashlib.sha256()
        for name, t in sorted(self.net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, folder: str | os.PathLike) -> None:
        from unime.data.atomic import atomic_open, atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "reference.pt") as tmp:
            torch.save(self.net.state_dict(), tmp)
        with atomic_open(folder / "reference.json") as fh:
            json.dump({"config": asdict(self.cfg), "vocabulary": self.vocab.words}, fh)


@contextlib.contextmanager
def threads(n: int | None):
    """Run with `n` torch threads (restored afterwards); None leaves the setting alone."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- loss and training ---------------------------------------------------------------------------------------

def _same_key_mask(keys: Sequence[str]) -> torch.Tensor:
    """(n, n) True where items i != j are the same item (copies must not be each other's negatives)."""
    ids = {}
    k = torch.tensor([ids.setdefault(key, len(ids)) for key in keys])
    return (k[:, None] == k[None, :]) & ~torch.eye(len(keys), dtype=torch.bool)


def info_nce(q: torch.Tensor, p: torch.Tensor, logit_scale: torch.Tensor, q_keys: Sequence[str],
             p_keys: Sequence[str]) -> tuple[torch.Tensor, float]:
    """Symmetric in-batch InfoNCE on L2-normalised vectors; copies of a row's own positive (resp. query)
    are left out of its denominator. Returns (loss, in-batch P@1 of query→positive where a copy of the
    own positive also counts as a hit)."""
    q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    logits = logit_scale.clamp(max=math.log(100.0)).exp() * q @ p.T
    target = torch.arange(len(q))
    q2p = logits.masked_fill(_same_key_mask(p_keys), float("-inf"))
    p2q = logits.T.masked_fill(_same_key_mask(q_keys), float("-inf"))
    loss = (F.cross_entropy(q2p, target) + F.cross_entropy(p2q, target)) / 2
    with torch.no_grad():
        top = logits.argmax(dim=1).tolist()
    hits = sum(p_keys[j] == p_keys[i] for i, j in enumerate(top))
    return loss, hits / len(q)


@dataclass
class TrainLog:
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = ""  # "time" or "steps"
    records: int = 0
    vocabulary: int = 0
    curve: list[dict] = field(default_factory=list)  # every log_every steps: step, loss, train P@1 (running)
    train_p_at_1: float | None = None  # in-batch P@1 over the training records after training (eval mode)
    weights_hash: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _where(records: Sequence[Record], source: str | None, side: str) -> list[tuple]:
    """(source, record, field) of each record's side for messages: the record as its reader named it ("line 7
    (id q3)"), else its id."""
    from unime.data.io import origin_of

    return [(source, origin_of(r) or r.id or None, side) for r in records]


def check_images(encoder: ReferenceEncoder, records: Sequence[Record], source: str | None) -> None:
    """Load (and memoise) every training image up front: a missing or bad image fails before training,
    naming the file, the record and the field."""
    for r in records:
        for side, it in (("query", r.query), ("positive", r.positive)):
            encoder.batch([it], where=_where([r], source, side))


def train_reference(records: Sequence[Record], cfg: ReferenceConfig, *, data_root: str | os.PathLike | None,
                    source: str | None = None, clock: Callable[[], float] = time.perf_counter,
                    ) -> tuple[ReferenceEncoder, TrainLog]:
    """Train on (query, positive) pairs until ``cfg.seconds`` of wall time or ``cfg.max_steps`` steps;
    `clock` is the time source (tests inject one). Hard negatives in the records are not used."""
    if len(records) < 2:
        raise DataError(f"need at least 2 training records, got {len(records)}", source=source)
    vocab = Vocabulary.build(record_texts(records))
    enc = ReferenceEncoder(vocab, cfg, data_root=data_root)
    tlog = TrainLog(records=len(records), vocabulary=len(vocab))
    with threads(cfg.threads):
        check_images(enc, records, source)
        opt = torch.optim.AdamW(enc.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        bs = min(cfg.batch_size, len(records))
        order, pos = rng.permutation(len(records)), 0
        window: list[tuple[float, float]] = []
        start = clock()
        enc.net.train()
        while True:
            if tlog.steps >= cfg.max_steps:
                tlog.stopped_by = "steps"
                break
            if clock() - start >= cfg.seconds:
                tlog.stopped_by = "time"
                break
            if pos + bs > len(order):
                order, pos = rng.permutation(len(records)), 0
            chunk = [records[k] for k in order[pos:pos + bs]]
            pos += bs
            loss, acc = _pair_loss(enc, chunk, source)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tlog.steps += 1
            window.append((loss.item(), acc))
            if tlog.steps % cfg.log_every == 0:
                entry = {"step": tlog.steps, "seconds": round(clock() - start, 2),
                         "loss": float(np.mean([w[0] for w in window])),
                         "train_p@1": float(np.mean([w[1] for w in window]))}
                tlog.curve.append(entry)
                log.info("reference step %d (%.0f s): loss %.3f, in-batch train P@1 %.3f", entry["step"],
                         entry["seconds"], entry["loss"], entry["train_p@1"])
                window = []
        tlog.seconds = round(clock() - start, 3)
        tlog.train_p_at_1 = training_p_at_1(enc, records, source)
    tlog.weights_hash = enc.weights_hash()
    return enc, tlog


def _pair_loss(enc: ReferenceEncoder, chunk: Sequence[Record], source: str | None) -> tuple[torch.Tensor, float]:
    qb = enc.batch([r.query for r in chunk], where=_where(chunk, source, "query"))
    pb = enc.batch([r.positive for r in chunk], where=_where(chunk, source, "positive"))
    return info_nce(enc.embed_batch(qb), enc.embed_batch(pb), enc.net.logit_scale,
                    [r.query.key for r in chunk], [r.positive.key for r in chunk])


@torch.no_grad()
def training_p_at_1(enc: ReferenceEncoder, records: Sequence[Record], source: str | None = None) -> float:
    """In-batch P@1 over all training records (eval mode, no update), in batches of the training batch size
    drawn in a fixed shuffled order (seeded by the config's seed), i.e. mixed-task batches like training's;
    a final batch of one record is left out (nothing to rank against)."""
    enc.net.eval()
    bs = min(enc.cfg.batch_size, len(records))
    order = np.random.default_rng([enc.cfg.seed, 1]).permutation(len(records))
    hits = total = 0.0
    for s in range(0, len(records), bs):
        chunk = [records[k] for k in order[s:s + bs]]
        if len(chunk) < 2:
            continue
        _, acc = _pair_loss(enc, chunk, source)
        hits += acc * len(chunk)
        total += len(chunk)
    enc.net.train()
    return hits / total if total else float("nan")


# -- evaluation through the project's runner --------------------------------------------------------------

def run_reference(opts: ReferenceRunOptions, cfg: ReferenceConfig) -> dict:
    """`unime eval reference`: `evaluate_reference` with the command's options."""
    return evaluate_reference(opts.tasks, opts.records, opts.out, data_root=opts.data_root, cfg=cfg,
                              tasks_root=opts.tasks_root, only=opts.only, ties=opts.ties, on_error=opts.on_error,
                              also=tuple(tuple(pair) for pair in opts.also or ()))


def evaluate_reference(tasks: str, records_path: str, out_dir: str, *, data_root: str | None = None,
                       cfg: ReferenceConfig | None = None, tasks_root: str | None = None,
                       only: list[str] | None = None, ties: str = "pessimistic", on_error: str = "raise",
                       clock: Callable[[], float] = time.perf_counter,
                       also: Sequence[tuple[str, str]] = ()) -> dict:
    """`unime eval reference`: train the reference on `records_path` (images relative to `data_root`, default
    the data root recorded beside the file, else its folder: `unime.data.roots`), evaluate it on `tasks` with
    `run_tasks`, write the result folder (``summary.json`` like ``unime eval``, plus ``training.json`` and the
    weights). A bad eval data row stops the run before training, or under `on_error="skip"` is left out, counted
    and reported (with the tasks left without rows) as `unime eval` does (`unime.eval.runners.skipped_data_meta`).
    Each (tasks, folder) of `also` is evaluated with the same trained reference into its own result
    folder (e.g. a world's video tasks, whose aggregates follow another layout). Returns the summary of `tasks`."""
    from unime.eval import report
    from unime.eval.runners import EvalOptions, load_suite_data, run_tasks, skipped_data_meta
    from unime.eval.tasks import load_task_config
    from unime.models.embedding_cache import RunEncoder

    cfg = cfg or ReferenceConfig()
    t_start = time.perf_counter()
    opts = EvalOptions(ties=ties)
    suites = [(load_task_config(t, root=tasks_root if i == 0 else None, only=only if i == 0 else None), out)
              for i, (t, out) in enumerate([(tasks, out_dir), *also])]
    datas = [load_suite_data(suite, on_error=on_error) for suite, _ in suites]  # bad eval data fails before training
    records = read_records(records_path)
    root = resolve_data_root(records_path, data_root)  # --data-root, else the one recorded beside the file
    t_data = time.perf_counter()
    enc, tlog = train_reference(records, cfg, data_root=root, source=str(records_path), clock=clock)
    t_train = time.perf_counter()
    summaries = []
    for (suite, out), data in zip(suites, datas):
        t_eval = time.perf_counter()
        run = run_tasks(data, RunEncoder(enc, "reference-" + tlog.weights_hash[:16], cache_dir=None, batch_size=64),
                        opts=opts)
        run.timing = {"load_data_seconds": round(t_data - t_start, 3), "train_seconds": round(t_train - t_data, 3),
                      **run.timing,
                      "wall_seconds": round(time.perf_counter() - (t_start if not summaries else t_eval), 3)}
        meta = {"model": REFERENCE_MODEL_NAME, "model_id": "reference-" + tlog.weights_hash[:16],
                "tasks_config": str(suite.source), "ties": ties, **skipped_data_meta(suite, data, on_error),
                "records": str(records_path), "data_root": str(root),
                "device": "cpu", "reference": {"config": asdict(cfg), "training": {
                    k: v for k, v in tlog.to_dict().items() if k != "curve"}}}
        if summaries:
            meta["reference"]["trained_for"] = str(out_dir)  # the weights and training log live there
        summaries.append(report.write_run(out, run, meta=meta))
    report.write_json(Path(out_dir) / "training.json", tlog.to_dict())
    enc.save(out_dir)
    summary = summaries[0]
    overall = summary["aggregates"].get("mmeb", {}).get("scores", {}).get("overall")
    log.info("reference: %d steps in %.0f s (%s), train P@1 %.3f, eval overall P@1 %s", tlog.steps, tlog.seconds,
             tlog.stopped_by, tlog.train_p_at_1, "–" if overall is None else f"{overall:.3f}")
    return summary


# -- chance level and the learning curve ---------------------------------------------------------------

def chance_scores(tasks: str, *, tasks_root: str | None = None, only: list[str] | None = None) -> dict:
    """Expected P@1 of a random ranking (1 / candidates, averaged over a task's queries), aggregated like
    the eval summary (``mmeb_aggregates``: per meta-task, IND, OOD, overall)."""
    from unime.eval.report import mmeb_aggregates
    from unime.eval.runners import load_suite_data
    from unime.eval.tasks import MMEBData, load_task_config

    suite = load_task_config(tasks, root=tasks_root, only=only)
    per_task, info = {}, {}
    for spec, data in load_suite_data(suite):
        if isinstance(data, MMEBData):
            per_task[spec.name] = {"precision@1": float(np.mean([1.0 / len(c) for c in data.candidates]))}
            info[spec.name] = {"format": spec.format, "meta_task": spec.meta_task, "split": spec.split}
    return {"tasks": per_task, "aggregates": mmeb_aggregates(per_task, info)}


def default_scenes_per_record() -> float:
    """Training scenes per training record per task of the default world (240 / 50): keeps a bigger
    world's scene pool as diverse per record as the default one."""
    from unime.data.synth import resolve_sizes

    d = resolve_sizes("default")
    return d.train_scenes / d.train_per_task


def reference_curve(train_per_task: Sequence[int], out_root: str | os.PathLike, *, cfg: ReferenceConfig | None = None,
                    world_seed: int = 0, scenes_per_record: float | None = None,
                    on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """For each size N: generate a world with ``--train-per-task N --train-scenes ceil(N * scenes_per_record)``
    (other sizes default) under ``out_root/world-N`` (reused if it exists), train and evaluate the reference
    under ``out_root/reference-N``; returns one row per size (train records, steps, train P@1, MMEB
    aggregates, chance aggregates, compositional accuracy). Every world's eval split is its own (disjoint
    from its training scenes), so points differ in eval queries as well as in training records."""
    from unime.data.synth import generate_world, resolve_sizes

    cfg = cfg or ReferenceConfig()
    ratio = scenes_per_record or default_scenes_per_record()
    out_root = Path(out_root)
    rows = []
    for n in train_per_task:
        world = out_root / f"world-{n}"
        if not (world / "world.json").is_file():
            sizes = resolve_sizes("default", train_per_task=n, train_scenes=math.ceil(n * ratio))
            generate_world(world, seed=world_seed, sizes=sizes)
        summary = evaluate_reference(str(world), str(world / "train" / "records.jsonl"),
                                     str(out_root / f"reference-{n}"), data_root=str(world), cfg=cfg)
        training = summary["meta"]["reference"]["training"]
        comp = {name: m["accuracy"] for name, m in summary["tasks"].items()
                if summary["task_info"][name]["format"] == "compositional"}
        row = {"train_per_task": n, "train_records": training["records"], "steps": training["steps"],
               "epochs": training["steps"] * cfg.batch_size / training["records"],
               "seconds": training["seconds"], "stopped_by": training["stopped_by"],
               "train_p@1": training["train_p_at_1"], "scores": summary["aggregates"]["mmeb"]["scores"],
               "chance": chance_scores(str(world))["aggregates"]["scores"],
               "tasks": {name: m.get("precision@1") for name, m in summary["tasks"].items()
                         if summary["task_info"][name]["format"] == "mmeb"},
               "compositional": comp}
        rows.append(row)
        if on_point is not None:
            on_point(row)
    return rows


def curve_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table of `reference_curve` rows (x100), chance in brackets."""
    groups = ["classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall"]
    comp = sorted({c for r in rows for c in r["compositional"]})
    header = ["records/task", "records", "steps", "epochs", "train P@1"] + groups + [f"{c} acc" for c in comp]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for r in rows:
        cells = [str(r["train_per_task"]), str(r["train_records"]), str(r["steps"]), f"{r['epochs']:.1f}",
                 f"{100 * r['train_p@1']:.1f}"]
        cells += [f"{100 * r['scores'][g]:.1f} ({100 * r['chance'][g]:.1f})" if g in r["scores"] else "–"
                  for g in groups]
        cells += [f"{100 * r['compositional'][c]:.1f}" if c in r["compositional"] else "–" for c in comp]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
