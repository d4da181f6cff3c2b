"""unime: universal multimodal embeddings and rerankers with an MLLM judge (UniME-V2),
and reasoning-driven embedders trained with embedder-guided RL (Embed-RL)."""

__version__ = "0.1.0"

__all__ = ["Embedder", "Item", "__version__"]


def __getattr__(name):  # lazy: importing unime must not import torch
    if name == "Embedder":
        from unime.models.embedder import Embedder

        return Embedder
    if name == "Item":
        from unime.data.items import Item

        return Item
    raise AttributeError(name)
