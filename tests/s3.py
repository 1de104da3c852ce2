"""An S3 endpoint for tests: moto's server mode on loopback, with fake credentials."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING

from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from collections.abc import Iterator

CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Run moto's S3 server on a free loopback port; yields its endpoint URL. Fake
    credentials are in the environment meanwhile (restored afterwards)."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    for name in saved:
        os.environ.setdefault(name, "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
