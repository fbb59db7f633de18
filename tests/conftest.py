"""Shared pytest fixtures.

The real CT data lives beside the repository in ``../shared/data`` (see its README). It is never copied into the
repository; tests that need it take the ``shared_data`` fixture and are skipped with a clear reason when it is
absent, e.g. on a user's fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LESSMORE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_data_path(*parts: str) -> Path:
    """Return a path under the shared data folder, skipping the calling test when it does not exist."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real CT data not available: {path} is absent (set LESSMORE_SHARED_DATA to its location)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder; the test is skipped when it is absent."""
    return shared_data_path()


@pytest.fixture
def no_network(monkeypatch):
    """Make MONAI's download helpers fail: a test that needs the network fails instead of downloading."""
    import monai.apps.utils

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(monai.apps.utils, "urlretrieve", refuse)
    monkeypatch.setattr(monai.apps.utils, "urlopen", refuse, raising=False)
    # and any other client (requests, used by MONAI's version lookups): only loopback connections go through
    import socket

    connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and sock.family != socket.AF_UNIX:
            raise AssertionError(f"tried to connect to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
