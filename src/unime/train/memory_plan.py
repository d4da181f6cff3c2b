"""`unime plan` (`unime.train.memory_plan`): memory per device and tokens per step of a run, before launching it.

Model sizes are exact: the real `*ForConditionalGeneration` is built on the meta device from the
checkpoint's configuration (a known release's shapes, `unime.models.known_checkpoints`, or a local
folder's config.json) and LoRA is applied with the training code's own `apply_lora`, so parameter and
trainable counts are counted, not estimated. Activation memory follows from what autograd keeps per
token and decoder layer (measured on the tiny models with saved-tensor hooks, element counts per token
and layer, B = bytes of the activation dtype):

    B · (4·I + 5·h + 3·H·d + s + r·n_lora + H)     [+ (6h + I)·(B + 1) with LoRA dropout > 0]
    [+ 2·h·4 under bf16 autocast: RMSNorm upcasts]   [+ B · 2·Σout with DoRA]

(I = MLP width, h = hidden, H·d = query heads × head dim: with padding, grouped K/V are expanded to
every head and the additive mask (s = padded sequence length) is kept; an unpadded batch keeps
H·d + 2·K·d + 0 instead; r·n_lora = LoRA rank × adapted linears; Σout = the output features of a layer's
adapted linears: PEFT's DoRA keeps each one's base output and LoRA output for the magnitude's gradient).
What is not modelled: the CUDA context and allocator fragmentation (~1-3 GiB per device: a plan fits a device
only with `CUDA_CONTEXT_RESERVE_GIB` = 2 GiB left over), the frozen vision tower's forward transients. DoRA's
weight-norm transient (one adapted linear's weight-sized products at a time) is a row of its own
(`dora_weight_norm_bytes`). `bench/gpu_smoke.sh` prints the
plan next to `torch.cuda.max_memory_allocated` of the same step on a GPU; a test holds the plan within
20 % of the measured tensors of a tiny model's training step on CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unime.models.lora import DEFAULT_LORA_TARGETS, EMBEDDER_LORA, GENERATIVE_LORA
from unime.errors import UsageError
from unime.models.image_budget import ImageBudget
from unime.options import RangeChecked, option
from unime.train.embedder_config import MAX_AUTO_HARD_NEGATIVES

GiB = 1024 ** 3
# per device, left free for what the plan does not model: the CUDA context and allocator fragmentation
CUDA_CONTEXT_RESERVE_GIB = 2
# an evidence crop (a T-CoT box cut from its item's image) is planned as a region of half the side of the photo
# an image is planned as (`visual_tokens_per_image`'s source_size), under the same image bounds
EVIDENCE_CROP_SIZE = (640, 360)
# where the embedder's K is left to the records, the plan takes the most they can give it
K_UNSET_NOTE = f"; K left to the records, planned at their most, {MAX_AUTO_HARD_NEGATIVES}"
# a judge prompt's tokens besides its items: the instructions and the chat template, and after a Yes/No judge's
# candidate the prompt's end and the assistant's opening
JUDGE_PROMPT_TOKENS = 80
JUDGE_END_TOKENS = 8


@dataclass
class ModelShapes:
    name: str
    family: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    params_total: int
    params_vision: int
    patch_factor: int          # pixels per merged visual token along a side (patch × merge)
    min_pixels: int
    max_pixels: int
    config: Any = field(repr=False, default=None)
    images: ImageBudget = ImageBudget()    # recorded with the checkpoint (`unime_images.json`), as loading reads it
    adapter: "AdapterFacts | None" = None  # --model a PEFT adapter: planned on its base (`model_shapes`)
    vocab: int = 0                         # the language-model head's outputs (logits per token)

    def lora_trainable(self, r: int, targets: tuple[str, ...], vision: bool = False, dora: bool = False) -> int:
        """Trainable parameters of the training code's LoRA on this architecture (counted on meta)."""
        import torch

        from unime.models.known_checkpoints import meta_model
        from unime.models.lora import LoraSettings, apply_lora

        with torch.device("meta"):
            model = apply_lora(meta_model(self.config), LoraSettings(r=r, alpha=2 * r, dropout=0.0,
                                                                     targets=tuple(targets), dora=dora, vision=vision))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class AdapterFacts:
    """A PEFT adapter given as --model, which training continues with its own LoRA settings
    (`unime.models.lora.model_to_train`): its rank, and counted from its weights file its trainable parameters,
    its adapted linears per decoder layer and whether it adapts the vision tower."""
    path: str
    base: str
    r: int
    trainable: int
    per_layer: int
    vision: bool
    dora: bool = False
    outputs_per_layer: int = 0  # output features of a decoder layer's adapted linears (its lora_B rows)

    @classmethod
    def read(cls, folder: Path, name: str | None = None) -> "AdapterFacts":
        """The facts of the adapter in `folder`, named `name` (default: the folder; a hub adapter: its id)."""
        from safetensors import safe_open

        from unime.errors import ModelError

        name = name or str(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{name} is a PEFT adapter without its adapter_model.safetensors")
        with safe_open(str(weights), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        first_layer = [k for k in shapes if ".language_model.layers.0." in k and ".lora_A" in k]
        outputs = sum(v[0] for k, v in shapes.items() if ".language_model.layers.0." in k and ".lora_B" in k)
        return cls(path=name, base=str(config.get("base_model_name_or_path")), r=int(config.get("r", 0)),
                   trainable=sum(math.prod(v) for v in shapes.values()), per_layer=len(first_layer),
                   vision=any(".visual." in k for k in shapes), dora=bool(config.get("use_dora")),
                   outputs_per_layer=outputs)


def parameter_count(n: float) -> str:
    """A number of parameters in the unit that shows it: "2.21 B", "29.2 M", "12.3 K", "512" (a tiny model's were
    "0.00 B": QA)."""
    for unit, scale, digits in (("B", 1e9, 2), ("M", 1e6, 1), ("K", 1e3, 1)):
        if n >= scale or (unit != "K" and round(n / scale, digits) >= 1):  # 999,999: "1.0 M", not "1000.0 K"
            return f"{n / scale:.{digits}f} {unit}"
    return f"{int(n)}"


def model_shapes(model: str) -> ModelShapes:
    """Shapes of a known release (hub id or short name) or of a local checkpoint folder (a trainer's run folder: its
    merged/, else its adapter/), with the image budget recorded with it. A PEFT adapter (a local folder, or a hub id
    naming one: `unime.models.loading.adapter_folder`, as training loads it) is planned on its base: a known release
    or a local folder."""
    from unime.errors import UnimeError
    from unime.models.image_budget import recorded_budget
    from unime.models.known_checkpoints import known_checkpoint, meta_model
    from unime.models.loading import adapter_folder, trained_model_folder

    folder = trained_model_folder(model)  # a hub adapter is named by its id, as given
    if (adapter_dir := adapter_folder(model)) is not None:
        adapter = AdapterFacts.read(Path(adapter_dir), name=folder)
        try:
            shapes = model_shapes(adapter.base)
        except UnimeError:
            raise UnimeError(f"{folder} is a PEFT adapter on {adapter.base!r}, neither a known release nor a local "
                             "folder with a config.json: give --model its base (a known release or a local "
                             "checkpoint folder of the same shapes)") from None
        shapes.name, shapes.adapter = f"PEFT adapter {folder} on {shapes.name}", adapter
        shapes.images = recorded_budget(adapter_dir) or ImageBudget()  # what loading the adapter reads (`load_model`)
        return shapes
    path = Path(folder)
    if (path / "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path))
        bounds = _folder_pixel_bounds(path)
        name = str(path)
    else:
        ckpt = known_checkpoint(model)
        config, name = ckpt.config(), ckpt.name
        ip = ckpt.image_processor
        bounds = (ip["min_pixels"], ip["max_pixels"], ip["patch_size"] * ckpt.merge_size)
    t = config.text_config
    m = meta_model(config)
    total = sum(p.numel() for p in m.parameters())
    vision = sum(p.numel() for n, p in m.named_parameters() if ".visual." in f".{n}")
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return ModelShapes(name=name, family=config.model_type, hidden=t.hidden_size, intermediate=t.intermediate_size,
                       layers=t.num_hidden_layers, heads=t.num_attention_heads, kv_heads=t.num_key_value_heads,
                       head_dim=head_dim, params_total=total, params_vision=vision, patch_factor=bounds[2],
                       min_pixels=bounds[0], max_pixels=bounds[1], config=config,
                       images=(recorded_budget(path) if path.is_dir() else None) or ImageBudget(),
                       vocab=t.vocab_size)


def _folder_pixel_bounds(path: Path) -> tuple[int, int, int]:
    for fname in ("processor_config.json", "preprocessor_config.json"):
        f = path / fname
        if f.is_file():
            d = json.loads(f.read_text())
            d = d.get("image_processor", d)
            size = d.get("size") or {}
            lo = size.get("shortest_edge", d.get("min_pixels"))
            hi = size.get("longest_edge", d.get("max_pixels"))
            return int(lo), int(hi), int(d.get("patch_size", 14)) * int(d.get("merge_size", 2))
    return 56 * 56, 28 * 28 * 16384, 28


def visual_tokens_per_image(shapes: ModelShapes, *, image_size=None, max_pixels=None, min_pixels=None,
                            source_size=(1280, 720)) -> tuple[int, str]:
    """Merged visual tokens of one image: the fixed resize if given (else the one recorded with the checkpoint), else
    a `source_size` photo under the pixel bounds (given, else recorded, else the processor's). Returns (tokens,
    description)."""
    from unime.models.image_budget import fitted_size

    budget = ImageBudget.from_options(min_pixels, max_pixels, image_size).over(shapes.images)
    lo = int(budget.min_pixels or shapes.min_pixels)
    hi = int(budget.max_pixels or shapes.max_pixels)
    size = budget.image_size
    w, h = size if size else source_size
    fh, fw = fitted_size(h, w, factor=shapes.patch_factor, min_pixels=lo, max_pixels=hi)
    tokens = (fh // shapes.patch_factor) * (fw // shapes.patch_factor)
    what = f"{w}x{h} image" + ("" if size else f" under {lo}..{hi} pixels") + f" -> {fw}x{fh}"
    return tokens, what


def item_tokens(shapes: ModelShapes, o: dict, *, text_tokens: int, images_per_item: float, tcot_tokens: int = 0,
                evidence_crops: float = 0.0) -> tuple[int, str]:
    """Tokens of one item as the embedder reads it and their description: its text / template and images, and with
    a T-CoT (Embed-RL's reasoned item, `unime.reasoning.embed_inputs.reasoned_item`) the T-CoT text and its evidence
    crops (each an `EVIDENCE_CROP_SIZE` region under the run's image bounds, as the images)."""
    bounds = dict(image_size=o.get("image_size"), max_pixels=o.get("max_pixels"), min_pixels=o.get("min_pixels"))
    vis, vis_what = visual_tokens_per_image(shapes, **bounds)
    what = f"{text_tokens} text/template + {images_per_item:g} x {vis} visual ({vis_what})"
    tokens = text_tokens + images_per_item * vis
    if tcot_tokens:
        what += f" + {tcot_tokens} T-CoT"
    if evidence_crops:
        crop, crop_what = visual_tokens_per_image(shapes, **bounds, source_size=EVIDENCE_CROP_SIZE)
        tokens += evidence_crops * crop
        what += f" + {evidence_crops:g} x {crop} evidence crop ({crop_what})"
    return int(round(tokens + tcot_tokens)), what


def embedder_tcot(o: dict, tcot_tokens: int | None, evidence_crops: float | None,
                  images_per_item: float) -> tuple[int, float]:
    """(T-CoT tokens, evidence crops) per item the embedder reads. Unset: an Embed-RL embedder (pooling at <emb>,
    trained and rewarded on reasoned items) reads the reasoner's longest T-CoT (`TCOT_MAX_NEW_TOKENS`), another
    none; one crop per image with a T-CoT."""
    from unime.reasoning.tcot import TCOT_MAX_NEW_TOKENS

    tcot = int(tcot_tokens if tcot_tokens is not None else TCOT_MAX_NEW_TOKENS if o.get("pooling") == "emb" else 0)
    crops = float(evidence_crops if evidence_crops is not None else images_per_item if tcot else 0.0)
    return tcot, crops


def activation_bytes_per_token(shapes: ModelShapes, *, seq_len: int, act_bytes: int, lora_r: int, n_lora: int,
                               lora_dropout: float, autocast_bf16: bool, padded: bool = True,
                               dora_outputs: int = 0) -> float:
    """Bytes autograd keeps per token for the whole decoder (see the module doc). `padded`: the batch
    has padding, so attention gets a mask: transformers then expands grouped K/V to every head and the
    additive mask (s per token) is kept; without padding, SDPA takes K/V grouped and no mask. `dora_outputs`:
    with DoRA, the output features of a layer's adapted linears (`_lora_bits`), two values of each kept."""
    h, i, hd = shapes.hidden, shapes.intermediate, shapes.heads * shapes.head_dim
    kv = shapes.kv_heads * shapes.head_dim
    attention = 3 * hd + seq_len if padded else hd + 2 * kv
    elems = 4 * i + 5 * h + attention + lora_r * n_lora + shapes.heads + 2 * dora_outputs
    per_layer = act_bytes * elems
    if lora_dropout > 0 and n_lora:
        per_layer += (6 * h + i) * (act_bytes + 1)
    if autocast_bf16:
        per_layer += 2 * h * 4
    model_level = act_bytes * (2 * h + 2 * shapes.head_dim)  # embeddings + final norm, rotary tables
    return shapes.layers * per_layer + model_level


@dataclass
class Plan:
    title: str
    facts: list[str]
    rows: list[tuple[str, float]]            # (component, bytes per device)
    tokens_per_step: int
    tokens_note: str
    gpu_memory_gib: float | None = None
    hints: list[str] = field(default_factory=list)
    tokens_label: str = "tokens per optimizer step (all devices)"

    @property
    def total(self) -> float:
        return float(sum(b for _, b in self.rows))

    @property
    def fits(self) -> bool | None:
        """Whether the total leaves `CUDA_CONTEXT_RESERVE_GIB` of `gpu_memory_gib` free; None without a memory size."""
        if not self.gpu_memory_gib:
            return None
        return self.gpu_memory_gib - self.total / GiB > CUDA_CONTEXT_RESERVE_GIB

    def to_dict(self) -> dict:
        return {"title": self.title, "facts": self.facts, "per_device_bytes": dict(self.rows),
                "total_bytes": self.total, "gpu_memory_gib": self.gpu_memory_gib, "fits": self.fits,
                "tokens_per_step": self.tokens_per_step, "hints": self.hints}

    def render(self) -> str:
        lines = [f"unime plan: {self.title}"] + [f"  {f}" for f in self.facts]
        width = max(len(c) for c, _ in self.rows) + 2
        lines.append("memory per device" + " " * (width - 15) + "GiB")
        for comp, b in self.rows:
            lines.append(f"  {comp:<{width}}{b / GiB:8.2f}")
        verdict = ""
        if self.fits is not None:
            left, reserve = self.gpu_memory_gib - self.total / GiB, CUDA_CONTEXT_RESERVE_GIB
            verdict = f"  of {self.gpu_memory_gib:.4g} GiB: " + (
                f"fits ({left:.1f} GiB left for the CUDA context and fragmentation)" if self.fits else
                f"DOES NOT FIT (it needs {self.total / GiB + reserve:.1f} GiB with the {reserve:g} GiB kept for the "
                "CUDA context and fragmentation)")
        lines.append(f"  {'total':<{width}}{self.total / GiB:8.2f}{verdict}")
        lines.append(f"{self.tokens_label}: {self.tokens_per_step:,} ({self.tokens_note})")
        lines += [f"hint: {h}" for h in self.hints]
        return "\n".join(lines)


def _lora_bits(shapes: ModelShapes, o: dict) -> tuple[int, int, float, int]:
    """(LoRA rank, adapted linears per decoder layer, dropout, their output features if DoRA else 0)."""
    if o.get("full"):
        return 0, 0, 0.0, 0
    drop = float(o.get("lora_dropout", 0.0) or 0.0)
    if shapes.adapter:
        a = shapes.adapter
        return a.r, a.per_layer, drop, a.outputs_per_layer if a.dora else 0
    adapted = _adapted_linears(shapes, o)
    outputs = sum(out for _, out in adapted.values()) if o.get("dora") else 0
    return int(o.get("lora_r", EMBEDDER_LORA.r)), len(adapted), drop, outputs


def _adapted_linears(shapes: ModelShapes, o: dict) -> dict[str, tuple[int, int]]:
    """{name: (in features, out features)} of a decoder layer's linears the run's LoRA adapts (all-linear: its 7
    projections); an adapter given as --model: every projection (its weights file names no target list here)."""
    h, i = shapes.hidden, shapes.intermediate
    hd, kv = shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
    linears = {"q_proj": (h, hd), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (hd, h), "gate_proj": (h, i),
               "up_proj": (h, i), "down_proj": (i, h)}
    targets = DEFAULT_LORA_TARGETS if shapes.adapter else _targets(o)
    return {t: linears[t] for t in (DEFAULT_LORA_TARGETS if targets == ("all-linear",) else targets) if t in linears}


def dora_weight_norm_bytes(shapes: ModelShapes, o: dict, act_bytes: int) -> int:
    """Bytes of DoRA's weight-norm transient, 0 without DoRA. PEFT's `DoraLinearLayer.forward` (peft 0.21) rebuilds
    each adapted linear's LoRA weight from an identity matrix (in x in, in the adapter's fp32) passed through lora_A
    and lora_B (out x in), then takes the norm of W + scaling * BA: the scaled product and the sum, two more out x in
    matrices (activation dtype). Nothing of it is kept; one linear at a time, so the largest one's."""
    dora = shapes.adapter.dora if shapes.adapter else bool(o.get("dora"))
    if not dora or o.get("full"):
        return 0
    return max((n_in * n_in * 4 + 3 * n_out * n_in * act_bytes for n_in, n_out in _adapted_linears(shapes, o).values()),
               default=0)


def _dora_rows(shapes: ModelShapes, o: dict, act_bytes: int) -> list[tuple[str, float]]:
    """The DoRA weight-norm row of a LoRA run's plan (`dora_weight_norm_bytes`), none without DoRA."""
    transient = dora_weight_norm_bytes(shapes, o, act_bytes)
    return [("DoRA weight-norm transient (largest adapted linear)", transient)] if transient else []


def _targets(o: dict) -> tuple[str, ...]:
    t = o.get("lora_targets") or DEFAULT_LORA_TARGETS
    if isinstance(t, str):
        t = [x.strip() for x in t.split(",") if x.strip()]
    return tuple(t)


def _param_rows(shapes: ModelShapes, o: dict, *, weight_bytes: int, gpus: int) -> tuple[list, list[str], int]:
    """Weights / trainable / gradients / optimizer rows and facts for a (LoRA or full) training run. Full fine-tuning
    holds fp32 master weights, gradients and optimizer states in every trainer
    (`unime.models.loading.training_load_dtype`)."""
    rows, facts = [], []
    total = shapes.params_total
    if o.get("full") and shapes.adapter:  # as the trainers refuse it (`model_to_train`)
        raise UsageError(f"full fine-tuning of the adapter folder {shapes.adapter.path}: plan its merged/ folder, "
                         "or LoRA (the adapter itself)", command="plan")
    tb, tname = 4, "fp32"  # the trained weights', their gradients' and optimizer states' (LoRA's adapter too)
    if o.get("full"):
        trainable = total
        rows.append(("weights (fp32 master copy)", total * tb))
        facts.append(f"full fine-tuning: {parameter_count(trainable)} trainable parameters")
    else:
        if shapes.adapter:  # training continues the adapter with its own settings
            a = shapes.adapter
            r, trainable, vision, what = a.r, a.trainable, a.vision, f"LoRA r={a.r} of the adapter (its own settings)"
        else:
            r, vision = int(o.get("lora_r", EMBEDDER_LORA.r)), bool(o.get("lora_vision"))
            trainable = shapes.lora_trainable(r, _targets(o), vision, bool(o.get("dora")))
            what = f"LoRA r={r}{' (DoRA)' if o.get('dora') else ''}"
        rows.append((f"weights ({'bf16' if weight_bytes == 2 else 'fp32'}, frozen)", total * weight_bytes))
        rows.append(("trainable weights (fp32)", trainable * 4))
        facts.append(f"{what} on {'the language model + vision' if vision else 'the language model'}: "
                     f"{parameter_count(trainable)} trainable parameters")
    rows.append((f"gradients ({tname})", trainable * tb))
    if gpus > 1:
        rows.append((f"DDP gradient buckets ({tname})", trainable * tb))
    optim = str(o.get("optim", "adamw_torch"))
    states = 2 if "adam" in optim else (1 if "sgd" not in optim else 0)
    rows.append((f"optimizer states ({optim}, {tname} x{states})", trainable * tb * states))
    return rows, facts, trainable


def checkpointed_activations(activations: float, tokens: int, shapes: ModelShapes, act_bytes: int) -> float:
    """The activation bytes of a forward of `tokens` tokens (`activations` without checkpointing) under
    --gradient-checkpointing: only each decoder layer's input is kept, and one layer is recomputed at a time."""
    return tokens * shapes.hidden * act_bytes * shapes.layers + activations / shapes.layers


def activations_row(label: str, activations: float, tokens: int, shapes: ModelShapes, act_bytes: int,
                    o: dict) -> tuple[str, float]:
    """The plan's row of a forward's activations: as they are, or under the run's --gradient-checkpointing."""
    if o.get("gradient_checkpointing"):
        return f"{label} (gradient checkpointing)", checkpointed_activations(activations, tokens, shapes, act_bytes)
    return label, activations


def plan_embedder(model: str, o: dict, *, gpus: int = 1, gpu_memory_gib: float | None = None,
                  text_tokens: int = 64, images_per_item: float = 1.0, title: str = "", padded: bool = True,
                  tcot_tokens: int | None = None, evidence_crops: float | None = None) -> Plan:
    """`unime train embedder` with options `o` (the command's resolved options, dest names); an Embed-RL embedder's
    items with their T-CoT and evidence crops (`embedder_tcot`)."""
    shapes = model_shapes(model)
    dtype = str(o.get("dtype", "auto"))
    bf16 = dtype in ("auto", "bf16", "bfloat16")
    act_b = 2 if bf16 else 4
    weight_b = 2 if bf16 and not o.get("full") else 4
    tcot, crops = embedder_tcot(o, tcot_tokens, evidence_crops, images_per_item)
    seq, seq_what = item_tokens(shapes, o, text_tokens=text_tokens, images_per_item=images_per_item, tcot_tokens=tcot,
                                evidence_crops=crops)
    # K unset (the command's default): the records decide, at most `MAX_AUTO_HARD_NEGATIVES`; planned at that bound
    k_unset = o.get("hard_negatives") is None
    k = MAX_AUTO_HARD_NEGATIVES if k_unset else int(o["hard_negatives"])
    per_query = 2 + k
    accum = int(o.get("grad_accum", 1) or 1)
    if o.get("global_batch"):  # refused as the trainer refuses it: not a multiple of processes x accumulation
        from unime.train.embedder_config import per_device_batch

        per_device = per_device_batch(int(o["global_batch"]), accum, world_size=gpus)
    else:
        per_device = int(o.get("batch_size", 8))
    global_queries = per_device * gpus * accum
    rows, facts, _ = _param_rows(shapes, o, weight_bytes=weight_b, gpus=gpus)
    r, n_lora, drop, dora_out = _lora_bits(shapes, o)
    per_tok = activation_bytes_per_token(shapes, seq_len=seq, act_bytes=act_b, lora_r=r, n_lora=n_lora,
                                         lora_dropout=drop, autocast_bf16=bf16 and act_b == 2, padded=padded,
                                         dora_outputs=dora_out)
    if o.get("gradcache"):
        chunk = int(o.get("chunk_size", 2))
        label = f"activations per GradCache chunk ({chunk} sequences)"
        rows.append(("cached representations + their gradients", per_device * per_query * shapes.hidden * 4 * 2))
    else:
        chunk = per_device * per_query
        label = f"activations ({chunk} sequences in one forward)"
    rows.append(activations_row(label, chunk * seq * per_tok, chunk * seq, shapes, act_b, o))
    rows += _dora_rows(shapes, o, act_b)
    facts[:0] = [f"model {shapes.name}: {parameter_count(shapes.params_total)} parameters (vision "
                 f"{parameter_count(shapes.params_vision)}), {shapes.layers} layers, hidden {shapes.hidden}",
                 f"{gpus} device(s), {'bf16 autocast' if bf16 else 'fp32'}; per device {per_device} queries x "
                 f"{per_query} sequences (query, positive, {k} negatives{K_UNSET_NOTE if k_unset else ''}) per "
                 f"micro-batch, {accum} accumulation step(s)",
                 f"sequence ~{seq} tokens: {seq_what}"]
    plan = Plan(title=title or f"train embedder on {shapes.name}", facts=facts, rows=rows,
                tokens_per_step=global_queries * per_query * seq,
                tokens_note=f"{global_queries} queries x {per_query} sequences x {seq} tokens",
                gpu_memory_gib=gpu_memory_gib)
    # more devices split a --global-batch; under GradCache the activations are the chunk's, whatever the batch
    return with_hint(plan, [
        ("--gradcache with a small --chunk-size (activations then scale with the chunk, not the batch)",
         not o.get("gradcache")),
        (f"a smaller --chunk-size (now {chunk})", o.get("gradcache") and chunk > 1),
        ("--gradient-checkpointing", not o.get("gradient_checkpointing")),
        ("more devices (they split the --global-batch)", o.get("global_batch") and not o.get("gradcache")),
        ("--max-pixels / --image-size to shorten sequences", True)])


def plan_reranker(model: str, o: dict, *, gpus: int = 1, gpu_memory_gib: float | None = None,
                  text_tokens: int = 64, images_per_item: float = 1.0, title: str = "") -> Plan:
    """`unime train reranker`: per record, two pairwise prompts (query + one candidate) and one listwise
    prompt (query + negatives + 1 candidates), forwarded together before one backward."""
    shapes = model_shapes(model)
    dtype = str(o.get("dtype", "auto") or "auto")
    bf16 = dtype in ("auto", "bf16", "bfloat16", "None")
    act_b = 2 if bf16 else 4
    vis, vis_what = visual_tokens_per_image(shapes, image_size=o.get("image_size"), max_pixels=o.get("max_pixels"),
                                            min_pixels=o.get("min_pixels"))
    item = int(round(text_tokens + images_per_item * vis))
    prompt = 80  # the judge / listwise instructions and the chat template
    n_cand = int(o.get("negatives", 4)) + 1
    losses = str(o.get("losses", "pair,list"))
    pair_len, list_len = prompt + 2 * item, prompt + (1 + n_cand) * item
    b = int(o.get("batch_size", 4))
    rows, facts, _ = _param_rows(shapes, o, weight_bytes=2 if bf16 and not o.get("full") else 4, gpus=gpus)
    r, n_lora, drop, dora_out = _lora_bits(shapes, {**o, "lora_dropout": o.get("lora_dropout",
                                                                               GENERATIVE_LORA.dropout)})
    seqs = []
    if "pair" in losses:
        seqs += [pair_len] * (2 * b)
    if "list" in losses:
        seqs += [list_len] * b
    act = 0.0
    for s in seqs:
        per_tok = activation_bytes_per_token(shapes, seq_len=s, act_bytes=act_b, lora_r=r, n_lora=n_lora,
                                             lora_dropout=drop, autocast_bf16=bf16, dora_outputs=dora_out)
        act += s * per_tok
    if o.get("gradient_checkpointing"):
        act = checkpointed_activations(act, sum(seqs), shapes, act_b)
        label = "activations (gradient checkpointing)"
    else:
        label = "activations (pair + list forwards of the batch)"
    rows.append((label, act))
    rows += _dora_rows(shapes, o, act_b)
    accum = int(o.get("grad_accum", 1) or 1)
    facts[:0] = [f"model {shapes.name}: {parameter_count(shapes.params_total)} parameters, {shapes.layers} layers",
                 f"{gpus} device(s); per device {b} records: 2 pairwise prompts of ~{pair_len} tokens + 1 listwise "
                 f"prompt of ~{list_len} tokens ({n_cand} candidates); items ~{item} tokens ({vis} visual: {vis_what})"]
    plan = Plan(title=title or f"train reranker on {shapes.name}", facts=facts, rows=rows,
                tokens_per_step=sum(seqs) * gpus * accum, tokens_note=f"{len(seqs)} prompts x {gpus} devices x "
                f"{accum} accumulation", gpu_memory_gib=gpu_memory_gib)
    return with_hint(plan, [("--gradient-checkpointing", not o.get("gradient_checkpointing")),
                            (f"a smaller --batch-size (now {b}) with --grad-accum", b > 1),
                            ("--max-pixels to shorten sequences", True)])


def with_hint(plan: Plan, ways: list[tuple[str, object]]) -> Plan:
    """`plan`, with the hint 'try A, B or C' of the (way, it still applies) pairs when it does not fit: a way the run
    already takes is not suggested. Every planner's hint is written here."""
    texts = [text for text, applies in ways if applies]
    if plan.fits is False and texts:
        plan.hints.append("try " + (f"{', '.join(texts[:-1])} or {texts[-1]}" if len(texts) > 1 else texts[0]))
    return plan


def forward_transient_bytes(shapes: ModelShapes, tokens: int, act_bytes: int) -> int:
    """A frozen model's forward of `tokens` without autograd: one decoder layer's intermediates at a time (the MLP's
    two I-wide projections, four h-wide tensors)."""
    return tokens * (2 * shapes.intermediate + 4 * shapes.hidden) * act_bytes


def kv_bytes_per_token(shapes: ModelShapes, act_bytes: int) -> int:
    """The KV cache of one token: keys and values of every layer's KV heads."""
    return 2 * shapes.layers * shapes.kv_heads * shapes.head_dim * act_bytes


def prefix_scoring_bytes(shapes: ModelShapes, *, prefix: int, continuation: int, chunk: int,
                         act_bytes: int) -> tuple[int, int, int]:
    """What a Yes/No judge's fast path (`unime.models.prefix_scoring.PrefixEngine.score`) holds while it scores a chunk
    of `chunk` continuations of `continuation` tokens after a shared prefix of `prefix` tokens: (the prefix's KV
    cache, the chunk's cache: a copy of the prefix for each row plus the continuations, and one layer's transients
    of the chunk's forward over the continuation tokens)."""
    kv = kv_bytes_per_token(shapes, act_bytes)
    return (prefix * kv, chunk * (prefix + continuation) * kv,
            forward_transient_bytes(shapes, chunk * continuation, act_bytes))


def plan_judge(model: str, o: dict, *, gpus: int = 1, gpu_memory_gib: float | None = None, text_tokens: int = 64,
               images_per_item: float = 1.0, title: str = "") -> Plan:
    """Stage B (`unime mine`, local backend): frozen weights, the shared query prefix's KV cache, and per
    chunk of candidates a cache holding a copy of the prefix for each row plus the continuations; when it does not fit,
    the hint of the `unime mine` options that reduce it, by how much (`with_hint`)."""
    shapes = model_shapes(model)
    dtype = str(o.get("dtype") or "auto")
    b = 2 if dtype in ("auto", "bf16", "bfloat16", "fp16", "float16", "None") else 4
    vis, vis_what = visual_tokens_per_image(shapes, image_size=o.get("image_size"), max_pixels=o.get("max_pixels"),
                                            min_pixels=o.get("min_pixels"))
    item = int(round(text_tokens + images_per_item * vis))
    prefix, cont = JUDGE_PROMPT_TOKENS + item, item + JUDGE_END_TOKENS
    m = int(o.get("chunk_size", 16))
    k = int(o.get("k", 50))
    kv_per_token = kv_bytes_per_token(shapes, b)
    prefix_kv, chunk_kv, chunk_transients = prefix_scoring_bytes(shapes, prefix=prefix, continuation=cont, chunk=m,
                                                                 act_bytes=b)
    rows = [(f"weights ({'bf16' if b == 2 else 'fp32'}, frozen)", shapes.params_total * b),
            ("KV cache: shared query prefix", prefix_kv),
            (f"KV cache: chunk of {m} continuations (prefix copy per row)", chunk_kv),
            ("forward transients (one layer, chunk)", chunk_transients)]
    vcfg = shapes.config.vision_config
    vwidth = getattr(vcfg, "embed_dim", None) or getattr(vcfg, "hidden_size")
    vmlp = getattr(vcfg, "intermediate_size", None) or vwidth * int(getattr(vcfg, "mlp_ratio", 4))
    patches = 4 * vis  # before the 2x2 merge
    rows.append(("vision tower transients (one image at a time)", patches * (3 * vwidth + vmlp) * b))
    facts = [f"judge {shapes.name}: {parameter_count(shapes.params_total)} parameters, {shapes.layers} layers, "
             f"{shapes.kv_heads} KV heads x {shapes.head_dim}: {kv_per_token / 1024:.0f} KiB of KV per token",
             f"{gpus} device(s), one judge replica each (ray / vllm backends: one per GPU)",
             f"per query: prefix ~{prefix} tokens (prompt + query with {images_per_item:g} x {vis} visual: "
             f"{vis_what}), {k + 1} candidates of ~{cont} tokens, {m} per forward"]
    per_query = prefix + (k + 1) * cont
    plan = Plan(title=title or f"judge (mining stage B) with {shapes.name}", facts=facts, rows=rows,
                tokens_per_step=per_query * gpus, tokens_note=f"one query per device: {prefix} prefix + "
                f"{k + 1} x {cont} continuation tokens; x {gpus} devices", gpu_memory_gib=gpu_memory_gib,
                tokens_label="tokens per judged query group (all devices, one query each)")
    # the chunk's KV cache and transients scale with --chunk-size; every row with the dtype's bytes
    chunk_1_saves = (chunk_kv + chunk_transients) * (m - 1) / m
    return with_hint(plan, [
        (f"a smaller --chunk-size (now {m}: --chunk-size 1 saves {chunk_1_saves / GiB:.2f} GiB)", m > 1),
        (f"--dtype bf16 (now fp32: saves {plan.total / 2 / GiB:.2f} GiB, half of every row)", b == 4),
        ("--max-pixels / --image-size to shorten sequences", True)])


# TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, its kernel `trl.kernels.chunked_logprob`): the token
# and vocabulary sizes of one logits tile, copied (importing trl loads torch, which planning does not need;
# tests/train/test_plan.py keeps them equal to the installed TRL's)
TRL_TOKEN_CHUNK = 4096
TRL_VOCAB_CHUNK = 32768


def fused_lm_head_bytes(tokens: int, shapes: ModelShapes, act_bytes: int, *, lm_head_trained: bool) -> int:
    """What TRL's fused LM head holds for `tokens` labelled tokens: GRPOTrainer's log-probabilities and SFTTrainer's
    loss (TRL >= 1.16) never build the tokens x vocabulary logits. Kept: one tile of at most `TRL_TOKEN_CHUNK` tokens x
    `TRL_VOCAB_CHUNK` logits (activation dtype), the labelled tokens' final hidden states it saves for the backward
    (a copy: only the labelled positions are scored on a GPU), in the backward their gradient accumulated in fp32 and
    cast back, and with a trained LM head (full fine-tuning) its weight's gradient in fp32 and cast back."""
    tile = min(tokens, TRL_TOKEN_CHUNK) * TRL_VOCAB_CHUNK * act_bytes
    hidden = tokens * shapes.hidden * (act_bytes + 4 + act_bytes)
    head = shapes.vocab * shapes.hidden * (4 + act_bytes) if lm_head_trained else 0
    return tile + hidden + head


def reasoning_prompt_tokens(shapes: ModelShapes, o: dict, *, text_tokens: int,
                            images_per_item: float) -> tuple[int, str]:
    """Tokens of the reasoner's prompt (`reasoning_prompt_segments`): the item, then the longest reasoning instruction
    (counted at ~4 characters a token)."""
    from unime.reasoning.reasoner import REASONING_INSTRUCTIONS, TCOT_FORMAT_INSTRUCTION

    instruction = (max(len(v) for v in REASONING_INSTRUCTIONS.values()) + len(TCOT_FORMAT_INSTRUCTION) + 20) // 4
    item, what = item_tokens(shapes, o, text_tokens=text_tokens, images_per_item=images_per_item)
    return item + instruction, f"{what} + ~{instruction} reasoning instruction"


def full_fine_tuning(shapes: ModelShapes, o: dict) -> bool:
    """Whether the reasoner stage trains every weight of `shapes` (`--lora-r 0` on a model that is no adapter)."""
    return not shapes.adapter and not int(o.get("lora_r") or 0)


def reasoner_hint(plan: Plan, shapes: ModelShapes, o: dict, *ways: tuple[str, object]) -> Plan:
    """`with_hint` of either reasoner stage's `plan`: --gradient-checkpointing while it is off, LoRA instead of full
    fine-tuning (`--lora-r 0`, GRPO's default: sharding it with FSDP / ZeRO-3 is refused), the stage's own `ways`,
    and shorter sequences."""
    return with_hint(plan, [("--gradient-checkpointing", not o.get("gradient_checkpointing")),
                            ("--lora-r N (LoRA: no full gradients and optimizer states)", full_fine_tuning(shapes, o)),
                            *ways, ("--max-pixels to shorten sequences", True)])


def _policy(model: str, o: dict, gpus: int, *, text_tokens: int, images_per_item: float):
    """The reasoner being trained (`unime train reasoner`, either stage): its shapes, activation bytes, parameter
    rows and facts (`_param_rows`: LoRA, or `lora_r` 0 full fine-tuning of fp32 master weights), LoRA
    bits, trainable parameters and prompt (tokens, description). `o["lora_r"]` is the stage's (`unime.cli.plan` fills
    an unset one with the stage's default)."""
    shapes = model_shapes(model)
    act_b = 2 if str(o.get("dtype") or "auto") in ("auto", "bf16", "bfloat16", "fp16", "float16") else 4
    o = {**o, "full": full_fine_tuning(shapes, o)}
    rows, facts, trainable = _param_rows(shapes, o, weight_bytes=act_b, gpus=gpus)
    prompt = reasoning_prompt_tokens(shapes, o, text_tokens=text_tokens, images_per_item=images_per_item)
    facts.insert(0, f"reasoner {shapes.name}: {parameter_count(shapes.params_total)} parameters, "
                    f"{shapes.layers} layers, vocabulary {shapes.vocab:,}")
    return shapes, act_b, rows, facts, _lora_bits(shapes, o), trainable, prompt


def plan_reasoner_sft(model: str, o: dict, *, gpus: int = 1, gpu_memory_gib: float | None = None,
                      text_tokens: int = 64, images_per_item: float = 1.0, title: str = "",
                      tcot_tokens: int | None = None, evidence_crops: float | None = None) -> Plan:
    """`unime train reasoner --stage sft`: per device --batch-size prompt + T-CoT sequences in one forward (TRL's
    SFTTrainer; with --gradient-checkpointing only each layer's input kept) and, for the loss on the T-CoT tokens, TRL's
    fused LM head (`fused_lm_head_bytes`: no full logits)."""
    from unime.reasoning.tcot import TCOT_MAX_NEW_TOKENS

    if evidence_crops:
        raise UsageError("--evidence-crops: the reasoner reads no evidence crops (its T-CoT names them)",
                         command="plan")
    shapes, act_b, rows, facts, (r, n_lora, drop, dora_out), _, (prompt, what) = _policy(
        model, o, gpus, text_tokens=text_tokens, images_per_item=images_per_item)
    tcot = TCOT_MAX_NEW_TOKENS if tcot_tokens is None else int(tcot_tokens)
    seq, b, accum = prompt + tcot, int(o.get("batch_size", 8)), int(o.get("grad_accum", 1) or 1)
    per_tok = activation_bytes_per_token(shapes, seq_len=seq, act_bytes=act_b, lora_r=r, n_lora=n_lora,
                                         lora_dropout=drop, autocast_bf16=act_b == 2, dora_outputs=dora_out)
    rows += [activations_row(f"activations ({b} sequences in one forward)", b * seq * per_tok, b * seq, shapes, act_b,
                             o),
             (f"TRL's fused LM head ({b * tcot} T-CoT tokens)",
              fused_lm_head_bytes(b * tcot, shapes, act_b, lm_head_trained=full_fine_tuning(shapes, o))),
             *_dora_rows(shapes, o, act_b)]
    facts.append(f"{gpus} device(s); per device {b} sequences of ~{seq} tokens: prompt {prompt} ({what}) + "
                 f"{tcot} T-CoT; {accum} accumulation step(s)")
    plan = Plan(title=title or f"train reasoner --stage sft on {shapes.name}", facts=facts, rows=rows,
                tokens_per_step=b * gpus * accum * seq, tokens_note=f"{b} sequences x {gpus} devices x {accum} "
                f"accumulation x {seq} tokens", gpu_memory_gib=gpu_memory_gib)
    return reasoner_hint(plan, shapes, o, (f"a smaller --batch-size (now {b}) with --grad-accum", b > 1))


def plan_reasoner_grpo(model: str, o: dict, *, gpus: int = 1, gpu_memory_gib: float | None = None,
                       text_tokens: int = 64, images_per_item: float = 1.0, title: str = "",
                       tcot_tokens: int | None = None, evidence_crops: float | None = None) -> Plan:
    """`unime train reasoner --stage grpo` (`unime.embed_rl.grpo`): per device and step 2 x --pairs-per-batch prompts,
    each with --num-generations completions of up to --max-completion-length tokens. Held throughout: the policy
    (LoRA or full), TRL's reference policy (beta > 0: a frozen copy of the model, or of the LoRA adapter), the frozen
    reward embedder (`o["embedder"]`) and, with a process weight, the frozen process judge (--process-judge, else a
    copy of --model). The step's phases run one after the other, so only the largest one's transients are added:
    generation (the prompts' prefill: their KV cache and one layer's transients; then decoding: the completions' KV
    cache), the reward embedder's forward (its items with their T-CoT and evidence
    crops), the process judge's pick as --process-pick makes it (generate: its listwise prompts, a batch of 8, their KV
    cache and the prefill's one-layer transients; score: a Yes/No judge's (query rollout, candidate) pairs, the query's
    prefix shared, as mining's judge, `prefix_scoring_bytes`; each reasoning at its longest, the completion length),
    and the policy's forward and backward of
    one --micro-batch of completions (default: all of the step's; TRL accumulates the others into the same step):
    activations (each layer's input only with --gradient-checkpointing) and TRL's fused LM head over the completion
    tokens (`fused_lm_head_bytes`: no full logits)."""
    if not o.get("embedder"):
        raise UsageError("give the reward embedder: --set embedder=CHECKPOINT (the frozen <emb> embedder GRPO rewards "
                         "with; a recipe's plan model is used otherwise)", command="plan")
    shapes, act_b, rows, facts, (r, n_lora, _, dora_out), trainable, (prompt, what) = _policy(
        model, o, gpus, text_tokens=text_tokens, images_per_item=images_per_item)
    n, pairs = int(o.get("num_generations", 4)), int(o.get("pairs_per_batch", 2))
    completion = int(o.get("max_completion_length") or 256)
    tcot = completion if tcot_tokens is None else int(tcot_tokens)  # the rollouts the reward embedder reads
    crops = images_per_item if evidence_crops is None else float(evidence_crops)
    rollouts, seq = 2 * pairs * n, prompt + completion
    full = full_fine_tuning(shapes, o)
    if float(o.get("beta", 0.01) or 0) > 0:
        rows.append(("reference policy (TRL: LoRA adapter copy, fp32)", trainable * 4) if n_lora or shapes.adapter
                    else (f"reference policy (frozen copy, {'bf16' if act_b == 2 else 'fp32'})",
                          shapes.params_total * act_b))
    embedder = model_shapes(str(o["embedder"]))
    rows.append((f"reward embedder {embedder.name} (frozen)", embedder.params_total * act_b))
    weights = [float(w) for w in str(o.get("weights") or "0.05,0.8,0.2").split(",")]
    judge = model_shapes(str(o.get("process_judge") or model)) if weights[-1] != 0 else None
    if judge:
        rows.append((f"process judge {judge.name} (frozen)", judge.params_total * act_b))
    per_tok = activation_bytes_per_token(shapes, seq_len=seq, act_bytes=act_b, lora_r=r, n_lora=n_lora,
                                         lora_dropout=0.0, autocast_bf16=act_b == 2, dora_outputs=dora_out)
    e_seq, e_what = item_tokens(embedder, o, text_tokens=text_tokens, images_per_item=images_per_item,
                                tcot_tokens=tcot, evidence_crops=crops)
    micro = int(o.get("micro_batch") or rollouts)  # TRL's per_device_train_batch_size (`embed_rl_grpo_config`)
    policy_label, policy_act = activations_row(f"policy forward + backward of {micro} completions: activations",
                                               micro * seq * per_tok, micro * seq, shapes, act_b, o)
    # generation (TRL's `generate`, KV cache on): the prompts' prefill holds at its last layer every layer's KV cache
    # of the prompts and that layer's intermediates; they are freed before decoding grows the completions' cache
    phases = [("generation, prefill: the prompts' KV cache + one layer's transients",
               rollouts * prompt * kv_bytes_per_token(shapes, act_b)
               + forward_transient_bytes(shapes, rollouts * prompt, act_b)),
              ("generation, decoding: KV cache of the completions", rollouts * seq * kv_bytes_per_token(shapes, act_b)),
              ("reward embedder forward (a batch of 16)",
               forward_transient_bytes(embedder, min(rollouts, 16) * e_seq, act_b)),
              (policy_label + " + TRL's fused LM head",
               policy_act + dora_weight_norm_bytes(shapes, o, act_b)
               + fused_lm_head_bytes(micro * completion, shapes, act_b, lm_head_trained=full))]
    judge_what, pick = "", str(o.get("process_pick") or "generate")
    candidates = n + int(o.get("hard_negative_pairs", 1))  # a rollout's: the other side's n, one per hard pair
    if judge and pick == "score":
        from unime.models.judge import CHUNK_SIZE

        # `ScoredPick`: each rollout's (query, candidate) pairs through `JudgeScorer.score_pairs`, the query's prefix
        # run once and its candidates in chunks (`prefix_scoring_bytes`); each side its item (text and images)
        # followed by its reasoning at its longest (`tcot_judge_item`)
        j_item, j_what = item_tokens(judge, o, text_tokens=text_tokens, images_per_item=images_per_item,
                                     tcot_tokens=tcot)
        j_prefix, j_cont, m = JUDGE_PROMPT_TOKENS + j_item, j_item + JUDGE_END_TOKENS, min(CHUNK_SIZE, candidates)
        phases.append((f"process judge (--process-pick score): the query prefix's KV cache + a chunk of {m} "
                       "candidates' KV cache (a prefix copy per row) + the chunk's transients (one layer)",
                       sum(prefix_scoring_bytes(judge, prefix=j_prefix, continuation=j_cont, chunk=m,
                                                act_bytes=act_b))))
        judge_what = (f"; process judge (score) query prefixes ~{j_prefix} tokens, {candidates} candidates of "
                      f"~{j_cont}, {m} per forward (items {j_what})")
    elif judge:
        # the rollout judged and its candidates, each reasoning the full completion text (`EmbedRLReward.process`)
        shown = 1 + candidates  # in each prompt; `Reasoner.batch_size` (8) prompts a call
        j_seq, j_batch = JUDGE_PROMPT_TOKENS + shown * (text_tokens + tcot), min(rollouts, 8)
        # their prefill: at its last layer every layer's KV cache and that layer's intermediates over the batch
        phases.append((f"process judge (--process-pick generate): {j_batch} listwise prompts' KV cache + the "
                       "prefill's transients (one layer)",
                       j_batch * j_seq * kv_bytes_per_token(judge, act_b)
                       + forward_transient_bytes(judge, j_batch * j_seq, act_b)))
        judge_what = f"; process judge prompts ~{j_seq} tokens ({shown} reasonings with their items' text)"
    largest = max(phases, key=lambda p: p[1])
    rows.append((f"largest phase: {largest[0]}", largest[1]))
    facts += [f"{gpus} device(s); per device and step {2 * pairs} prompts ({pairs} pairs) x {n} generations = "
              f"{rollouts} completions of <= {completion} tokens; prompt ~{prompt} tokens ({what}); the policy's "
              f"loss on {micro} at a time ({rollouts // micro} accumulated forward + backward)",
              f"reward embedder items ~{e_seq} tokens: {e_what}{judge_what}",
              "phases (one at a time, GiB): " + ", ".join(f"{name} {b / GiB:.2f}" for name, b in phases)]
    plan = Plan(title=title or f"train reasoner --stage grpo on {shapes.name}", facts=facts, rows=rows,
                tokens_per_step=rollouts * gpus * seq, tokens_note=f"{rollouts} completions x {gpus} devices x "
                f"{seq} tokens (prompt + longest completion)", gpu_memory_gib=gpu_memory_gib)
    return reasoner_hint(plan, shapes, o, (f"a smaller --micro-batch (now {micro})", micro > 1))


PLANNERS = {"embedder": plan_embedder, "reranker": plan_reranker, "judge": plan_judge,
            "reasoner-sft": plan_reasoner_sft, "reasoner-grpo": plan_reasoner_grpo}
# the stages whose items may carry a T-CoT (`--tcot-tokens`, `--evidence-crops`)
TCOT_STAGES = ("embedder", "reasoner-sft", "reasoner-grpo")
STAGE_COMMANDS = {"embedder": "train embedder", "reranker": "train reranker", "judge": "mine",
                  "reasoner-sft": "train reasoner", "reasoner-grpo": "train reasoner"}
# the planned command's own arguments that name the stage
STAGE_ARGS = {"reasoner-sft": ("--stage", "sft"), "reasoner-grpo": ("--stage", "grpo")}


def parse_memory(text: str | None) -> float | None:
    """GiB of a `--gpu-memory` SIZE: '80' / '80GB' / '80 GiB' -> 80.0, '81920MiB' / '81920 MB' -> 80.0. GB is read as
    GiB, as on NVIDIA's labels: nvidia-smi reports an A100 80GB as 81920 MiB = 80 GiB (`PlanOptions.gpu_memory`)."""
    if text is None or text == "":
        return None
    s, per_gib = str(text).strip().lower().replace(" ", ""), 1
    for suffix, per in (("gib", 1), ("gb", 1), ("g", 1), ("mib", 1024), ("mb", 1024)):
        if s.endswith(suffix):
            s, per_gib = s[: -len(suffix)], per
            break
    try:
        value = float(s)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--gpu-memory {text!r}: a positive size in GiB such as 80GB, 40GiB or 80, or nvidia-smi's "
                         "81920MiB", command="plan")
    return value / per_gib


@dataclass(kw_only=True)
class PlanOptions(RangeChecked):
    """Options of `unime plan` (the planned command's own options come from its recipe and `--set`)."""

    stage: str | None = option(None, "what to plan (default: the recipe's): train embedder, train reranker, the "
                               "mining judge, or train reasoner --stage sft / grpo", choices=list(PLANNERS))
    model: str | None = option(None, "a known release (e.g. Qwen/Qwen2-VL-2B-Instruct), a local checkpoint, run or "
                               "PEFT adapter folder, or a PEFT adapter's hub id, planned with its recorded images "
                               "(default: the recipe's)")
    gpus: int = option(1, "devices (data parallel)", at_least=1)
    gpu_memory: str | None = option(None, "memory per device in GiB, the unit of the verdict: 80, 80GB or 80GiB (GB "
                                    "as on NVIDIA's labels: nvidia-smi reports an A100 80GB as 81920 MiB = 80 GiB), "
                                    "or nvidia-smi's MiB, e.g. 81920MiB", metavar="SIZE")
    text_tokens: int = option(64, "text + chat-template tokens per item (default %(default)s)", at_least=1)
    images_per_item: float = option(1.0, "images per query / candidate on average (default 1: every item has an "
                                    "image)", at_least=0)
    tcot_tokens: int | None = option(None, "T-CoT tokens per item: read with it by the embedder (Embed-RL's reasoned "
                                     "items; default: with --pooling emb, the reasoner's longest T-CoT, 256, else 0), "
                                     "learnt by the reasoner's SFT (default 256), read by GRPO's reward embedder "
                                     "(default: --max-completion-length)", at_least=0)
    evidence_crops: float | None = option(None, "evidence crops per item read with its T-CoT by the embedder or GRPO's "
                                          "reward embedder, each planned as a 640x360 region of its image under the "
                                          "image bounds (default: one per image with a T-CoT, else 0)", at_least=0)
    overrides: list[str] = option(help="override one option of the planned command, e.g. --set chunk-size=4 or "
                                  "--set gradcache=false; a flag alone turns it on: --set gradient-checkpointing "
                                  "(repeatable; values read as a --config file's)", factory=list, dest="set",
                                  action="append", metavar="OPTION=VALUE", cli_default=[])
    json: bool = option(False, "print the plan as JSON")

    def plan(self, stage: str, model: str, options: dict, title: str) -> Plan:
        """The `stage` planner's plan of `model` run with the planned command's resolved `options`."""
        tcot = {"tcot_tokens": self.tcot_tokens, "evidence_crops": self.evidence_crops}
        if stage not in TCOT_STAGES:
            given = [f"--{k.replace('_', '-')}" for k, v in tcot.items() if v is not None]
            if given:
                raise UsageError(f"{' and '.join(given)}: the {stage} stage reads no T-CoT (planned stages that do: "
                                 f"{', '.join(TCOT_STAGES)})", command="plan")
            tcot = {}
        return PLANNERS[stage](model, options, gpus=self.gpus, gpu_memory_gib=parse_memory(self.gpu_memory),
                               text_tokens=self.text_tokens, images_per_item=self.images_per_item, title=title,
                               **tcot)
