"""`lmact presets`: the papers' protocols as named sets of options, and what each sets."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    presets = commands.add_parser(
        "presets",
        help="list the presets (the papers' protocols)",
        description="List the presets: each a paper's protocol as options of a run, given "
        "as `lmact run --preset NAME` (options given as well win). With NAME: its options, "
        "where each value comes from, and the same run as options.",
    )
    presets.add_argument("name", nargs="?", metavar="NAME", help="show one preset")


def command(args: argparse.Namespace) -> None:
    from lmact.cli.arguments import flag_for
    from lmact.presets import get_preset, presets

    if args.name is None:
        for preset in presets().values():
            print(f"{preset.name}: {preset.description}")
        return
    preset = get_preset(args.name)
    print(f"{preset.name}: {preset.description}\n  from {preset.paper}")
    words = []
    for option, value in preset.options.items():
        print(f"  {flag_for(option)} {_shown(value)}: {preset.source[option]}")
        words.append(f"{flag_for(option)} {_shown(value)}")
    print(f"the same run by hand: lmact run {' '.join(words)} ...")


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
