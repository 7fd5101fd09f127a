"""`hybrid-vlm`: the parser built from the command registry, and the error handling every command shares.

Only the command being run is imported and given its options; the others appear in `--help` with their one-line
help from the registry. Standard library only, so `hybrid-vlm --help` costs no torch import.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Collection, Sequence

from .registry import COMMANDS, find_command

DESCRIPTION = f"`hybrid-vlm` command line: {', '.join(command.name for command in COMMANDS)}."


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `hybrid-vlm` parser. The commands named in `commands` (all when None) get their full sub-parser, which
    imports their modules; every other command is listed with its help but takes no options."""
    parser = argparse.ArgumentParser(prog="hybrid-vlm", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        if commands is not None and command.name not in commands:
            subparsers.add_parser(command.name, help=command.help, add_help=False)
            continue
        module = importlib.import_module(command.module)
        getattr(module, command.add)(subparsers)
        subparsers.choices[command.name].set_defaults(handler=getattr(module, command.run))
    return parser


# Bad input reported by the commands: printed as one line (no traceback); HYBRID_VLM_TRACEBACK=1 shows the traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen = arguments[0] if arguments and find_command(arguments[0]) is not None else None
    args = build_parser([chosen] if chosen else []).parse_args(arguments)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        if os.environ.get("HYBRID_VLM_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
