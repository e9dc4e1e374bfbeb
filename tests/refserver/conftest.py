"""Fixtures for the reference server tests.

Every test talks to a real `python -m gp_lib.refserver` subprocess over loopback.
Each module defines its own `server` fixture (the faults and dialect it needs);
`wire` wraps it with the deadline-bound client of `refserver_client`, and every
test that used it leaves it with the faults it started with.
"""

from __future__ import annotations

import pytest
from refserver_client import Wire

from gp_lib.refserver import ServerHandle


@pytest.fixture
def wire(server: ServerHandle) -> Wire:
    return Wire(server.url, server.secret, server.dialect)


@pytest.fixture(autouse=True)
def back_to_start(request: pytest.FixtureRequest):
    """A test that switched faults on the module's server switches them back."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset_faults()
