"""GPU smoke test: the tiny models through unime's real commands on CUDA, one PASS/FAIL line per check
(`bench/gpu_smoke.sh`).

    python bench/gpu_smoke.py                      # CUDA; without a GPU it says so and exits 0
    python bench/gpu_smoke.py --processes 2        # also torchrun with 2 processes (NCCL), if 2 GPUs are visible
    python bench/gpu_smoke.py --device cpu --quick --family qwen2_vl   # the same code paths on CPU (fp32), fastest

Each check prints `PASS <family> <check>: <figures>` or `FAIL <family> <check>: <figures>`; the exit status is 1
if any check fails. Library checks:
- bf16+sdpa: the embedder loads in bf16 with SDPA attention; its vectors agree with fp32 on CPU (min cosine);
- judge fast path: the shared-prefix fast path equals the per-pair reference, max |delta P(Yes)| in fp32 and
  (where the device has bf16) in bf16, each against its tolerance;
- gradcache: GradCache gradients equal one plain backward (fp32, LoRA with dropout; max relative difference);
- encode throughput: items/s (bf16 on GPU, batch 16);
- peak memory: `torch.cuda.max_memory_allocated` of one LoRA step next to `unime plan`'s estimate (GPU only).
Command checks (the trainers through `unime ...` as a user types them, bf16 where the device supports it, a few
steps each: each must exit 0, log a finite loss at every step, and move its trained weights):
- train embedder (LoRA + GradCache), train reranker (LoRA) and its listwise pick (`generate`), train judge (LoRA),
  train reasoner --stage sft and `unime reason generate` (the reasoner's T-CoT `generate`) from it,
  train reasoner --stage grpo (EG-RL on TRL, skipped by --quick);
- with --processes 2: `torchrun --nproc-per-node 2` of train embedder and of mine (NCCL on GPUs, gloo on CPU); mine
  must keep the records one process keeps on the same inputs (not all: a query the δ rule leaves without any
  candidate is dropped, SPEC 1.4; the line names each dropped record and why).
The tolerances are `TOLERANCES` below (--tolerance NAME=VALUE replaces one, e.g. to see a check fail).
On the CPU at one thread: --quick on one family about 45 s; the default run (3 families, GRPO) about 2.5 minutes;
--processes 2 adds about 2.5 minutes per family (mine also runs once as one process, to compare).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
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
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (130, 40, 160), "orange": (240, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15)}
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass
class Smoke:
    """One family's run: where its tiny model and data are, the device, the settings of the command checks."""

    family: str
    model_dir: str
    device: str
    work: Path
    steps: int = 2
    processes: int = 1
    quick: bool = False
    dtype: str = "fp32"  # what the commands and the inference checks run in: bf16 or fp32
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
    colours = list(COLOURS)[:6]
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


# -- library checks ----------------------------------------------------------------------------------------------

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
    items = _items(64 if ctx.quick else 256, seed=3)
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


# -- command checks ----------------------------------------------------------------------------------------------

def write_smoke_data(root: Path) -> dict[str, str]:
    """Colour swatches and the files the commands read: records (a text query, its swatch as positive, three other
    swatches as judge-scored negatives) and the reasoner's T-CoTs of both sides of each record."""
    from PIL import Image

    from unime.data.io import write_records
    from unime.data.items import Item, Record
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows
    from unime.reasoning.tcot import render_tcot

    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "images" / f"{name}.png")

    def swatch(name):
        return Item(text="<|image_1|>", images=(f"images/{name}.png",))

    records = [Record(query=Item(text=f"a {name} square"), positive=swatch(name),
                      negatives=[swatch(names[(i + d) % len(names)]) for d in (1, 2, 3)], positive_score=0.9,
                      negative_scores=[0.1, 0.3, 0.2], dataset="colours", id=f"r{i}")
               for i, name in enumerate(names)]
    write_records(records, root / "records.jsonl")
    tcot = render_tcot({"bbox_2d": [[10, 10, 40, 40]]}, "The image shows a coloured square.", "coloured square")
    write_tcot_rows([TCoTRow(r.id, side, item, tcot, source="smoke") for r in records
                     for side, item in (("query", r.query), ("target", r.positive))], root / "tcots.jsonl")
    return _data_files(root)


def _data_files(root: Path) -> dict[str, str]:
    return {"records": str(root / "records.jsonl"), "tcots": str(root / "tcots.jsonl"), "root": str(root)}


def _run_unime(argv: list[str]) -> int:
    """`unime ARGV` in this process (the command line's own entry point); its exit status (also of a usage error,
    which argparse raises as SystemExit)."""
    from unime.cli import main

    try:
        return main(["--log-level", "WARNING", *argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def _torchrun_unime(ctx: Smoke, argv: list[str], log: Path) -> int:
    """`torchrun --standalone --nproc-per-node N -m unime ARGV` (the documented launch); its exit status, output in
    `log` (its tail printed on failure)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ctx.processes),
           "-m", "unime", "--log-level", "WARNING", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=900).returncode
    if code:
        print(log.read_text()[-3000:], flush=True)
    return code


def _curve_figures(out: Path, steps: int) -> tuple[bool, str]:
    """The run's curves.csv: a finite loss logged at each of its `steps` steps."""
    from unime.models.curves import read_curves_csv

    path = out / "curves.csv"
    if not path.is_file():
        return False, f"no {path.name}"
    losses = [r["loss"] for r in read_curves_csv(path) if "loss" in r]
    ok = len(losses) == steps and all(math.isfinite(v) for v in losses)
    return ok, f"{len(losses)} of {steps} steps logged, loss " + " ".join(f"{v:.4f}" for v in losses)


def _moved(trained: Path, base: str | None) -> tuple[bool, str]:
    """Did training move the weights? An adapter: its largest |lora_B| (0 at the start) > 0; a merged model: its
    largest change from `base`."""
    from safetensors.torch import load_file

    adapter = trained / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        weights = load_file(adapter)
        moved = max((float(w.abs().max()) for k, w in weights.items() if "lora_B" in k), default=0.0)
        return moved > 0, f"max |lora_B| {moved:.2e}"
    merged = load_file(trained / "merged" / "model.safetensors")
    start = load_file(Path(base) / "model.safetensors")
    moved = max((float((merged[k].float() - start[k].float()).abs().max()) for k in merged if k in start),
                default=0.0)
    return moved > 0, f"max weight change {moved:.2e}"


def _trainer_check(ctx: Smoke, name: str, argv: list[str], out: Path, steps: int, *, base: str | None = None,
                   torchrun: bool = False) -> bool:
    t0 = time.perf_counter()
    code = _torchrun_unime(ctx, argv, out.with_suffix(".log")) if torchrun else _run_unime(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        return _line(ctx, name, False, f"exit status {code} after {seconds:.0f} s")
    curves_ok, curves = _curve_figures(out, steps)
    moved_ok, moved = _moved(out, base)
    return _line(ctx, name, curves_ok and moved_ok, f"{ctx.dtype}, {curves}; {moved}; {seconds:.1f} s")


def _data(ctx: Smoke) -> dict[str, str]:
    root = ctx.work / "data"
    return _data_files(root) if (root / "records.jsonl").is_file() else write_smoke_data(root)


def _common(ctx: Smoke) -> list[str]:
    return ["--device", ctx.device, "--dtype", ctx.dtype]


def _embedder_argv(ctx: Smoke, out: Path, batch_size: int) -> list[str]:
    data = _data(ctx)
    return ["train", "embedder", "--model", ctx.model_dir, "--records", data["records"], "--out", str(out),
            "--hard-negatives", "3", "--batch-size", str(batch_size), "--gradcache", "--chunk-size", "2",
            "--steps", str(ctx.steps), "--lr", "1e-3", "--warmup", "0", "--lora-r", "8", "--logging-steps", "1",
            *_common(ctx)]


def check_train_embedder(ctx: Smoke) -> bool:
    out = ctx.work / "embedder"
    return _trainer_check(ctx, "train embedder (LoRA + GradCache)", _embedder_argv(ctx, out, 4), out, ctx.steps)


def check_train_reranker_and_pick(ctx: Smoke) -> bool:
    from unime.data.items import Item
    from unime.models.reranker import Reranker

    data, out = _data(ctx), ctx.work / "reranker"
    argv = ["train", "reranker", "--model", ctx.model_dir, "--records", data["records"], "--out", str(out),
            "--negatives", "2", "--batch-size", "2", "--steps", str(ctx.steps), "--lr", "1e-3", "--warmup", "0",
            "--lora-r", "8", "--logging-steps", "1", *_common(ctx)]
    ok = _trainer_check(ctx, "train reranker", argv, out, ctx.steps)
    if not ok:
        return False
    rr = Reranker.from_pretrained(out, device=ctx.device, dtype=ctx.dtype, data_root=data["root"])
    cands = [Item(text="<|image_1|>", images=(f"images/{c}.png",)) for c in ("red", "blue", "green")]
    t0 = time.perf_counter()
    picks = rr.listwise_picks([Item(text="a blue square")], [cands])
    pick = picks[0]
    good = pick is not None and 0 <= pick.index < len(cands)
    return _line(ctx, "reranker listwise pick (generate)", good,
                 f"picked {None if pick is None else pick.index} of {len(cands)} (source "
                 f"{None if pick is None else pick.source}), {time.perf_counter() - t0:.2f} s")


def check_train_judge(ctx: Smoke) -> bool:
    data, out = _data(ctx), ctx.work / "judge"
    argv = ["train", "judge", "--model", ctx.model_dir, "--records", data["records"], "--out", str(out),
            "--batch-size", "4", "--steps", str(ctx.steps), "--lr", "1e-3", "--lora-r", "8", "--logging-steps", "1",
            "--save-adapter", *_common(ctx)]
    return _trainer_check(ctx, "train judge", argv, out, ctx.steps)


def check_reasoner_sft_and_tcot(ctx: Smoke) -> bool:
    from unime.reasoning.reasoner import read_tcot_rows

    data, out = _data(ctx), ctx.work / "reasoner_sft"
    argv = ["train", "reasoner", "--stage", "sft", "--model", ctx.model_dir, "--tcots", data["tcots"],
            "--out", str(out), "--max-steps", str(ctx.steps), "--batch-size", "4", "--lora-r", "8",
            *_common(ctx)]
    if not _trainer_check(ctx, "train reasoner --stage sft", argv, out, ctx.steps):
        return False
    tcots = ctx.work / "tcots_generated.jsonl"
    argv = ["reason", "generate", "--model", str(out), "--records", data["records"], "--max-new-tokens", "8",
            "--batch-size", "4", "--out", str(tcots), *_common(ctx)]
    t0 = time.perf_counter()
    code = _run_unime(argv)
    rows = read_tcot_rows(tcots) if code == 0 else []
    n_records = sum(1 for _ in open(data["records"]))
    return _line(ctx, "reason generate (T-CoT generate)", code == 0 and len(rows) == 2 * n_records,
                 f"exit status {code}, {len(rows)} T-CoTs for {n_records} records x 2 sides, "
                 f"{time.perf_counter() - t0:.1f} s")


def check_reasoner_grpo(ctx: Smoke) -> bool:
    from unime.models.prompts import EMB_TOKEN
    from unime.models.tiny import build_tiny

    if ctx.quick:
        return _line(ctx, "train reasoner --stage grpo", None, "skipped by --quick")
    data, out = _data(ctx), ctx.work / "reasoner_grpo"
    embedder = str(build_tiny(ctx.family, ctx.work / "emb_model", extra_tokens=[EMB_TOKEN]))
    argv = ["train", "reasoner", "--stage", "grpo", "--model", ctx.model_dir, "--embedder", embedder,
            "--records", data["records"], "--out", str(out), "--max-steps", "1", "--num-generations", "2",
            "--max-completion-length", "4", "--lora-r", "8", *_common(ctx)]
    return _trainer_check(ctx, "train reasoner --stage grpo", argv, out, 1)


def _torchrun_setup(ctx: Smoke, command: str) -> tuple[str, Smoke | None]:
    """A torchrun check's name and the `ctx` of its launch (--device cuda: each process takes its cuda:LOCAL_RANK,
    and cuda:N is refused there); None, after its SKIP line, when it cannot run here."""
    import torch

    cuda = ctx.device.startswith("cuda")
    name = f"torchrun x{ctx.processes} {command} ({'NCCL' if cuda else 'gloo'})"
    if ctx.processes < 2:
        why = "needs --processes 2"
    elif cuda and torch.cuda.device_count() < ctx.processes:
        why = f"{torch.cuda.device_count()} GPU(s) visible, {ctx.processes} needed"
    else:
        return name, replace(ctx, device="cuda") if cuda else ctx
    _line(ctx, name, None, why)
    return name, None


def check_torchrun_train_embedder(ctx: Smoke) -> bool:
    name, ctx = _torchrun_setup(ctx, "train embedder")
    if ctx is None:
        return True
    out = ctx.work / "embedder_ddp"
    return _trainer_check(ctx, name, _embedder_argv(ctx, out, 2), out, ctx.steps, torchrun=True)


def _mine_argv(ctx: Smoke, out: Path) -> list[str]:
    data = _data(ctx)
    return ["mine", "--records", data["records"], "--embedder", ctx.model_dir, "--judge", ctx.model_dir,
            "--out", str(out), "--k", "4", "--count", "2", "--shard-size", "2", "--device", ctx.device,
            "--dtype", ctx.dtype]


def dropped_records(out: Path) -> dict[str, str]:
    """The records a finished `unime mine` run in `out` left out of mined.parquet, each with why (SPEC 1.4): no
    candidate retrieved (every pool item but the positive at or above the positive's similarity: the δ rule leaves
    nothing to judge, not even a random fallback to draw), or none survived the false-negative filter under
    `--fallback drop`."""
    import pyarrow.parquet as pq

    from unime.data.io import read_records
    from unime.mining.stages import read_retrieval

    stats = json.loads((out / "stats.json").read_text())
    kept = set(pq.read_table(out / "mined.parquet", columns=["id"]).column("id").to_pylist())
    retrieval = read_retrieval(out / "retrieval.parquet")
    why = {}
    for i, rec in enumerate(read_records(stats["config"]["records"])):
        name = rec.id or f"index {i + 1}"
        if name in kept:
            continue
        if len(retrieval.candidate_ids[i]) == 0:
            why[name] = (f"no candidate retrieved ({retrieval.n_above_positive[i]} of {stats['pool_size']} pool items "
                         f"at or above its positive's similarity)")
        else:
            why[name] = "no candidate survived the false-negative filter (--fallback drop)"
    return why


def compare_mined(out: Path, reference: Path) -> tuple[bool, str]:
    """A torchrun run of `unime mine` (`out`) against one process's on the same inputs (`reference`): it passes when
    it keeps the same records. Not every record need be kept: `dropped_records` says why each was left out."""
    ours, theirs = dropped_records(out), dropped_records(reference)
    n = json.loads((out / "stats.json").read_text())["records"]
    same = ours.keys() == theirs.keys()
    figures = f"{n - len(ours)} of {n} records mined"
    if same:
        identical = (out / "mined.parquet").read_bytes() == (reference / "mined.parquet").read_bytes()
        figures += f", as one process ({'identical' if identical else 'different'} mined.parquet)"
    else:
        figures += f", one process {n - len(theirs)}"
        lost, extra = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
        figures += "".join(f"; {label}: {', '.join(names)}" for label, names in
                           (("dropped here, kept by one process", lost), ("kept here, dropped by one process", extra))
                           if names)
    if ours:
        figures += "; dropped " + "; ".join(f"{name}: {reason}" for name, reason in ours.items())
    return same, figures


def check_torchrun_mine(ctx: Smoke) -> bool:
    """`unime mine` under torchrun, then as one process on the same inputs: the same records must be mined (records
    without any candidate are dropped by both, SPEC 1.4; the figures name them and why)."""
    import pyarrow.parquet as pq

    name, ctx = _torchrun_setup(ctx, "mine")
    if ctx is None:
        return True
    out, one = ctx.work / "mined", ctx.work / "mined_one_process"
    t0 = time.perf_counter()
    code = _torchrun_unime(ctx, _mine_argv(ctx, out), ctx.work / "mined.log")
    if code != 0:
        return _line(ctx, name, False, f"exit status {code}")
    seconds = time.perf_counter() - t0
    code = _run_unime(_mine_argv(ctx, one))
    if code != 0:
        return _line(ctx, name, False, f"the one-process run to compare with: exit status {code}")
    ranks = sorted({pq.read_schema(p).metadata[b"unime.rank"].decode() for p in (out / "judge").glob("*.parquet")})
    stats = json.loads((out / "stats.json").read_text())
    same, figures = compare_mined(out, one)
    return _line(ctx, name, same and ranks == [str(r) for r in range(ctx.processes)] and stats["mined"] > 0,
                 f"{figures}; judge shards written by ranks {','.join(ranks)}, "
                 f"{stats['judge']['pairs_requested']} pairs judged, {seconds:.1f} s")


LIBRARY_CHECKS = (check_bf16_sdpa, check_judge, check_gradcache, check_encode, check_memory)
COMMAND_CHECKS = (check_train_embedder, check_train_reranker_and_pick, check_train_judge, check_reasoner_sft_and_tcot,
                  check_reasoner_grpo, check_torchrun_train_embedder, check_torchrun_mine)
CHECKS = {f.__name__.removeprefix("check_"): f for f in LIBRARY_CHECKS + COMMAND_CHECKS}


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
    ap.add_argument("--quick", action="store_true",
                    help="fastest mode: 1 training step per trainer, fewer items to encode, no GRPO")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto (default): bf16 on a GPU that has it, else fp32; bf16 on CPU runs the bf16 paths slowly")
    ap.add_argument("--processes", type=int, default=1,
                    help="also run train embedder and mine under torchrun with this many processes (2: NCCL on 2 "
                         "GPUs, gloo on CPU)")
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
            work = Path(tmp) / family
            ctx = Smoke(family=family, model_dir=str(build_tiny(family, work / "model")), device=args.device,
                        work=work, steps=1 if args.quick else 2, processes=args.processes, quick=args.quick,
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
