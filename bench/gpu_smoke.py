"""GPU smoke test: the tiny models on CUDA, one line of figures per check (`bench/gpu_smoke.sh`).

    python bench/gpu_smoke.py                 # CUDA; without a GPU it says so and exits 0
    python bench/gpu_smoke.py --device cpu    # the same checks on CPU (fp32; no bf16/peak-memory figures)

Checks (each prints `CHECK <name>: <figures> -> ok|FAIL`):
- bf16+sdpa: the embedder loads in bf16 with SDPA attention; its vectors agree with fp32 (cosine);
- judge: the shared-prefix fast path equals the per-pair reference (fp32, max |delta P(Yes)|; bf16 figure too);
- gradcache: GradCache gradients equal one plain backward (fp32, LoRA with dropout; max relative diff);
- encode: embedder throughput (items/s, bf16, batch 16);
- memory: peak `torch.cuda.max_memory_allocated` of one training step (LoRA, bf16 autocast, GradCache
  chunk 2) next to `unime plan`'s estimate for the same step.
Under 8 minutes on one GPU (about one minute on a recent one); the exit status is 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _items(n: int, seed: int = 0):
    import random

    from PIL import Image

    from unime.data.items import Item

    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["square", "circle", "triangle"]
    out = []
    for i in range(n):
        c, s = rng.choice(colours), rng.choice(shapes)
        text = f"a {c} {s} on a grey background"
        if i % 3 == 2:
            out.append(Item(text=text))
        else:
            size = rng.choice([(224, 224), (280, 140), (140, 280)])
            out.append(Item(text=text if i % 3 else "", images=(Image.new("RGB", size, c),)))
    return out


def _line(name: str, ok: bool, figures: str) -> bool:
    print(f"CHECK {name}: {figures} -> {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def check_bf16_sdpa(model_dir: str, device: str) -> bool:
    import numpy as np

    from unime.models.embedder import Embedder

    items = _items(24)
    ref = Embedder.from_pretrained(model_dir, device="cpu", dtype="fp32").encode(items, batch_size=8)
    dtype = "bf16" if device.startswith("cuda") else "fp32"
    emb = Embedder.from_pretrained(model_dir, device=device, dtype=dtype)
    attn = getattr(emb.model.config, "_attn_implementation", "?")
    vec = emb.encode(items, batch_size=8)
    cos = (vec * ref).sum(axis=1)
    ok = attn == "sdpa" and float(np.min(cos)) > 0.99
    return _line("bf16+sdpa", ok, f"dtype {dtype}, attention {attn}, cosine vs fp32 cpu min {np.min(cos):.5f} "
                                  f"mean {np.mean(cos):.5f} over {len(items)} items")


def check_judge(model_dir: str, device: str) -> bool:
    import numpy as np

    from unime.models.judge import JudgeScorer

    items = _items(12, seed=1)
    query, cands = items[0], items[1:]
    figures, ok = [], True
    for dtype in ("fp32", "bf16") if device.startswith("cuda") else ("fp32",):
        judge = JudgeScorer.from_pretrained(model_dir, device=device, dtype=dtype, chunk_size=4)
        t0 = time.perf_counter()
        fast = judge.score_candidates(query, cands)
        t1 = time.perf_counter()
        ref = judge.score_pairs_reference([(query, c) for c in cands])
        t2 = time.perf_counter()
        diff = float(np.max(np.abs(fast - ref)))
        if dtype == "fp32":
            ok = diff < 1e-4
        figures.append(f"{dtype} max |fast - per-pair| {diff:.2e} (fast {t1 - t0:.2f} s, per-pair {t2 - t1:.2f} s)")
    return _line("judge fast path", ok, f"{len(cands)} candidates; " + "; ".join(figures))


def check_gradcache(model_dir: str, device: str) -> bool:
    import torch

    from unime.models.embedder import Embedder
    from unime.models.lora import LoraSettings, apply_lora
    from unime.train.gradcache import GradCache

    items = _items(12, seed=2)
    emb = Embedder.from_pretrained(model_dir, device=device, dtype="fp32", trainable=True)
    torch.manual_seed(0)
    emb.model = apply_lora(emb.model, LoraSettings(r=4, alpha=8, dropout=0.1)).to(device)
    emb.model.train()
    chunks = [emb.build_inputs(items[s:s + 4]) for s in range(0, len(items), 4)]
    target = torch.randn(len(items), emb.model.config.text_config.hidden_size, device=device,
                         generator=torch.Generator(device=device).manual_seed(0))

    def loss_fn(reps):
        return ((reps @ target.T.float()).softmax(-1).diagonal().log().neg()).mean()

    def grads():
        out = {n: p.grad.detach().clone() for n, p in emb.model.named_parameters() if p.grad is not None}
        emb.model.zero_grad(set_to_none=True)
        return out

    state = torch.random.get_rng_state(), (torch.cuda.get_rng_state() if device.startswith("cuda") else None)
    plain = loss_fn(torch.cat([emb.forward(c) for c in chunks]))
    plain.backward()
    g_plain = grads()
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])
    cached = GradCache().loss(emb.forward, chunks, loss_fn)
    cached.backward()
    g_cached = grads()
    rel = max(float((g_cached[k] - g_plain[k]).abs().max() / (g_plain[k].abs().max() + 1e-12)) for k in g_plain)
    l_plain, l_cached = float(plain.detach()), float(cached.detach())
    ok = g_plain.keys() == g_cached.keys() and rel < 1e-3 and abs(l_cached - l_plain) < 1e-5
    return _line("gradcache", ok, f"{len(items)} items in chunks of 4, LoRA dropout 0.1: loss {l_plain:.6f} vs "
                                  f"{l_cached:.6f}, max relative gradient difference {rel:.2e} over "
                                  f"{len(g_plain)} tensors")


def check_encode(model_dir: str, device: str) -> bool:
    import torch

    from unime.models.embedder import Embedder

    dtype = "bf16" if device.startswith("cuda") else "fp32"
    emb = Embedder.from_pretrained(model_dir, device=device, dtype=dtype)
    items = _items(256, seed=3)
    emb.encode(items[:16], batch_size=16)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vec = emb.encode(items, batch_size=16)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return _line("encode throughput", vec.shape[0] == len(items),
                 f"{len(items) / dt:.1f} items/s ({dtype}, batch 16, {len(items)} items, 2/3 with an image)")


def check_memory(model_dir: str, device: str) -> bool:
    import torch

    from unime.models.embedder import Embedder
    from unime.train.memory_plan import plan_embedder
    from unime.models.lora import LoraSettings, apply_lora
    from unime.train.gradcache import GradCache

    if not device.startswith("cuda"):
        return _line("peak memory", True, "skipped on CPU (no allocator statistics)")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    emb = Embedder.from_pretrained(model_dir, device=device, dtype="bf16", trainable=True)
    emb.model = apply_lora(emb.model, LoraSettings(r=16, alpha=64, dropout=0.1)).to(device)
    emb.model.train()
    texts = ["a red square on a grey background"] * 4
    from PIL import Image

    from unime.data.items import Item

    items = [Item(text=t, images=(Image.new("RGB", (224, 224), "red"),)) for t in texts]
    chunks = [emb.build_inputs(items[s:s + 2]) for s in range(0, len(items), 2)]
    seq = int(chunks[0]["input_ids"].shape[1])
    visual = emb.adapter.count_visual_tokens(chunks[0]["input_ids"]) // 2
    opt = torch.optim.AdamW([p for p in emb.model.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = GradCache().loss(emb.forward, chunks, lambda r: r.float().pow(2).sum())
    loss.backward()
    opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    plan = plan_embedder(model_dir, {"dtype": "bf16", "lora_r": 16, "lora_dropout": 0.1, "gradcache": True,
                                     "chunk_size": 2, "batch_size": 2, "hard_negatives": 0, "image_size": 224},
                         text_tokens=seq - visual, padded=False)
    ratio = plan.total / peak
    return _line("peak memory", 0.5 < ratio < 2.0,
                 f"one LoRA step (bf16 autocast, GradCache chunk 2, {seq} tokens per sequence): measured peak "
                 f"{peak / 2**20:.1f} MiB (resident {resident / 2**20:.1f} MiB), unime plan {plan.total / 2**20:.1f} "
                 f"MiB (plan / measured {ratio:.2f}; tiny models are dominated by allocator granularity)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--family", action="append", default=None,
                    help="tiny model families to run (default: qwen2_vl and qwen3_vl)")
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; nothing to check (run it on a GPU node, or --device cpu)")
        return 0
    from unime.models.tiny import build_tiny

    t_start = time.perf_counter()
    ok = True
    if args.device.startswith("cuda"):
        print(f"gpu_smoke: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="unime-gpu-smoke-") as tmp:
        for family in args.family or ["qwen2_vl", "qwen3_vl"]:
            model_dir = str(build_tiny(family, Path(tmp) / family))
            print(f"-- tiny {family}", flush=True)
            for check in (check_bf16_sdpa, check_judge, check_gradcache, check_encode, check_memory):
                try:
                    ok &= check(model_dir, args.device)
                except Exception as e:  # one failing check must not hide the others' figures
                    ok &= _line(check.__name__.removeprefix("check_"), False, f"{type(e).__name__}: {e}")
    print(f"gpu_smoke: {'all checks ok' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
