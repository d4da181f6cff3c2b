"""Helpers shared by the tests of `unime.models` (imported by test modules, never a test module itself)."""

from __future__ import annotations

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
