"""Class 5, parameters: every bad value or file a careless user can give stops `gp report` or `gp probe`
before any traffic with exit 2 and one line naming the culprit, never a traceback or a hang."""

from __future__ import annotations

import pytest

from gp_lib.cli import main

BOMB = """\
factory_initialization:
  reference_factory_config:
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    max_connections: -1
"""


def one_line_exit_2(capsys, argv: list[str], *named: str) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in named:
        assert name in lines[0], lines[0]


REPORT = ["report", "--scenario", "factory_initialization", "--scenario", "race_conditions"]


@pytest.mark.parametrize("text, named", [
    (BOMB, "alias"),
    ("race_conditions:\n  concurrency_levels: [1, .inf]\n", "concurrency_levels"),
    ("race_conditions:\n  send_delays_ms: [0, .nan]\n", "send_delays_ms"),
    ("factory_initialization:\n  reference_setup_ms: .nan\n", "reference_setup_ms"),
    ("open_timeout_s: .inf\n", "open_timeout_s"),
    ("race_conditions:\n  concurrency_levels: " + "[" * 5000 + "1" + "]" * 5000 + "\n", "nested"),
    ("factory_initialization:\n  reference_factory_config: {max_connections: -1, pad: '" + "x" * 2_000_000 + "'}\n",
     "bytes"),
])
def test_a_bad_parameter_file_exits_2_naming_the_culprit(tmp_path, capsys, text, named):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    one_line_exit_2(capsys, [*REPORT, "--params", str(path)], named)


def test_a_binary_parameter_file_exits_2_naming_the_file(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 10)
    one_line_exit_2(capsys, [*REPORT, "--params", str(path)], str(path))


@pytest.mark.parametrize("assignment, named", [
    ("race_conditions.concurrency_levels=[1, .inf]", "concurrency_levels"),
    ("receive_timeout_s=.nan", "receive_timeout_s"),
    ("ready_timeout_s=1e400", "ready_timeout_s"),
])
def test_a_bad_assignment_exits_2_naming_it(capsys, assignment, named):
    one_line_exit_2(capsys, [*REPORT, "-p", assignment], named)


@pytest.mark.parametrize("args, named", [
    (["--send-at-ms", "1e12"], "--send-at-ms"),
    (["--wait", "inf"], "--wait"),
    (["--wait", "nan"], "--wait"),
    (["--open-timeout", "inf"], "--open-timeout"),
    (["--ready-timeout", "1e9"], "--ready-timeout"),
])
def test_probe_bounds_every_wait(capsys, monkeypatch, args, named):
    monkeypatch.setenv("JWT_SECRET_KEY", "probe-secret-0123456789abcdef")
    one_line_exit_2(capsys, ["probe", "ws://127.0.0.1:9/ws", *args], named)


@pytest.mark.parametrize("url", ["ws://[::1", "ws://127.0.0.1:99999/ws", "ws://[zz]/ws"])
def test_probe_names_a_bad_url(capsys, monkeypatch, url):
    monkeypatch.setenv("JWT_SECRET_KEY", "probe-secret-0123456789abcdef")
    one_line_exit_2(capsys, ["probe", url], "URL")


@pytest.mark.parametrize("url", ["ws://[::1", "ws://127.0.0.1:99999/ws"])
def test_report_names_a_bad_target(capsys, url):
    one_line_exit_2(capsys, [*REPORT, "--target", url], "target_url")
