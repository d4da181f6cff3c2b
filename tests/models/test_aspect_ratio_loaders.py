"""Every loader that gives images to a model's processor is built by the shared helpers (`ImageBudget.image_loader`,
`image_budget.adapter_image_loader`, `loading.checkpoint_image_loader`), so none forgets the processors' 200:1
aspect-ratio limit: the pretraining stages (captioning, vision tagging) refuse a 2000x8 image naming it instead of
ending in transformers' bare 'absolute aspect ratio must be smaller than 200' ValueError."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from PIL import Image

from unime.errors import DataError

SRC = Path(__file__).resolve().parents[2] / "src" / "unime"

# the places that may call ImageLoader(...) or one of its subclasses (`loader_classes`) themselves, and why (none
# hands its images to a model's processor without a limit)
ALLOWED = {
    "models/image_budget.py",  # the helpers themselves
    "models/loading.py",  # checkpoint_image_loader with no checkpoint: no model sees the images
    "models/embedding_cache.py",  # digests image bytes for the cache key
    "data/file_tools.py",  # `unime data check`: no model
    "data/import_collection.py",  # imports files, no model
    "data/collections.py",  # reads collections, no model
    "data/images.py",  # the class itself
    "eval/tasks.py",  # the default when no model loader is given (an eval without a model's processor)
    "eval/reference.py",  # the CNN reference: resizes to a fixed square itself, no Qwen processor
    "eval/rerun.py",  # digests the task images for eval_run.json, no model
    "embed_rl/tcot_embedder.py",  # `unime reason materialize`: crops evidence into records, no model
    "reasoning/teacher.py",  # `unime reason teacher`: opens the images it writes T-CoTs for, to check them; no model
    "serve/inputs.py",  # request images under Limits.max_aspect_ratio (the served models' strictest limit)
    "serve/engine.py",  # InlineOnlyLoader (reads no file) with the embedder's own loader's max_aspect_ratio
    "index/store.py",  # `unime search --image`: the file decoded before the model loads, to name it; the embedder's
                       # own loader then reads its bytes
}


def _src_texts() -> dict[str, str]:
    return {path.relative_to(SRC).as_posix(): path.read_text(encoding="utf-8") for path in sorted(SRC.rglob("*.py"))}


def _called_name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def loader_classes(trees: dict[str, ast.Module]) -> set[str]:
    """`ImageLoader` and the names of the classes of `trees` that subclass it, directly or through another."""
    bases = {node.name: {_called_name(b) for b in node.bases} for tree in trees.values() for node in ast.walk(tree)
             if isinstance(node, ast.ClassDef)}
    names = {"ImageLoader"}
    while True:
        more = {name for name, of in bases.items() if of & names} - names
        if not more:
            return names
        names |= more


def _image_loader_calls(texts: dict[str, str]):
    """(file, line) of each call of `ImageLoader` or a subclass of it (`loader_classes`) in `texts` {file: source}."""
    trees = {rel: ast.parse(text) for rel, text in texts.items()}
    names = loader_classes(trees)
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node.func) in names:
                yield rel, node.lineno


def test_the_walk_finds_calls_of_image_loader_subclasses():
    """A subclass (`InlineOnlyLoader` of the service) escaped the walk, which looked for the name `ImageLoader`
    only: a loader built by hand through a subclass, in any file, is found too."""
    texts = {"a.py": "from unime.data.images import ImageLoader\n\nclass Wide(ImageLoader):\n    pass\n",
             "b.py": "from a import Wide\n\nclass Wider(Wide):\n    pass\n\nWider(root='.')\nx = a.Wide()\n"
                     "ImageLoader()\nprint(len('Wide'))\n"}
    assert loader_classes({k: ast.parse(v) for k, v in texts.items()}) == {"ImageLoader", "Wide", "Wider"}
    assert list(_image_loader_calls(texts)) == [("b.py", 6), ("b.py", 7), ("b.py", 8)]


def test_no_image_loader_is_built_by_hand_outside_the_allowed_places():
    calls = list(_image_loader_calls(_src_texts()))
    assert {rel for rel, _ in calls} <= ALLOWED, [c for c in calls if c[0] not in ALLOWED]
    assert {"models/image_budget.py", "serve/engine.py"} <= {rel for rel, _ in calls}  # the walk does find calls


@pytest.fixture
def wide_corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    Image.new("RGB", (64, 64), (0, 0, 200)).save(root / "ok.png")
    Image.new("RGB", (2000, 8), (200, 0, 0)).save(root / "wide.png")
    return root


def test_the_captioning_stage_names_an_image_over_the_processors_limit(tiny_model_dir, wide_corpus, tmp_path):
    from unime.demo.captioning import train_captioner

    pairs = [("ok.png", "a blue square"), ("wide.png", "a red strip")]
    with pytest.raises(DataError, match=r"record wide.png, field 'image'.*image wide.png is 2000x8: its long side is "
                       r"250 times its short side, over the 200"):
        train_captioner(tiny_model_dir("qwen2_vl"), wide_corpus, pairs, tmp_path / "out", steps=1, batch_size=1,
                        lr=1e-3, seed=0, device="cpu", progress=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_the_tagging_stage_names_an_image_over_the_processors_limit(tiny_model_dir, wide_corpus, tmp_path):
    from unime.demo.vision_tagging import train_tagger

    rows = [("ok.png", ["blue"]), ("wide.png", ["red"])]
    with pytest.raises(DataError, match=r"record wide.png, field 'image'.*image wide.png is 2000x8: its long side is "
                       r"250 times its short side, over the 200"):
        train_tagger(tiny_model_dir("qwen2_vl"), wide_corpus, rows, tmp_path / "out", steps=1, batch_size=1,
                     lr=1e-3, seed=0, device="cpu", progress=lambda m: None)
    assert not (tmp_path / "out").exists()
