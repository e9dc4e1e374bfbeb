"""The server as a process: the command line, its one stdout line, secrets, and children that never linger."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import pytest
from refserver_client import Session, Wire, scaled
from websockets.asyncio.client import connect

from gp_lib.auth import connect_kwargs, mint_token
from gp_lib.protocol import is_ready_marker
from gp_lib.refserver import cli, free_port, running_server
from gp_lib.refserver.__main__ import build_parser, serve_main

LISTENING = re.compile(r'^\{"event": "listening", "ws_port": \d+, "admin_port": \d+, "pid": \d+\}$')


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once `pid` has exited: no such process, or a zombie nobody has reaped yet."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    return False


def child(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k != "JWT_SECRET_KEY"}
    return subprocess.Popen([sys.executable, "-m", "gp_lib.refserver", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**base, **env})


# -- the command line ---------------------------------------------------------------------

def test_parser_builds_faults_from_flags():
    args = build_parser().parse_args(["--fault", "race", "--fault", "events:misroute", "--setup-ms", "50",
                                      "--services-down", "database", "--faults-json", '{"agent_step_ms": 1}'])
    faults = cli.faults_from_args(args)
    assert faults.race and faults.events == "misroute" and faults.setup_ms == 50
    assert faults.services_down == ("database",) and faults.agent_step_ms == 1


def test_gp_serve_subparser_defaults_to_port_8000():
    parser = argparse.ArgumentParser(prog="gp serve")
    cli.configure(parser)
    args = parser.parse_args(["--fault", "race"])
    assert args.port == 8000 and args.fault == ["race"] and build_parser().parse_args([]).port == 0


def test_serve_main_returns_2_for_a_bad_dialect(capsys):
    assert serve_main(["--dialect", "klingon"]) == 2
    assert "klingon" in capsys.readouterr().err


def test_unset_secret_exits_2_naming_the_variable():
    process = child(["--jwt-secret-env", "GP_TEST_SECRET_THAT_IS_UNSET"], {})
    out, err = process.communicate(timeout=scaled(10))
    assert process.returncode == 2 and out == b""
    assert "GP_TEST_SECRET_THAT_IS_UNSET" in err.decode() and len(err.decode().strip().splitlines()) == 1


def test_bad_fault_exits_2():
    process = child(["--fault", "gremlins"], {"JWT_SECRET_KEY": "s" * 32})
    _, err = process.communicate(timeout=scaled(10))
    assert process.returncode == 2 and "gremlins" in err.decode()


async def test_listening_line_and_no_secret_or_token_in_any_output():
    secret = "cli-secret-" + "x" * 24
    process = child(["--log-level", "DEBUG", "--jwt-secret-env", "GP_TEST_SECRET"], {"GP_TEST_SECRET": secret})
    try:
        line = process.stdout.readline().decode()
        assert LISTENING.match(line.strip()), line
        listening = json.loads(line)
        assert listening["pid"] == process.pid
        token = mint_token(secret, "alice")
        url = f"ws://127.0.0.1:{listening['ws_port']}/ws"
        async with connect(url, open_timeout=scaled(5), **connect_kwargs(token)) as ws:
            assert is_ready_marker(await Session(ws).ready())
    finally:
        process.terminate()
        out, err = process.communicate(timeout=scaled(10))
    assert process.returncode == 0 and out == b""
    assert b"GET /ws" in err or b"connection open" in err  # DEBUG logging did run
    for text in (secret, token, token.split(".")[2]):
        assert text.encode() not in err


def test_child_stops_when_its_stdin_closes():
    process = child(["--stop-on-stdin-eof"], {"JWT_SECRET_KEY": "s" * 32})
    try:
        assert LISTENING.match(process.stdout.readline().decode().strip())
        process.stdin.close()
        assert process.wait(timeout=scaled(5)) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=scaled(5))
        process.stdout.close()
        process.stderr.close()


# -- running_server ----------------------------------------------------------------------------

def test_child_stops_when_its_parent_is_killed():
    script = ("import os, signal\n"
              "from gp_lib.refserver import running_server\n"
              "server = running_server().__enter__()\n"
              "print(server.pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    out, _ = parent.communicate(timeout=scaled(15))
    assert parent.returncode == -9
    assert gone(int(out))


def test_handle_describes_the_server_without_its_secret():
    with running_server(secret="handle-secret-" + "y" * 20) as server:
        assert server.url == f"ws://127.0.0.1:{server.ws_port}/ws"
        assert server.http_url == f"http://127.0.0.1:{server.ws_port}"
        assert server.auth_url == server.admin_url
        assert server.alive() and server.secret.startswith("handle-secret-")
        assert "handle-secret" not in repr(server)
        pid = server.pid
    assert gone(pid)


def test_child_is_stopped_when_the_block_raises():
    with pytest.raises(KeyError):
        with running_server() as server:
            pid = server.pid
            raise KeyError("boom")
    assert gone(pid)


def test_child_that_dies_before_listening_raises_with_its_stderr():
    with pytest.raises(RuntimeError, match="gremlins") as raised:
        with running_server(extra_args=("--dialect", "gremlins")):
            pass
    assert "exited with code 2" in str(raised.value)


def test_fault_options_in_extra_args_are_refused():
    """The child applies `faults` last, so a --fault in extra_args would be silently overridden."""
    with pytest.raises(ValueError, match="pass faults through the faults argument.*--fault"):
        with running_server(extra_args=("--fault", "events")):
            pass


def test_port_in_use_raises_with_the_reason():
    port = free_port()
    with running_server(port=port):
        with pytest.raises(RuntimeError, match="exited with code 1|cannot listen"):
            with running_server(port=port, startup_timeout_s=scaled(10)):
                pass


def test_bad_arguments_fail_before_anything_starts():
    with pytest.raises(ValueError, match="setup_ms"):
        with running_server({"setup_ms": "slow"}):
            pass
    with pytest.raises(ValueError, match="layout"):
        with running_server(dialect="layout=sideways"):
            pass


async def test_restart_on_a_fixed_port():
    port = free_port()
    for _ in range(2):
        with running_server(port=port, secret="restart-secret-" + "z" * 20) as server:
            assert server.ws_port == port
            async with Wire(server.url, server.secret).session() as session:
                assert is_ready_marker(session.frames[-1])
            server.stop()
            assert not server.alive()
