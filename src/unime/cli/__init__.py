"""`unime` command line. One module per subcommand group; each has `register(subparsers)` that adds
its parser(s) with `set_defaults(func=...)`. Parsing lives here; the work lives in the stage modules.

Every subcommand accepts `--config FILE.yaml`: its keys (option names, dashes or underscores) become
defaults, checked by the options' own types and choices (`unime.cli.options_file`); options given on
the command line win. A failure the user can cause ends as one line and exit code 2 (`unime.cli.failures`);
a command that writes an output folder claims and locks it first (`unime.outdir`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

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


# commands that write an output folder (`--out`): each claims and locks it (`unime.outdir`) for the run
OWNED_OUTPUT_COMMANDS = ("mine", "eval", "demo", "train embedder", "train reranker", "train judge",
                         "train reasoner", "models build-tiny", "reason add-emb", "reason eval")
_OVERWRITE_HELP = ("let this command write into an output folder it did not create: what it writes replaces "
                   "entries of the same name (a command whose output is one model folder replaces the folder), "
                   "other files stay; a trainer starts over instead of resuming")


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


def _find_subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    return _command_path(parser, argv)[1]


def _add_overwrite_options(parser: argparse.ArgumentParser) -> None:
    for name in OWNED_OUTPUT_COMMANDS:
        words, sub = _command_path(parser, name.split())
        if words != name.split():
            continue  # a command this build does not have
        if not any("--overwrite" in a.option_strings for a in sub._actions):
            sub.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; a `--config` file's keys become defaults, by the command line's own rules."""
    from unime.cli.options_file import apply_config_file, config_path_from_argv

    cfg_path = config_path_from_argv(argv)
    if cfg_path:
        apply_config_file(_find_subparser(parser, argv), cfg_path)
    return parser.parse_args(argv)


def _claim_output(args: argparse.Namespace, command: str):
    """Claim (create or re-enter, and lock) the command's output folder; None for other commands."""
    if command not in OWNED_OUTPUT_COMMANDS or not getattr(args, "out", None):
        return None
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the first process owns the folder
        return None
    from unime.outdir import claim

    options = {k: v for k, v in vars(args).items() if k not in ("func", "log_level", "config")}
    return claim(args.out, command, options, overwrite=bool(getattr(args, "overwrite", False)))


def main(argv: list[str] | None = None) -> int:
    """Run one command. A failure the user can cause ends as one line and exit code 2 (`cli.failures`)."""
    from unime.cli import failures

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _add_overwrite_options(parser)
    # before parsing succeeds: is a traceback wanted? (`--log-level DEBUG` / `--log-level=DEBUG`)
    debug = "debug" in [b.lower() for a, b in zip(argv, argv[1:]) if a == "--log-level"] + \
        [a.split("=", 1)[1].lower() for a in argv if a.startswith("--log-level=")]
    owned = None
    try:
        args = _parse(parser, argv)
        debug = str(args.log_level).upper() == "DEBUG"
        logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        owned = _claim_output(args, " ".join(_command_path(parser, argv)[0]))
        result = func(args)
        return int(result or 0)
    except KeyboardInterrupt:
        print("unime: interrupted", file=sys.stderr)
        return failures.EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - sorted into user-caused (one line) and bugs (re-raised)
        if not failures.is_user_caused(exc):
            raise
        return failures.report(exc, debug=debug)
    finally:
        if owned is not None:
            owned.release()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
