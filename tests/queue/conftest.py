"""A real PostgreSQL 15 for the queue tests, started by the tests themselves.

initdb/pg_ctl from Debian's postgresql-15 (tools/deps.sh installs it), as a non-root user (the
`postgres` account when the tests run as root), in a temp dir, on a unix socket and a free
loopback port, trust authentication. One server for the session; each test gets a database of
its own. Skipped, with the reason, only when the server binaries are missing.
"""

from __future__ import annotations


import pytest

from tests.queue.pgserver import missing, remove, start_server


@pytest.fixture(scope="session")
def pg_server():
    reason = missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("psycopg", reason="psycopg not installed in this venv (uv sync installs the dev group)")
    server = start_server()
    try:
        yield server
    finally:
        remove(server)
@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    if not pg_server.running():
        pg_server.start()
    return pg_server.new_database()


