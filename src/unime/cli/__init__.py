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
COMMAND_MODULES = ["data", "models", "embed", "index", "eval", "mine", "train", "reason", "serve", "demo"]


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


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    cfg_path = getattr(args, "config", None)
    if not cfg_path:
        return args
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        parser.error(f"{cfg_path}: a config file must be a mapping of option names to values")
    known = vars(args)
    unknown = [k for k in cfg if k.replace("-", "_") not in known]
    if unknown:
        parser.error(f"{cfg_path}: unknown option(s) {', '.join(sorted(unknown))}")
    # re-parse with the config as defaults of the chosen subparser so command-line values win
    subparser = _find_subparser(parser, argv)
    subparser.set_defaults(**{k.replace("-", "_"): v for k, v in cfg.items()})
    return parser.parse_args(argv)


def _find_subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    current = parser
    for tok in argv:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or tok not in actions[0].choices:
            continue
        current = actions[0].choices[tok]
    return current


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _apply_config(parser, argv)
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
