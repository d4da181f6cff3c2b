"""GradCache: gradients with caching equal gradients without it, on a tiny Qwen2-VL with LoRA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from unime.data.items import Item
from unime.models.lora import LoraSettings, apply_lora
from unime.train.gradcache import GradCache, RandomState
from unime.train.losses import InfoNCELoss, SymmetricKLLoss

N_QUERIES, GROUP = 4, 3  # 4 queries, each with a positive and 2 hard negatives → 16 items


def _image(colour: str, shape: str) -> Image.Image:
    img = Image.new("RGB", (56, 56), "white")
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)([8, 8, 48, 48], fill=colour)
    return img


def _items() -> list[Item]:
    queries = [Item("<|image_1|>\nRepresent the given image: what shape is shown?", (_image(c, s),))
               for c, s in (("red", "circle"), ("blue", "square"), ("green", "circle"), ("black", "square"))]
    cands = []
    for c, s in (("red", "circle"), ("blue", "square"), ("green", "circle"), ("black", "square")):
        cands += [Item(f"a {c} {s}"), Item(f"a {c} {'square' if s == 'circle' else 'circle'}"),
                  Item("", (_image("yellow", s),))]
    return queries + cands


SCORES = torch.tensor([[1.0, 0.3, 0.6], [1.0, 0.2, 0.7], [0.9, 0.4, 0.5], [1.0, 0.0, 0.8]])


def _embedder(model_dir: str, dropout: float):
    from unime.models.embedder import Embedder

    emb = Embedder.from_pretrained(model_dir, device="cpu", trainable=True)
    torch.manual_seed(0)
    emb.model = apply_lora(emb.model, LoraSettings(r=4, alpha=8, dropout=dropout))
    emb.model.train()
    return emb


def _loss_fn(reps: torch.Tensor) -> torch.Tensor:
    return SymmetricKLLoss(0.05, eps=0.0)(reps[:N_QUERIES], reps[N_QUERIES:].reshape(N_QUERIES, GROUP, -1), SCORES)


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _chunks(emb, items, size):
    return [emb.build_inputs(items[s:s + size]) for s in range(0, len(items), size)]


def _plain(emb, chunks, loss_fn=_loss_fn):
    loss = loss_fn(torch.cat([emb.forward(c) for c in chunks]))
    loss.backward()
    return float(loss), _grads(emb.model)


def _cached(emb, chunks, loss_fn=_loss_fn, restore_rng=True):
    loss = GradCache(restore_rng=restore_rng).loss(emb.forward, chunks, loss_fn)
    loss.backward()
    return float(loss), _grads(emb.model)


def _max_rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)) for k in a)


@pytest.fixture(scope="module")
def dropout_embedder(tiny_model_dir):
    return _embedder(tiny_model_dir("qwen2_vl"), dropout=0.1)


def test_random_state_replays_draws_and_restores_the_stream():
    torch.manual_seed(3)
    state = RandomState(torch.zeros(2))
    first = torch.rand(5)
    after = torch.get_rng_state()
    with state.replay():
        again = torch.rand(5)
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), after)  # the global stream continues as if nothing was replayed


def test_gradcache_equals_plain_backward_with_lora_dropout(dropout_embedder):
    emb = dropout_embedder
    items = _items()
    chunks = _chunks(emb, items, 5)  # 4 chunks of 5, 5, 5, 1 items, each with its own padding
    assert len(chunks) == 4
    torch.manual_seed(11)
    loss_ref, g_ref = _plain(emb, chunks)
    torch.manual_seed(11)
    loss_gc, g_gc = _cached(emb, chunks)
    assert loss_gc == pytest.approx(loss_ref, rel=1e-6)
    assert len(g_ref) == 2 * 2 * 7  # lora_A + lora_B of 7 projections in 2 decoder layers
    assert _max_rel_diff(g_gc, g_ref) < 1e-4
    # without restoring the RNG the replay draws other dropout masks: the gradient is wrong
    torch.manual_seed(11)
    loss_bad, g_bad = _cached(emb, chunks, restore_rng=False)
    assert loss_bad == pytest.approx(loss_ref, rel=1e-6)
    assert _max_rel_diff(g_bad, g_ref) > 1e-2
    # and dropout is really active: another seed gives another gradient
    torch.manual_seed(12)
    _, g_other = _plain(emb, chunks)
    assert _max_rel_diff(g_other, g_ref) > 1e-2


def test_gradcache_equals_one_full_batch_forward_without_dropout(tiny_model_dir):
    emb = _embedder(tiny_model_dir("qwen2_vl"), dropout=0.0)
    items = _items()
    loss_full, g_full = _plain(emb, _chunks(emb, items, len(items)))  # one forward, one padding
    loss_gc, g_gc = _cached(emb, _chunks(emb, items, 3))
    assert loss_gc == pytest.approx(loss_full, rel=1e-5)
    assert _max_rel_diff(g_gc, g_full) < 1e-4
    # in-batch InfoNCE couples every item of the batch: still equal
    infonce = InfoNCELoss(0.05)

    def nce(reps):
        return infonce(reps[:N_QUERIES], reps[N_QUERIES:].reshape(N_QUERIES, GROUP, -1))

    loss_full, g_full = _plain(emb, _chunks(emb, items, len(items)), nce)
    loss_gc, g_gc = _cached(emb, _chunks(emb, items, 4), nce)
    assert loss_gc == pytest.approx(loss_full, rel=1e-5)
    assert _max_rel_diff(g_gc, g_full) < 1e-4


def test_gradcache_composes_with_gradient_accumulation(tiny_model_dir):
    """Two micro-batches of 2 queries, each loss divided by 2 before backward (what the trainer does),
    accumulate the gradient of the 4-query batch (symmetric KL has no in-batch terms)."""
    emb = _embedder(tiny_model_dir("qwen2_vl"), dropout=0.0)
    items = _items()
    queries, cands = items[:N_QUERIES], items[N_QUERIES:]
    _, g_full = _plain(emb, _chunks(emb, items, len(items)))
    losses = []
    for half in (0, 1):
        qs = queries[2 * half:2 * half + 2]
        cs = cands[2 * half * GROUP:(2 * half + 2) * GROUP]
        scores = SCORES[2 * half:2 * half + 2]

        def half_loss(reps, scores=scores):
            return SymmetricKLLoss(0.05, eps=0.0)(reps[:2], reps[2:].reshape(2, GROUP, -1), scores)

        loss = GradCache().loss(emb.forward, _chunks(emb, qs + cs, 3), half_loss)
        (loss / 2).backward()
        losses.append(float(loss))
    g_acc = _grads(emb.model)
    assert _max_rel_diff(g_acc, g_full) < 1e-4


def test_no_grad_path_and_no_sync_contexts():
    """Without grad the loss is computed directly; `no_sync` wraps every replayed chunk but the last."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5))
    chunks = [torch.randn(2, 3) for _ in range(3)]
    entered = []

    class Ctx:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    loss_fn = lambda reps: reps.pow(2).mean()  # noqa: E731
    with torch.no_grad():
        out = GradCache().loss(layer, chunks, loss_fn)
    assert not out.requires_grad
    torch.manual_seed(5)
    ref = loss_fn(torch.cat([layer(c) for c in chunks]))
    ref.backward()
    g_ref = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    torch.manual_seed(5)
    GradCache().loss(layer, chunks, loss_fn, no_sync=Ctx).backward()
    assert len(entered) == 2
    for n, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, g_ref[n])
