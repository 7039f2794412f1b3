"""A throwaway PostgreSQL 15 server (initdb/pg_ctl from Debian's postgresql-15) for tests/queue and
bench/bench_queue.py: a temp dir, a unix socket and a free loopback port, trust authentication,
run as a non-root user (`postgres` when we are root: initdb refuses root)."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, base: str, port: int, user: str | None):
        self.base, self.port, self.user = base, port, user
        self.data = os.path.join(base, "data")
        self.socket_dir = base
        self.log = os.path.join(base, "server.log")
        self._names = itertools.count(1)

    def _run(self, *argv, check=True, timeout=120) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)

    def initdb(self) -> None:
        self._run(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.socket_dir}'\n"
                     "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")

    def start(self) -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._run(f"{PG_BIN}/pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def missing() -> str:
    """Why no server can be started here ("" = it can)."""
    if not os.path.exists(f"{PG_BIN}/initdb") or not os.path.exists(f"{PG_BIN}/pg_ctl"):
        return (f"PostgreSQL 15 server binaries not found in {PG_BIN} "
                "(Debian: apt-get install postgresql; `make deps` / tools/deps.sh installs it)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    return ""


def start_server() -> PgServer:
    user = "postgres" if os.geteuid() == 0 else None
    base = tempfile.mkdtemp(prefix="mp-pg-")
    os.chmod(base, 0o755)
    if user:
        shutil.chown(base, user)
    server = PgServer(base, _free_port(), user)
    server.initdb()
    server.start()
    return server


def remove(server: PgServer) -> None:
    server.stop("immediate")
    shutil.rmtree(server.base, ignore_errors=True)
