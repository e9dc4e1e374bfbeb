"""Find a credential in text or in every file under a folder, whatever encoding it was written in.

The text is looked at as written and decoded: percent escapes, JSON and
Python `\\u`/`\\x` escapes undone, whitespace removed (a credential split by
spaces or wrapped lines), and searched for the credential itself and for its
base64 and base64url forms at each of the three byte alignments (so an
encoding of the credential inside longer text is found too). A JWT is also
looked for by its signature alone: header and claims are not secret, the
signature is what lets anyone replay the token.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

_ESCAPES = re.compile(r"%([0-9A-Fa-f]{2})|\\u([0-9A-Fa-f]{4})|\\x([0-9A-Fa-f]{2})")
_SPACE = re.compile(r"\s+|\\[nrt]")


def decoded(text: str) -> str:
    """`text` with escapes undone (twice, for escapes of escapes) and whitespace removed."""
    for _ in range(2):
        text = _ESCAPES.sub(lambda m: chr(int(m.group(1) or m.group(2) or m.group(3), 16)), text)
        text = text.replace("\\\\", "\\")
    return _SPACE.sub("", text)


def needles(secret: str) -> dict[str, str]:
    """What must not appear in decoded text: the secret (or a JWT's signature) and its base64 cores."""
    signature = secret.rsplit(".", 1)[1] if secret.count(".") == 2 and secret.startswith("eyJ") else ""
    plain = signature if len(signature) >= 16 else secret
    found = {"plain": plain}
    raw = plain.encode()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        start = (offset * 4 + 2) // 3 + (1 if offset else 0)
        core = encoded[start:len(encoded) - 4]
        if len(core) >= 8:
            found[f"base64@{offset}"] = core
            found[f"base64url@{offset}"] = core.replace("+", "-").replace("/", "_")
    return found


def leaks_in(text: str, secrets: dict[str, str]) -> list[str]:
    """`name: form` of every secret found in `text`."""
    views = (text, decoded(text))
    return [f"{name}: {form}" for name, secret in secrets.items() if secret
            for form, needle in needles(secret).items() if any(needle in view for view in views)]


def leaks_under(root: str | Path, secrets: dict[str, str]) -> list[str]:
    """`file: name: form` of every secret found in any file under `root` (binary files read as latin-1 too)."""
    found = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for text in {data.decode("utf-8", "replace"), data.decode("latin-1")}:
            found += [f"{path.relative_to(root)}: {leak}" for leak in leaks_in(text, secrets)]
    return sorted(set(found))
