"""Helpers shared by the tests of `unime.models` (imported by test modules, never a test module itself)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def sharpen(model, seed: int = 0) -> None:
    """Re-initialise a tiny model's matrices at a larger scale so that logit margins are O(1): with the
    factory's small init every margin is ~0.05, and a wrong (spatial or temporal) position would hide below
    a test's tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.2 / p.shape[-1] ** 0.5, generator=g)


def in_a_hub_cache(folder: Path, cache: Path, repo_id: str, monkeypatch, *,
                   not_fetched: dict[str, int] | None = None) -> None:
    """`folder`'s files as huggingface_hub lays out a download of `repo_id` in `cache` (snapshots/<rev>/, refs/main),
    with `cache` as the Hugging Face cache and the hub offline. `not_fetched` (repo path → size): files the repo
    also holds, named in the cached listing of the repo's files (trees/<rev>.json) but not downloaded — offline,
    huggingface_hub's snapshot_download refuses the snapshot as incomplete unless its allow_patterns leave them
    out."""
    import json

    import huggingface_hub.constants

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("1" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    if not_fetched:
        files = {f.relative_to(snapshot).as_posix(): f.stat().st_size for f in snapshot.rglob("*") if f.is_file()}
        listing = {name: {"size": size, "blob_id": f"{i:040x}"} for i, (name, size) in
                   enumerate({**files, **not_fetched}.items())}
        (repo / "trees").mkdir()
        (repo / "trees" / ("1" * 40 + ".json")).write_text(json.dumps({"format_version": 1, "files": listing}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# The chat sampling defaults of released Instruct checkpoints' generation_config.json
CHAT_GENERATION_CONFIGS = {
    "qwen2_vl_instruct": {"do_sample": True, "top_k": 1, "top_p": 0.001, "temperature": 0.01,
                          "repetition_penalty": 1.05},
    "qwen3_vl_instruct": {"do_sample": True, "top_k": 20, "top_p": 0.8, "temperature": 0.7,
                          "repetition_penalty": 1.0},
}


def with_chat_generation_config(model_dir: str | Path, out: Path, shape: str = "qwen2_vl_instruct") -> str:
    """A copy of the model folder `model_dir` in `out` whose generation_config.json carries the chat defaults of a
    released Instruct checkpoint (`CHAT_GENERATION_CONFIGS[shape]`) besides its own fields."""
    import json

    shutil.copytree(model_dir, out)
    path = out / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **CHAT_GENERATION_CONFIGS[shape]}, indent=2))
    return str(out)
