"""`gp token`: mint a test token, or inspect one and list its problems in plain words.

Minting prints the token on stdout and nothing else, so it composes:
`websocat -H "Authorization: Bearer $(gp token)" ws://...`. Inspecting never
prints the token itself or the secret.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime, timezone

from gp_lib import auth


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="gp-cli-user", help="user id (sub claim) of a minted token")
    parser.add_argument("--email", help="email claim (default: <user>@golden-path.test)")
    parser.add_argument("--lifetime", type=float, default=auth.DEFAULT_LIFETIME_S / 60, metavar="MINUTES",
                        help="minutes until a minted token expires (default 30)")
    parser.add_argument("--jwt-secret-env", "--secret-env", dest="secret_env", default="JWT_SECRET_KEY", metavar="NAME",
                        help="environment variable holding the signing secret (default JWT_SECRET_KEY)")
    parser.add_argument("--inspect", metavar="TOKEN", help="inspect TOKEN ('-' reads it from stdin) instead of minting")


def run(args: argparse.Namespace) -> int:
    if args.inspect is not None:
        return _inspect(sys.stdin.read().strip() if args.inspect == "-" else args.inspect.strip(), args.secret_env)
    try:
        secret = auth.secret_from_env(args.secret_env)
    except auth.AuthError as exc:
        print(f"gp token: {exc}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.lifetime) and args.lifetime > 0):
        print(f"gp token: --lifetime must be a number of minutes greater than zero, not {args.lifetime:g}",
              file=sys.stderr)
        return 2
    print(auth.mint_token(secret, args.user, email=args.email, lifetime_s=args.lifetime * 60))
    return 0


def _inspect(token: str, secret_env: str) -> int:
    """Print header, claims with readable times, and problems; exit 1 when there are problems."""
    secret = os.environ.get(secret_env) or None
    report = auth.inspect_token(token, secret)
    print("header: " + json.dumps(report.header, sort_keys=True))
    for name, value in sorted(report.claims.items()):
        shown = json.dumps(value)
        if name in ("iat", "exp", "nbf") and isinstance(value, (int, float)):
            shown += _readable_time(value)
        print(f"  {name}: {shown}")
    if secret is None:
        print(f"signature: not checked ({secret_env} is not set)")
    if report.problems:
        print("problems:")
        for problem in report.problems:
            print(f"  - {problem}")
        return 1
    print("problems: none")
    return 0


def _readable_time(epoch_s: float) -> str:
    """`  (2026-11-30T12:00:00+00:00)`, or nothing for a time no calendar holds (the raw number says enough)."""
    try:
        return "  (" + datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="seconds") + ")"
    except (OverflowError, OSError, ValueError):
        return ""
