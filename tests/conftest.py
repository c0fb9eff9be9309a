from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers import LocalCA, SmtpServer, local_ca, start_server

# --------------------------------------------------------------------------------------
# In-process SMTP servers (logic in tests/servers.py)
# --------------------------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SmtpServer]]:
    """Factory: ``server = smtp_server(rate=(3, 1.0), auth={...})``; all stopped at teardown."""
    started: list[SmtpServer] = []

    def make(**behaviour: Any) -> SmtpServer:
        server = start_server(**behaviour)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> LocalCA:
    """The CA every TLS test server uses: ``.ca_pem_path``, ``.client_context()``."""
    return local_ca()


# --------------------------------------------------------------------------------------
# The user's folders: every test gets its own shared suppression list, unsubscribe key and
# quota state, so that nothing leaks between tests (or into the real home folder). XDG_* is
# what platformdirs reads on Linux, and it survives servers.child_environ().
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _user_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("user")
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
