"""unime: universal multimodal embeddings and rerankers with an MLLM judge (UniME-V2),
and reasoning-driven embedders trained with embedder-guided RL (Embed-RL)."""

import warnings

__version__ = "0.1.0"

# PEFT (get_peft_model, PeftModel.from_pretrained; also inside TRL's trainers) reads transformers' deprecated
# `is_gradient_checkpointing`, which warns on every LoRA model built; nothing a user of unime can change
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__all__ = ["Embedder", "Item", "JudgeScorer", "Reranker", "__version__"]

# the public classes and where they live, imported on first use: importing unime must not import torch
_PUBLIC = {"Embedder": "unime.models.embedder", "Item": "unime.data.items", "JudgeScorer": "unime.models.judge",
           "Reranker": "unime.models.reranker"}


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'unime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
