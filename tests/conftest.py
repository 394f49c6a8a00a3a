"""Shared pytest fixtures (each engineer ADDS fixtures; none is removed or renamed)."""

from __future__ import annotations

import pytest


@pytest.fixture
def http_server(monkeypatch):
    """A real HTTP server on 127.0.0.1 serving ``server.files``; counts ``server.requests``."""
    from http_server import serve

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield from serve()
