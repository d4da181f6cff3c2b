"""The final folders and model card of every trainer (embedder, reranker / judge, reasoner SFT, GRPO).

    OUT/adapter/   PEFT adapter folder (LoRA runs) + processor + README.md
    OUT/merged/    the base model with the adapter merged in (or the fully fine-tuned model): an ordinary
                   Hugging Face folder (`AutoModelForImageTextToText.from_pretrained`) + processor + README.md +
                   unime_merge.json (its dtype, size, and the share of the LoRA update its rounding lost)
    OUT/README.md  the model card (`ModelCard`): data, loss, hyper-parameters, final metrics; the recipe the run
                   was given (`--recipe`), as OUT's marker records it (`unime.outdir.claim`'s provenance)

Every file and folder is written to a temporary sibling and moved into place (`unime.data.atomic`); an entry
this run's command did not write is never replaced (`unime.outdir.require_replaceable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from unime.data.atomic import atomic_open, merged_dir, warn_left
from unime.models.loading import model_reference
from unime.models.run_state import ADAPTER_DIR, CARD_FILE, MERGED_DIR, is_peft
from unime.options import option

log = logging.getLogger(__name__)

# `--merged-dtype`: the dtype OUT/merged is written in — auto: the one the model was trained in (its weights'),
# base: the base checkpoint's (its config.json), or as named
MERGED_DTYPES = ("auto", "base", "fp32", "bf16")
_NAMED_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# the share of the LoRA update's norm lost to the merged weights' rounding above which the export warns
UPDATE_LOSS_WARNING = 0.10
MERGE_FILE = "unime_merge.json"  # in OUT/merged: the "Merged weights" table (dtype, size, update lost)
# the model card's pipeline tag of `unime train embedder`'s folders, by which a loader of another role tells them
# (`unime.models.checkpoint_role`)
EMBEDDER_PIPELINE_TAG = "feature-extraction"


@dataclass(kw_only=True)
class ExportOptions:
    """The export options of every trainer config (beside its LoRA options: they act with full fine-tuning and
    on an adapter trained on too)."""

    merged_dtype: str = option("auto", "dtype of the merged weights OUT/merged (when written): auto (the dtype "
                               "trained in), base (the base checkpoint's), fp32, bf16", choices=list(MERGED_DTYPES))


@contextlib.contextmanager
def model_folder(folder: str | os.PathLike):
    """Yield a temporary folder whose entries become `folder`'s model files, for a command whose output is one
    model folder (`unime models build-tiny`, `unime reason add-emb`, a trainer's `merged/` and `adapter/`): on
    success each file replaces the file of the same name in `folder` (`merged_dir`), and nothing else is touched
    — the user's files, the marker and the lock stay. Other entries than the user's recorded ones (files a user
    added later, or files an earlier run wrote and this one did not, which the model's loader may read) are
    named in a warning."""
    from unime.outdir import read_marker

    folder = Path(folder)
    kept: list[str] = []
    with merged_dir(folder, kept=kept) as tmp:
        yield tmp
    recorded = set((read_marker(folder) or {}).get("preexisting", []))
    warn_left(folder, [k for k in kept if k.split("/")[0] not in recorded], "beside the model just written",
              " (remove any an earlier run wrote: the model's loader may read them)")


def recipe_note(recipe: str) -> str:
    """The model card's line naming the recipe of the run (`--recipe NAME`)."""
    return f"Recipe: `{recipe}` (`--recipe`; its values and their sources: docs/RECIPES.md)"


def export_final(model, processor, out_dir: str | os.PathLike, *, card: "ModelCard", adapter: bool | None = None,
                 merged: bool = True, image_budget=None, folder_files: Mapping[str, str] | None = None,
                 base_model: str | None = None, merged_dtype: str = "auto") -> dict[str, Path]:
    """OUT/adapter (`adapter`; default: whenever `model` is a PEFT model), OUT/merged (`merged`; the adapter
    merged in, or the fully fine-tuned model) and OUT/README.md (`card`, rendered), each file written
    atomically; a folder's other entries (a file the user put there, one an earlier export wrote) stay, named in
    a warning (`model_folder`). Each folder holds the model, the processor, README.md and `folder_files` (name →
    text). `image_budget` (the run's `ImageBudget`, if set) is recorded in OUT and each folder
    (`unime_images.json`) for eval / mining / serving; the processor saved alongside already carries its pixel
    bounds. `base_model`: how the adapter names its base model (default: as the PEFT model does); an existing
    local folder is recorded as an absolute path (`unime.models.loading.model_reference`). `merged_dtype` (one
    of `MERGED_DTYPES`): the dtype of OUT/merged's weights, recorded with its size and the share of the LoRA update
    its rounding lost (`merge_in_dtype`) in the card ("Merged weights"), in OUT/merged/unime_merge.json, and logged
    (a warning above `UPDATE_LOSS_WARNING`). Merging modifies `model` in place (done last). Returns the written
    folders by name. The card names the recipe OUT's marker records (`recipe_note`)."""
    from unime.models.image_budget import BUDGET_FILE
    from unime.outdir import read_marker, require_replaceable

    out = Path(out_dir)
    recipe = ((read_marker(out) or {}).get("provenance") or {}).get("recipe")
    if recipe:
        card = dataclasses.replace(card, notes=[recipe_note(recipe), *card.notes])
    text = card.render()
    peft = is_peft(model)
    adapter = peft if adapter is None else adapter
    if adapter and not peft:
        raise ValueError("no adapter to export: the model was fully fine-tuned")
    record_budget = image_budget is not None and image_budget.is_set
    for name in ((ADAPTER_DIR,) if adapter else ()) + ((MERGED_DIR,) if merged else ()) + (CARD_FILE,) + \
            ((BUDGET_FILE,) if record_budget else ()):
        require_replaceable(out, name)  # never replace a merged/ or README.md this run's command did not write
    if peft:  # a local base folder as an absolute path: the adapter then loads from any working directory
        config = model.peft_config["default"]
        config.base_model_name_or_path = model_reference(base_model if base_model is not None
                                                        else config.base_model_name_or_path)
    if record_budget:
        image_budget.save(out)
    base_config = checkpoint_config(base_model if base_model is not None else
                                    model.peft_config["default"].base_model_name_or_path if peft else None)
    restore_inference_config(model.config, base_config)
    written: dict[str, Path] = {}

    def save(folder: str, m, files: Mapping[str, str] | None = folder_files, **how) -> None:
        with model_folder(out / folder) as tmp:
            m.save_pretrained(str(tmp), **how)
            save_processor(processor, tmp)
            (tmp / CARD_FILE).write_text(text, encoding="utf-8")
            for name, content in (files or {}).items():
                (tmp / name).write_text(content, encoding="utf-8")
            if record_budget:
                image_budget.save(tmp)
        written[folder] = out / folder

    if adapter:  # the adapter trained, not a frozen copy a trainer kept beside it (TRL GRPO's reference, "ref")
        save(ADAPTER_DIR, model, selected_adapters=[model.active_adapter])
    if merged:
        dtype = resolve_merged_dtype(merged_dtype, model, base_config)
        full, lost = merge_in_dtype(model, dtype) if peft else (model.to(dtype), None)
        summary = merged_summary(full, dtype, checkpoint_dtype(base_config), lost)
        card = dataclasses.replace(card, sections={**card.sections, "Merged weights": summary})
        text = card.render()
        save(MERGED_DIR, full, files={**(folder_files or {}), MERGE_FILE: json.dumps(summary, indent=1) + "\n"})
    write_text_atomic(out / CARD_FILE, text)
    if adapter and merged:  # the adapter's card, written before the merge, with the merged weights' table too
        write_text_atomic(out / ADAPTER_DIR / CARD_FILE, text)
    return written


def checkpoint_config(reference: str | None):
    """The Hugging Face config of the checkpoint `reference` (a folder or a cached hub id), or None when it
    cannot be read (not given, not cached offline)."""
    if not reference:
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(reference)
    except (OSError, ValueError, KeyError):
        return None


def restore_inference_config(config, base_config) -> None:
    """Undo in `config` (the trained model's, saved with it) what training changed for training only: the HF
    `Trainer` sets `use_cache = False` (its `TrainingArguments.use_cache`), which a generative checkpoint (a
    judge, a reranker, a reasoner) then carries into `generate`. Each (sub-)config gets the base checkpoint's
    value back, or loses the key where the base has none (`base_config`; the library default, True, when the
    base cannot be read). Gradient checkpointing is a flag on the modules, not in the config, and is not saved."""
    for name in ("", *getattr(config, "sub_configs", {})):
        cfg = getattr(config, name, None) if name else config
        if cfg is None or not hasattr(cfg, "use_cache"):
            continue
        base = getattr(base_config, name, None) if name and base_config is not None else base_config
        if base is None or hasattr(base, "use_cache"):
            cfg.use_cache = getattr(base, "use_cache", True)
        elif "use_cache" in vars(cfg):
            delattr(cfg, "use_cache")


def save_processor(processor, folder) -> None:
    """`processor.save_pretrained(folder)` with its tokenizer's own padding side. A fast tokenizer's backend keeps the
    padding of its last padded call (a reranker's or a generator's `padding_side="left"`), `save_pretrained` writes it
    into tokenizer.json, and transformers takes the padding side from there at load: QA found the GRPO output loading
    left-padded, every other stage's output right-padded. The backend's padding is set back afterwards."""
    tok = getattr(processor, "tokenizer", processor)
    backend = getattr(tok, "_tokenizer", None)
    state = getattr(backend, "padding", None)
    if state is not None and state.get("direction") != tok.padding_side:
        backend.enable_padding(**{**state, "direction": tok.padding_side})
    try:
        processor.save_pretrained(str(folder))
    finally:
        if state is not None:
            backend.enable_padding(**state)


def checkpoint_dtype(config):
    """The torch dtype a checkpoint's config records, or None: its `dtype` (transformers reads a file's older
    `torch_dtype` into it), else its text config's — a Qwen3-VL release records it there only, and transformers then
    loads the weights in the dtype they are saved in, which the text config names."""
    import torch

    for cfg in (config, getattr(config, "text_config", None)):
        name = getattr(cfg, "dtype", None)  # never `torch_dtype`: the same value, with a deprecation warning
        if isinstance(name, str):
            name = getattr(torch, name, None)
        if isinstance(name, torch.dtype):
            return name
    return None


def _weights_dtype(model):
    """The dtype the model's (base) weights are held in: what `save_pretrained` writes as they are."""
    base = model.get_base_model() if is_peft(model) else model
    return base.dtype


def resolve_merged_dtype(choice: str, model, base_config):
    """The torch dtype of `--merged-dtype choice` (`MERGED_DTYPES`) for `model` trained from the checkpoint of
    `base_config`: auto → the dtype of the model's weights as trained; base → the base checkpoint's (when its
    config records none: as auto, with a warning); fp32 / bf16."""
    import torch

    if choice not in MERGED_DTYPES:
        raise ValueError(f"merged dtype {choice!r}: expected one of {', '.join(MERGED_DTYPES)}")
    if choice in _NAMED_DTYPES:
        return getattr(torch, _NAMED_DTYPES[choice])
    trained = _weights_dtype(model)
    if choice == "base":
        base = checkpoint_dtype(base_config)
        if base is not None:
            return base
        log.warning("--merged-dtype base: the base checkpoint's config records no dtype (or cannot be read); "
                    "merged/ is written in %s, the dtype trained in", _dtype_name(trained))
    return trained


def merge_in_dtype(model, dtype) -> tuple[Any, dict[str, Any] | None]:
    """`model`'s adapter merged into its base, the result in `dtype`, and how much of the update the rounding to
    `dtype` lost. Module by module (one module's weights at a time in fp32, never a second model copy): each
    adapted layer is merged in fp32 — ΔW = merged_fp32 − W, its base weight W — then cast to `dtype`; its loss is
    |(merged − W) − ΔW| / |ΔW|, computed in fp32. Returns the merged model and `{"modules": n, "median",
    "max", "overall"}` (overall: the root of the summed squared errors over that of the summed |ΔW|²; None
    without a non-zero update)."""
    import warnings

    import torch
    from peft.tuners.lora import LoraLayer

    per_module, err2, delta2 = [], 0.0, 0.0
    for layer in [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]:
        base = layer.get_base_layer()
        if not isinstance(getattr(base, "weight", None), torch.Tensor):
            continue  # merged by merge_and_unload below, unmeasured
        before = base.weight.detach().to(torch.float32, copy=True)
        layer.to(torch.float32)
        layer.merge()
        exact = base.weight.detach()
        delta = float((exact - before).norm()) ** 2
        del before
        base.to(dtype)
        err = float((base.weight.detach().to(torch.float32) - exact).norm()) ** 2
        if delta > 0:
            per_module.append((err / delta) ** 0.5)
        err2, delta2 = err2 + err, delta2 + delta
    with warnings.catch_warnings():  # PEFT: "All adapters are already merged" for each layer merged above
        warnings.filterwarnings("ignore", message="All adapters are already merged")
        merged = model.merge_and_unload().to(dtype)
    if not per_module:
        return merged, None
    per_module.sort()
    n = len(per_module)
    median = per_module[n // 2] if n % 2 else (per_module[n // 2 - 1] + per_module[n // 2]) / 2
    return merged, {"modules": n, "median": median, "max": per_module[-1], "overall": (err2 / delta2) ** 0.5}


def merged_summary(model, dtype, base_dtype, update_lost: dict[str, Any] | None = None, *, folder: str = "merged/",
                   base_choice: str = "--merged-dtype base",
                   advice: str = "Evaluate OUT/adapter instead, or export the merged weights in fp32 (--merged-dtype "
                                 "fp32)") -> dict[str, Any]:
    """The "Merged weights" table of the card, also logged: the dtype, the size of the weights, the base
    checkpoint's dtype when it differs, and the share of the LoRA update the rounding to `dtype` lost
    (`merge_in_dtype`; a warning above `UPDATE_LOSS_WARNING`). `folder` names the merged folder in the log,
    `base_choice` the option that writes the base's dtype, `advice` what to do instead of a lossy merge (a trainer's
    export: OUT/adapter, --merged-dtype; `unime reason add-emb`: its --dtype)."""
    seen, size = set(), 0
    for t in model.state_dict().values():  # tied weights are written once
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            size += t.numel() * t.element_size()
    table: dict[str, Any] = {"dtype": _dtype_name(dtype), "size": _size_text(size), "bytes": size}
    if base_dtype is not None and base_dtype != dtype:
        table["base checkpoint dtype"] = f"{_dtype_name(base_dtype)} (differs: {base_choice} writes the base's)"
    if update_lost is not None:
        table["LoRA update lost to rounding"] = update_lost
    lost = update_lost_text(table)
    log.info("%s: %s, %s%s%s", folder, table["dtype"], table["size"],
             f" (the base checkpoint is {_dtype_name(base_dtype)})" if "base checkpoint dtype" in table else "",
             f"; {lost}" if lost else "")
    if update_lost is not None and update_lost["overall"] > UPDATE_LOSS_WARNING:
        log.warning("%s in %s lost %.0f%% of the trained LoRA update to rounding: it is not the model trained. %s",
                    folder, table["dtype"], 100 * update_lost["overall"], advice)
    return table


def update_lost_text(summary: Mapping[str, Any]) -> str:
    """The share of the LoRA update a merge's rounding lost, from its `merged_summary` table (unime_merge.json), as
    the log says it; "" when the table has none (no adapter, or a zero update)."""
    lost = summary.get("LoRA update lost to rounding")
    if lost is None:
        return ""
    return (f"rounding lost {lost['overall']:.1%} of the LoRA update's norm (|(merged - base) - dW| / |dW| over "
            f"{lost['modules']} modules: median {lost['median']:.1%}, max {lost['max']:.1%})")


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _size_text(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@dataclass
class ModelCard:
    """README.md of a trained folder: Hugging Face front matter, a title, what the model is and how to load
    it, then one key | value table per section (data, loss, hyper-parameters, LoRA, final metrics)."""

    title: str
    base_model: str
    summary: str                                        # one paragraph: the command and what the model does
    usage: str                                          # a Python snippet
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)   # heading → table (empty ones left out)
    pipeline_tag: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = ["---", "library_name: transformers", f"base_model: {self.base_model}"]
        if self.pipeline_tag:
            lines.append(f"pipeline_tag: {self.pipeline_tag}")
        lines += ["tags:", *[f"- {t}" for t in ["unime", *self.tags] if t], "---", "", f"# {self.title}", "",
                  self.summary, "", "```python", self.usage.strip("\n"), "```"]
        for heading, table in self.sections.items():
            if table:
                lines += ["", f"## {heading}", "| key | value |", "|---|---|",
                          *[f"| {k} | {_fmt(v)} |" for k, v in table.items()]]
        if self.notes:
            lines += ["", "## Notes", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|")
