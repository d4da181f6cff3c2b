"""`unime` command line. One module per subcommand group; each has `register(subparsers)` that adds
its parser(s) with `set_defaults(func=...)`. Parsing lives here; the work lives in the stage modules.
Every command generates its options from its stage's config dataclasses (each option declared once, on its
field: `unime.options`, `unime.cli.dataclass_options`, which can prefix a second config's options, as
`models pretrain-judge --judge-steps`); only the shared options below are written here by hand.

Every subcommand accepts `--config FILE.yaml`: its keys (option names, dashes or underscores) become
defaults, checked by the options' own types and choices (`unime.cli.options_file`); options given on
the command line win. `--recipe NAME` applies a paper's settings (`unime.cli.recipes`) the same way;
layering, lowest first: the command's defaults < the recipe < the config file < the command line.
`--print-config` prints the resolved options with the origin of each value and exits. A failure the user can
cause ends as one line and exit code 2 (`unime.cli.failures`);
a command that writes an output folder claims and locks it first (`unime.outdir`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from unime.cli.suggestions import option_help, suggest_option, walk_commands

# subcommand modules, in the order they appear in `unime --help`
COMMAND_MODULES = ["data", "models", "embed", "index", "eval", "mine", "train", "reason", "plan", "serve", "demo"]


def _version() -> str:
    """The running unime's version: its package's `__version__` (imported with `unime.cli`), which the installed
    metadata takes too (pyproject.toml: `version = {attr = "unime.__version__"}`)."""
    return sys.modules["unime"].__version__


class CommandParser(argparse.ArgumentParser):
    """argparse's parser (its sub-parsers are of this class too), whose usage error for an option the command does
    not have names it, the command's closest option (`did you mean --bar?`) and the other unime commands that take
    it (`--only is an option of 'unime reason eval'`). argparse's own error for it was the bare "unrecognized
    arguments: --only X" after the `unime` usage, or, where the command has sub-commands (`unime eval`), "argument
    [reference]: invalid choice: 'X'", silent about the option (QA). Abbreviations stay argparse's: an unambiguous
    prefix of an option is that option (an ambiguous one, argparse's own error)."""

    root: "CommandParser | None" = None  # the `unime` parser (`build_parser`): where the other commands are looked up

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        refused = _refused_argument(self, args)
        if refused is not None:
            self.error(refused)
        return super().parse_known_args(args, namespace)


def _own_arguments(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """The arguments of `args` that `parser` reads itself: those before `--` and before its sub-command's name (the
    rest is the sub-command's, `_command_path`)."""
    subcommands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    own = []
    for arg in args:
        if arg == "--" or arg in subcommands:
            break
        own.append(arg)
    return own


def _refused_argument(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """The usage error of the first of `parser`'s own arguments that argparse refuses for an option: one `parser` does
    not have (as argparse would classify it: `--x=1`, a prefix of one option, a negative number are not;
    `_unknown_option_message`), or an option after one that takes a value (argparse: "argument --query: expected one
    argument"). When the refused argument would be the value of the option before it (`--query -foo`, `--lr -1e-3`),
    the error ends with how to give that value: `(a value beginning with '-' is written --query=-foo)`, as it does
    when that value comes after `--` (`--query -- -foo`: argparse gives the option nothing after `--`). None when
    argparse takes every argument, or a prefix is ambiguous (argparse's own error); an unknown option is left to
    argparse too when -h is among the arguments (the help is printed whatever else is given), and an option without
    its value when -h comes before it (the help is printed first)."""
    own = _own_arguments(parser, args)
    found = []
    for arg in own:
        try:
            parsed = parser._parse_optional(arg)  # None, (action, ...) or, from Python 3.12.7, [(action, ...)]
        except argparse.ArgumentError:
            return None
        found.append(parsed[0] if isinstance(parsed, list) else parsed)
    helps = [i for i, parsed in enumerate(found) if parsed is not None and isinstance(parsed[0], argparse._HelpAction)]
    for i, (arg, parsed) in enumerate(zip(own, found)):
        if parsed is None:
            continue
        before = found[i - 1] if i else None  # (action, option string, ..., its value after `=` or None)
        hint = _dash_value_hint(parser, before, own[i - 1] if i else "", arg)
        if parsed[0] is None and not helps:
            return _unknown_option_message(parser, arg.split("=", 1)[0]) + hint
        if hint and before[0].nargs is None and not (helps and helps[0] < i - 1):  # argparse: the option has no
            return str(argparse.ArgumentError(before[0], "expected one argument")) + hint  # value (-h is too late)
    rest = args[len(own):]
    if found and found[-1] is not None and not helps and rest[:1] == ["--"] and rest[1:2] and \
            rest[1].startswith("-") and found[-1][0] is not None and found[-1][0].nargs is None:
        # `--query -- -foo`: argparse gives nothing after `--` to an option ("expected one argument")
        hint = _dash_value_hint(parser, found[-1], own[-1], rest[1])
        if hint:
            return str(argparse.ArgumentError(found[-1][0], "expected one argument")) + hint
    return None


def _dash_value_hint(parser: argparse.ArgumentParser, before, written: str, value: str) -> str:
    """` (a value beginning with '-' is written --query=-foo)` where `written`, the argument before `value` (parsed
    as `before`), is an option taking one value that is not given after `=`, and that option accepts `value` (its
    type and choices); "" otherwise."""
    if before is None or before[0] is None or before[-1] is not None or before[0].nargs not in (None, "?"):
        return ""
    try:
        parser._get_values(before[0], [value])
    except (argparse.ArgumentError, TypeError, ValueError):
        return ""
    return f" (a value beginning with '-' is written {written}={value})"


def _unknown_option_message(parser: argparse.ArgumentParser, option: str) -> str:
    """`unrecognized option --foo`; the other unime commands that take `--foo` (`--foo is an option of 'unime
    reason eval'`); `did you mean --bar?` (`suggest_option`), the option of the same config field with its
    metavar and help."""
    found = suggest_option(parser, option)
    text = [f"unrecognized option {option}"]
    if found.others:
        text.append(f"{option} is an option of {found.others}")
    if found.same_field is not None:
        flag = found.same_field.option_strings[0]
        metavar = f" {found.same_field.metavar}" if isinstance(found.same_field.metavar, str) else ""
        text.append(f"did you mean {flag}{metavar}{option_help(parser, found.same_field)}?")
    elif found.closest:
        text.append(f"did you mean {found.closest}?")
    return "; ".join(text)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="unime",
                                     description="unime: train universal multimodal embedders and rerankers with an "
                                                 "MLLM judge (UniME-V2), and reasoning-driven embedders with "
                                                 "embedder-guided RL (Embed-RL).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # default None, logged as INFO: `unime demo` tells a level given (its console shows what the level lets
    # through) from none (its console shows warnings; the stages' INFO lines go to OUT/logs/STAGE.log)
    parser.add_argument("--log-level", default=None,
                        help="logging level (DEBUG, INFO, WARNING; default INFO; `unime demo` logs its stages' INFO "
                             "lines to OUT/logs/ only, unless a level is given)")
    parser.add_argument("--version", action="version", version=f"unime {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"unime.cli.{name}").register(sub)
    for _, p in walk_commands(parser):
        p.root = parser
    return parser


def add_config_option(p: argparse.ArgumentParser) -> None:
    """--config and --print-config; --recipe where a recipe has settings for the command (`recipe_commands`)."""
    from unime.cli.recipes import recipe_commands, recipes_for

    p.add_argument("--config", metavar="YAML", help="YAML file of option defaults (command-line options win)")
    command = p.prog.removeprefix("unime").strip()
    if command in recipe_commands():  # the help names the recipes the command takes (QA: eval's named one it refused)
        p.add_argument("--recipe", metavar="NAME", default=None,
                       help=f"a paper's settings as defaults: {', '.join(recipes_for(command))} (--recipe NAME "
                            "--print-config shows each value with its source, as docs/RECIPES.md of the repository "
                            "does; --config and command-line options win)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved options and where each value comes from, then exit")


_UNSET = object()

# commands that write an output folder (`--out`): each claims and locks it (`unime.outdir`) for the run
OWNED_OUTPUT_COMMANDS = ("mine", "eval", "eval reference", "demo", "train embedder", "train reranker", "train judge",
                         "train reasoner", "models build-tiny", "models pretrain", "models pretrain-judge",
                         "reason add-emb", "reason eval",
                         "reason split",
                         "data synth", "data import", "index build")
# commands that continue an interrupted run when re-run the same way (README, "Resuming"; docs/DEMO.md)
RESUMABLE_COMMANDS = ("mine", "eval", "demo", "train embedder", "train reranker", "train judge", "train reasoner",
                      "models pretrain", "models pretrain-judge", "index build",
                      "judge", "embed", "reason generate")  # from their finished chunks (`unime.models.chunk_work`)
# the option naming the output folder, where it is not `out`
_OUTPUT_FOLDER_DEST = {"reason split": "out_dir"}
# (module, function) recognising an unmarked folder as the command's own output from before it claimed its
# folders (`unime.outdir.claim`'s `adopts`): such a folder is taken without --overwrite
_ADOPTS_UNMARKED = {"index build": ("unime.index.store", "is_index_folder"),
                    "models pretrain": ("unime.demo.pretrain", "is_pretrained_folder"),
                    "models pretrain-judge": ("unime.demo.pretrain", "is_pretrained_folder")}


def _judge_companions(args) -> tuple[str, ...]:
    if not getattr(args, "label_column", None):
        return ()
    from pathlib import Path

    stem = Path(args.out).with_suffix("")
    return (f"{stem}.metrics.json", f"{stem}.calibration.png")


# commands whose output is one file: (the option naming it, the companion files it may write beside it);
# each is claimed through a sidecar marker (`unime.outdir.claim_file`)
OWNED_FILE_COMMANDS = {
    "judge": ("out", _judge_companions),
    "embed": ("out", lambda a: (f"{a.out}.lines.json",) if a.on_error == "skip" else ()),
    "reason teacher": ("out", lambda a: ()),
    "reason generate": ("out", lambda a: ()),
    "reason materialize": ("out", lambda a: ()),
    "data convert": ("output", lambda a: ()),
}
_OVERWRITE_HELP = ("let this command write into an output folder it did not create: what it writes replaces "
                   "entries of the same name, other files stay. A re-run with other options starts over instead "
                   "of being refused (a trainer discards its checkpoints; mining redoes only the stages the "
                   "change affects)")
_OVERWRITE_FILE_HELP = "replace an existing output file this command did not write (or that was changed since)"
# namespace entries that are not options of the run (left out of the output folder's options record)
_NOT_RUN_OPTIONS = ("func", "log_level", "config", "print_config")


def _command_path(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand words in `argv` and the innermost sub-parser."""
    words, current = [], parser
    for tok in argv:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or tok not in actions[0].choices:
            continue
        words.append(tok)
        current = actions[0].choices[tok]
    return words, current


def _add_overwrite_options(parser: argparse.ArgumentParser) -> None:
    for name in (*OWNED_OUTPUT_COMMANDS, *OWNED_FILE_COMMANDS):
        words, sub = _command_path(parser, name.split())
        if words != name.split():
            continue  # a command this build does not have
        if not any("--overwrite" in a.option_strings for a in sub._actions):
            sub.add_argument("--overwrite", action="store_true",
                             help=_OVERWRITE_FILE_HELP if name in OWNED_FILE_COMMANDS else _OVERWRITE_HELP)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv` with the layers: command defaults < --recipe < --config file < command line. Recipe
    values and config keys become the chosen subcommand's defaults, converted and checked by the command
    line's own rules (`options_file.apply_options`), so command-line values win and a required option may
    come from a layer. The namespace gets `_origins` (dest -> where its value came from) and `_command`."""
    from unime.cli.options_file import (ConfigError, apply_options, config_path_from_argv, option_from_argv,
                                        read_config_file)

    words, subparser = _command_path(parser, argv)
    if {"-h", "--help"} & set(argv[:argv.index("--")] if "--" in argv else argv):
        return parser.parse_args(argv)  # prints the help with the commands' own defaults, and exits
    printing = "--print-config" in argv
    given = _given_on_command_line(parser, subparser, argv)
    origins: dict[str, str] = {}
    recipe_name = option_from_argv(argv, "--recipe")
    has_recipe_option = any("--recipe" in a.option_strings for a in subparser._actions)
    if recipe_name and has_recipe_option and words != ["plan"]:  # `unime plan` resolves the planned command's recipe
        from unime.cli.recipes import load_recipe

        options = load_recipe(recipe_name).options(" ".join(words))
        dests = apply_options(subparser, {k: rv.value for k, rv in options.items()}, source=f"recipe {recipe_name}")
        for key, dest in dests.items():
            origins[dest] = f"recipe {recipe_name}: {options[key].source}"
    cfg_path = config_path_from_argv(argv)
    config_sha256 = None
    if cfg_path:
        cfg, config_sha256 = read_config_file(cfg_path)
        for key in cfg:
            if str(key).replace("_", "-") == "config":
                raise ConfigError(f"{cfg_path}: key '{key}': a config file cannot name another config file (copy its "
                                  "options into this one)")
            if str(key).replace("_", "-") in ("recipe", "print-config"):
                raise ConfigError(f"{cfg_path}: key '{key}': give --{str(key).replace('_', '-')} on the command "
                                  "line (a config file holds the options of the run)")
        for dest in apply_options(subparser, cfg, source=cfg_path).values():
            origins[dest] = f"config {cfg_path}"
    # --print-config shows what a run would use: the options no layer supplies need not be given
    args = _parse_relaxed(parser, argv, _required_dests(subparser) if printing else set(), subparser)
    for dest in given:
        origins[dest] = "command line"
    args._origins = origins
    args._command = " ".join(words)
    args._config_sha256 = config_sha256  # of the bytes the options were parsed from (`run_provenance`)
    return args


# the name `unime plan` and the recipe tests use
_apply_config = _parse


def _required_dests(subparser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in subparser._actions if a.required}


def _parse_relaxed(parser, argv, relax: set[str], subparser) -> argparse.Namespace:
    """Parse with the required options of `subparser` in `relax` made optional."""
    changed = [a for a in subparser._actions if a.required and a.dest in relax]
    for a in changed:
        a.required = False
    try:
        return parser.parse_args(argv)
    finally:
        for a in changed:
            a.required = True


def _given_on_command_line(parser, subparser, argv) -> set[str]:
    """Dests the command line sets: parse once with every default of the subparser replaced by a marker
    (accumulating actions, e.g. append, keep their default and count as given when it changed)."""
    accumulating = (argparse._AppendAction, argparse._ExtendAction, argparse._CountAction,
                    argparse._AppendConstAction)
    actions = [a for a in subparser._actions if a.default is not argparse.SUPPRESS]
    saved = [(a, a.default) for a in actions]
    for a in actions:
        if not isinstance(a, accumulating):
            a.default = _UNSET
    try:
        ns = _parse_relaxed(parser, argv, _required_dests(subparser), subparser)
    finally:
        for a, d in saved:
            a.default = d
    given = set()
    for a, d in saved:
        v = getattr(ns, a.dest, _UNSET)
        if (isinstance(a, accumulating) and v != d) or (not isinstance(a, accumulating) and v is not _UNSET):
            given.add(a.dest)
    return given


# the layers an option's value comes from, farthest first (`_parse`'s `_origins`: "recipe NAME: SOURCE", "config
# FILE", "command line"); an option in none of them has its default
OPTION_LAYERS = ("recipe", "config", "command line")


def origin_layer(args: argparse.Namespace, dest: str) -> str | None:
    """The layer option `dest` came from (`OPTION_LAYERS`); None: its default."""
    origin = getattr(args, "_origins", {}).get(dest, "")
    return next((layer for layer in OPTION_LAYERS if origin.startswith(layer)), None)


def given_by_user(args: argparse.Namespace, dest: str) -> str | None:
    """Where the user gave option `dest`: "command line" or "config FILE"; None for a default or a recipe's value
    (`_parse`'s `_origins`)."""
    origin = getattr(args, "_origins", {}).get(dest)
    return None if origin is None or origin.startswith("recipe ") else origin


def refuse_ineffective_options(args: argparse.Namespace, command: str, rules, values=None, *,
                               condition: str | None = None) -> None:
    """UsageError for an option the user gave (`given_by_user`) that does nothing with another option's value: each
    rule is (option dest, condition dest, the truth of the condition's value the option needs to act), e.g.
    ("chunk_size", "gradcache", True), or ("lora_alpha", "lora_r", True): a LoRA alpha acts only with a rank above
    0. A needed value other than True / False is the one value the option acts with, e.g. ("beta", "stage", "grpo"):
    --beta acts only with --stage grpo. The condition's value is read from `values` (the built config, where an
    option left unset holds its resolved default) or else from `args`. A recipe's values stay quiet: a recipe sets
    options for the settings it is used with. `condition`: what the error says the option does nothing with, where
    that is more than the flag's name (e.g. "with --model X, a PEFT adapter ...")."""
    from unime.errors import UsageError

    for dest, flag_dest, needed in rules:
        origin = given_by_user(args, dest)
        value = getattr(args if values is None else values, flag_dest)
        if origin is None or _rule_acts(value, needed):
            continue
        option, flag = (f"--{d.replace('_', '-')}" for d in (dest, flag_dest))
        where = "" if origin == "command line" else f" ({origin})"
        if condition is not None:
            text = f"{condition}: drop {option}"
        elif not isinstance(needed, bool):  # an option of one value of the flag, e.g. of one stage
            text = f"with {flag} {value}: it acts only with {flag} {needed}; drop {option}"
        elif not isinstance(value, bool):  # a value: named, and whose it is when the user did not give it
            whose = "" if given_by_user(args, flag_dest) else \
                " (the recipe's)" if flag_dest in getattr(args, "_origins", {}) else " (its default)"
            text = f"with {flag} {value}{whose}: " + \
                (f"give {flag} another value or drop {option}" if whose else "drop one of them")
        else:
            text = f"without {flag}: add {flag} or drop {option}" if needed else f"with {flag}: drop one of them"
        raise UsageError(f"{option}{where} does nothing {text}", command=command)


def _rule_acts(value, needed) -> bool:
    """Whether the option of a rule (dest, flag dest, `needed`) acts with the flag's `value`
    (`refuse_ineffective_options`)."""
    return bool(value) == needed if isinstance(needed, bool) else value == needed


def ineffective_options(args: argparse.Namespace, values: dict) -> dict[str, list[str]]:
    """`--print-config`: the options that do nothing with the resolved `values` (by dest) under the command's
    `_option_needs()` rules (`refuse_ineffective_options`' rules, e.g. train reasoner's options of one --stage), by
    why: {"with --stage sft (they act only with --stage grpo)": ["beta", ...]}. A flag left unset (None) hides
    nothing: which options act is not known yet."""
    needs = getattr(args, "_option_needs", None)
    unused: dict[str, list[str]] = {}
    for dest, flag_dest, needed in needs() if callable(needs) else ():
        value = values.get(flag_dest)
        if value is None or _rule_acts(value, needed):
            continue
        flag = f"--{flag_dest.replace('_', '-')}"
        why = f"with {flag} {value} (they act only with {flag} {needed})" if not isinstance(needed, bool) else \
            f"with {flag} {value}"
        unused.setdefault(why, []).append(dest.replace("_", "-"))
    return unused


def resolved_config(args: argparse.Namespace) -> list[tuple[str, object, str]]:
    """(option, value, origin) of every option of the parsed command, in name order."""
    origins = getattr(args, "_origins", {})
    skip = {"func", "config", "recipe", "print_config", "log_level", "command", "train_command", "role"}
    # options left unset (None) whose value the command resolves itself, e.g. from a preset: (value, origin)
    resolved = args._unset_values(args) if callable(getattr(args, "_unset_values", None)) else {}
    # options the command derives from others, shown as the run uses them: (value, origin)
    derived = args._derived_values(args) if callable(getattr(args, "_derived_values", None)) else {}
    rows = []
    for dest, value in sorted(vars(args).items()):
        if dest.startswith("_") or dest in skip or dest.endswith("_command"):
            continue
        if dest in derived:
            rows.append((dest.replace("_", "-"), *derived[dest]))
            continue
        if value is None and dest in resolved and dest not in origins:
            rows.append((dest.replace("_", "-"), *resolved[dest]))
            continue
        rows.append((dest.replace("_", "-"), value, origins.get(dest, "default")))
    return rows


def print_config(args: argparse.Namespace) -> None:
    """The resolved options on stdout; on stderr, the WARNINGs the run would log at its start about these values
    (a command's `_config_warnings(values)`, `values` the resolved option values by field, e.g. a warm-up longer
    than the run: `unime.cli.train.warmup_warnings`)."""
    rows = resolved_config(args)
    values = {name.replace("-", "_"): value for name, value, _ in rows}
    unused = ineffective_options(args, values)
    hidden = {name for names in unused.values() for name in names}
    print(f"# unime {args._command}: resolved options (value, origin)")
    width = max((len(r[0]) for r in rows), default=10)
    for name, value, origin in rows:
        if name not in hidden:
            print(f"{name:<{width}}  {value!r:<28}  # {origin}")
    for why, names in unused.items():
        print(f"# not shown, as they do nothing {why}: {', '.join(names)}")
    warnings = getattr(args, "_config_warnings", None)
    for text in warnings(values) if callable(warnings) else ():
        print(f"unime: WARNING: {text}", file=sys.stderr)


# commands whose work is spread over the processes of a launcher (torchrun, accelerate launch): the trainers
# (transformers' Trainer: data parallel) and mining (`unime.mining.ranks`). Any other command runs as one process:
# under several, each would do the whole work into the same output, so it is refused (`refuse_several_processes`).
MULTI_PROCESS_COMMANDS = ("mine", "train")  # a command, or a group whose every action is one
# why a one-process command is refused, or what to do instead, where there is more to say
_ONE_PROCESS_HINTS = {
    "eval": "for several GPUs, run one `unime eval` per GPU on a share of the tasks (--task NAME ... --device cuda:I "
            "--out DIR_I)",
    "embed": "for several GPUs, split the items file and run one `unime embed` per part (--device cuda:I)",
    # one corpus and one cache folder per machine: a measured DDP run of the judge failed after its 8,000 steps,
    # a clip of the corpus removed by the other process
    "models pretrain": "it writes its corpus and cache folder once",
    "models pretrain-judge": "it writes its corpus and cache folder once",
    "demo": "it starts its own processes (--jobs; mining as a torchrun group)",
}


def refuse_several_processes(command: str) -> None:
    """UsageError for a command that runs as one process, started as one of several (WORLD_SIZE > 1)."""
    from unime.errors import UsageError

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world < 2 or command.split(" ")[0] in MULTI_PROCESS_COMMANDS or not command:
        return
    hint = _ONE_PROCESS_HINTS.get(command)
    raise UsageError(f"runs as one process, not under torchrun or another launcher ({world} processes)"
                     + (f"; {hint}" if hint else ""), command=command)


# the options naming the model a command loads first, which `check_attention_option`'s error line names
_FIRST_MODEL_OPTIONS = ("model", "embedder", "judge")


def check_attention_option(args: argparse.Namespace) -> None:
    """`--attn-implementation` with `--device` (`unime.models.loading.check_attn_implementation`: a name
    transformers does not know, FlashAttention on a CPU or without its package), checked when the command is parsed,
    before it claims its output folder: a refused run writes nothing (`mine`, the trainers would otherwise have
    recorded their options in --out, and a corrected run with another option changed too would be refused). The
    check needs no model; loading one checks again (`load_model`)."""
    name = getattr(args, "attn_implementation", None)
    if name is None:
        return
    from unime.models.loading import check_attn_implementation, resolve_device

    model = next((str(m) for m in (getattr(args, o, None) for o in _FIRST_MODEL_OPTIONS) if m), None)
    check_attn_implementation(name, resolve_device(getattr(args, "device", None)), model)


def run_provenance(args: argparse.Namespace, options: dict) -> dict:
    """Where a run's options came from, for its output's marker (`unime.outdir.claim`): `recipe` (its name, or
    None), `config` (the --config file as given and the SHA-256 of its content, or None), `sources`: the layer
    (`OPTION_LAYERS`) of each of `options` not left at its default, by its option name (`lora-r`), and `values`: the
    value in effect of each of them (a value the recipe set and a closer layer replaced, even by the default, is
    that layer's)."""
    import json

    config = None
    if getattr(args, "config", None):  # the SHA-256 of the bytes `_parse` read the options from (read once: an
        # edit of the file while the run goes on does not change it)
        config = {"path": args.config, "sha256": getattr(args, "_config_sha256", None)}
    sources = {dest.replace("_", "-"): layer for dest in sorted(options)
               if dest != "recipe" and (layer := origin_layer(args, dest)) is not None}
    values = {name: json.loads(json.dumps(options[name.replace("-", "_")], default=str)) for name in sources}
    return {"recipe": getattr(args, "recipe", None), "config": config, "sources": sources, "values": values}


def _claim_output(args: argparse.Namespace, command: str):
    """Claim (create or re-enter, and lock) the command's output folder, or claim its output file (a
    sidecar marker); None for other commands. The marker records the options' hash and their provenance
    (`run_provenance`)."""
    from unime.outdir import is_main_process

    if not is_main_process():  # under torchrun the first process owns the folder
        return None
    options = {k: v for k, v in vars(args).items() if k not in _NOT_RUN_OPTIONS and not k.startswith("_")}
    overwrite = bool(getattr(args, "overwrite", False))
    provenance = run_provenance(args, options)
    resumable = command in RESUMABLE_COMMANDS  # a re-run continues the output: the first run's provenance stays
    if command in OWNED_FILE_COMMANDS:
        from unime.outdir import claim_file

        dest, companions = OWNED_FILE_COMMANDS[command]
        return claim_file(getattr(args, dest), command, options, overwrite=overwrite, companions=companions(args),
                          provenance=provenance, resumable=resumable)
    option = _OUTPUT_FOLDER_DEST.get(command, "out")
    folder = getattr(args, option, None)
    if command not in OWNED_OUTPUT_COMMANDS or not folder:
        return None
    from unime.outdir import claim

    module, function = _ADOPTS_UNMARKED.get(command, (None, None))
    adopts = getattr(importlib.import_module(module), function) if module else None
    owned = claim(folder, command, options, overwrite=overwrite, adopts=adopts, option=option, provenance=provenance,
                  resumable=resumable)
    args._owned = owned
    return owned


class _OtherLibrariesFromWarning(logging.Filter):
    """unime's own records pass at the level asked for; other libraries' (faiss's loader, which tells at INFO
    which CPU build it could not load, on every run that searches) from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == "unime" or record.name.startswith("unime.")


def configure_logging(log_level: str | None) -> None:
    """Log at `log_level` (DEBUG, INFO, WARNING ...; None: INFO) to stderr: unime's own loggers at that level, the
    other libraries' at WARNING and above unless it is DEBUG. Under a launcher (torchrun), the processes after the
    first log their errors only: their INFO and WARNING lines would repeat the first one's (`resuming from ...`,
    `skipped 1 record(s)`), once per process; `--log-level DEBUG` keeps every process's lines."""
    from unime.outdir import is_main_process

    level = getattr(logging, str(log_level or "INFO").upper(), logging.INFO)
    if not is_main_process() and level > logging.DEBUG:
        level = max(level, logging.ERROR)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level > logging.DEBUG:
        handler.addFilter(_OtherLibrariesFromWarning())
    logging.basicConfig(level=level, handlers=[handler])  # as before: nothing changes where logging is set up


@contextlib.contextmanager
def main_process_stdout():
    """Under a launcher (torchrun, accelerate), the processes after the first print nothing to stdout for the
    `with` block: a command's end-of-run summary (`reranker: N records, ... loss X -> Y`, the output path) is
    the first process's (`unime.outdir.is_main_process`), and would otherwise repeat once per process. Errors
    go to stderr and stay; one process: nothing changes."""
    from unime.outdir import is_main_process

    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def main(argv: list[str] | None = None) -> int:
    """Run one command. A failure the user can cause ends as one line and exit code 2 (`cli.failures`). Its messages
    name options by their flags, also those logged during the run (`unime.options.command_line_wording`). Started by
    torchrun (or accelerate launch), it ends with its launcher, also when the launcher is killed with SIGKILL
    (`unime.parent_death`)."""
    from unime.options import command_line_wording
    from unime.parent_death import end_with_parent, launched_by_torchrun

    if launched_by_torchrun():
        end_with_parent()
    with command_line_wording():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from unime.cli import failures

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _add_overwrite_options(parser)
    # before parsing succeeds: is a traceback wanted? (`--log-level DEBUG` / `--log-level=DEBUG`)
    debug = "debug" in [b.lower() for a, b in zip(argv, argv[1:]) if a == "--log-level"] + \
        [a.split("=", 1)[1].lower() for a in argv if a.startswith("--log-level=")]
    owned, failed, command = None, True, None
    try:
        args = _parse(parser, argv)
        command = " ".join(_command_path(parser, argv)[0])
        if getattr(args, "print_config", False):  # before any output folder is claimed
            print_config(args)
            return 0
        debug = str(args.log_level).upper() == "DEBUG"
        configure_logging(args.log_level)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        refuse_several_processes(command)
        check_attention_option(args)
        if getattr(args, "_before_claim", None):  # the command's checks that need no model (a trainer's options):
            args._before_claim(args)  # a command they refuse writes nothing, not even its output folder
        owned = _claim_output(args, command)
        with main_process_stdout():
            result = func(args)
        if hasattr(owned, "commit") and not result:  # a single-file output: record what was written
            owned.commit()
        failed = bool(result)
        return int(result or 0)
    except KeyboardInterrupt:
        hint = "; re-run the same command to resume" if command in RESUMABLE_COMMANDS else ""
        print(f"unime: interrupted{hint}", file=sys.stderr)
        return failures.EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        if failures.stdout_closed():  # `unime ... | head`: the reader left; end quietly, as a shell tool does
            return failures.EXIT_BROKEN_PIPE
        return failures.report(exc, debug=debug)
    except Exception as exc:  # noqa: BLE001 - sorted into user-caused (one line) and bugs (re-raised)
        if not failures.is_user_caused(exc):
            raise
        return failures.report(exc, debug=debug, command=command)
    finally:
        if owned is not None:
            if failed and hasattr(owned, "undo_if_unused"):  # a folder it created and left empty goes; one it
                owned.undo_if_unused()  # took and wrote nothing into keeps the marker it had
            owned.release()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
