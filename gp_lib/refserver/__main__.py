"""`python -m gp_lib.refserver`: run the reference server (see `gp_lib.refserver.cli` for the options).

Once both ports listen it prints exactly one JSON line to stdout and flushes:

    {"event": "listening", "ws_port": P, "admin_port": A, "pid": N}
"""

from __future__ import annotations

import sys

from gp_lib.refserver.cli import build_parser, serve_main

__all__ = ["build_parser", "serve_main"]

if __name__ == "__main__":
    sys.exit(serve_main())
