"""`unime models ...`: build the local tiny models, pretrain the embedded default's backbone and judge. This
module only parses options (declared on `unime.models.tiny.TinyBuildConfig`, `unime.demo.pretrain`'s
recipes and `PretrainOptions`) and calls the stage functions."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args, option_values


def register(sub) -> None:
    from unime.models.tiny import TinyBuildConfig

    p = sub.add_parser("models", help="build local tiny models of the real architectures")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    b = msub.add_parser("build-tiny", help="build a tiny Qwen-VL model (real HF class, local tokenizer) offline")
    add_options(b, TinyBuildConfig)
    add_config_option(b)
    b.set_defaults(func=_build_tiny)
    _add_pretrain_parser(msub)


def _build_tiny(args) -> int:
    from unime.models.tiny import TinyBuildConfig, build_tiny_model

    print(build_tiny_model(config_from_args(TinyBuildConfig, args)))
    return 0


def _add_pretrain_parser(msub) -> None:
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainOptions, PretrainRecipe

    p = msub.add_parser(
        "pretrain", help="pretrain the embedded default's tiny backbone on a generated corpus (cached per recipe)",
        description="Build a tiny model of the real architecture and pretrain it on the training split of a "
                    "generated world with its own seed: a captioning stage, then a contrastive one (the preset's "
                    "datasets). The result is cached per machine under "
                    "$UNIME_CACHE_DIR/pretrained (else ~/.cache/unime/pretrained) in a folder named by the "
                    "recipe's key: an unchanged recipe is reused, a changed one trains anew. Prints the model folder "
                    "(an ordinary HF folder).")
    add_options(p, PretrainOptions)
    add_options(p.add_argument_group("recipe (overrides of the preset)"), PretrainRecipe)
    add_config_option(p)
    p.set_defaults(func=_pretrain, _unset_values=_preset_values, _before_claim=_check_recipe)

    j = msub.add_parser(
        "pretrain-judge", help="pretrain the embedded default's Yes/No judge on the same corpus (cached per recipe)",
        description="Pretrain (or reuse) the base of `unime models pretrain`, then train it as a Yes/No judge "
                    "(full fine-tuning, answer-token loss + the within-record softmax on the judge margins) on "
                    "labelled pairs of the same corpus, drawn from its global pool. Cached beside the base under "
                    "a key of both recipes. Prints the judge folder (an ordinary HF folder for `--judge`). The base "
                    "takes the options of `unime models pretrain`, the judge's are prefixed --judge-.")
    add_options(j, PretrainOptions)
    add_options(j.add_argument_group("base recipe (overrides of the preset, as in `unime models pretrain`)"),
                PretrainRecipe)
    add_options(j.add_argument_group("judge recipe (overrides of the preset)"), JudgePretrainRecipe, prefix="judge-")
    add_config_option(j)
    j.set_defaults(func=_pretrain_judge, _unset_values=_preset_values)


def _base_recipe(args, preset: str):
    """The base recipe: the preset with the command line's overrides."""
    from unime.demo.pretrain import PretrainRecipe

    return PretrainRecipe.preset(preset).replace(**option_values(PretrainRecipe, args, unset_is_none=True))


def _preset_values(args) -> dict[str, tuple[object, str]]:
    """`--print-config`: the value and origin of each recipe option left unset (None: the preset's value)."""
    import dataclasses

    from unime.cli.dataclass_options import dest_of
    from unime.demo.pretrain import JudgePretrainRecipe

    preset = getattr(args, "preset", "default")
    recipes = [("", _base_recipe(args, preset))]
    if any(k.startswith("judge_") for k in vars(args)):
        recipes.append(("judge-", JudgePretrainRecipe.preset(preset).replace(
            **option_values(JudgePretrainRecipe, args, prefix="judge-", unset_is_none=True))))
    out = {}
    for prefix, recipe in recipes:
        for f in dataclasses.fields(recipe):
            dest = dest_of(f, prefix)
            if hasattr(args, dest) and getattr(args, dest) is None:
                out[dest] = (getattr(recipe, f.name), f"preset {preset}")
    return out


def _check_recipe(args) -> None:
    """The recipe's checks, before --out is claimed (`unime.cli.main`): a refused recipe writes nothing, neither
    into --out nor into the work folder beside it."""
    from unime.demo.pretrain import PretrainOptions, check_recipe

    check_recipe(_base_recipe(args, config_from_args(PretrainOptions, args).preset))


def _pretrain(args) -> int:
    from unime.demo.pretrain import PretrainOptions, pretrain

    opts = config_from_args(PretrainOptions, args)
    print(pretrain(_base_recipe(args, opts.preset), overwrite=bool(getattr(args, "overwrite", False)),
                   **opts.where()).model)
    return 0


def _pretrain_judge(args) -> int:
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainOptions, pretrain_judge

    opts = config_from_args(PretrainOptions, args)
    judge = JudgePretrainRecipe.preset(opts.preset).replace(
        **option_values(JudgePretrainRecipe, args, prefix="judge-", unset_is_none=True))
    print(pretrain_judge(judge, _base_recipe(args, opts.preset), overwrite=bool(getattr(args, "overwrite", False)),
                         **opts.where()).model)
    return 0
