"""Shared pytest fixtures."""

from __future__ import annotations

import signal

import pytest
import torch


def pytest_configure(config):
    """Ctrl-C reaches the processes the tests start, however the suite was launched.

    A shell starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored, and an ignored
    signal stays ignored across exec: the SIGINT tests' children would then never see their
    signal. A handled one reverts to the default on exec, so handle it here as Python does in
    the foreground."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def native_cache(tmp_path_factory):
    """One build of the native kernels per test process (and the processes it starts): the
    tests' fresh ``CTRBENCH_HOME`` folders would otherwise each build them again."""
    import os

    from ctrbench.native import CACHE_VAR

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_VAR, os.environ.get(CACHE_VAR) or str(tmp_path_factory.mktemp("native")))
        yield


@pytest.fixture(autouse=True)
def progress_mode():
    """Each test starts with the default progress mode: a CLI call with ``-q`` in one test
    sets ``ctrbench.progress``'s mode for the rest of its worker process."""
    from ctrbench import progress

    saved = progress._MODE
    progress.set_mode("auto")
    yield
    progress.set_mode(saved)


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


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Isolated cache and card roots; returns the card root's datasets/ directory."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    cards = tmp_path / "cards"
    (cards / "datasets").mkdir(parents=True)
    monkeypatch.setenv("CTRBENCH_CARDS", str(cards))
    return cards / "datasets"
