"""Class 8, the admin API: a web page in the user's browser cannot switch faults (no simple cross-origin
request, no DNS rebinding): writes need JSON, the Host must be the loopback admin address, and any request
with an Origin is refused."""

from __future__ import annotations

import http.client

import pytest

from gp_lib.refserver import running_server


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 10}) as handle:
        yield handle


def request(server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=5)
    try:
        connection.putrequest(method, path, skip_host="host" in {k.lower() for k in (headers or {})})
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("headers, status", [
    ({"Content-Type": "text/plain"}, 415),
    ({}, 415),
    ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403),
    ({"Content-Type": "application/json", "Host": "evil.example"}, 421),
    ({"Content-Type": "application/json", "Host": "127.0.0.1:1"}, 421),
])
def test_a_write_that_a_web_page_could_make_is_refused(server, headers, status):
    before = server.faults()
    code, _ = request(server, "POST", "/faults", b'{"race": true}', headers)
    assert code == status
    assert server.faults() == before


def test_a_read_with_an_origin_is_refused_too(server):
    assert request(server, "GET", "/faults", headers={"Origin": "null"})[0] == 403


def test_the_toolkit_itself_still_switches_faults(server):
    assert request(server, "POST", "/faults", b'{"race": true}', {"Content-Type": "application/json"})[0] == 200
    assert server.faults()["race"] is True
    assert request(server, "POST", "/faults/reset", b"", {"Content-Type": "application/json",
                                                          "Host": f"localhost:{server.admin_port}"})[0] == 200
    assert server.faults()["race"] is False
