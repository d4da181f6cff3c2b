"""`Embedder`: a vision-language model used as a universal multimodal embedder.

The embedding of an item is the last-layer hidden state at the pooling position, L2-normalised
(SPEC §1.1): the last real token of the rendered prompt (left or right padding alike), or the `<emb>`
token placed as the assistant's answer (Embed-RL / LamRA variant).

    from unime import Embedder
    emb = Embedder.from_pretrained("path/or/hub-id")
    vecs = emb.encode([{"text": "a red circle"}, {"image": "imgs/0001.png"}])
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np

from unime.data.images import ImageLoader
from unime.data.items import Item, item_list
from unime.errors import DataError, ModelError
from unime.models.adapters import FamilyAdapter, Segment, item_segments
from unime.models.checkpoint_role import refuse_other_role
from unime.models.image_budget import adapter_image_loader
from unime.models.loader_keywords import check_loader_keywords
from unime.models.item_format import DEFAULT_ITEM_FORMAT, check_item_format, resolve_item_format
from unime.models.loading import (LoadedModel, grow_embeddings, load_model, refuse_unknown_keywords,
                                  without_log_message)
from unime.models.prompts import EMB_TOKEN, POOLINGS

log = logging.getLogger(__name__)


def padding_shape(item: Item) -> tuple[bool, int]:
    """What decides most of an item's length once rendered: a video, and how many images."""
    return bool(item.video), len(item.images)


def padding_order(items: Sequence[Item], pixels: Sequence[int] | None = None) -> list[int]:
    """Positions of `items` ordered so that items that pad alike stand together: by `padding_shape`, then by
    `pixels` (each item's loaded image and frame pixels, when the caller has them), then by text length.
    Batches cut from this order carry little padding (sentence-transformers' `encode` sorts by length
    likewise). The sort is stable: items with equal keys keep their relative order."""
    size = pixels if pixels is not None else [0] * len(items)
    return sorted(range(len(items)), key=lambda i: (*padding_shape(items[i]), size[i], len(items[i].text)))


def vlm2vec_video_loader(loader: ImageLoader) -> ImageLoader:
    """A copy of `loader` whose video sampling (its frame count, at most `max_frames` saved from a file) takes the
    frames by VLM2Vec's rule; a frame rate (`--video-fps`) is refused: VLM2Vec samples a fixed count."""
    import copy
    import dataclasses

    from unime.data.video import VideoSampling

    sampling = loader.video_sampling or VideoSampling()
    if sampling.num_frames is None:
        raise ModelError("--item-format vlm2vec takes a video's frames as VLM2Vec does, a fixed count "
                         "(--video-frames), not --video-fps")
    out = copy.copy(loader)
    out.video_sampling = dataclasses.replace(sampling, frame_rule="vlm2vec")
    return out


def _check_batch_size(batch_size: Any) -> int:
    """A batch size is an integer >= 1 (0 meant the default, a negative one failed with a bare KeyError)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (or None for the default), got {batch_size!r}")
    return int(batch_size)


def _no_emb_token(model: str | os.PathLike | None = None, option: str = "--model") -> ModelError:
    """The error of pooling 'emb' with a tokenizer without `EMB_TOKEN` (naming `option` `model` if given)."""
    where = f"{option} {str(model)!r}: " if model is not None else ""
    return ModelError(f"{where}pooling 'emb' needs the {EMB_TOKEN} token in the model's tokenizer: make a copy "
                      f"with it by `unime reason add-emb --model MODEL --out DIR` (Python: "
                      "`unime.models.embedder.add_emb_token`)")


def check_emb_pooling(model: str | os.PathLike, option: str = "--model") -> None:
    """Refuse pooling 'emb' for the checkpoint `model` (given as `option`) whose tokenizer has no `EMB_TOKEN`, from
    its tokenizer only: a trainer checks it before it claims its output folder, so that a refused run records
    nothing there (`Embedder` checks it again once loaded). A tokenizer that cannot be read here is left to the
    load (`unime.models.loading.checkpoint_vocabulary`)."""
    from unime.models.loading import checkpoint_vocabulary

    vocab = checkpoint_vocabulary(model)
    if vocab is not None and EMB_TOKEN not in vocab:
        raise _no_emb_token(model, option)


def _named_in_items(err: DataError, items: Sequence[Item]) -> DataError:
    """`err`, tagged with its item by `Embedder._segments_of`, naming that item's position in the `items` given to
    `encode` (`items[1].images[0]`; the first of equal items) — the field alone (`images[0]`) did not say which
    item (QA). The item and the field within it stay on the error (`item`, `item_field`) for a caller that names
    the file and record the item was read from (`unime.data.io.named_where_read`)."""
    from unime.data.io import raw_message
    from unime.data.skips import data_error, reason_of

    item = getattr(err, "item", None)
    at = next((i for i, it in enumerate(items) if it is item), None)
    if at is None or err.source is not None or err.record is not None:
        return err
    named = data_error(reason_of(err), raw_message(err),
                       field=f"items[{at}].{err.field}" if err.field else f"items[{at}]")
    named.item, named.item_field = item, err.field  # type: ignore[attr-defined]
    return named


class NonFiniteEmbedding(ModelError):
    """Embeddings holding NaN or inf (the model's fault, e.g. NaN weights), refused by `refuse_non_finite`: names the
    model, how many of the inputs and the first such input, by its text, or — `where` — by the file and record
    its caller read it from. `item` and `index` (its position in the inputs) let a caller that knows more name it."""

    def __init__(self, model: str, bad: int, total: int, item: Item, index: int, where: str | None = None):
        self.model, self.bad, self.total, self.item, self.index, self.where = model, bad, total, item, index, where
        named = f"item {item.text[:80]!r}" if item.text else \
            f"item of {'images' if item.images else 'video'} {list(item.images or item.video or ())[:2]}"
        super().__init__(f"embedder {model!r} returned NaN or inf for {bad} of {total} inputs (the first: "
                         f"{f'{where}: {named}' if where else named}); its weights may hold NaN or inf")

    def naming(self, item: Item | None = None, where: tuple[str, Any, str | None] | None = None) -> NonFiniteEmbedding:
        """This error naming the first input as `item` (the caller's own, e.g. before its T-CoT was added) and/or
        `where` it was read: (file, record, field) as `unime.data.io.named_where_read` takes them."""
        if where is not None:
            source, record, field = where
            place = f"{source}, record {record}" + (f", field '{field}'" if field else "")
        else:
            place = self.where
        return NonFiniteEmbedding(self.model, self.bad, self.total, self.item if item is None else item, self.index,
                                  place)


def refuse_non_finite(vecs: np.ndarray, items: Sequence[Item], model: str) -> np.ndarray:
    """`vecs` (one row per item of `items`) when every value is finite; a row holding NaN or inf (the model's fault,
    e.g. NaN weights) is a `NonFiniteEmbedding` naming the model, how many inputs and the first such input.
    `Embedder.encode` checks every encoding so (every command's: `unime embed`, search, the embedding cache's
    `RunEncoder` of `index build`, `eval`, `mine`, the reasoned embedder of `reason eval` and GRPO) unless its caller
    opts out (`check_finite=False`: `unime serve`, which answers a NaN with a 500 naming the request's input);
    `RunEncoder` checks the vectors of any other encoder it is given (`eval reference`'s, a Python caller's)."""
    bad = np.flatnonzero(~np.isfinite(vecs).all(axis=1))
    if bad.size:
        raise NonFiniteEmbedding(model, int(bad.size), len(items), items[bad[0]], int(bad[0]))
    return vecs


class Embedder:
    def __init__(self, model, processor, adapter: FamilyAdapter, *, pooling: str = "last",
                 image_loader: ImageLoader | None = None, instruction_suffix: str = "", batch_size: int = 16,
                 device: str = "cpu", name: str = "", origin: dict[str, str | None] | None = None,
                 item_format: str = DEFAULT_ITEM_FORMAT):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model, self.processor, self.adapter = model, processor, adapter
        self.pooling = pooling
        self.item_format = check_item_format(item_format)  # how items become input text (`unime.models.item_format`)
        if item_format == "vlm2vec":
            adapter.check_vlm2vec()
            if pooling == "emb":
                raise ModelError(f"--item-format vlm2vec pools the last token (VLM2Vec's eos pooling); this model "
                                 f"pools at {EMB_TOKEN} (a tokenizer with it): use --item-format chat")
        self.image_loader = adapter_image_loader(adapter, image_loader)
        if item_format == "vlm2vec":  # videos' frames as VLM2Vec takes them (`unime.data.video.vlm2vec_indices`)
            self.image_loader = vlm2vec_video_loader(self.image_loader)
        self.instruction_suffix = instruction_suffix
        self.batch_size = _check_batch_size(batch_size)
        self.device = device
        self.name = name
        self.origin = origin or {}  # the model the weights start from (`LoadedModel.origin`), as a trainer records it
        self._emb_id = None
        self.visual_tokens = 0  # <|image_pad|> / <|video_pad|> tokens seen by build_inputs (a resolution check)
        if pooling == "emb":
            tok = adapter.tokenizer
            emb_id = tok.convert_tokens_to_ids(EMB_TOKEN)
            if emb_id is None or emb_id == tok.unk_token_id:
                raise _no_emb_token()
            self._emb_id = emb_id

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | None = None, dtype=None,
                        pooling: str = "auto", data_root: str | None = None, allow_outside_root: bool = False,
                        adapter_path: str | None = None, trainable: bool = False, video_sampling=None,
                        image_budget=None, item_format: str | None = None, attn_implementation: str | None = None,
                        **kwargs) -> "Embedder":
        """`video_sampling`: a `unime.data.video.VideoSampling` for video items (default: 8 frames).
        `image_budget` (`unime.models.image_budget.ImageBudget`): its set fields override the budget
        recorded with the checkpoint. `item_format` (`unime.models.item_format`): None for the one recorded with
        the checkpoint, else chat. `attn_implementation`: transformers' attention kernel (`load_model`).
        `kwargs`: `Embedder`'s own (`batch_size`, `instruction_suffix`), checked before the weights load."""
        refuse_unknown_keywords(cls, kwargs, ("image_loader", "device", "name", "origin", "item_format"))
        check_loader_keywords("Embedder", dict(
            pooling=pooling, data_root=data_root, allow_outside_root=allow_outside_root, adapter_path=adapter_path,
            trainable=trainable, video_sampling=video_sampling, image_budget=image_budget, item_format=item_format,
            attn_implementation=attn_implementation, **kwargs))
        refuse_other_role("embedder", path, adapter_path)  # a reranker's or judge's folder (QA: loaded silently)
        loaded: LoadedModel = load_model(path, device=device, dtype=dtype, adapter_path=adapter_path,
                                         trainable=trainable, image_budget=image_budget,
                                         attn_implementation=attn_implementation)
        if pooling == "auto":
            tok = loaded.processor.tokenizer
            pooling = "emb" if EMB_TOKEN in tok.get_vocab() else "last"
        loader = loaded.image_budget.image_loader(data_root, allow_outside_root=allow_outside_root,
                                                  video=video_sampling)
        return cls(loaded.model, loaded.processor, loaded.adapter, pooling=pooling, image_loader=loader,
                   device=loaded.device, name=str(path), origin=loaded.origin(),
                   item_format=resolve_item_format(adapter_path or path, item_format), **kwargs)

    # -- input assembly -------------------------------------------------------------------------
    def segments(self, item: Item, *, record=None) -> list[Segment]:
        load = self.image_loader.load
        images = [load(r, record=record, field=f"images[{i}]") for i, r in enumerate(item.images)]
        frames = self.image_loader.load_video(item.video, record=record, field="video") if item.video else []
        segs = item_segments(item.text, images, frames, record=record)
        if self.instruction_suffix:
            segs.append(Segment("text", self.instruction_suffix))
        return segs

    def _segments_of(self, item: Item) -> list[Segment]:
        """`segments`; a `DataError` (media that fails only now: a video is decoded when it is encoded) is tagged
        with its item, so a caller that knows where the item was read names it (`RunEncoder`)."""
        try:
            return self.segments(item)
        except DataError as e:
            e.item = item  # type: ignore[attr-defined]
            raise

    def render(self, segments: Sequence[Segment], item: Item | None = None) -> str:
        """The model's input text of an item: its `segments` in the family's chat template, or with
        `item_format` vlm2vec the `item` written as VLM2Vec writes it (`FamilyAdapter.vlm2vec_text`)."""
        if self.item_format == "vlm2vec":
            if item is None:
                raise ValueError("the vlm2vec item format renders the item, not its segments: pass item=")
            try:
                return self.adapter.vlm2vec_text(item.text + self.instruction_suffix, len(item.images),
                                                 bool(item.video))
            except DataError as e:
                e.item = item  # type: ignore[attr-defined]  # named where it was read (`RunEncoder`)
                raise
        prefix = EMB_TOKEN if self.pooling == "emb" else ""
        return self.adapter.render_user_turn(segments, assistant_prefix=prefix)

    def build_inputs(self, items: Sequence[Item], *, segments: Sequence[Sequence[Segment]] | None = None):
        segs = list(segments) if segments is not None else [self._segments_of(it) for it in items]
        texts = [self.render(s, it) for s, it in zip(segs, items)]
        inputs = self.adapter.processor_inputs(texts, segs, vlm2vec=self.item_format == "vlm2vec")
        self.visual_tokens += self.adapter.count_visual_tokens(inputs["input_ids"])
        return inputs.to(self.device)

    @property
    def image_budget(self):
        return self.adapter.image_budget

    # -- forward --------------------------------------------------------------------------------
    def pool_positions(self, input_ids, attention_mask):
        """Index of the pooling token in each row (padding-side aware)."""
        import torch

        if self._emb_id is not None:
            is_emb = (input_ids == self._emb_id) & attention_mask.bool()
            if not bool(is_emb.any(dim=1).all()):
                raise ValueError(f"a row has no {EMB_TOKEN} token")
            idx = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            return torch.where(is_emb, idx, torch.full_like(idx, -1)).max(dim=1).values
        # last position whose attention mask is 1, whichever side the padding is on
        idx = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
        return torch.where(attention_mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values

    def forward(self, inputs, *, normalize: bool = True):
        """Embeddings (with grad if enabled) for processor inputs: (batch, hidden)."""
        import torch.nn.functional as F

        out = self.adapter.backbone(self.model)(**inputs, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state
        pos = self.pool_positions(inputs["input_ids"], inputs["attention_mask"])
        reps = hidden[range(hidden.shape[0]), pos]
        return F.normalize(reps.float(), dim=-1) if normalize else reps

    def embed(self, items: Sequence[Any]):
        """Forward a batch of items, gradients enabled if the caller enabled them (training)."""
        return self.forward(self.build_inputs(item_list(items)))

    def batch_plan(self, items: Sequence[Any], batch_size: int | None = None) -> list[list[int]]:
        """The batches `encode` runs for `items`, as positions in `items`: each distinct item (first occurrence
        by `Item.key`) once, in `padding_order`, cut every `batch_size`. A batch passed to `encode` alone is run
        as the same batch, so its vectors equal those of the whole call bit for bit (how `unime mine` splits
        its encoding over processes)."""
        items = item_list(items)
        first: dict[str, int] = {}
        for i, it in enumerate(items):
            first.setdefault(it.key, i)
        unique = list(first.values())
        ordered = [unique[j] for j in padding_order([items[i] for i in unique])]
        bs = _check_batch_size(self.batch_size if batch_size is None else batch_size)
        return [ordered[s:s + bs] for s in range(0, len(ordered), bs)]

    def encode(self, items: Iterable[Any], *, batch_size: int | None = None, show_progress: bool = False,
               normalize: bool = True, return_token_counts: bool = False, on_batch=None,
               check_finite: bool = True):
        """float32 array (n, hidden) in the order of `items`. Identical items (same `Item.key`) are encoded once,
        in the batches of `batch_plan`. With `return_token_counts`: (that array, int64 array (n,)) — the tokens the
        model read for each item (its row of the processor's input_ids without padding: the chat template and the
        image/video placeholder tokens included), counted on the encoded batches, not by a second tokenisation.
        `on_batch(n)`, when given, is called after each batch with the number of distinct items it encoded (a
        caller's progress bar). An embedding holding NaN or inf is a `NonFiniteEmbedding` naming the model and the
        first such item (`refuse_non_finite`; a caller that knows where the item was read names it there), unless
        `check_finite` is False: `unime serve` answers it per request, with a 500 naming the request's input."""
        import torch

        items = item_list(items)
        if not items:
            out = np.zeros((0, self.hidden_size), dtype=np.float32)
            return (out, np.zeros(0, dtype=np.int64)) if return_token_counts else out
        plan = self.batch_plan(items, batch_size)
        out = np.zeros((sum(map(len, plan)), self.hidden_size), dtype=np.float32)
        tokens = np.zeros(len(out), dtype=np.int64)
        row: dict[str, int] = {}  # an item's key → its encoding
        batches = plan
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(plan, desc="encode", unit="batch")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                s = 0
                for batch in batches:
                    try:
                        inputs = self.build_inputs([items[i] for i in batch])
                    except DataError as e:
                        raise _named_in_items(e, items) from None
                    reps = self.forward(inputs, normalize=normalize)
                    out[s:s + len(batch)] = reps.float().cpu().numpy()
                    tokens[s:s + len(batch)] = self.adapter.input_token_counts(inputs)
                    row.update((items[i].key, s + j) for j, i in enumerate(batch))
                    s += len(batch)
                    if on_batch is not None:
                        on_batch(len(batch))
        finally:
            self.model.train(was_training)
        rows = [row[it.key] for it in items]
        if check_finite:
            refuse_non_finite(out[rows], items, self.name)
        return (out[rows], tokens[rows]) if return_token_counts else out[rows]

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        text = getattr(cfg, "text_config", cfg)
        return int(text.hidden_size)


def add_emb_token(model, processor) -> int:
    """Add the `<emb>` special token to the tokenizer and give it an embedding row. Returns its id (nothing changes
    when the tokenizer has it already).

    The matrix grows only when the tokenizer outgrows it (`grow_embeddings`): a checkpoint whose matrix is padded
    past its vocabulary keeps its rows, and `<emb>` takes the first unused one, whose weights are arbitrary. Either
    way the `<emb>` row of the input embeddings (and of the output head, when untied) is set to the mean of that
    matrix's rows of the tokenizer's other tokens: what transformers' mean resizing gives a new row, without its
    noise (variance 1e-9 × the rows' covariance) and without the padding rows."""
    tok = processor.tokenizer
    if EMB_TOKEN in tok.get_vocab():
        return tok.convert_tokens_to_ids(EMB_TOKEN)
    tok.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]}, replace_extra_special_tokens=False)
    # transformers' warning that the rows a resize adds are "initialized from a multivariate normal distribution"
    # (input embeddings and output head): of the `<emb>` row it is not true, it is set below, to the mean
    with without_log_message("transformers.modeling_utils", "initialized from a multivariate normal distribution"):
        grew = grow_embeddings(model, tok)
    emb_id = tok.convert_tokens_to_ids(EMB_TOKEN)
    others = sorted(i for t, i in tok.get_vocab().items() if t != EMB_TOKEN)
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    modules = (inputs,) if outputs is None or outputs.weight is inputs.weight else (inputs, outputs)
    for module in modules:
        set_row_to_mean(module.weight, emb_id, others)
    log.info("%s added (token id %d, %s): its row of the input embeddings%s set to the mean of the other %d tokens' "
             "rows", EMB_TOKEN, emb_id, "a new row" if grew else "an unused row of the padded matrix",
             " and of the output head" if len(modules) == 2 else "", len(others))
    return emb_id


def set_row_to_mean(weight, row: int, rows: Sequence[int], *, chunk: int = 8192) -> None:
    """`weight[row]` = the mean of `weight[rows]`, summed in float32 a `chunk` of rows at a time (never a float32
    copy of the whole matrix), stored in `weight`'s dtype."""
    import torch

    with torch.no_grad():
        total = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
        for s in range(0, len(rows), chunk):
            index = torch.tensor(rows[s:s + chunk], dtype=torch.long, device=weight.device)
            total += weight.index_select(0, index).to(torch.float32).sum(0)
        weight[row] = (total / len(rows)).to(weight.dtype)
