"""GPU smoke test: the tiny models on CUDA, one PASS/FAIL line per check (`bench/gpu_smoke.sh`).

    python bench/gpu_smoke.py                 # CUDA; without a GPU it says so and exits 0
    python bench/gpu_smoke.py --device cpu    # the same checks on CPU (fp32, or --dtype bf16; no peak memory)

Each check prints `PASS <family> <check>: <figures>` or `FAIL <family> <check>: <figures>`; the exit status is 1
if any check fails.
- bf16+sdpa: the embedder loads in bf16 with SDPA attention; its vectors agree with fp32 on CPU (min cosine);
- judge fast path: the shared-prefix fast path equals the per-pair reference, max |delta P(Yes)| in fp32 and
  (where the device has bf16) in bf16, each against its tolerance;
- gradcache: GradCache gradients equal one plain backward (fp32, LoRA with dropout; max relative difference);
- encode throughput: items/s (bf16 on GPU, batch 16);
- peak memory: `torch.cuda.max_memory_allocated` of one LoRA step next to `unime plan`'s estimate (GPU only).
The tolerances are `TOLERANCES` below (--tolerance NAME=VALUE replaces one, e.g. to see a check fail).
Under 8 minutes on one GPU (about one minute on a recent one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# what each check accepts (a figure beyond its tolerance fails the check)
TOLERANCES = {
    "embed_cosine": 0.99,  # min cosine of the device's (bf16) vectors vs fp32 CPU vectors
    "judge_fp32": 1e-4,  # max |fast path - per-pair| P(Yes), fp32
    "judge_bf16": 2e-2,  # the same in bf16 (8 mantissa bits: a P(Yes) near 0.5 moves by ~4e-3 per rounding)
    "gradcache_grad": 1e-3,  # max relative gradient difference, GradCache vs one plain backward (fp32)
    "gradcache_loss": 1e-5,  # |loss difference|, GradCache vs plain
    "memory_ratio": 2.0,  # unime plan / measured peak within [1/x, x]
}
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass
class Smoke:
    """One family's run: its tiny model, the device and dtype, the tolerances."""

    family: str
    model_dir: str
    device: str
    dtype: str = "fp32"  # what the inference checks run in: bf16 or fp32
    tol: dict = field(default_factory=lambda: dict(TOLERANCES))


def resolve_smoke_dtype(dtype: str, device: str) -> str:
    """auto: bf16 on a CUDA device that has it, else fp32."""
    import torch

    if dtype != "auto":
        return dtype
    return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"


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


def _line(ctx: Smoke, name: str, ok: bool | None, figures: str) -> bool:
    """One check's line: PASS / FAIL (ok None: SKIP, which does not fail the run). Returns whether it did not fail."""
    word = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    print(f"{word} {ctx.family} {name}: {figures}", flush=True)
    return ok is not False


def check_bf16_sdpa(ctx: Smoke) -> bool:
    import numpy as np

    from unime.models.embedder import Embedder

    items = _items(24)
    ref = Embedder.from_pretrained(ctx.model_dir, device="cpu", dtype="fp32").encode(items, batch_size=8)
    emb = Embedder.from_pretrained(ctx.model_dir, device=ctx.device, dtype=ctx.dtype)
    attn = getattr(emb.model.config, "_attn_implementation", "?")
    vec = emb.encode(items, batch_size=8)
    cos = (vec * ref).sum(axis=1)
    ok = attn == "sdpa" and float(np.min(cos)) > ctx.tol["embed_cosine"]
    return _line(ctx, "bf16+sdpa", ok, f"dtype {ctx.dtype}, attention {attn}, cosine vs fp32 cpu min {np.min(cos):.5f} "
                                       f"(tolerance > {ctx.tol['embed_cosine']}) mean {np.mean(cos):.5f} over "
                                       f"{len(items)} items")


def check_judge(ctx: Smoke) -> bool:
    import numpy as np

    from unime.models.judge import JudgeScorer

    items = _items(12, seed=1)
    query, cands = items[0], items[1:]
    figures, ok = [], True
    for dtype in ("fp32", "bf16") if ctx.dtype == "bf16" else ("fp32",):
        judge = JudgeScorer.from_pretrained(ctx.model_dir, device=ctx.device, dtype=dtype, chunk_size=4)
        t0 = time.perf_counter()
        fast = judge.score_candidates(query, cands)
        t1 = time.perf_counter()
        ref = judge.score_pairs_reference([(query, c) for c in cands])
        t2 = time.perf_counter()
        diff = float(np.max(np.abs(fast - ref)))
        tol = ctx.tol[f"judge_{dtype}"]
        ok &= diff < tol
        figures.append(f"{dtype} max |fast - per-pair| {diff:.2e} (tolerance {tol:.0e}; fast {t1 - t0:.2f} s, "
                       f"per-pair {t2 - t1:.2f} s)")
    return _line(ctx, "judge fast path", ok, f"{len(cands)} candidates; " + "; ".join(figures))


def check_gradcache(ctx: Smoke) -> bool:
    import torch

    from unime.models.embedder import Embedder
    from unime.models.lora import LoraSettings, apply_lora
    from unime.train.gradcache import GradCache

    device = ctx.device
    items = _items(12, seed=2)
    emb = Embedder.from_pretrained(ctx.model_dir, device=device, dtype="fp32", trainable=True)
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
    ok = (g_plain.keys() == g_cached.keys() and rel < ctx.tol["gradcache_grad"]
          and abs(l_cached - l_plain) < ctx.tol["gradcache_loss"])
    return _line(ctx, "gradcache", ok, f"{len(items)} items in chunks of 4, LoRA dropout 0.1: loss {l_plain:.6f} vs "
                                       f"{l_cached:.6f}, max relative gradient difference {rel:.2e} (tolerance "
                                       f"{ctx.tol['gradcache_grad']:.0e}) over {len(g_plain)} tensors")


def check_encode(ctx: Smoke) -> bool:
    import torch

    from unime.models.embedder import Embedder

    emb = Embedder.from_pretrained(ctx.model_dir, device=ctx.device, dtype=ctx.dtype)
    items = _items(256, seed=3)
    emb.encode(items[:16], batch_size=16)  # warm-up
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vec = emb.encode(items, batch_size=16)
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    ok = vec.shape[0] == len(items) and bool(torch.isfinite(torch.as_tensor(vec)).all())
    return _line(ctx, "encode throughput", ok, f"{len(items) / dt:.1f} items/s ({ctx.dtype}, batch 16, {len(items)} "
                                               f"items, 2/3 with an image)")


def check_memory(ctx: Smoke) -> bool:
    import torch
    from PIL import Image

    from unime.data.items import Item
    from unime.models.embedder import Embedder
    from unime.models.lora import LoraSettings, apply_lora
    from unime.train.gradcache import GradCache
    from unime.train.memory_plan import plan_embedder

    device, model_dir = ctx.device, ctx.model_dir
    if not device.startswith("cuda"):
        return _line(ctx, "peak memory", None, "on CPU (no allocator statistics)")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    emb = Embedder.from_pretrained(model_dir, device=device, dtype="bf16", trainable=True)
    emb.model = apply_lora(emb.model, LoraSettings(r=16, alpha=64, dropout=0.1)).to(device)
    emb.model.train()
    items = [Item(text="a red square on a grey background", images=(Image.new("RGB", (224, 224), "red"),))] * 4
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
    ratio, bound = plan.total / peak, ctx.tol["memory_ratio"]
    return _line(ctx, "peak memory", 1 / bound < ratio < bound,
                 f"one LoRA step (bf16 autocast, GradCache chunk 2, {seq} tokens per sequence): measured peak "
                 f"{peak / 2**20:.1f} MiB (resident {resident / 2**20:.1f} MiB), unime plan {plan.total / 2**20:.1f} "
                 f"MiB (plan / measured {ratio:.2f}; tiny models are dominated by allocator granularity)")


LIBRARY_CHECKS = (check_bf16_sdpa, check_judge, check_gradcache, check_encode, check_memory)
CHECKS = {f.__name__.removeprefix("check_"): f for f in LIBRARY_CHECKS}


def _tolerance(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in TOLERANCES:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(TOLERANCES)}, got {text!r}")
    return name, float(value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--family", action="append", default=None, choices=FAMILIES,
                    help=f"tiny model families to run (repeatable; default: {', '.join(FAMILIES)})")
    ap.add_argument("--checks", default=None,
                    help=f"comma-separated checks to run (default: all): {', '.join(CHECKS)}")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto (default): bf16 on a GPU that has it, else fp32; bf16 on CPU runs the bf16 paths slowly")
    ap.add_argument("--tolerance", action="append", type=_tolerance, default=[], metavar="NAME=VALUE",
                    help=f"replace a tolerance ({', '.join(f'{k}={v:g}' for k, v in TOLERANCES.items())})")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.checks.split(",")] if args.checks else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; nothing to check (run it on a GPU node, or --device cpu)")
        return 0
    from unime.models.tiny import build_tiny

    t_start = time.perf_counter()
    ok = True
    if args.device.startswith("cuda"):
        print(f"gpu_smoke: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), "
              f"torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="unime-gpu-smoke-") as tmp:
        for family in args.family or FAMILIES:
            ctx = Smoke(family=family, model_dir=str(build_tiny(family, Path(tmp) / family)), device=args.device,
                        dtype=resolve_smoke_dtype(args.dtype, args.device), tol={**TOLERANCES, **dict(args.tolerance)})
            print(f"-- tiny {family} on {args.device} ({ctx.dtype})", flush=True)
            for name in names:
                try:
                    ok &= CHECKS[name](ctx)
                except Exception as e:  # one failing check must not hide the others' figures
                    ok &= _line(ctx, name, False, f"{type(e).__name__}: {e}")
    print(f"gpu_smoke: {'PASS: all checks passed' if ok else 'FAIL: some checks failed'} in "
          f"{time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
