"""`unime` command line. One module per subcommand group; each has `register(subparsers)` that adds
its parser(s) with `set_defaults(func=...)`. Parsing lives here; the work lives in the stage modules.

Every subcommand accepts `--config FILE.yaml`: its keys (option names, dashes or underscores) become
defaults, and options given on the command line win.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import yaml

# subcommand modules, in the order they appear in `unime --help`
COMMAND_MODULES = ["data", "models", "embed", "index", "eval", "mine", "train", "reason", "plan", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unime", description="unime: train universal multimodal embedders and rerankers with an MLLM judge (UniME-V2), and reasoning-driven embedders with embedder-guided RL (Embed-RL).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"unime.cli.{name}").register(sub)
    return parser


def add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="YAML file of option defaults (command-line options win)")
    p.add_argument("--recipe", metavar="NAME", default=None,
                   help="a paper's settings as defaults, e.g. unime-v2/qwen2-vl-2b (docs/RECIPES.md; "
                        "--config and command-line options win)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved options and where each value comes from, then exit")


_UNSET = object()


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv` with the layers: command defaults < --recipe < --config file < command line. The
    namespace gets `_origins` (dest -> where its value came from)."""
    subparser, path = _find_subparser(parser, argv)
    printing = "--print-config" in argv
    # first passes: required options may still come from a recipe or config file
    given = _given_on_command_line(parser, subparser, argv)
    args = _parse(parser, subparser, argv, relax=_required_dests(subparser))
    known = vars(args)
    layered: dict[str, object] = {}
    origins: dict[str, str] = {}
    recipe_name = getattr(args, "recipe", None)
    if recipe_name and path != ["plan"]:  # `unime plan` resolves the planned command's recipe itself
        from unime.errors import UnimeError
        from unime.cli.recipes import load_recipe

        try:
            options = load_recipe(recipe_name).options(" ".join(path))
        except UnimeError as e:
            parser.error(str(e))
        unknown = [k for k in options if k not in known]
        if unknown:  # pragma: no cover - a test resolves every recipe against the parsers
            parser.error(f"recipe {recipe_name}: unknown option(s) {', '.join(sorted(unknown))}")
        for k, rv in options.items():
            layered[k] = rv.value
            origins[k] = f"recipe {recipe_name}: {rv.source}"
    cfg_path = getattr(args, "config", None)
    if cfg_path:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
        if not isinstance(cfg, dict):
            parser.error(f"{cfg_path}: a config file must be a mapping of option names to values")
        unknown = [k for k in cfg if k.replace("-", "_") not in known]
        if unknown:
            parser.error(f"{cfg_path}: unknown option(s) {', '.join(sorted(unknown))}")
        for k, v in cfg.items():
            layered[k.replace("-", "_")] = v
            origins[k.replace("-", "_")] = f"config {cfg_path}"
    # the layers become the chosen subparser's defaults, so command-line values win; the final parse
    # enforces the required options the layers do not supply (all of them are optional for --print-config)
    subparser.set_defaults(**layered)
    relax = set(layered) | (_required_dests(subparser) if printing else set())
    args = _parse(parser, subparser, argv, relax=relax)
    for dest in given:
        origins[dest] = "command line"
    args._origins = origins
    args._command = " ".join(path)
    return args


def _required_dests(subparser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in subparser._actions if a.required}


def _parse(parser, subparser, argv, *, relax: set[str]) -> argparse.Namespace:
    """Parse with the required options in `relax` made optional (a recipe or config supplies them)."""
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
        ns = _parse(parser, subparser, argv, relax=_required_dests(subparser))
    finally:
        for a, d in saved:
            a.default = d
    given = set()
    for a, d in saved:
        v = getattr(ns, a.dest, _UNSET)
        if (isinstance(a, accumulating) and v != d) or (not isinstance(a, accumulating) and v is not _UNSET):
            given.add(a.dest)
    return given


def _find_subparser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    current, path = parser, []
    for tok in argv:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or tok not in actions[0].choices:
            continue
        current = actions[0].choices[tok]
        path.append(tok)
    return current, path


def resolved_config(args: argparse.Namespace) -> list[tuple[str, object, str]]:
    """(option, value, origin) of every option of the parsed command, in name order."""
    origins = getattr(args, "_origins", {})
    skip = {"func", "config", "recipe", "print_config", "log_level", "command", "train_command", "role"}
    rows = []
    for dest, value in sorted(vars(args).items()):
        if dest.startswith("_") or dest in skip or dest.endswith("_command"):
            continue
        rows.append((dest.replace("_", "-"), value, origins.get(dest, "default")))
    return rows


def print_config(args: argparse.Namespace) -> None:
    rows = resolved_config(args)
    print(f"# unime {args._command}: resolved options (value, origin)")
    width = max((len(r[0]) for r in rows), default=10)
    for name, value, origin in rows:
        print(f"{name:<{width}}  {value!r:<28}  # {origin}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _apply_config(parser, argv)
    if getattr(args, "print_config", False):
        print_config(args)
        return 0
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    result = func(args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
