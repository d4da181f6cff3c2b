"""`unime mine` (judge-guided hard-negative mining, UniME-V2 stages A–C) and `unime judge` (scoring alone).
The options are declared on `MineConfig` (`unime.mining.config`), `JudgePairsConfig` (`unime.mining.pairs`)
and `BackendOptions` (`unime.mining.backends`)."""

from __future__ import annotations

import json

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args
from unime.errors import OptionError, UsageError
from unime.index.ann import ANN_GROUP
from unime.models.image_budget import IMAGE_GROUP


def register(sub) -> None:
    from unime.mining.backends import BackendOptions
    from unime.mining.pairs import JudgePairsConfig
    from unime.mining.config import MineConfig

    p = sub.add_parser("mine", help="mine judge-scored hard negatives (retrieval → judge → filter + sample)")
    j = sub.add_parser("judge", help="score (query, candidate) pairs with a Yes/No judge")
    for parser, config, run in ((p, MineConfig, _mine), (j, JudgePairsConfig, _judge)):
        add_options(parser, config, groups=(ANN_GROUP, IMAGE_GROUP, "video"), own_first=True)
        add_options(parser, BackendOptions)
        add_config_option(parser)
        parser.set_defaults(func=run)


def _backend_options(args) -> dict:
    """`make_backend`'s options from the parsed `BackendOptions` (torch's threads set on the way)."""
    from unime.mining.backends import BackendOptions
    from unime.mining.backends.base import require_backend

    backend = config_from_args(BackendOptions, args)
    options = backend.for_backend(args.backend)  # its usage errors first
    require_backend(args.backend)  # then a missing extra, before any work
    backend.set_threads()
    return options


def _mine(args) -> int:
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining

    if args.audit and not args.world:
        raise UsageError("--audit needs --world", command="mine")
    try:
        cfg = config_from_args(MineConfig, args, data_root=args.data_root or args.world,
                               backend_options=_backend_options(args),
                               overwrite=bool(getattr(args, "overwrite", False)))
        cfg.index_config()  # bad index parameters are refused before anything loads
    except OptionError:
        raise  # a config's refusal: the one line names the options by their flags (`unime.cli.failures.describe`)
    except ValueError as e:
        raise UsageError(str(e), command="mine") from None
    from unime.models.loading import refuse_missing_local_model

    # before any work, each named by its option (the judge loads only after the retrieval's encoding); a hub id
    # after the records are read and checked (`unime.mining.inputs.refuse_unloadable_models`)
    refuse_missing_local_model(cfg.embedder, "--embedder")
    if cfg.backend != "oracle":  # (the oracle's --judge is the world or a labels file)
        refuse_missing_local_model(cfg.judge, "--judge")
    result = run_mining(cfg)
    if result is None:  # a process other than rank 0 under torchrun: rank 0 reports
        _end_torchrun_worker()
        return 0
    s = result.stats
    if result.finished_before:
        print(f"{result.out}: finished earlier with the same options and inputs; nothing to do "
              f"(pass --overwrite to redo it)")
    print(f"{result.out}: {result.n_mined} of {result.n_records} records mined; report: {result.out / 'report.md'}")
    skipped = s.get("skipped_records") or {}
    if skipped.get("total"):  # --on-error skip: said here too, not only in the report
        print(skipped.get("summary") or f"skipped {skipped['total']} record(s)")
    print(s["sampling_table"])
    from unime.mining.health import format_health

    print("label health: " + format_health(s["label_health"]))
    for w in s["label_health"]["warnings"]:
        print(f"WARNING: {w}")
    if args.audit:
        a = json.loads((result.out / "audit.json").read_text())
        print(f"judge audit: ROC-AUC {_figure(a['auc_judge_score'])}, at beta={a['beta']}: precision "
              f"{_figure(a['at_beta']['precision'])}, recall {_figure(a['at_beta']['recall'])}")
    _end_torchrun_worker()
    return 0


def _figure(x) -> str:
    """A measured fraction, three decimals (None where it was not defined)."""
    return f"{x:.3f}" if isinstance(x, (int, float)) else str(x)


def _end_torchrun_worker() -> None:
    """Under torchrun, a process whose mining finished ends here without the interpreter's teardown
    (`unime.mining.ranks.leave_without_teardown`). One process: nothing (the command returns as usual)."""
    import os

    from unime.mining.ranks import leave_without_teardown

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        leave_without_teardown()


def _judge(args) -> int:
    from unime.data.skips import SkipReport, shown_on_failure
    from unime.mining.pairs import JudgePairsConfig, judge_pairs

    with shown_on_failure(SkipReport()) as skips:  # every pair skipped: the reasons before "no pairs to score"
        res = judge_pairs(config_from_args(JudgePairsConfig, args, backend_options=_backend_options(args)),
                          skips=skips, overwrite=bool(getattr(args, "overwrite", False)))
    skipped = f"; {skips.summary()}" if skips.total else ""
    if not args.label_column:
        print(f"{args.out}: {res} scores{skipped}")
        return 0
    from pathlib import Path

    from unime.mining.judge_check import format_metrics

    stem = Path(args.out).with_suffix("")
    print(f"{args.out}: {res['pairs']} scores{skipped}; {stem}.metrics.json, {stem}.calibration.png")
    print("judge on labelled pairs: " + format_metrics(res))
    for w in res["warnings"]:
        print(f"WARNING: {w}")
    return 0
