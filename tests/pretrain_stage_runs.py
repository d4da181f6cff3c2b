"""Shared by the tests of the pretrained base's optional stages (captioning, tagging)."""

from __future__ import annotations

import hashlib

from unime.demo.pretrain import PretrainRecipe, pretrain


def weights_hash(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def stage_on_twice_and_off(tmp_path, **changes):
    """The quick recipe with `changes` pretrained twice and without them once (one thread, as in conftest):
    checks that the stage is deterministic, changes the base and leaves no work folder. Returns (on, off)."""
    quick = PretrainRecipe.preset("quick")
    first = pretrain(quick.replace(**changes), out=tmp_path / "a", progress=lambda m: None)
    twin = pretrain(quick.replace(**changes), out=tmp_path / "b", progress=lambda m: None)
    plain = pretrain(quick, out=tmp_path / "c", progress=lambda m: None)
    assert weights_hash(first.model) == weights_hash(twin.model)
    assert weights_hash(first.model) != weights_hash(plain.model)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # work folders gone
    return first, plain
