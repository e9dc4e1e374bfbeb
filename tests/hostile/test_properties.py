"""Properties over whole classes of hostile input (Hypothesis): no exception escapes, nothing unbounded
is kept, no registered secret survives redaction in any common encoding, no escaped text carries markup."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from leak_scan import leaks_in

from gp_lib import auth, har, params, protocol, redact as redactor, trace
from gp_lib.batch import REGISTRY
from gp_lib.redact import redact, register_secret
from gp_lib.scenarios.common import ParameterError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)
frames = st.one_of(
    st.text(), st.binary(),
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["type", "data", "run_id", "user_id", "error"]), json_values).map(json.dumps),
    st.integers(1, 5000).map(lambda n: '{"type": "x", "data": ' + "[" * n + "]" * n + "}"),
    st.integers(1, 3).map(lambda n: json.dumps({"type": "y" * (n * 3000), "data": {"s": "z" * (n * 20_000)}})),
)


@SETTINGS
@given(frames)
def test_the_decoder_never_raises_and_keeps_everything_bounded(frame):
    message = protocol.decode(frame)
    assert isinstance(message["type"], str) and message["type"]
    assert len(message.raw) <= protocol.MAX_RAW_CHARS + 40
    assert message.raw_length == len(frame)
    assert (message.problem is None) == (message["type"] != protocol.INVALID_TYPE)

    def walk(value, depth):
        assert depth <= protocol.MAX_DEPTH + 1
        if isinstance(value, str):
            assert len(value) <= protocol.MAX_STRING_CHARS + 40
        elif isinstance(value, dict):
            assert len(value) <= protocol.MAX_ITEMS + 1
            for inner in value.values():
                walk(inner, depth + 1)
        elif isinstance(value, list):
            assert len(value) <= protocol.MAX_ITEMS + 1
            for inner in value:
                walk(inner, depth + 1)
    walk(dict(message), 0)


# -- the redactor ------------------------------------------------------------------------------------

secrets_ = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40)
surroundings = st.text(max_size=30)


@st.composite
def encoded(draw, secret: str) -> str:
    """`secret` in one of the encodings a server may echo it in, drawn with its variations."""
    form = draw(st.sampled_from(["plain", "base64", "base64url", "json", "percent", "split"]))
    raw = secret.encode()
    if form in ("base64", "base64url"):
        prefix = draw(st.binary(max_size=2))  # any alignment of the secret inside the encoded bytes
        text = base64.b64encode(prefix + raw + draw(st.binary(max_size=2))).decode()
        text = text if form == "base64" else text.replace("+", "-").replace("/", "_").rstrip("=")
        return text
    if form == "json":
        escaped = [f"\\u{ord(c):04{'x' if draw(st.booleans()) else 'X'}}" if draw(st.booleans()) else c
                   for c in secret]
        return "".join(escaped)
    if form == "percent":
        return "".join(f"%{b:02{'x' if draw(st.booleans()) else 'X'}}" if draw(st.booleans()) else chr(b)
                       for b in raw)
    if form == "split":
        cuts = sorted(draw(st.sets(st.integers(1, len(secret) - 1), max_size=4)))
        pieces = [secret[i:j] for i, j in zip([0, *cuts], [*cuts, len(secret)])]
        return "".join(p + draw(st.sampled_from([" ", "\n", "\t", "  ", "\r\n"])) for p in pieces[:-1]) + pieces[-1]
    return secret


@contextlib.contextmanager
def registry_restored():
    """The secrets registered inside are forgotten after: Hypothesis draws strings from the package's own
    literals (`llm_service`...), and one left registered would be redacted from every later test's text."""
    secrets, pattern = set(redactor._secrets), redactor._secrets_pattern
    try:
        yield
    finally:
        redactor._secrets.clear()
        redactor._secrets.update(secrets)
        redactor._secrets_pattern = pattern


@SETTINGS
@given(st.data(), secrets_, surroundings, surroundings, st.booleans())
def test_a_registered_secret_never_survives_in_any_encoding(data, secret, before, after, as_token):
    with registry_restored():
        if as_token:
            secret = auth.mint_token(secret, data.draw(st.text(max_size=12)))
        else:
            register_secret(secret)
        text = before + data.draw(encoded(secret)) + after
        assert leaks_in(redact(text), {"secret": secret}) == []


#: Pieces of text where the redactor's fast paths could part from the regexes they stand for: escapes cut
#: by whitespace, escaped backslashes, token starts overlapping, word boundaries, letters whose lower case is
#: longer or not ASCII, Unicode whitespace.
tricky_pieces = st.sampled_from(["%", "%4", "1", "%41", "\\", "\\u", "0041", "\\x4", "\\n", "n", "t", " ", "\t",
                                 "\n", "\x1c", "\u00a0", "\u2028", "eyJ", "EYj", "jwt", "JWT-auth", "bearer", "Bearer ",
                                 ".", "-", "_", "abcdEFGH1234", "x", "\u0130", "\u212a", "\u017f", "=", "é",
                                 "eyJhbGciOi.eyJzdWIi.c2ln", "jwt.abcdefghijklmnopq", "Bearer abcdefgh12"])


@SETTINGS
@given(st.lists(tricky_pieces, max_size=40).map("".join))
def test_the_redactors_fast_paths_find_what_its_regexes_find(text):
    """The token scan and the decoded view are the plain regex substitutions, only faster."""
    assert redactor._tokens_sub(text, redactor._lowered(text)) == redactor._TOKENS.sub(redactor._token_replacement,
                                                                                       text)
    assert redactor._view(text) == redactor._ENCODED.sub(redactor._decoded, text)


# -- escaping ----------------------------------------------------------------------------------------

hostile_text = st.text(st.characters(codec="utf-8")) | st.sampled_from(
    ["\r\n# h", "<script>x</script>", "\x1b[31m", "\x1b]0;t\x07", "a|b", "`code`", "[l](javascript:x)", "\x9b2J"])


@SETTINGS
@given(st.lists(hostile_text, min_size=1, max_size=4).map("".join))
def test_escaped_text_carries_no_markup_and_no_control(text):
    from gp_lib import escape

    cell = escape.markdown(text)
    assert "\n" not in cell and "\r" not in cell and "<" not in cell and "|" not in cell.replace("\\|", "")
    assert not re.search("[\x00-\x1f\x7f-\x9f]", cell)
    html = escape.html(text)
    assert not re.search(r"[<>\"']", html) and not re.search(r"&(?!(amp|lt|gt|quot|#x?[0-9a-fA-F]+);)", html)
    terminal = escape.terminal(text)
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", terminal)


# -- importers and the parameter loader ------------------------------------------------------------

har_messages = st.lists(st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["send", "receive", "error", "x"]) | json_values,
    "time": st.floats() | st.integers() | json_values, "opcode": st.integers(-1, 12) | json_values,
    "data": frames.filter(lambda f: isinstance(f, str)) | json_values}), max_size=5)
har_entries = st.lists(st.fixed_dictionaries({}, optional={
    "_resourceType": st.just("websocket") | json_values, "_webSocketMessages": har_messages | json_values,
    "request": st.fixed_dictionaries({}, optional={"url": st.text(max_size=40) | json_values}) | json_values,
    "response": st.fixed_dictionaries({}, optional={"status": st.integers(-5, 1200) | json_values}) | json_values,
    "startedDateTime": st.text(max_size=30) | st.floats() | json_values,
    "timings": st.dictionaries(st.sampled_from(har.TIMING_PARTS), st.floats() | json_values) | json_values,
}) | json_values, max_size=4)


@SETTINGS
@given(har_entries | json_values | st.text())
def test_the_har_importer_reads_or_names_the_problem(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.har"
        path.write_text(json.dumps({"log": {"entries": content}}) if isinstance(content, list) else
                        content if isinstance(content, str) else json.dumps(content))
        try:
            har.load_har(path)
        except ValueError as exc:
            assert str(path) in str(exc)


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=60), json_values.map(json.dumps),
                          st.dictionaries(st.sampled_from(["record", *trace.ATTEMPT_COLUMNS[:8]]),
                                          json_values | st.sampled_from(["attempt", "frame"])).map(json.dumps)),
                max_size=6))
def test_the_jsonl_importer_reads_or_names_the_line(lines):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.jsonl"
        path.write_text("\n".join(lines))
        try:
            trace.load_jsonl(path)
        except ValueError as exc:
            assert str(path) in str(exc)


yaml_fragments = st.sampled_from([
    "a: &a [1, 2]\n", "b: [*a, *a]\n", "race_conditions:\n  concurrency_levels: [1, .inf]\n", "x: .nan\n",
    "open_timeout_s: 1e999\n", "!!python/object:os.system ls\n", "- [[[[[[\n", "? [a]\n: b\n", "\x00\x01",
    "max_concurrency: 5\n", "factory_initialization:\n  connections: -1\n", "env: staging\n", "target_url: ws://[::1\n",
    "'a': {'b': {'c': {'d': 1}}}\n", "%YAML 1.1\n---\n", "race_conditions: 3\n", "dialect: 'x=y'\n",
])


@SETTINGS
@given(st.lists(yaml_fragments | st.text(max_size=40), max_size=5).map("".join))
def test_the_parameter_loader_accepts_or_names_the_problem(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.yaml"
        path.write_text(text, errors="surrogatepass") if text.isascii() else path.write_bytes(
            text.encode("utf-8", "surrogatepass"))
        classes = {name: entry.params_class() for name, entry in REGISTRY.items()}
        try:
            params.resolve(classes, list(classes), parameters_dir=folder, params_file=path)
        except ParameterError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip()
