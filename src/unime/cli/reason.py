"""`unime reason ...`: T-CoTs for Embed-RL — write them (teacher / reasoner), split pairs by T-CoT match,
materialise reasoned records for the embedder trainer, add `<emb>`, evaluate with reasoning.
This module only parses options and calls the stage functions; each command's options are declared on its
config (`unime.reasoning.teacher`, `unime.reasoning.reasoner`, `unime.embed_rl.tcot_embedder`)."""

from __future__ import annotations

import json

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args
from unime.models.image_budget import IMAGE_GROUP

# action -> (config "module:class", help)
ACTIONS = {
    "teacher": ("unime.reasoning.teacher:TeacherConfig", "ANNOTATION TEACHER (demo world only): T-CoTs written "
                "from the scene annotations, for cold-start training data"),
    "generate": ("unime.reasoning.reasoner:GenerateConfig",
                 "a generative checkpoint writes T-CoTs for the queries and positives of records"),
    "split": ("unime.embed_rl.tcot_embedder:SplitConfig", "judge whether each pair's query and positive T-CoTs "
              "match: matching pairs → contrastive training, the rest → RL"),
    "materialize": ("unime.embed_rl.tcot_embedder:MaterializeConfig", "records + T-CoTs → reasoned records (item, "
                    "T-CoT, evidence crops as one item) for `unime train embedder`"),
    "add-emb": ("unime.embed_rl.tcot_embedder:AddEmbConfig",
                "copy a checkpoint with the <emb> token added (embeddings resized)"),
    "eval": ("unime.embed_rl.tcot_embedder:ReasonEvalConfig",
             "evaluate an <emb> embedder on MMEB-format, MMEB-V2 (video) and qrels tasks with items embedded "
             "with T-CoTs"),
}


def _config_class(action: str):
    import importlib

    module, name = ACTIONS[action][0].split(":")
    return getattr(importlib.import_module(module), name)


def register(sub) -> None:
    p = sub.add_parser("reason", help="Embed-RL T-CoTs: teacher / generate / split / materialize / add-emb / eval")
    acts = p.add_subparsers(dest="reason_command", metavar="ACTION")
    for action, (_, help_text) in ACTIONS.items():
        s = acts.add_parser(action, help=help_text)
        # the image and video groups of the commands with them
        add_options(s, _config_class(action), groups=(IMAGE_GROUP, "video"))
        add_config_option(s)
        s.set_defaults(func=globals()["_" + action.replace("-", "_")])
    acts.choices["split"].set_defaults(_before_claim=lambda args: _cfg(args).check())  # before --out-dir is claimed


def _cfg(args):
    return config_from_args(_config_class(args.reason_command), args)


def _teacher(args) -> int:
    from unime.reasoning.teacher import write_teacher_tcots

    n, n_records, skips = write_teacher_tcots(_cfg(args))
    print(f"{args.out}: {n} T-CoTs from the annotation teacher ({n_records} records read"
          + (f"; skipped {skips.total}" if skips.total else "") + ")")
    if skips.total:
        print(skips.summary())
    return 0


def _generate(args) -> int:
    from unime.reasoning.reasoner import generate_tcots

    n, ok = generate_tcots(_cfg(args), overwrite=bool(getattr(args, "overwrite", False)))
    print(f"{args.out}: {n} T-CoTs ({ok} in the T-CoT format)")
    return 0


def _split(args) -> int:
    from unime.embed_rl.tcot_embedder import split_records_file

    c = split_records_file(_cfg(args), overwrite=bool(getattr(args, "overwrite", False)))
    print(f"{c['pairs']} pairs: {c['contrastive']} contrastive ({100 * c['contrastive_fraction']:.1f}%), {c['rl']} RL")
    return 0


def _materialize(args) -> int:
    from unime.embed_rl.tcot_embedder import materialize_records_file

    cfg, left_out = _cfg(args), []
    n = materialize_records_file(cfg, left_out)
    print(f"{args.out}: {n} records (no T-CoTs)" if cfg.no_tcots else f"{args.out}: {n} reasoned records"
          + (f"; {len(left_out)} piece(s) of evidence left out (too small or too elongated to crop, or no image "
             "to crop)" if left_out else ""))
    return 0


def _add_emb(args) -> int:
    from unime.embed_rl.tcot_embedder import prepare_emb_checkpoint

    print(prepare_emb_checkpoint(_cfg(args)))
    return 0


def _eval(args) -> int:
    from unime.cli.eval import task_line
    from unime.embed_rl.tcot_embedder import evaluate_with_reasoning
    from unime.eval.report import skip_lines

    summary = evaluate_with_reasoning(_cfg(args), overwrite=bool(getattr(args, "overwrite", False)))
    aggregates = summary.get("aggregates", {})
    # video tasks (MMEB-V2) add their own aggregates beside the MMEB ones
    shown = {k: aggregates[k] for k in ("mmeb", "mmeb_v2") if aggregates.get(k)} if "mmeb_v2" in aggregates else \
        aggregates.get("mmeb", {})
    for name, m in summary["tasks"].items():  # as `unime eval` (qrels tasks alone printed "{}", no figure: QA)
        print(task_line(name, m))
    if shown:
        print(json.dumps(shown, indent=1))
    for line in skip_lines(summary):  # --on-error skip: said here too, not only in results.md
        print(line[2:].replace("**", ""))
    left_out = summary.get("meta", {}).get("evidence_left_out", {})
    if left_out.get("total"):  # as the log says it
        from unime.reasoning.evidence import left_out_line

        print(left_out_line(left_out["examples"], total=left_out["total"]))
    return 0
