"""`unime demo`: the whole method end to end on the embedded default (tiny models + generated world). Its
options are declared on `unime.demo.pipeline.DemoOptions`; this module only parses them."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args


def register(sub) -> None:
    from unime.demo.pipeline import DemoOptions

    p = sub.add_parser("demo", help="run the whole method end to end on the embedded default and write a report")
    add_options(p, DemoOptions)
    add_config_option(p)
    p.set_defaults(func=_demo, _before_claim=_check)


def _check(args) -> None:
    """The demo's checks that need no model, before the output folder is claimed (`unime.cli.main`): a device this
    machine does not have is refused before the world is generated (or `--fresh` deletes anything)."""
    from unime.demo.pipeline import DemoOptions
    from unime.models.loading import resolve_device

    resolve_device(config_from_args(DemoOptions, args).device)


def _given_level(args) -> int | None:
    """The level `--log-level` gives (the demo's console then shows what it lets through), None when not given (the
    console shows warnings and errors; the stages' INFO lines go to OUT/logs/STAGE.log)."""
    import logging

    if getattr(args, "log_level", None) is None:
        return None
    level = logging.getLevelName(str(args.log_level).upper())
    return level if isinstance(level, int) else logging.INFO


def _demo(args) -> int:
    from unime.demo.pipeline import DemoOptions, run_demo
    from unime.errors import DemoStopped

    try:
        report = run_demo(config_from_args(DemoOptions, args, overwrite=bool(getattr(args, "overwrite", False))),
                          console_level=_given_level(args))
    except DemoStopped as e:
        print(f"[demo] stopped: {e}")
        return 3
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0
