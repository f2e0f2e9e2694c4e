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
    from lmact.presets import get_preset, presets

    if args.name is None:
        for preset in presets().values():
            print(f"{preset.name}: {preset.description}")
        return
    preset = get_preset(args.name)
    print(f"{preset.name}: {preset.description}\n  from {preset.paper}")
    words = _listed(preset.options, preset.source, "  ")
    if not preset.tasks:
        print(f"the same run by hand: lmact run {' '.join(words)} ...")
        return
    for task, own in sorted(preset.tasks.items()):
        print(f"  with --task {task}:")
        more = _listed(own.options, own.source, "    ")
        print(f"    the same run by hand: lmact run --task {task} {' '.join(words + more)} ...")


def _listed(options: dict[str, object], source: dict[str, str], indent: str) -> list[str]:
    """Print each option with its source; the options as a command's words."""
    from lmact.cli.arguments import flag_for

    words = []
    for option, value in options.items():
        if isinstance(value, bool):  # a switch: given alone, or left out
            shown = flag_for(option) if value else f"(no {flag_for(option)})"
        else:
            values = value if isinstance(value, list) else [value]
            shown = " ".join(f"{flag_for(option)} {one}" for one in values)
        print(f"{indent}{shown}: {source[option]}")
        if value is not False:
            words.append(shown)
    return words
