"""The final folders of the reasoner's SFT and GRPO stages: the one export of every trainer
(`unime.models.export.export_final`: OUT/adapter for LoRA runs, OUT/merged, OUT/README.md) with the
reasoner's model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unime.models.export import ModelCard, export_final
from unime.models.lora import LoraSettings
from unime.models.run_state import is_peft

STAGES = {"sft": ("Reasoner (unime, Embed-RL cold-start SFT)",
                  "next-token cross-entropy on the assistant tokens of teacher T-CoTs"),
          "grpo": ("Reasoner (unime, Embed-RL embedder-guided GRPO)",
                   "GRPO with format, outcome (embedding margin) and process rewards")}


def export_reasoner(model, processor, out: str | Path, *, stage: str, options: dict[str, Any],
                    results: dict[str, Any], origin: dict[str, str | None], image_budget=None,
                    dtype=None) -> dict[str, Path]:
    """Export the trained reasoner of `stage` ("sft" | "grpo") with its card: the run's `options` (the
    stage's config), `results` (its summary figures) and `origin`, the model its weights start from
    (`unime.models.loading.LoadedModel.origin`: the card's and the adapter's base model, not --model's run folder,
    and the adapter it started from). `image_budget`, the run's `ImageBudget`, is recorded in OUT and its folders
    (`unime_images.json`) when set. `dtype`, the run's (compute) dtype: a fully fine-tuned model, trained on fp32
    master weights (`unime.models.loading.training_load_dtype`), is cast to it first under --merged-dtype auto, so
    that merged/ is written in the dtype the run computed in, as a LoRA run's merge is (in its base's dtype)."""
    title, objective = STAGES[stage]
    lora = {k: options[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_vision")
            if k in options} if options.get("lora_r") else {}
    if origin.get("started_from_adapter"):  # trained with the adapter's own LoRA, not the stage's defaults
        own = LoraSettings.of_peft_model(model)
        lora = {"lora_r": own.r, "lora_alpha": own.alpha, "lora_dropout": own.dropout, "lora_targets": own.targets,
                "lora_vision": own.vision, **({"dora": True} if own.dora else {})}
    hyper = {k: v for k, v in options.items() if not k.startswith("lora_") and k not in ("model", "out")}
    started = {"started from adapter": origin["started_from_adapter"]} if origin.get("started_from_adapter") else {}
    card = ModelCard(
        title=title, base_model=origin["base_model"],
        summary=f"Trained from `{options['model']}` with `unime train reasoner --stage {stage}`: {objective}. "
                "It writes a T-CoT (reasoning, then the summary the T-CoT embedder embeds) for a query or candidate.",
        usage='from unime.reasoning.reasoner import Reasoner\nr = Reasoner.from_pretrained("merged")\n'
              'tcots = r.generate([{"text": "a red circle"}], "query")',
        sections={"Results": results, "Hyper-parameters": hyper, "LoRA": {**started, **lora}},
        tags=["reasoner", "embed-rl"],
        notes=["Curves: curves.csv" + (", reward_log.csv, reward_curves.png, completions.jsonl" if stage == "grpo"
                                       else ", curves.png") + "; configuration: train_config.json."])
    model.train(False)
    if dtype is not None and options.get("merged_dtype", "auto") == "auto" and not is_peft(model):
        model = model.to(dtype)
    return export_final(model, processor, out, card=card, base_model=origin["base_model"], image_budget=image_budget,
                        merged_dtype=options.get("merged_dtype", "auto"))
