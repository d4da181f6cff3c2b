"""Listwise reranking: the reranker's greedy answers one prompt at a time for all `max_new_tokens`, against
batches of prompts that stop once `Ans: (k)` is complete (what `Reranker.pick_many` does).

    python bench/reranker_generation.py --demo runs/demo                 # a demo run that trained its reranker
    python bench/reranker_generation.py --demo runs/demo --queries 96 --batch-sizes 1 4 8 16

The prompts are the demo's own eval rows: for each query of the world's MMEB-style tasks (round-robin over the
tasks), the first `--topk` of its candidates, shown to the demo's reranker as `unime eval --rerank` shows an
embedder's top k. Modes, on the same prompts one after the other:
- one by one, all tokens: one `generate` per prompt, `max_new_tokens` new tokens (the reranker before);
- batch B, stop: `generate_texts` with `batch_size` B and the stop rule (`listwise_answer_done`).
Every mode's parsed picks are compared with the first mode's (greedy decoding: equal up to float rounding).

Time: CPU time of this process (`time.process_time`) with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def eval_prompts(world: Path, n: int, topk: int):
    from unime.data.items import Item

    tasks = sorted((world / "eval" / "mmeb").glob("*.jsonl"))
    rows = [[json.loads(line) for line in t.read_text(encoding="utf-8").splitlines() if line.strip()] for t in tasks]

    def item(text: str, image: str) -> Item:
        return Item(text=text.replace("<|image_1|>\n", "").replace("<|image_1|>", ""), images=[image] if image else [])

    out = []
    for i in range(n):
        task = rows[i % len(rows)]
        r = task[(i // len(rows)) % len(task)]
        query = item(r["qry_text"], r.get("qry_img_path") or "")
        cands = [item(t, p) for t, p in zip(r["tgt_text"], r["tgt_img_path"])][:topk]
        out.append((query, cands))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="a demo output folder (reranker/, world/)")
    ap.add_argument("--queries", type=int, default=96)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    args = ap.parse_args()

    import torch

    from unime.models.generation import generate_texts
    from unime.models.rerank_prompts import parse_listwise_answer
    from unime.models.reranker import Reranker

    torch.set_num_threads(1)
    demo = Path(args.demo)
    rr = Reranker.from_pretrained(demo / "reranker", data_root=demo / "world", device="cpu")
    prompts = eval_prompts(demo / "world", args.queries, args.topk)
    segs = [rr.listwise_segments(q, c) for q, c in prompts]

    t = time.process_time()
    before = [o[0] for o in generate_texts(rr.model, rr.adapter, segs, device="cpu", batch_size=1,
                                           max_new_tokens=rr.max_new_tokens, assistant_prefix=rr.answer_prefix)]
    base = time.process_time() - t
    picks = [parse_listwise_answer(a) for a in before]
    print(f"{len(prompts)} listwise prompts of {args.topk} candidates, max_new_tokens {rr.max_new_tokens}, one thread")
    print(f"{'mode':<28} {'CPU s':>7} {'per query':>10} {'speed-up':>9} {'same picks':>11}")
    print(f"{'one by one, all tokens':<28} {base:7.2f} {base / len(prompts) * 1e3:8.1f}ms {1.0:9.2f} {'-':>11}")
    for b in args.batch_sizes:
        rr.batch_size = b
        t = time.process_time()
        answers = rr.generate_answers([q for q, _ in prompts], [c for _, c in prompts])
        s = time.process_time() - t
        same = sum(parse_listwise_answer(a) == p for a, p in zip(answers, picks))
        print(f"{f'batch {b}, stop':<28} {s:7.2f} {s / len(prompts) * 1e3:8.1f}ms {base / s:9.2f} "
              f"{f'{same}/{len(picks)}':>11}")


if __name__ == "__main__":
    main()
