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
