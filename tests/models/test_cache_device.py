"""The embedding cache is keyed by the device type the vectors are computed on (vectors computed on cuda and on cpu
differ in the last digits): cpu adds nothing to the key (the caches written so far keep theirs), another device type
(cuda, whichever cuda:N) gets its own cache folder. No GPU here: the device is forced on the embedder."""

from __future__ import annotations

from types import SimpleNamespace

from unime.models.embedding_cache import cache_settings


def _embedder(device, kernel="sdpa"):
    return SimpleNamespace(device=device, model=SimpleNamespace(config=SimpleNamespace(_attn_implementation=kernel)))


def test_the_device_type_is_in_the_cache_key_and_cpu_keeps_the_key_as_before():
    identity = {"pooling": "last", "dtype": "bf16", "instruction_suffix": "", "normalize": True}
    assert cache_settings(identity, _embedder("cpu")) == identity
    assert cache_settings(identity, _embedder(None)) == identity  # no device known: as before
    assert cache_settings(identity, _embedder("cuda")) == {**identity, "device": "cuda"}
    # the device's type, not its index: cuda:1 computes what cuda:0 does
    assert cache_settings(identity, _embedder("cuda:1")) == cache_settings(identity, _embedder("cuda:0")) == \
        {**identity, "device": "cuda"}
    assert cache_settings(identity, _embedder("mps")) == {**identity, "device": "mps"}
    # beside the kernel: both in the key
    assert cache_settings(identity, _embedder("cuda", "flash_attention_2")) == \
        {**identity, "attn_implementation": "flash_attention_2", "device": "cuda"}
    assert cache_settings(identity, _embedder("cpu", "eager")) == {**identity, "attn_implementation": "eager"}


def test_a_loaded_embedder_on_cpu_keeps_its_key_and_the_same_one_on_cuda_gets_another(tiny_model_dir):
    import torch

    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings

    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu")
    identity = embedding_settings(emb)
    assert cache_settings(identity, emb) == identity
    emb.device = torch.device("cuda", 0)  # forced: what a cuda run's embedder holds (no GPU here to run it)
    assert cache_settings(identity, emb) == {**identity, "device": "cuda"}
