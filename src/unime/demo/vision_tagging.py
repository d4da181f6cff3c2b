"""Tagging stage of the embedded default's base (`PretrainRecipe.tag_steps`, before captioning).

A real VLM's vision encoder is pretrained on its own before the language model reads it (Qwen2-VL's ViT
starts from a CLIP-style encoder); the tiny base's tower starts from random weights. Captioning and
contrastive pretraining teach it colour, size and position, but not an object's shape: a linear probe of
the shape of single-object scenes from the merged visual tokens reads 24-31 % on the default base (majority
class 19 %, raw 28x28 pixels 32 %), while the same tower trained directly on shape labels of 4,000 scenes
classifies it at ~80 % (issue #13, docs/DEMO.md). This stage gives the tower that supervision first; after
1,000 steps on all the tags of a 4,000-scene corpus the probe reads shape at 43 % and position at 96 % — and at
23 % / 88 % once the captioning and contrastive stages after it have fine-tuned the whole model.

Rows: every training scene of the pretraining corpus that does not show an excluded scene
(`unime.demo.pretrain.corpus_scenes`), with its tags (`scene_tags`: the background, the object count, and
every value of its objects' shape, colour, size and position). Loss: binary cross-entropy of a linear head
over the mean and the max of the image's merged visual tokens (`get_image_features`: the tokens the language
model receives, so the merger is trained with the tower). The language model gets no gradient and is
written unchanged; the head is dropped. Batches are a seeded permutation per epoch; the model is written in
one rename. The stage checkpoints ten times a run beside it (`STATE_FILE`: weights, head, optimizer, schedule,
RNGs, batch order) and an interrupted stage resumes from its checkpoint, to the weights an uninterrupted run ends
with, as the captioning stage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

METRICS_FILE = "tagging.json"
STATE_FILE = "tagging_state.pt"  # the loop's checkpoint, in `checkpoints_folder(out)`


def scene_tags(scene) -> list[str]:
    """The tags of a generated scene (`unime.data.synth.scenes.Scene`), sorted."""
    tags = {f"background:{scene.background}", f"count:{len(scene.objects)}"}
    for obj in scene.objects:
        tags.update(f"{a}:{obj.attr(a)}" for a in ("shape", "colour", "size", "position"))
    return sorted(tags)


def tag_targets(tag_lists: Sequence[Sequence[str]]):
    """(vocabulary, multi-hot float tensor rows × vocabulary) of the rows' tags; the vocabulary is sorted."""
    import torch

    vocab = sorted({t for tags in tag_lists for t in tags})
    index = {t: i for i, t in enumerate(vocab)}
    y = torch.zeros(len(tag_lists), len(vocab))
    for r, tags in enumerate(tag_lists):
        y[r, [index[t] for t in tags]] = 1.0
    return vocab, y


def pooled_image_features(model, pixel_values, image_grid_thw):
    """Per image, the mean and the max of its merged visual tokens (`get_image_features`), concatenated."""
    import torch

    out = model.get_image_features(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    per_image = getattr(out, "pooler_output", out)  # transformers 5: a model output; earlier: the split tensors
    if isinstance(per_image, torch.Tensor):  # one tensor of all tokens: split by each image's merged grid
        merge = model.config.vision_config.spatial_merge_size
        per_image = torch.split(per_image, (image_grid_thw.prod(-1) // merge ** 2).tolist())
    return torch.stack([torch.cat([x.mean(0), x.amax(0)]) for x in per_image])


def train_tagger(model: str | os.PathLike, corpus_root: str | os.PathLike, rows: list[tuple[str, list[str]]],
                 out: str | os.PathLike, *, steps: int, batch_size: int, lr: float, seed: int, device: str | None,
                 attn_implementation: str | None = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the vision tower (and merger) of `model` on `rows` ((image path relative to `corpus_root`, tags))
    for `steps` steps of `batch_size`; write the model, its processor and `METRICS_FILE` to `out` (one rename).
    Returns the metrics."""
    import numpy as np
    import torch
    from transformers import get_scheduler

    from unime.data.atomic import atomic_dir
    from unime.demo.captioning import checkpoint_steps, checkpoints_folder
    from unime.models.image_budget import adapter_image_loader
    from unime.models.loading import load_model

    if not rows:
        raise ValueError(f"{corpus_root}: no training scene left to tag")
    if steps < 1 or batch_size < 1:
        raise ValueError("the tagging stage needs steps >= 1 and batch_size >= 1")
    torch.manual_seed(seed)
    loaded = load_model(model, device=device, trainable=True, attn_implementation=attn_implementation)
    net, adapter = loaded.model, loaded.adapter
    loader = adapter_image_loader(adapter).under(corpus_root)  # the processor's aspect-ratio limit
    images = [adapter.image_budget.prepare(loader.load(ref, record=str(ref), field="image")) for ref, _ in rows]
    vocab, targets = tag_targets([tags for _, tags in rows])
    dim = pooled_image_features(net, *_pixels(loaded, images[:1])).shape[-1]
    head = torch.nn.Linear(dim, len(vocab)).to(loaded.device)
    params = [p for p in net.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_scheduler("linear", opt, num_warmup_steps=max(steps // 20, 1) if steps > 1 else 0,
                          num_training_steps=steps)
    progress(f"[pretrain] tagging: {steps} steps of {batch_size} on {len(rows)} scenes, {len(vocab)} tags")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    out = Path(out)
    state_file = checkpoints_folder(out) / STATE_FILE
    if state_file.is_file():  # an interrupted stage: on from its last checkpoint, as if never stopped
        order, losses = _load_state(state_file, net, head, opt, sched, rng)
        progress(f"[pretrain] tagging: resuming from {state_file} (step {len(losses)})")
    net.train()
    while len(losses) < steps:
        if len(order) < batch_size:
            order += rng.permutation(len(rows)).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        logits = head(pooled_image_features(net, *_pixels(loaded, [images[i] for i in batch])))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[batch].to(loaded.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % max(steps // 10, 1) == 0:
            progress(f"[pretrain] tagging step {len(losses)}/{steps}: loss {losses[-1]:.4f}")
        if len(losses) % checkpoint_steps(steps) == 0 and len(losses) < steps:
            _save_state(state_file, net, head, opt, sched, rng, order, losses)
    tail = max(len(losses) // 10, 1)
    metrics = {"scenes": len(rows), "tags": len(vocab), "steps": steps, "batch_size": batch_size,
               "first_loss": float(np.mean(losses[:tail])), "last_loss": float(np.mean(losses[-tail:]))}
    with atomic_dir(out, overwrite=out.exists()) as tmp:  # `out` is this stage's own folder in the recipe's work folder
        net.save_pretrained(str(tmp))
        loaded.processor.save_pretrained(str(tmp))
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    shutil.rmtree(checkpoints_folder(out), ignore_errors=True)  # this stage's own, beside its folder
    return metrics


def _save_state(path: Path, net, head, opt, sched, rng, order: list[int], losses: list[float]) -> None:
    """Everything the loop's next step depends on, in one file written atomically (complete or absent): the model's
    and the head's weights, the optimizer and schedule, torch's and the batch order's RNG, the order's rest and the
    losses so far (their count: the step)."""
    import torch

    from unime.data.atomic import atomic_path

    state = {"net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "torch_rng": torch.get_rng_state(), "rng": json.dumps(rng.bit_generator.state), "order": order,
             "losses": losses}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, net, head, opt, sched, rng) -> tuple[list[int], list[float]]:
    """Restore what `_save_state` wrote; returns (order, losses)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["net"], strict=True)
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = json.loads(state["rng"])
    return list(state["order"]), list(state["losses"])


def _pixels(loaded, images: list):
    """The processor's `pixel_values` and `image_grid_thw` for prepared images, on the model's device."""
    px = loaded.processor.image_processor(images=images, return_tensors="pt")
    return px["pixel_values"].to(loaded.device, loaded.dtype), px["image_grid_thw"].to(loaded.device)


def read_metrics(out: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out) / METRICS_FILE).read_text(encoding="utf-8"))
