"""Network helpers for tests that start local servers or multi-process runs."""

import socket


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a local server or accelerate's --main_process_port,
    so that runs of parallel test workers never meet on one port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
