"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def http_server(monkeypatch):
    """A real HTTP server on 127.0.0.1 serving ``server.files``; counts ``server.requests``."""
    from http_server import serve

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield from serve()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: its tests are tiny and CI's machine has 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
