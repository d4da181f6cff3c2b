"""The service's encoder call on a dynamic batch of short queries and one long text: one padded forward (every
row padded to the long text's length) against `Engine.encode`'s token batches (`--max-batch-tokens`: by length,
at most that many padded tokens per forward).

    python bench/serve_batch_padding.py                          # a tiny Qwen2-VL built in a temporary folder
    python bench/serve_batch_padding.py --model base --short 31 --long-tokens 2000 --repeats 5

Time: CPU time of this process (`time.process_time`) with one torch thread, median over `--repeats` calls, the two
ways run one after the other on the same items, so other jobs on a shared machine distort the ratio little. Also
printed: the language-model tokens per call, padded and real.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="an embedder checkpoint (default: a tiny Qwen2-VL built for the run)")
    ap.add_argument("--short", type=int, default=31, help="short queries in the batch")
    ap.add_argument("--long-tokens", type=int, default=2000, help="tokens of the long text (emoji: 4 tokens each)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from unime.data.items import Item
    from unime.models.embedder import Embedder
    from unime.serve.engine import Engine

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from unime.models.tiny import build_tiny

            model = str(build_tiny("qwen2_vl", f"{tmp}/model"))
        emb = Embedder.from_pretrained(model, device="cpu")
        items = [Item(text=f"query number {i}: a red square") for i in range(args.short)]
        items.append(Item(text="\N{ROCKET}" * (args.long_tokens // 4)))
        padded = {"one forward": None, "token batches": args.max_batch_tokens}
        engines = {name: Engine(emb, "m", max_batch_tokens=cap) for name, cap in padded.items()}
        times: dict[str, list[float]] = {name: [] for name in engines}
        shapes: dict[str, list[int]] = {}
        real = emb.build_inputs

        def build_inputs(batch, **kw):
            inputs = real(batch, **kw)
            shapes.setdefault(current, []).append(tuple(inputs["input_ids"].shape))
            return inputs

        emb.build_inputs = build_inputs
        try:
            for r in range(args.repeats + 1):  # the first round warms up
                for name, engine in engines.items():
                    current = name if r == 0 else "_"
                    t0 = time.process_time()
                    engine.encode(items)
                    if r:
                        times[name].append(time.process_time() - t0)
        finally:
            for engine in engines.values():
                engine.close()
        real_tokens = sum(e.tokens for e in engines["one forward"].encode(items))
        print(f"{args.short} short queries + 1 text of {args.long_tokens} tokens ({real_tokens} real tokens in all), "
              f"one torch thread, median of {args.repeats}:")
        base = statistics.median(times["one forward"])
        for name in engines:
            t = statistics.median(times[name])
            padded_tokens = sum(b * n for b, n in shapes[name])
            print(f"  {name:14s} forwards {shapes[name]}: {padded_tokens} padded tokens, {t * 1000:.0f} ms "
                  f"({base / t:.2f}x)")


if __name__ == "__main__":
    main()
