"""`unime reason ...`: T-CoTs for Embed-RL — write them (teacher / reasoner), split pairs by T-CoT match,
materialise reasoned records for the embedder trainer, add `<emb>`, evaluate with reasoning.
This module only parses options and calls the stage functions."""

from __future__ import annotations

import json

from unime.cli import add_config_option


def register(sub) -> None:
    p = sub.add_parser("reason", help="Embed-RL T-CoTs: teacher / generate / split / materialize / add-emb / eval")
    acts = p.add_subparsers(dest="reason_command", metavar="ACTION")

    s = acts.add_parser("teacher", help="ANNOTATION TEACHER (demo world only): T-CoTs written from the scene "
                                        "annotations, for cold-start training data")
    s.add_argument("--world", required=True, help="a generated world (unime data synth)")
    s.add_argument("--records", default=None, help="records to write T-CoTs for (default: WORLD/train/records.jsonl)")
    s.add_argument("--out", required=True, help="output T-CoT JSONL")
    s.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad records and records the world does not know (counted and reported) instead of "
                        "stopping at the first")
    add_config_option(s)
    s.set_defaults(func=_teacher)

    s = acts.add_parser("generate", help="a generative checkpoint writes T-CoTs for the queries and positives of records")
    s.add_argument("--model", required=True, help="reasoner / teacher checkpoint (HF folder or hub id)")
    s.add_argument("--records", required=True, help="records (unime JSONL / Parquet / UniME-V2 JSON)")
    s.add_argument("--data-root", default=None, help="folder image paths are relative to (default: the records' folder)")
    s.add_argument("--out", required=True, help="output T-CoT JSONL")
    s.add_argument("--sides", default="query,target", help="which sides to write (comma-separated: query,target)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--device", default=None)
    s.add_argument("--dtype", default="auto")
    add_config_option(s)
    s.set_defaults(func=_generate)

    s = acts.add_parser("split", help="judge whether each pair's query and positive T-CoTs match: matching pairs "
                                      "→ contrastive training, the rest → RL")
    s.add_argument("--records", required=True)
    s.add_argument("--tcots", required=True, help="T-CoT JSONL (teacher or generate)")
    s.add_argument("--judge", required=True, help="Yes/No judge checkpoint (JudgeScorer)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--threshold", type=float, default=0.5, help="match if P(Yes) >= threshold (default 0.5)")
    s.add_argument("--rl-fraction", type=float, default=None,
                   help="instead of --threshold: the given fraction of lowest-P(Yes) pairs goes to RL (for a judge "
                        "whose scores are not calibrated around 0.5; the paper reports ~0.2)")
    s.add_argument("--out-dir", required=True, help="writes contrastive.jsonl, rl.jsonl, split.json")
    s.add_argument("--device", default=None)
    s.add_argument("--dtype", default="auto")
    add_config_option(s)
    s.set_defaults(func=_split)

    s = acts.add_parser("materialize", help="records + T-CoTs → reasoned records (item, T-CoT, evidence crops as "
                                            "one item) for `unime train embedder`")
    s.add_argument("--records", required=True)
    s.add_argument("--tcots", required=True)
    s.add_argument("--data-root", default=None)
    s.add_argument("--out", required=True, help="output records (.parquet: evidence crops are stored inline)")
    add_config_option(s)
    s.set_defaults(func=_materialize)

    s = acts.add_parser("add-emb", help="copy a checkpoint with the <emb> token added (embeddings resized)")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="cpu")
    add_config_option(s)
    s.set_defaults(func=_add_emb)

    s = acts.add_parser("eval", help="evaluate an <emb> embedder on MMEB-format tasks with items embedded with T-CoTs")
    s.add_argument("--embedder", required=True)
    s.add_argument("--tasks", required=True, help="task config (e.g. WORLD/eval_tasks.yaml)")
    s.add_argument("--out", required=True)
    s.add_argument("--tcots", default="reasoner", choices=["reasoner", "none", "teacher"],
                   help="reasoner (generated), none (baseline: no reasoning), teacher (demo-world oracle that "
                        "reads the answers; reference only)")
    s.add_argument("--reasoner", default=None)
    s.add_argument("--world", default=None, help="the world, for --tcots teacher")
    s.add_argument("--only", default=None, help="comma-separated task names")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--max-new-tokens", type=int, default=160)
    s.add_argument("--device", default=None)
    s.add_argument("--dtype", default="auto")
    add_config_option(s)
    s.set_defaults(func=_eval)


def _root(args, path) -> str:
    from unime.data.roots import resolve_data_root

    return resolve_data_root(path, args.data_root)


def _teacher(args) -> int:
    from unime.reasoning.teacher import write_teacher_tcots

    n, n_records, skips = write_teacher_tcots(args.world, args.out, args.records, on_error=args.on_error)
    print(f"{args.out}: {n} T-CoTs from the annotation teacher ({n_records} records read"
          + (f"; skipped {skips.total}" if skips.total else "") + ")")
    if skips.total:
        print(skips.summary())
    return 0


def _generate(args) -> int:
    from unime.data.io import read_records
    from unime.reasoning.reasoner import Reasoner, TCoTRow, write_tcot_rows

    records = read_records(args.records)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    reasoner = Reasoner.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                        data_root=_root(args, args.records), batch_size=args.batch_size,
                                        max_new_tokens=args.max_new_tokens)
    jobs = [(rec.id or str(i), side, rec.query if side == "query" else rec.positive)
            for i, rec in enumerate(records) for side in sides]
    outs = reasoner.generate([j[2] for j in jobs], [j[1] for j in jobs], do_sample=args.sample,
                             temperature=args.temperature, show_progress=True)
    rows = [TCoTRow(rid, side, item, o[0], source=f"reasoner:{args.model}") for (rid, side, item), o in zip(jobs, outs)]
    n = write_tcot_rows(rows, args.out)
    from unime.reasoning.tcot import format_ok

    ok = sum(format_ok(r.tcot) for r in rows)
    print(f"{args.out}: {n} T-CoTs ({ok} in the T-CoT format)")
    return 0


def _split(args) -> int:
    from unime.embed_rl.tcot_embedder import split_records_file

    c = split_records_file(args.records, args.tcots, args.judge, args.out_dir, data_root=args.data_root,
                           threshold=args.threshold, rl_fraction=args.rl_fraction, device=args.device,
                           dtype=args.dtype)
    print(f"{c['pairs']} pairs: {c['contrastive']} contrastive ({100 * c['contrastive_fraction']:.1f}%), {c['rl']} RL")
    return 0


def _materialize(args) -> int:
    from unime.embed_rl.tcot_embedder import materialize_records_file

    n = materialize_records_file(args.records, args.tcots, args.out, data_root=args.data_root)
    print(f"{args.out}: {n} reasoned records")
    return 0


def _add_emb(args) -> int:
    from unime.embed_rl.tcot_embedder import prepare_emb_checkpoint

    print(prepare_emb_checkpoint(args.model, args.out, device=args.device))
    return 0


def _eval(args) -> int:
    from unime.embed_rl.tcot_embedder import evaluate_with_reasoning

    only = [t.strip() for t in args.only.split(",")] if args.only else None
    summary = evaluate_with_reasoning(args.embedder, args.tasks, args.out, tcots=args.tcots,
                                      reasoner_path=args.reasoner, world_root=args.world, only=only,
                                      batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                      max_new_tokens=args.max_new_tokens)
    agg = summary.get("aggregates", {}).get("mmeb", {})
    print(json.dumps(agg, indent=1))
    return 0
