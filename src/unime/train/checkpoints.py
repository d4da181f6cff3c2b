"""Trainable weights of an embedder run: resumable checkpoints and the final folders (LoRA: `unime.models.lora`).

Final output of `unime train embedder --out DIR`:

    DIR/adapter/   PEFT adapter folder (LoRA runs) + processor + README.md
    DIR/merged/    the base model with the adapter merged in (or the fully fine-tuned model): an
                   ordinary Hugging Face folder (`AutoModelForImageTextToText.from_pretrained`,
                   `Embedder.from_pretrained`) + processor + README.md
    DIR/README.md  the model card (data, loss, hyper-parameters, final metrics)

Every file and folder is written to a temporary sibling and moved into place (`unime.data.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unime.data.atomic import atomic_dir, atomic_open

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
CHECKPOINTS_DIR = "checkpoints"
FULL_STATE_FILE = "trainable_state.safetensors"  # resumable state of a full fine-tuning run


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


# -- resumable checkpoints (inside the trainer's checkpoint-N folders) ---------------------------------
def save_training_weights(model, folder: str | os.PathLike) -> None:
    """The weights a resumed run needs: the adapter (LoRA) or every parameter (full fine-tuning)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(str(folder))
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / FULL_STATE_FILE))


def load_training_weights(model, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    if is_peft(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{folder}: adapter weights do not fit the model: {unexpected[:5]}")
    else:
        from safetensors.torch import load_model

        path = folder / FULL_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {FULL_STATE_FILE} (not a full fine-tuning checkpoint?)")
        load_model(model, str(path), strict=True)


def complete_checkpoints(checkpoint_root: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders the trainer finished writing (its `trainer_state.json` is written last),
    by step."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit():
            if (p / "trainer_state.json").is_file():
                found.append((int(p.name[len("checkpoint-"):]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_root: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(checkpoint_root)
    return done[-1] if done else None


# -- final folders -----------------------------------------------------------------------------------
def export_final(model, processor, out_dir: str | os.PathLike, *, card: str, image_budget=None) -> dict[str, Path]:
    """Write DIR/adapter (PEFT runs), DIR/merged and DIR/README.md, each atomically. Merging modifies
    `model` in place (call it last). Returns the written folders. `image_budget` (the run's
    `ImageBudget`, if set) is recorded in each folder (`unime_images.json`) for eval / mining / serving;
    the processor saved alongside already carries its pixel bounds."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    record_budget = image_budget is not None and image_budget.is_set
    if record_budget:
        image_budget.save(out)
    if is_peft(model):
        with atomic_dir(out / ADAPTER_DIR, overwrite=True) as tmp:
            model.save_pretrained(str(tmp))
            processor.save_pretrained(str(tmp))
            (tmp / "README.md").write_text(card, encoding="utf-8")
            if record_budget:
                image_budget.save(tmp)
        written["adapter"] = out / ADAPTER_DIR
        model = model.merge_and_unload()
    with atomic_dir(out / MERGED_DIR, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if record_budget:
            image_budget.save(tmp)
    written["merged"] = out / MERGED_DIR
    write_text_atomic(out / "README.md", card)
    return written


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# -- model card --------------------------------------------------------------------------------------
@dataclass
class ModelCard:
    base_model: str
    data: dict[str, Any]
    loss: dict[str, Any]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    lora: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        def table(d: dict[str, Any]) -> str:
            rows = ["| key | value |", "|---|---|"]
            rows += [f"| {k} | {_fmt(v)} |" for k, v in d.items()]
            return "\n".join(rows)

        tags = ["unime", "embedding", "multimodal", self.loss.get("name", "")]
        lines = [
            "---",
            "library_name: transformers",
            f"base_model: {self.base_model}",
            "pipeline_tag: feature-extraction",
            "tags:",
            *[f"- {t}" for t in tags if t],
            "---",
            "",
            "# Universal multimodal embedder (unime, UniME-V2 stage D)",
            "",
            f"Fine-tuned from `{self.base_model}` with `unime train embedder`. The embedding of an item is the "
            "L2-normalised last-layer hidden state at the last token (or at `<emb>` if the tokenizer has it).",
            "",
            "```python",
            "from unime import Embedder",
            "emb = Embedder.from_pretrained(\"merged\")   # or the adapter folder",
            "vecs = emb.encode([{\"text\": \"a red circle\"}, {\"image\": \"img.png\"}])",
            "```",
            "",
            "## Data",
            table(self.data),
            "",
            "## Loss",
            table(self.loss),
            "",
            "## Hyper-parameters",
            table(self.hyperparameters),
        ]
        if self.lora:
            lines += ["", "## LoRA", table(self.lora)]
        lines += ["", "## Final metrics (training)", table(self.metrics)]
        if self.notes:
            lines += ["", "## Notes", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|")
