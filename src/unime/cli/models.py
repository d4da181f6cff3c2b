"""`unime models ...`: build the local tiny models."""

from __future__ import annotations

from unime.cli import add_config_option


def register(sub) -> None:
    p = sub.add_parser("models", help="build local tiny models of the real architectures")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    b = msub.add_parser("build-tiny", help="build a tiny Qwen-VL model (real HF class, local tokenizer) offline")
    b.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"],
                   help="model family (architecture class and chat template)")
    b.add_argument("--out", required=True, help="output folder (an ordinary HF folder)")
    b.add_argument("--seed", type=int, default=0, help="initialisation seed")
    b.add_argument("--hidden", type=int, default=64, help="text hidden size")
    b.add_argument("--layers", type=int, default=2, help="text decoder layers")
    b.add_argument("--vision-depth", type=int, default=1, help="vision encoder blocks")
    b.add_argument("--vision-hidden", type=int, default=None,
                   help="vision encoder width (default: the text hidden size; at 32 a tiny model never learns to "
                        "use its images)")
    b.add_argument("--vision-heads", type=int, default=None, help="vision attention heads (default: width / 32)")
    b.add_argument("--init-std", type=float, default=0.02,
                   help="std of the random initialisation (HF initializer_range); 0.1 trains a tiny judge faster")
    b.add_argument("--extra-token", action="append", default=[], help="extra special token (repeatable), e.g. <emb>")
    t = b.add_mutually_exclusive_group()
    t.add_argument("--tokenizer-corpus", metavar="FILE", default=None,
                   help="text file (one text per line, e.g. `data import`'s train/corpus.txt): the local BPE "
                        "tokenizer is also trained on it, so your words become whole tokens")
    t.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="use an existing tokenizer folder (e.g. a real Qwen-VL checkpoint's) instead of training one")
    b.add_argument("--vocab-size", type=int, default=1024, help="size of the locally trained tokenizer (default 1024)")
    add_config_option(b)
    b.set_defaults(func=_build_tiny)
    _add_pretrain_parser(msub)


def _build_tiny(args) -> int:
    from unime.models.tiny import TinySize, build_tiny

    from unime.models.tiny import read_corpus

    vision_hidden = args.vision_hidden or args.hidden
    size = TinySize(hidden=args.hidden, layers=args.layers, vision_depth=args.vision_depth,
                    vision_hidden=vision_hidden, vision_heads=args.vision_heads or max(vision_hidden // 32, 1),
                    intermediate=2 * args.hidden, init_std=args.init_std, vocab=args.vocab_size)
    corpus = read_corpus(args.tokenizer_corpus) if args.tokenizer_corpus else None
    out = build_tiny(args.family, args.out, seed=args.seed, size=size, extra_tokens=args.extra_token,
                     tokenizer_corpus_lines=corpus, tokenizer_dir=args.tokenizer)
    print(out)
    return 0


def _add_pretrain_parser(msub) -> None:
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainRecipe

    p = msub.add_parser(
        "pretrain", help="pretrain the embedded default's tiny backbone on a generated corpus (cached per recipe)",
        description="Build a tiny model of the real architecture and pretrain it contrastively on the training "
                    "split of a generated world with its own seed. The result is cached per machine under "
                    "$UNIME_CACHE_DIR/pretrained (else ~/.cache/unime/pretrained) in a folder named by the "
                    "recipe's key: an unchanged recipe is reused, a changed one trains anew. Prints the model folder "
                    "(an ordinary HF folder).")
    p.add_argument("--preset", default="default", choices=["default", "quick"], help="recipe preset")
    p.add_argument("--out", default=None, help="output folder (default: the per-machine cache)")
    p.add_argument("--exclude-world", default=None,
                   help="a generated world whose eval/OOD scenes the corpus must not show (part of the cache key)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    _recipe_overrides(p.add_argument_group("recipe (overrides of the preset)"), PretrainRecipe)
    add_config_option(p)
    p.set_defaults(func=_pretrain)

    j = msub.add_parser(
        "pretrain-judge", help="pretrain the embedded default's Yes/No judge on the same corpus (cached per recipe)",
        description="Pretrain (or reuse) the base of `unime models pretrain`, then train it as a Yes/No judge "
                    "(full fine-tuning, answer-token loss + the within-record softmax on the judge margins) on "
                    "labelled pairs of the same corpus, drawn from its global pool. Cached beside the base under "
                    "a key of both recipes. Prints the judge folder (an ordinary HF folder for `--judge`).")
    j.add_argument("--preset", default="default", choices=["default", "quick"], help="preset of both recipes")
    j.add_argument("--out", default=None, help="output folder (default: the per-machine cache)")
    j.add_argument("--exclude-world", default=None,
                   help="a generated world whose eval/OOD scenes the corpus must not show (part of the cache key)")
    j.add_argument("--device", default="cpu", help="cpu or cuda")
    _recipe_overrides(j.add_argument_group("judge recipe (overrides of the preset)"), JudgePretrainRecipe,
                      prefix="judge-")
    add_config_option(j)
    j.set_defaults(func=_pretrain_judge)


def _recipe_overrides(group, recipe_class, *, prefix: str = "") -> None:
    """One option per recipe field (`--FIELD`, or `--PREFIXFIELD`), default None = the preset's value."""
    for f in recipe_class.__dataclass_fields__.values():
        kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        group.add_argument("--" + prefix + f.name.replace("_", "-"), type=kind, default=None,
                           dest=(prefix + f.name).replace("-", "_"), metavar=f.name.upper(),
                           help=f"(preset default: {f.default})")


def _overrides(args, recipe, *, prefix: str = "") -> dict:
    return {name: getattr(args, (prefix + name).replace("-", "_")) for name in recipe.__dataclass_fields__
            if getattr(args, (prefix + name).replace("-", "_")) is not None}


def _pretrain(args) -> int:
    from unime.demo.pretrain import PretrainRecipe, pretrain

    recipe = PretrainRecipe.preset(args.preset)
    result = pretrain(recipe.replace(**_overrides(args, recipe)), out=args.out, exclude_world=args.exclude_world,
                      device=args.device)
    print(result.model)
    return 0


def _pretrain_judge(args) -> int:
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainRecipe, pretrain_judge

    judge = JudgePretrainRecipe.preset(args.preset)
    result = pretrain_judge(judge.replace(**_overrides(args, judge, prefix="judge-")), PretrainRecipe.preset(args.preset),
                            out=args.out, exclude_world=args.exclude_world, device=args.device)
    print(result.model)
    return 0
