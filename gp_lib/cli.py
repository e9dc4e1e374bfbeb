"""The `gp` command: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its concern and exposes
`configure(parser)` and `run(args) -> int`; only the chosen one is imported,
so `gp token` does not pay for papermill.

Exit codes of `gp report` (DESIGN.md): 0 every check passed, 1 a check failed,
2 the run could not be made. Other subcommands use 0 for success and 2 for bad
input; `gp probe` and `gp compare` use 1 for "the target/run looks wrong".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "report": ("gp_lib.batch", "run the scenario notebooks with papermill and write the reports"),
    "serve": ("gp_lib.refserver.cli", "start the reference server, optionally with faults injected"),
    "probe": ("gp_lib.probe", "connect once and print every frame with its timing and the close code"),
    "token": ("gp_lib.token_cli", "mint a token, or inspect one and list its problems"),
    "compare": ("gp_lib.compare", "compare two runs check by check and metric by metric"),
    "analyze": ("gp_lib.analyze", "diagnose a captured trace (toolkit JSONL or browser HAR) and report"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="gp", description="Golden Path Lab: find and prove fixes for "
                                     "WebSocket 1011 closes in a real-time chat backend.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(sub)
            sub.set_defaults(handler=module.run)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("gp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gp compare A B | head`: the reader left; say nothing more (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
