"""unime: universal multimodal embeddings and rerankers with an MLLM judge (UniME-V2),
and reasoning-driven embedders trained with embedder-guided RL (Embed-RL)."""

import warnings

__version__ = "0.1.0"

# PEFT (get_peft_model, PeftModel.from_pretrained; also inside TRL's trainers) reads transformers' deprecated
# `is_gradient_checkpointing`, which warns on every LoRA model built; nothing a user of unime can change
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__all__ = ["Embedder", "Item", "__version__"]


def __getattr__(name):  # lazy: importing unime must not import torch
    if name == "Embedder":
        from unime.models.embedder import Embedder

        return Embedder
    if name == "Item":
        from unime.data.items import Item

        return Item
    raise AttributeError(name)
