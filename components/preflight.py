"""Checks an `up` makes before it declares anything: does the node answer SSH?

pulumi-command's `perDialTimeout` bounds only the TCP connect (Go's ssh.Dial timeout), so a
host that accepts TCP and never sends its SSH banner would hang `pulumi up` indefinitely. An
SSH server speaks first (RFC 4253, 4.2: "SSH-protoversion-softwareversion"), so reading that
line within the timeout proves the node answers, without logging in. Preview stays offline:
the program calls this only when it is not a dry run.
"""

from __future__ import annotations

import socket
import time

from .config import NAMESPACE


def read_banner(host: str, port: int, timeout: float) -> str:
    """The server's SSH identification line; raises OSError (timeout, refused, not SSH)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        # RFC 4253 allows other lines before the identification line; it ends with CR LF.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no SSH banner")
            sock.settimeout(left)
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionError("closed the connection without an SSH banner")
            data += chunk
            for line in data.split(b"\n")[:-1]:
                if line.startswith(b"SSH-"):
                    return line.rstrip(b"\r").decode("ascii", "replace")
            if len(data) > 8192:
                raise ConnectionError("answers, but not with an SSH banner")


def ssh_problem(host: str, port: int, per_dial_timeout: float, attempts: int = 1,
                pause: float = 1.0, key: str = "ssh") -> str | None:
    """None when the node's sshd answers; else one line naming the keys to fix.

    Refused or unreachable is tried `attempts` times (a node that is booting); a silent
    listener fails on its first timeout, since waiting longer would not make it speak.
    """
    reason = ""
    for attempt in range(max(1, attempts)):
        try:
            read_banner(host, port, per_dial_timeout)
            return None
        except TimeoutError:
            reason = f"no SSH banner within {per_dial_timeout:g} s (something accepts TCP but does not speak SSH)"
            break
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, socket.gaierror):
                break
        if attempt + 1 < attempts:
            time.sleep(pause)
    return (
        f"cannot reach the node's sshd at {host}:{port}: {reason}. Check {NAMESPACE}:{key}.host and "
        f"{NAMESPACE}:{key}.port (e.g. `ssh -p {port} root@{host}`); the wait is "
        f"{NAMESPACE}:{key}.perDialTimeout. Nothing was changed."
    )
