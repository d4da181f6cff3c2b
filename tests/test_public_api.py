"""`from unime import Embedder, Item, JudgeScorer, Reranker`: the package's public classes, the same objects as in
their modules, imported on first use (importing unime imports no torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_public_classes_are_their_modules_classes():
    import unime
    from unime.data.items import Item
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer
    from unime.models.reranker import Reranker

    assert (unime.Embedder, unime.Item, unime.JudgeScorer, unime.Reranker) == (Embedder, Item, JudgeScorer, Reranker)
    assert sorted(unime.__all__) == ["Embedder", "Item", "JudgeScorer", "Reranker", "__version__"]
    with pytest.raises(AttributeError, match="module 'unime' has no attribute 'Rerankr'"):
        unime.Rerankr  # noqa: B018


def test_importing_unime_imports_no_torch():
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, unime; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.split() == ["False", "False"]
