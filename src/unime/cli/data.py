"""`unime data ...`: the generated demo world and data-format conversion."""

from __future__ import annotations

from unime.cli import add_config_option


def register(sub) -> None:
    p = sub.add_parser("data", help="generate the demo world; convert data formats")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    s = dsub.add_parser("synth", help="generate the deterministic demo world (training records + MMEB-format eval)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0)
    add_config_option(s)
    s.set_defaults(func=_synth)


def _synth(args) -> int:  # filled in by unime.data.synth
    from unime.data.synth import synth_world_cli

    return synth_world_cli(args)
