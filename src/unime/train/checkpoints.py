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
from typing import Any, Mapping

from unime.data.atomic import atomic_dir, atomic_open
# resumable checkpoint weights and their discovery live with the resume convention (shared with embed_rl)
from unime.models.run_state import (CHECKPOINTS_DIR, FULL_STATE_FILE, ExactWeightsCheckpoints,  # noqa: F401
                                    complete_checkpoints, is_peft, latest_checkpoint, load_training_weights,
                                    save_training_weights)

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


# -- final folders -----------------------------------------------------------------------------------
def export_final(model, processor, out_dir: str | os.PathLike, *, card: str, adapter: bool | None = None,
                 merged: bool = True, image_budget=None, folder_files: Mapping[str, str] | None = None,
                 base_model: str | None = None) -> dict[str, Path]:
    """The final folders of every adapter-or-merged training stage (embedder, reranker / judge): DIR/adapter
    (`adapter`; default: whenever `model` is a PEFT model), DIR/merged (`merged`; the adapter merged in, or the
    fully fine-tuned model) and DIR/README.md (`card`), each written atomically. Each folder holds the model,
    the processor, README.md and `folder_files` (name → text). `image_budget` (the run's `ImageBudget`, if
    set) is recorded in DIR and each folder (`unime_images.json`) for eval / mining / serving; the processor
    saved alongside already carries its pixel bounds. `base_model`: how the adapter names its base model.
    Merging modifies `model` in place (done last). Returns the written folders by name."""
    from unime.outdir import require_replaceable

    from unime.models.image_budget import BUDGET_FILE

    out = Path(out_dir)
    peft = is_peft(model)
    adapter = peft if adapter is None else adapter
    if adapter and not peft:
        raise ValueError("no adapter to export: the model was fully fine-tuned")
    record_budget = image_budget is not None and image_budget.is_set
    for name in ((ADAPTER_DIR,) if adapter else ()) + ((MERGED_DIR,) if merged else ()) + ("README.md",) + \
            ((BUDGET_FILE,) if record_budget else ()):
        require_replaceable(out, name)  # never replace a merged/ or README.md this run's command did not write
    if peft and base_model is not None:
        model.peft_config["default"].base_model_name_or_path = base_model
    if record_budget:
        image_budget.save(out)
    written: dict[str, Path] = {}

    def save(folder: str, m) -> None:
        with atomic_dir(out / folder, overwrite=True) as tmp:
            m.save_pretrained(str(tmp))
            processor.save_pretrained(str(tmp))
            (tmp / "README.md").write_text(card, encoding="utf-8")
            for name, text in (folder_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            if record_budget:
                image_budget.save(tmp)
        written[folder] = out / folder

    if adapter:
        save(ADAPTER_DIR, model)
    if merged:
        save(MERGED_DIR, model.merge_and_unload() if peft else model)
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
